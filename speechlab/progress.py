"""Progress reports that suit a terminal and a log file alike.

On a terminal a tqdm bar redraws itself in place; written to a file or a pipe (CI, SLURM,
``nohup``, ``| tee``) every redraw becomes a line of its own, and a long run buries its log under
them. So:

* :func:`progress` -- the one progress helper of speechlab's tools (``data synth``,
  ``data farfield``, ``grams refine``, ``decode``): a tqdm bar when the stream is a terminal;
  otherwise a :class:`LineProgress`, which writes one plain line at most every ``interval``
  seconds and one summary line at the end.
* :class:`speechlab.cli.lightning.LogProgressBar` -- the same for Lightning (kept there: this
  module does not import Lightning, so the tools start fast).

``SPEECHLAB_PROGRESS_INTERVAL`` (seconds, default 30) sets the interval of both.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

DEFAULT_INTERVAL = 30.0


def default_interval() -> float:
    """``$SPEECHLAB_PROGRESS_INTERVAL`` seconds, else 30."""
    return float(os.environ.get("SPEECHLAB_PROGRESS_INTERVAL", DEFAULT_INTERVAL))


def is_terminal(stream: IO[str] | None) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # closed stream
        return False


def rate(n: float, seconds: float, unit: str) -> str:
    return f"{n / seconds:.1f} {unit}/s" if seconds > 0 else f"- {unit}/s"


class LineProgress:
    """tqdm's counting API (``update``, ``close``, iteration, context manager) for streams that
    are not terminals: a line ``desc: n/total unit (p%), t s, r unit/s`` at most every
    ``interval`` seconds while work advances, and a final one from :meth:`close`."""

    def __init__(self, iterable: Iterable[Any] | None = None, total: int | None = None,
                 desc: str = "", unit: str = "it", initial: int = 0,
                 interval: float | None = None, file: IO[str] | None = None,
                 disable: bool = False) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.initial = initial
        self.interval = default_interval() if interval is None else interval
        self.file = file
        self.disable = disable
        self.lines = 0
        self._start = self._last = time.monotonic()
        self._closed = False

    def _write(self) -> None:
        elapsed = time.monotonic() - self._start
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        print(f"{self.desc}: {done} {self.unit}{pct}, {elapsed:.1f} s, "
              f"{rate(self.n - self.initial, elapsed, self.unit)}",
              file=self.file or sys.stderr, flush=True)
        self.lines += 1

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if not self.disable and now - self._last >= self.interval:
            self._last = now
            self._write()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.disable:
            self._write()

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None, "LineProgress was given no iterable"
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "it", initial: int = 0, disable: bool = False,
             file: IO[str] | None = None) -> Any:
    """A progress counter over ``iterable`` (or ``total`` items, advanced with ``update``):
    tqdm when ``file`` (default stderr) is a terminal, else :class:`LineProgress`."""
    stream = file or sys.stderr
    if is_terminal(stream):
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial,
                    disable=disable, file=file, dynamic_ncols=True)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial,
                        disable=disable, file=file)
