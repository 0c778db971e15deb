"""A process pool for the data tools (``speechlab data synth``, ``speechlab data farfield``):
:func:`run_parallel` runs a function over tasks in ``spawn``-ed workers, with a progress bar,
yielding results as they finish."""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from speechlab.progress import progress as progress_bar


def init_worker() -> None:
    """Pool workers compute with one thread each (torch reads ``OMP_NUM_THREADS`` when it is
    first imported, which is only when resampling is needed)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def run_parallel(
    tasks: Sequence[Any],
    fn: Callable[[Any], Any],
    jobs: int,
    desc: str,
    total: int,
    initial: int = 0,
    progress: bool = True,
    initializer: Callable[..., None] | None = init_worker,
    initargs: tuple = (),
) -> Iterator[Any]:
    """Run ``fn`` over ``tasks`` in a pool of ``jobs`` processes, yielding results as they
    finish (in-process, without ``initializer``, when ``jobs <= 1`` or there is at most one
    task), with a progress bar (:func:`speechlab.progress.progress`: tqdm on a terminal, a line
    every 30 s in a log) over ``total`` items of which ``initial`` are already done.

    The pool uses the ``spawn`` start method: forking a process that holds torch's or tqdm's
    threads is unsafe. A script that calls this must guard its entry point with
    ``if __name__ == "__main__":``."""
    bar = progress_bar(total=total, initial=initial, desc=desc, unit="utt", disable=not progress)
    try:
        if jobs <= 1 or len(tasks) <= 1:
            for task in tasks:
                yield fn(task)
                bar.update()
        else:
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(min(jobs, len(tasks)), initializer, initargs) as pool:
                chunk = max(1, min(16, len(tasks) // (4 * jobs)))
                for result in pool.imap_unordered(fn, tasks, chunksize=chunk):
                    yield result
                    bar.update()
    finally:
        bar.close()
