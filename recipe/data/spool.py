"""Mix's reading and writing: spool every source record once, keep a small row per record
(recipe/data/selection.py selects on those rows), write the chosen lines out of the spools.

Reading (`read_unit`, in worker processes for byte ranges of JSON Lines files) normalises each
record to messages and appends two lines to the unit's spool file: the record rendered in the
mixture's output format (the upload line), then its canonical conversation line (`messages`,
`component`, `source`, `stratum`). Only (offset, lengths, tokens, stratum, hash) stay in memory.
Writing (`write_spooled`) gathers chosen lines in order, block by block, on the pool's workers,
which run the Together file check on each block and write it at its place in the output files
while this process hashes the finished blocks in order.
"""

from __future__ import annotations

import hashlib
import os
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import xxhash
from tqdm import tqdm

from recipe.data import templates
from recipe.data.contamination import Index
from recipe.data.filecheck import check_block
from recipe.data.jsonl import count_lines_before, encode_line, read_jsonl_range
from recipe.data.selection import Records, take
from recipe.data.sources import DataError, parse_line, rename_columns, to_messages
from recipe.data.tokens import counter_for
from recipe.errors import RecipeError
from recipe.store import note_sha256

BLOCK_LINES = 8192  # output lines built (and checked) per task while writing


@dataclass(frozen=True)
class SpoolUnit:
    """A piece of reading work: a byte range of a JSON Lines file (`path`) or a whole source,
    whose formatted lines go to its `spool` file."""

    comp_id: int
    component: str
    source: str
    kind: str
    text_template: str
    fmt: str
    template: str
    token_counter: str
    strata_key: str | None
    spool: str
    path: str | None = None
    columns: tuple[tuple[str, str], ...] = ()  # (ours, theirs): the source's `columns`
    start: int = 0
    end: int = 0


def read_unit(unit: SpoolUnit, lines: Iterator[tuple[Any, str]] | None = None, progress: Any = None) -> dict[str, Any]:
    """Validate, format and spool every record of a unit; return per-record arrays (spool offset,
    length, tokens, stratum, hash).

    Runs in worker processes for byte ranges (`lines` None: line numbers there are relative to the
    range, so the caller re-reads a failing range itself to report the absolute line)."""
    if lines is None:
        assert unit.path is not None
        lines = read_jsonl_range(Path(unit.path), unit.start, unit.end, 1)
    count_tokens = counter_for(unit.token_counter, unit.fmt)
    kind, text_template, fmt, template, strata_key = (
        unit.kind,
        unit.text_template,
        unit.fmt,
        unit.template,
        unit.strata_key,
    )
    offset, length, canonical_length = array("q"), array("q"), array("q")
    tokens, stratum = array("q"), array("i")
    origin = (
        b',"component":' + orjson.dumps(unit.component) + b',"source":' + orjson.dumps(unit.source) + b',"stratum":'
    )
    hashes = array("Q")
    content_hash = xxhash.xxh3_64_intdigest
    labels: dict[Any, int] = {}
    position = records = skipped = 0
    with open(unit.spool, "wb", buffering=1 << 20) as spool:
        for raw, where in lines:
            record = parse_line(raw, where) if isinstance(raw, bytes) else raw
            if unit.columns:
                record = rename_columns(record, dict(unit.columns), where, f"sources.{unit.source}")
            records += 1
            if progress is not None and records % 1000 == 0:
                progress.update(1000)
            messages = to_messages(record, kind, where, text_template)
            if messages is None:
                skipped += 1
                continue
            example = templates.example(messages, fmt, template)
            line = encode_line(example)
            if strata_key is None:
                label = None
            elif strata_key == "num_documents":
                prompt = messages[-2]["content"]
                label = prompt.count("\nDocument [") + prompt.startswith("Document [")
            elif strata_key == "num_turns":
                label = sum(m["role"] == "user" for m in messages)
            elif strata_key in record:
                label = record[strata_key]
                if not isinstance(label, (str, int, float, bool)):
                    raise DataError(
                        f"{where}: field {strata_key!r} (mix.components.{unit.component}.strata) must be a scalar"
                    )
            else:
                raise DataError(
                    f"{where}: missing field {strata_key!r} named by mix.components.{unit.component}.strata"
                )
            # The canonical line (what trainers and Test read) follows the upload line in the spool.
            encoded = orjson.dumps(messages)
            canonical = b'{"messages":' + encoded + origin + orjson.dumps(label) + b"}\n"
            offset.append(position)
            length.append(len(line))
            canonical_length.append(len(canonical))
            position += len(line) + len(canonical)
            tokens.append(count_tokens(example))
            stratum.append(labels.setdefault(label, len(labels)))
            # Dedupe by content: xxh3 (64 bits: a chance collision among 10M records ~3e-6) takes 0.2 us
            # where sha256 took 2-3 us (mostly its per-call setup).
            hashes.append(content_hash(encoded))
            spool.write(line)
            spool.write(canonical)
    if progress is not None:
        progress.update(records % 1000)
    return {
        "records": records,
        "skipped": skipped,
        "labels": list(labels),
        "offset": np.frombuffer(offset, dtype=np.int64),
        "length": np.frombuffer(length, dtype=np.int64),
        "canonical_length": np.frombuffer(canonical_length, dtype=np.int64),
        "tokens": np.frombuffer(tokens, dtype=np.int64),
        "stratum": np.frombuffer(stratum, dtype=np.int32),
        "hash": np.frombuffer(hashes, dtype=np.uint64).view(np.int64),
    }


