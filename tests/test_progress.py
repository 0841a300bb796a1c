"""The progress bar goes quiet when output is not a terminal."""

import io
import sys

from robust_ebm.progress import Progress


class _TTY(io.StringIO):
    def isatty(self):
        return True


def test_quiet_when_stdout_is_not_a_terminal(monkeypatch):
    err = _TTY()
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    with Progress(3, "x", stream=err) as bar:
        bar.update(3, loss=1.0)
    assert err.getvalue() == ""


def test_draws_on_a_terminal(monkeypatch):
    err = _TTY()
    monkeypatch.setattr(sys, "stdout", _TTY())
    with Progress(3, "epoch", stream=err) as bar:
        bar.update(3, loss=0.5)
    assert "epoch" in err.getvalue() and "3/3" in err.getvalue() and "loss=0.5" in err.getvalue()


def test_counts_steps_while_quiet(monkeypatch):
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    with Progress(5, "x", stream=io.StringIO()) as bar:
        bar.update(2)
        bar.update(3, loss=0.1)
    assert bar.n == 5 and not bar.enabled
