"""A minimal progress bar on stderr that stays quiet when stdout or stderr is not a terminal
(piped or redirected output, CI logs, ``--json`` consumers)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``with Progress(total, "train") as bar: bar.update(1, loss=0.3)``; silent off a TTY."""

    def __init__(self, total: int, desc: str = "", stream: TextIO | None = None) -> None:
        self.total, self.desc, self.n = max(int(total), 0), desc, 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = all(
            bool(getattr(s, "isatty", lambda: False)()) for s in (sys.stdout, self.stream)
        )
        self.start = time.perf_counter()
        self._last = 0.0

    def update(self, n: int = 1, **postfix: float) -> None:
        self.n += n
        now = time.perf_counter()
        if not self.enabled or (now - self._last < 0.1 and self.n < self.total):
            return
        self._last = now
        width = 24
        done = int(width * self.n / self.total) if self.total else width
        extra = " ".join(f"{k}={v:.4g}" for k, v in postfix.items())
        self.stream.write(
            f"\r{self.desc} [{'#' * done}{'.' * (width - done)}] {self.n}/{self.total} "
            f"{now - self.start:.0f}s {extra}"
        )
        self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
