"""The request cache: one SQLite file (WAL) shared by all runs, outside artifacts.

Each answer is committed as soon as it arrives, keyed by a hash of everything that determines it
(provider, model, API, the full messages or prompt, sampling parameters, template version), so a
run killed at any moment loses nothing finished and never pays for it twice. Batch ids are kept
too, so a re-run re-attaches to a batch job instead of submitting it again.

The cache is money: a damaged file (`PRAGMA quick_check` fails, or SQLite says "malformed") is
moved aside with a timestamp, every readable row is copied, row by row, into a fresh cache, and the
run goes on saying how many answers were saved.

Requests in flight are claimed in the cache before they are sent (`inflight`: the key and who sent
it: host, pid and the process's start time), so two processes sharing one cache (two sweeps, two
terminals) never pay for the same answer: the second waits for the first's answer, or takes the
request over when the first has died (kill -9, a crash; a pid reused by another process does not
count as alive). A claim from another host cannot be checked and is trusted for `FOREIGN_CLAIM_S`.
Each take-over of a dead process's claim is counted per request (`resent`), across any number of
crashes, so the manifest can say how many requests were sent again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import sqlite3
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recipe.errors import RecipeError
from recipe.store import pid_alive

log = logging.getLogger(__name__)
# Each table as a new cache makes it; a cache written by an older release gains the columns it
# lacks (_COLUMNS) when it is opened.
_TABLES = (
    """CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    text TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    created REAL NOT NULL,
    finish TEXT
)""",
    """CREATE TABLE IF NOT EXISTS batches (
    key TEXT PRIMARY KEY,
    batch_id TEXT NOT NULL,
    created REAL NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS inflight (
    key TEXT PRIMARY KEY,
    started REAL NOT NULL,
    owner TEXT,
    sent INTEGER NOT NULL DEFAULT 1
)""",
    """CREATE TABLE IF NOT EXISTS resent (
    key TEXT PRIMARY KEY,
    times INTEGER NOT NULL
)""",
)
_COLUMNS = {
    "answers": {"finish": "TEXT"},  # why generation stopped (stop, length)
    # a cache written before claims: its journal rows have no owner (dead), and had been sent
    "inflight": {"owner": "TEXT", "sent": "INTEGER NOT NULL DEFAULT 1"},
}
SALVAGE_CHUNK = 256  # rows read per query when salvaging a damaged cache (a failing chunk is read row by row)
LOCK_WAIT_S = 60.0  # how long opening the cache waits for another process holding it
FOREIGN_CLAIM_S = 3600.0  # a claim made on another host is trusted this long (its process cannot be checked)


def request_key(request: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a request's identity."""
    return hashlib.sha256(json.dumps(request, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _connect(path: Path) -> sqlite3.Connection:
    """The cache's connection, its tables made or brought up to date. Processes opening one cache
    at the same moment (a sweep's jobs) take turns: the tables are checked and changed inside one
    write transaction, so none sees a column another has just added as missing."""
    # One connection shared by threads behind a lock: SQLite serialises writers anyway.
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=LOCK_WAIT_S)
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:  # switching to WAL takes the file to itself, and SQLite does not wait for that
        try:
            db.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable against process kills
    db.execute("BEGIN IMMEDIATE")
    try:
        for table in _TABLES:
            db.execute(table)
        for table, wanted in _COLUMNS.items():
            columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            for column, kind in wanted.items():
                if column not in columns:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        db.close()
        raise
    return db


def _start_ticks(pid: int) -> str | None:
    """When process `pid` started (Linux: clock ticks since boot, /proc/<pid>/stat field 22)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def this_process() -> str:
    """Who claims a request: host, pid and start time (so a reused pid is not mistaken for us)."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid) or '-'}"


def alive(owner: str | None, started: float) -> bool:
    """Whether the process that claimed a request may still be sending it."""
    if not owner:
        return False
    host, pid_text, ticks = owner.rsplit(":", 2)
    if host != socket.gethostname():
        return time.time() - started < FOREIGN_CLAIM_S
    pid = int(pid_text)
    now = _start_ticks(pid)
    if now is not None or Path("/proc").is_dir():
        return now is not None and (ticks == "-" or now == ticks)
    return pid_alive(pid)


@dataclass(frozen=True)
class Stored:
    """An answer as the cache keeps it."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish: str | None = None  # the server's finish_reason: "length" is an answer cut at max_tokens


_ANSWER = "SELECT text, prompt_tokens, completion_tokens, finish FROM answers WHERE key = ?"


@dataclass(frozen=True)
class Claim:
    """What `claim` found: the stored answer, or the right to send the request (`mine`; `taken_over`
    when a dead process had sent it), or neither: another live process or thread is sending it."""

    answer: Stored | None = None
    mine: bool = False
    taken_over: bool = False


def _damage(path: Path) -> str | None:
    """What is wrong with the cache file (None: nothing; a new file is fine)."""
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            result = db.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            db.close()
    except sqlite3.DatabaseError as e:
        return str(e)
    return None if result == "ok" else str(result)


def _readable_copy(damaged: Path) -> tuple[Path, int]:
    """A copy of a damaged file that SQLite will open: whole pages only, and the header's page count
    set to what is really there (a truncated file otherwise fails even to read its schema)."""
    data = bytearray(damaged.read_bytes())
    page_size = struct.unpack(">H", data[16:18])[0] if len(data) >= 100 else 4096
    page_size = 65536 if page_size == 1 else page_size or 4096
    pages = len(data) // page_size
    if len(data) >= 100:
        data[28:32] = struct.pack(">I", pages)
    copy = damaged.with_name(damaged.name + ".readable")
    copy.write_bytes(bytes(data[: pages * page_size]))
    return copy, pages * (page_size // 8)  # no table can hold more rows than that


def _salvage(damaged: Path, fresh: sqlite3.Connection) -> dict[str, int]:
    """Copy every readable row of the damaged file's tables into `fresh`, a chunk of rowids at a
    time, skipping chunks that sit on unreadable pages; rows saved per table."""
    saved = {"answers": 0, "batches": 0}
    copy, most_rows = _readable_copy(damaged)
    try:
        old = sqlite3.connect(f"file:{copy}?immutable=1", uri=True)
        with contextlib.closing(old):
            for table, columns in (("answers", 6), ("batches", 3)):
                try:
                    top = old.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0] or 0
                except sqlite3.DatabaseError:
                    top = most_rows  # the rightmost pages are gone: walk every rowid there can be
                for low in range(0, top + 1, SALVAGE_CHUNK):
                    span = range(low, low + SALVAGE_CHUNK)
                    try:
                        got = old.execute(
                            f"SELECT rowid, * FROM {table} WHERE rowid >= ? AND rowid < ?", (low, low + SALVAGE_CHUNK)
                        ).fetchall()
                    except sqlite3.DatabaseError:
                        got = []
                    if len(got) < SALVAGE_CHUNK:  # an error or a gap (a damaged page hides rows): row by row
                        seen = {r[0] for r in got}
                        for rowid in (i for i in span if i not in seen):
                            with contextlib.suppress(sqlite3.DatabaseError):
                                got += old.execute(f"SELECT rowid, * FROM {table} WHERE rowid = ?", (rowid,)).fetchall()
                    rows = [r[1:] for r in got]
                    rows = [r + (None,) * (columns - len(r)) for r in rows if len(r) in (columns - 1, columns)]
                    fresh.executemany(f"INSERT OR IGNORE INTO {table} VALUES ({', '.join('?' * columns)})", rows)
                    saved[table] += len(rows)
    except sqlite3.DatabaseError:
        pass  # nothing readable at all (the schema's page is gone)
    finally:
        copy.unlink(missing_ok=True)
    return saved


# The default cache was named for Distill's teacher before Test's models shared it: a cache under the
# old name beside the new default is copied to the new name once (the old file is left as it was).
LEGACY_NAMES = {"requests.sqlite": "teacher.sqlite"}


def adopt_legacy(path: Path) -> bool:
    """Copy a cache kept under its old name (`teacher.sqlite`) to `path` when `path` does not exist
    yet: consistently (SQLite's backup API reads it as one transaction), under a lock, and into
    place by a rename, so two processes starting at once end with one cache. True when copied."""
    old_name = LEGACY_NAMES.get(path.name)
    legacy = path.with_name(old_name) if old_name else None
    if legacy is None or path.exists() or not legacy.exists():
        return False
    import fcntl

    with open(path.with_name(f".{path.name}.adopt.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():  # another process copied it while this one waited
            return False
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        source, target = sqlite3.connect(legacy), sqlite3.connect(partial)
        try:
            source.backup(target)
        finally:
            source.close()
            target.close()
        os.replace(partial, path)
    log.warning("the request cache %s is now %s (copied; the old file can be deleted)", legacy, path)
    return True


class RequestCache:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        adopt_legacy(self.path)
        self._lock = threading.Lock()
        self.salvaged: dict[str, Any] | None = None
        damage = _damage(self.path)
        if damage is None:
            try:
                self._db = _connect(self.path)
                return
            except sqlite3.OperationalError as e:  # locked past the wait, unwritable: not damage
                raise RecipeError(f"the request cache {self.path} could not be opened: {e}") from None
            except sqlite3.DatabaseError as e:  # malformed, not a database
                damage = str(e)
        # Every answer in here was paid for: move the damaged file aside, keep what can be read.
        aside = self.path.with_name(f"{self.path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        for suffix in ("", "-wal", "-shm"):
            part = Path(f"{self.path}{suffix}")
            if part.exists():
                os.replace(part, Path(f"{aside}{suffix}"))
        self._db = _connect(self.path)
        saved = _salvage(aside, self._db)
        self.salvaged = {"damage": damage, "moved_to": str(aside), **saved}
        log.warning(
            "the request cache %s was damaged (%s): moved to %s; %d answers and %d batch ids were readable and "
            "are saved in a fresh cache (what was lost will be asked again)",
            self.path,
            damage,
            aside,
            saved["answers"],
            saved["batches"],
        )

    def get(self, key: str) -> Stored | None:
        with self._lock:
            row = self._db.execute(_ANSWER, (key,)).fetchone()
        return None if row is None else Stored(*row)

    def put(self, key: str, text: str, prompt_tokens: int, completion_tokens: int, finish: str | None = None) -> None:
        """Store an answer and close its claim in one transaction: a kill between the two would
        otherwise leave an answered request claimed."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO answers (key, text, prompt_tokens, completion_tokens, created, finish) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (key, text, prompt_tokens, completion_tokens, time.time(), finish),
                )
                self._db.execute("DELETE FROM inflight WHERE key = ?", (key,))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # ---- claims on requests in flight: one sender per request, across processes and crashes ----------
    def claim(self, key: str) -> Claim:
        """The stored answer; or the right to send the request, claimed now (taken over when the
        process that claimed it is dead: counted in `resent`); or neither (someone alive is asking)."""
        me = this_process()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(_ANSWER, (key,)).fetchone()
                if row is not None:
                    return Claim(answer=Stored(*row))
                held = self._db.execute("SELECT owner, started, sent FROM inflight WHERE key = ?", (key,)).fetchone()
                if held is not None and (held[0] == me or alive(held[0], held[1])):
                    return Claim()
                self._db.execute(
                    "INSERT OR REPLACE INTO inflight (key, started, owner, sent) VALUES (?, ?, ?, 0)",
                    (key, time.time(), me),
                )
                if held is not None and held[2]:  # a dead process had sent it: sending it again is a re-send
                    self._db.execute(
                        "INSERT INTO resent VALUES (?, 1) ON CONFLICT(key) DO UPDATE SET times = times + 1", (key,)
                    )
                return Claim(mine=True, taken_over=held is not None)
            finally:
                self._db.execute("COMMIT")

    def mark_sent(self, key: str) -> None:
        """The claimed request is about to leave: from now on a crash makes its next sender a re-send."""
        with self._lock:
            self._db.execute("UPDATE inflight SET sent = 1 WHERE key = ? AND owner = ?", (key, this_process()))

    def release(self, key: str) -> None:
        """Give up a claim without an answer (the request failed): the next asker sends it."""
        with self._lock:
            self._db.execute("DELETE FROM inflight WHERE key = ? AND owner = ?", (key, this_process()))

    def resent_count(self, keys: set[str]) -> int:
        """How many times these requests were sent again after the process sending them died."""
        total, ordered = 0, sorted(keys)
        with self._lock:
            for i in range(0, len(ordered), 500):
                chunk = ordered[i : i + 500]
                query = f"SELECT COALESCE(SUM(times), 0) FROM resent WHERE key IN ({', '.join('?' * len(chunk))})"
                total += self._db.execute(query, chunk).fetchone()[0]
        return int(total)

    def batch_id(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT batch_id FROM batches WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def put_batch(self, key: str, batch_id: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO batches VALUES (?, ?, ?)", (key, batch_id, time.time()))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