def _read_in_spool_order(
    spools: list[str], unit_ids: np.ndarray, starts: np.ndarray, sizes: np.ndarray
) -> Iterator[tuple[int, bytes]]:
    """(place, bytes) of each range `sizes[place]` bytes at `starts[place]` of spool `unit_ids[place]`,
    read in spool order: a pread after the one before it costs ~1.6 us, one anywhere ~2.4 us."""
    order = np.lexsort((starts, unit_ids))
    fds: dict[int, int] = {}
    try:
        for place, unit_id, start, size in zip(
            order.tolist(), unit_ids[order].tolist(), starts[order].tolist(), sizes[order].tolist(), strict=True
        ):
            fd = fds.get(unit_id)
            if fd is None:
                fd = fds[unit_id] = os.open(spools[unit_id], os.O_RDONLY)
            yield place, os.pread(fd, size, start)
    finally:
        for fd in fds.values():
            os.close(fd)


def write_block(
    spools: list[str],
    unit_ids: np.ndarray,
    offsets: np.ndarray,
    lengths: np.ndarray,
    canonical_lengths: np.ndarray,
    check: tuple[Path, int, str] | None,
    targets: tuple[tuple[str, int], tuple[str, int]],
) -> int:
    """Gather these records' upload and canonical lines (adjacent in the spool: one pread each, not
    mmap: mapped spool pages would count as the process's memory), in this order, run the file check
    on the upload lines, and write both blocks where they go in the two output files (`targets`:
    (path, byte offset) each; a worker writes its own blocks, so they never travel through a pipe).
    Returns the samples checked."""
    upload: list[bytes] = [b""] * len(offsets)
    canonical: list[bytes] = [b""] * len(offsets)
    upload_lengths = lengths.tolist()
    for place, both in _read_in_spool_order(spools, unit_ids, offsets, lengths + canonical_lengths):
        length = upload_lengths[place]
        upload[place] = both[:length]
        canonical[place] = both[length:]
    block = b"".join(upload)
    checked = check_block(block, *check) if check else 0
    for (path, at), data in zip(targets, (block, b"".join(canonical)), strict=True):
        fd = os.open(path, os.O_WRONLY)
        try:
            view = memoryview(data)
            while view:  # pwrite may write less than asked
                written = os.pwrite(fd, view, at)
                view, at = view[written:], at + written
        finally:
            os.close(fd)
    return checked


