"""The teacher's request cache: one SQLite file (WAL) shared by all runs, outside artifacts.

Each answer is committed as soon as it arrives, keyed by a hash of everything that determines it
(provider, model, API, the full messages or prompt, sampling parameters, template version), so a
run killed at any moment loses nothing finished and never pays for it twice. Batch ids are kept
too, so a re-run re-attaches to a batch job instead of submitting it again.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

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
"""


def request_key(request: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a request's identity."""
    return hashlib.sha256(json.dumps(request, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class RequestCache:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by threads behind a lock: SQLite serialises writers anyway.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable against process kills
            self._db.executescript(_SCHEMA)

    def get(self, key: str) -> tuple[str, int, int] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT text, prompt_tokens, completion_tokens FROM answers WHERE key = ?", (key,)
            ).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    def put(self, key: str, text: str, prompt_tokens: int, completion_tokens: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?)",
                (key, text, prompt_tokens, completion_tokens, time.time()),
            )

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
