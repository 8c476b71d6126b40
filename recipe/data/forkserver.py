"""Imported by multiprocessing's forkserver only (recipe.data.jsonl.worker_pool preloads it first),
never by the process that runs a command. It leaves stopping to the run:

- Ctrl-C, which a terminal sends to the whole process group, is ignored by the server and so by
  every worker forked from it (the forkserver hands its children the SIGINT disposition it had
  before it began serving): the run stops them, and each would otherwise print a KeyboardInterrupt
  traceback. The interpreter's own start, before this module loads, is covered too: the run starts
  the server with SIGINT blocked (recipe.data.jsonl.worker_pool), and here, ignored, it is let
  through again (a Ctrl-C that arrived meanwhile is dropped: it was the run's to act on).
- When a run is stopped (Ctrl-C, SIGTERM) while its pool is starting a worker, the run unlinks the
  pool's named semaphores on its way out; the worker, forked a moment later, fails to open them in
  multiprocessing's own start-up code and the forkserver prints that traceback on the terminal the
  run just printed its one line on: that one is dropped. Any other failure to start is printed.
"""

from __future__ import annotations

import signal
import sys
from types import TracebackType

signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

_default = sys.excepthook


def _starter_gone(kind: type[BaseException], tb: TracebackType | None) -> bool:
    """A semaphore of the run's pool no longer exists, found in multiprocessing's start-up code."""
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    ours = any("/recipe/" in name for name in frames)
    return (
        issubclass(kind, FileNotFoundError)
        and not ours
        and bool(frames)
        and frames[-1].endswith("multiprocessing/synchronize.py")
    )


def _excepthook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    if not _starter_gone(kind, tb):
        _default(kind, value, tb)


sys.excepthook = _excepthook