def write_spooled(
    paths: tuple[Path, Path],
    order: np.ndarray,
    spools: list[str],
    records: Records,
    check_format: str | None,
    pool: Executor | None,
    workers: int,
    progress: bool,
) -> tuple[str, str, int, int]:
    """Write the upload lines and the canonical lines of records `order` (rows of `records`) to
    `paths`, block by block: each block's place in both files is known from the line lengths, so the
    pool's workers gather, check (`check_format`) and write blocks a few ahead while this process
    hashes the finished ones in order. (upload sha256, canonical sha256, checked samples, upload bytes)."""
    upload_at = np.concatenate(([0], np.cumsum(records.length[order])))
    canonical_at = np.concatenate(([0], np.cumsum(records.canonical_length[order])))
    digests = hashlib.sha256(), hashlib.sha256()
    samples = 0
    pending: deque[tuple[int, Future[int]]] = deque()
    bar = tqdm(desc=f"mix: write {paths[0].name}", total=len(order), unit=" rec", disable=not progress)
    for path in paths:
        path.write_bytes(b"")
    readers = [os.open(path, os.O_RDONLY) for path in paths]

    def absorb(first: int, checked: int) -> None:
        """Hash block `first` of both files, now written, in file order."""
        nonlocal samples
        last = min(first + BLOCK_LINES, len(order))
        for digest, fd, at in zip(digests, readers, (upload_at, canonical_at), strict=True):
            start, end = int(at[first]), int(at[last])
            while start < end:
                chunk = os.pread(fd, min(end - start, 1 << 24), start)
                if not chunk:
                    raise RecipeError(f"{paths[0].parent}: a written block is missing (bytes {start}-{end})")
                digest.update(chunk)
                start += len(chunk)
        samples += checked
        bar.update(last - first)

    try:
        for first in range(0, len(order), BLOCK_LINES):
            rows = order[first : first + BLOCK_LINES]
            check = (paths[0], first + 1, check_format) if check_format else None
            lengths = records.length[rows], records.canonical_length[rows]
            targets = ((str(paths[0]), int(upload_at[first])), (str(paths[1]), int(canonical_at[first])))
            task = (spools, records.unit[rows], records.offset[rows], *lengths, check, targets)
            if pool is None:
                absorb(first, write_block(*task))
                continue
            pending.append((first, pool.submit(write_block, *task)))
            if len(pending) > 2 * workers:  # bounded read-ahead: the hashing follows a few blocks behind
                done, future = pending.popleft()
                absorb(done, future.result())
        while pending:
            done, future = pending.popleft()
            absorb(done, future.result())
    except BaseException:
        for _, future in pending:
            future.cancel()
        raise
    finally:
        for fd in readers:
            os.close(fd)
        bar.close()
    for path, digest in zip(paths, digests, strict=True):
        note_sha256(path, digest.hexdigest())  # the artifact's inventory takes these, not a second read
    return digests[0].hexdigest(), digests[1].hexdigest(), samples, int(upload_at[-1])


def read_all(
    units: list[SpoolUnit],
    pool: Executor | None,
    whole: Callable[[SpoolUnit], Iterator[tuple[Any, str]]],
    show_progress: bool,
) -> list[dict[str, Any]]:
    """Read every unit (byte ranges on the pool when there is one, whole sources through `whole`);
    results in unit order."""
    progress = tqdm(desc="mix: read", unit=" rec", disable=not show_progress, mininterval=0.5)
    futures = {id(u): pool.submit(read_unit, u) for u in units if u.path is not None} if pool else {}
    next_line: dict[str, int] = {}  # per file, the line number where the next unit starts
    results: list[dict[str, Any]] = []
    try:
        for unit in units:
            if unit.path is None:
                result = read_unit(unit, whole(unit), progress)
            elif id(unit) in futures:
                try:
                    result = futures[id(unit)].result()
                except RecipeError:  # read it again here, to report the error's absolute line
                    first = count_lines_before(Path(unit.path), unit.start) + 1
                    read_unit(unit, read_jsonl_range(Path(unit.path), unit.start, unit.end, first))
                    raise
                progress.update(result["records"])
            else:
                first = next_line.get(unit.path, 1)
                result = read_unit(unit, read_jsonl_range(Path(unit.path), unit.start, unit.end, first), progress)
                next_line[unit.path] = first + result["records"]
            results.append(result)
    except BaseException:
        for future in futures.values():
            future.cancel()
        raise
    finally:
        progress.close()
    return results


def merge_units(
    units: list[SpoolUnit], results: list[dict[str, Any]], components: list[str], sources: list[str]
) -> tuple[Records, dict[str, dict[str, Any]]]:
    """Concatenate the units' per-record arrays into one record set (each component one stratum
    numbering); per component, the records read and skipped."""
    strata: tuple[dict[Any, int], ...] = tuple({} for _ in components)
    stats = {
        name: {"source": source, "records": 0, "skipped": 0} for name, source in zip(components, sources, strict=True)
    }
    parts = []
    for unit_id, (unit, result) in enumerate(zip(units, results, strict=True)):
        ids = strata[unit.comp_id]
        remap = np.array([ids.setdefault(label, len(ids)) for label in result["labels"]], dtype=np.int32)
        n = len(result["offset"])
        part = {k: result[k] for k in ("offset", "length", "canonical_length", "tokens", "hash")}
        part["stratum"] = remap[result["stratum"]] if n else np.zeros(0, np.int32)
        part["component"] = np.full(n, unit.comp_id, dtype=np.int32)
        part["unit"] = np.full(n, unit_id, dtype=np.int32)
        parts.append(part)
        stats[unit.component]["records"] += result["records"]
        stats[unit.component]["skipped"] += result["skipped"]
    return Records.concatenate(parts, strata), stats


