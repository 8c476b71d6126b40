"""JSON Lines: one line to one object, and byte ranges of big files read by worker processes.

Lines are parsed with orjson (about 4x faster than the standard library's json here). Big files are split at line ends into ranges that worker processes read in parallel. Line numbers
are only known relative to a range there, so a caller that gets an error from a worker re-reads
that range itself with `count_lines_before` to report the absolute line.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import forkserver, get_context, resource_tracker
from pathlib import Path
from typing import Any

import orjson

CHUNK_BYTES = 32 << 20  # size of the ranges handed to workers
POOL_MIN_BYTES = 64 << 20  # below this, starting workers costs more than it saves


class LineError(ValueError):
    """Why a line is not one JSON object; `rule` is the Together file-check rule it breaks."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


def json_object(raw: bytes) -> dict[str, Any]:
    """Parse one JSON Lines line, which must hold exactly one JSON object."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        if not raw.strip():  # tested only on failure: stripping every line copied every line
            raise LineError("line_type", "blank line (every line must hold one JSON object)") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise LineError("utf8", f"not valid UTF-8 ({bad.reason} at byte {bad.start})") from None
        try:  # what orjson refuses but Python's json (the SDK's parser) reads, e.g. an escaped lone surrogate
            value = json.loads(text)
        except ValueError:
            raise LineError("load_json", f"malformed JSON: {e.msg} (column {e.colno})") from None
    if not isinstance(value, dict):
        raise LineError("line_type", f"expected a JSON object, got {type(value).__name__}")
    return value


def encode_line(value: Any) -> bytes:
    """One JSON Lines line (UTF-8, keys in insertion order, no spaces)."""
    return orjson.dumps(value) + b"\n"


def worker_count(requested: int) -> int:
    return requested if requested > 0 else os.cpu_count() or 1


def worker_pool(
    workers: int, initializer: Callable[..., object] | None = None, initargs: tuple[Any, ...] = ()
) -> ProcessPoolExecutor:
    """Worker processes that die with the process that started them, also on kill -9 (they are the
    forkserver's children, so each watches the starter itself); `initializer(*initargs)` runs in each."""
    # forkserver: workers start from a clean process, not a fork of one whose threads may hold locks.
    # The server imports the reading and checking code once; workers fork from it with it loaded
    # (first recipe.data.forkserver: the server and its workers leave Ctrl-C and a stopped run's
    # leftovers to the run, without a traceback each).
    context = get_context("forkserver")
    context.set_forkserver_preload(["recipe.data.forkserver", "recipe.data.spool"])
    # The server is a new interpreter: a Ctrl-C reaching it while it starts, before
    # recipe.data.forkserver ignores it, ends it with "Fatal Python error: init_import_site" and a
    # traceback. It starts with SIGINT held (the mask outlives exec), as multiprocessing's resource
    # tracker starts; one meant for the run reaches the run once the server has started. The tracker
    # first: its start unblocks SIGINT in the thread that started it, whatever the mask was.
    resource_tracker.ensure_running()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return ProcessPoolExecutor(
        workers,
        mp_context=context,
        initializer=_start_worker,
        initargs=(os.getpid(), initializer, initargs),
    )


def _start_worker(pid: int, initializer: Callable[..., object] | None, initargs: tuple[Any, ...]) -> None:
    _watch_starter(pid)
    if initializer is not None:
        initializer(*initargs)


def _watch_starter(pid: int) -> None:
    """In a worker: exit as soon as process `pid` (the run that started the pool) is gone."""

    def watch() -> None:
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                pass
            time.sleep(0.5)

    threading.Thread(target=watch, name="watch-starter", daemon=True).start()


def jsonl_chunks(path: Path, chunk_bytes: int) -> list[tuple[int, int]]:
    """Byte ranges covering a JSON Lines file, each ending at a line end (for parallel reading)."""
    size = path.stat().st_size
    bounds = [0]
    with open(path, "rb") as f:
        while bounds[-1] + chunk_bytes < size:
            f.seek(bounds[-1] + chunk_bytes)
            f.readline()
            if f.tell() >= size:
                break
            bounds.append(f.tell())
    return list(zip(bounds, [*bounds[1:], size], strict=True))


def read_jsonl_range(path: Path, start: int, end: int, first_line: int) -> Iterator[tuple[bytes, str]]:
    """Yield (raw line, "file:line") for the lines in bytes [start, end) of a JSON Lines file."""
    name = str(path)  # formatting a Path for every line cost 0.3 us more than a str
    with open(path, "rb", buffering=1 << 20) as f:
        f.seek(start)
        position = start
        for lineno, raw in enumerate(f, first_line):
            if position >= end:
                break
            position += len(raw)
            yield raw, f"{name}:{lineno}"


def count_lines_before(path: Path, offset: int) -> int:
    """Newlines in the first `offset` bytes of a file."""
    count = 0
    with open(path, "rb") as f:
        while offset > 0 and (block := f.read(min(1 << 24, offset))):
            count += block.count(b"\n")
            offset -= len(block)
    return count
