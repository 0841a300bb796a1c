"""A progress bar on stderr (tqdm) that stays quiet when stdout or stderr is not a terminal
(piped or redirected output, CI logs, ``--json`` consumers)."""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm


def _is_terminal(stream: object) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)())


class Progress:
    """``with Progress(total, "train") as bar: bar.update(1, loss=0.3)``; silent off a TTY.

    A thin wrapper over :class:`tqdm.tqdm` that adds one rule tqdm lacks: the bar is drawn only
    when both stdout and the bar's stream are terminals, so ``--json`` output piped elsewhere and
    CI logs stay clean.
    """

    def __init__(self, total: int, desc: str = "", stream: TextIO | None = None) -> None:
        self.n = 0  # steps counted so far, also while quiet (tqdm stops counting when disabled)
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = _is_terminal(sys.stdout) and _is_terminal(self.stream)
        self._bar = tqdm(
            total=max(int(total), 0), desc=desc, file=self.stream, disable=not self.enabled,
            dynamic_ncols=True, mininterval=0.1,
        )

    def update(self, n: int = 1, **postfix: float) -> None:
        self.n += n
        if self.enabled and postfix:
            self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(n)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()
