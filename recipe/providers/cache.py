"""The request cache: one SQLite file (WAL) shared by all runs, outside artifacts.

Each answer is committed as soon as it arrives, keyed by a hash of everything that determines it
(provider, model, API, the full messages or prompt, sampling parameters, template version), so a
run killed at any moment loses nothing finished and never pays for it twice. Batch ids are kept
too, so a re-run re-attaches to a batch job instead of submitting it again.

The cache is money: a damaged file (`PRAGMA quick_check` fails, or SQLite says "malformed") is
moved aside with a timestamp, every readable row is copied into a fresh cache, and the run goes on
saying how many answers were saved. A journal of requests in flight (`inflight`) tells a resumed
run which of its requests were sent before a crash without their answer being stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import struct
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    text TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    key TEXT PRIMARY KEY,
    batch_id TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS inflight (
    key TEXT PRIMARY KEY,
    started REAL NOT NULL
);
"""
SALVAGE_CHUNK = 256  # rows read per query when salvaging a damaged cache (a bad page loses one chunk)


def request_key(request: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a request's identity."""
    return hashlib.sha256(json.dumps(request, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _connect(path: Path) -> sqlite3.Connection:
    # One connection shared by threads behind a lock: SQLite serialises writers anyway.
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable against process kills
    db.executescript(_SCHEMA)
    return db


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
            for table, columns in (("answers", 5), ("batches", 3)):
                try:
                    top = old.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0] or 0
                except sqlite3.DatabaseError:
                    top = most_rows  # the rightmost pages are gone: walk every rowid there can be
                for low in range(0, top + 1, SALVAGE_CHUNK):
                    try:
                        rows = old.execute(
                            f"SELECT * FROM {table} WHERE rowid >= ? AND rowid < ?", (low, low + SALVAGE_CHUNK)
                        ).fetchall()
                    except sqlite3.DatabaseError:
                        continue
                    rows = [r for r in rows if len(r) == columns]
                    fresh.executemany(f"INSERT OR IGNORE INTO {table} VALUES ({', '.join('?' * columns)})", rows)
                    saved[table] += len(rows)
    except sqlite3.DatabaseError:
        pass  # nothing readable at all (the schema's page is gone)
    finally:
        copy.unlink(missing_ok=True)
    return saved


class RequestCache:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.salvaged: dict[str, Any] | None = None
        damage = _damage(self.path)
        if damage is None:
            try:
                self._db = _connect(self.path)
                return
            except sqlite3.DatabaseError as e:
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

    def get(self, key: str) -> tuple[str, int, int] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT text, prompt_tokens, completion_tokens FROM answers WHERE key = ?", (key,)
            ).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    def put(self, key: str, text: str, prompt_tokens: int, completion_tokens: int) -> None:
        """Store an answer and close its journal entry in one transaction: a kill between the two
        would otherwise leave an answered request journaled as in flight."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?)",
                    (key, text, prompt_tokens, completion_tokens, time.time()),
                )
                self._db.execute("DELETE FROM inflight WHERE key = ?", (key,))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # ---- the journal of requests in flight: what a crash (kill -9) makes us send again -------------
    def begin(self, key: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO inflight VALUES (?, ?)", (key, time.time()))

    def end(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM inflight WHERE key = ?", (key,))

    def take_inflight(self) -> set[str]:
        """Requests that were in flight when an earlier run died (sent, answer never stored); cleared."""
        with self._lock:
            query = "SELECT key FROM inflight WHERE key NOT IN (SELECT key FROM answers)"  # answered: not resent
            keys = {row[0] for row in self._db.execute(query)}
            self._db.execute("DELETE FROM inflight")
        return keys

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