def read_texts(spools: list[str], records: Records, rows: np.ndarray) -> list[list[str]]:
    """The message texts of these records (from their canonical lines), for content checks."""
    texts: list[list[str]] = [[] for _ in range(len(rows))]
    starts = records.offset[rows] + records.length[rows]  # the canonical line follows the upload line
    for place, line in _read_in_spool_order(spools, records.unit[rows], starts, records.canonical_length[rows]):
        texts[place] = [m["content"] for m in orjson.loads(line)["messages"]]
    return texts


CHECK_ROWS = 2048  # records read and checked per batch at most: memory stays a few MB whatever the mixture
CHECK_BYTES = 4 << 20  # ... and about this much of their conversation lines (long records: fewer rows)
PARALLEL_BYTES = 16 << 20  # below this much to check, this process beats a round trip to the workers
_SCANNERS: dict[str, Any] = {}  # in a worker: index file -> the object whose scan(texts) finds contamination


def _scan_rows(spools: list[str], records: Records, index_file: str) -> list[Any]:
    scanner = _SCANNERS.get(index_file)
    if scanner is None:  # this worker's first batch: load the index once
        scanner = _SCANNERS[index_file] = Index.load(Path(index_file))
    return scanner.scan(read_texts(spools, records, np.arange(len(records))))


class ContentCheck:
    """Records checked lazily, once each, by `checker.scan` (texts -> findings per record, empty =
    clean), in batches of CHECK_ROWS / CHECK_BYTES; large checks on the reading's worker `pool`,
    which loads the checker's index (its scan is the same function) from the file that
    `checker.write_index` puts beside the spools, once per worker."""

    def __init__(self, spools: list[str], records: Records, checker: Any, pool: Executor | None = None) -> None:
        self.spools, self.records, self.checker, self.pool = spools, records, checker, pool
        self.checked = np.zeros(len(records), dtype=bool)
        self.bad = np.zeros(len(records), dtype=bool)
        self.found: dict[int, Any] = {}  # record -> what the scan found
        self._index_file: str | None = None

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        """Which of `rows` are bad (checking those not checked yet)."""
        todo = rows[~self.checked[rows]]
        size = int(self.records.canonical_length[todo].sum())
        # Batches by rows and by bytes, and the pool by bytes: 38K of the seed's long examples
        # (533 MB) are worth the workers; a row count alone kept them in this process.
        step = max(1, min(CHECK_ROWS, CHECK_BYTES * len(todo) // max(size, 1)))
        chunks = [todo[i : i + step] for i in range(0, len(todo), step)]
        if self.pool is not None and size >= PARALLEL_BYTES:
            if self._index_file is None:
                self._index_file = f"{self.spools[0]}.index.npz"
                self.checker.write_index(Path(self._index_file))
            index_file = self._index_file
            tasks = [self.pool.submit(_scan_rows, self.spools, self.records.rows(c), index_file) for c in chunks]
            results: Iterator[list[Any]] = (task.result() for task in tasks)
            self.checker.checked += len(todo)
        else:
            results = (self.checker.scan(read_texts(self.spools, self.records, c)) for c in chunks)
        for chunk, found_in_chunk in zip(chunks, results, strict=True):
            for row, found in zip(chunk.tolist(), found_in_chunk, strict=True):
                if found:
                    self.found[row] = found
                    self.bad[row] = True
        self.checked[todo] = True
        return self.bad[rows]

    def close(self) -> None:
        if self._index_file is not None:
            Path(self._index_file).unlink(missing_ok=True)
            self._index_file = None

    def first_clean(self, perm: np.ndarray, size: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray, int | None]:
        """Drop bad records from the draw order `perm` until its leading records that reach
        `target` (see `take`) are all clean: each bad one is replaced by the next in the order."""
        while True:
            n = take(size, target)
            head = len(perm) if n is None else n
            bad = self(perm[:head])
            if not bad.any():
                return perm, size, n
            perm = np.concatenate([perm[:head][~bad], perm[head:]])
            size = np.concatenate([size[:head][~bad], size[head:]])
