"""`recipe store list|prune`: what the artifact store holds, and removing what is no longer wanted.

    recipe store list                                   # every artifact: stage, fingerprint, size, dates, runs
    recipe store prune --unused-for 14 --dry-run        # what would go; nothing removed
    recipe store prune --keep-last 2 --stage train      # all but the 2 most recently used per stage
    recipe store prune --older-than 30                  # created more than 30 days ago

It works on a store only (the `.recipe-store` marker a run writes) and only in the stages' own
directories. Every prune also removes build directories whose builder is gone (`.tmp-*` left by a
crash or a kill -9: they never complete), as their lease says: a builder on another host or in
another PID namespace is gone only when its heartbeat is 5 minutes old. Never removed, whatever the criteria: an artifact that a running run
reads (it holds a shared lock on it), an artifact that describes a live paid object on Together
(a fine-tune job and its model, an endpoint: their records under `records/` are never touched
either), and an artifact that a pending run (status `pending` in its run.json) still needs. A
criterion given must hold for an artifact to go (several: all of them). "Used" is the newest run
(`outputs/runs`, `outputs/multiruns`) that built or reused it; an artifact no run mentions counts
as used when it was created. An artifact being built or read under its lock is skipped.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from recipe.store import MANIFEST, MARKER, STAGE_DIRS, build_is_dead, is_store

DAY = 86400.0


@dataclass
class Entry:
    stage: str
    fingerprint: str
    path: Path
    size: int
    created: float
    runs: list[str] = field(default_factory=list)
    last_used: float = 0.0
    keep: str = ""  # why it is never pruned ("" = it may be)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _stage_dirs(store: Path) -> list[Path]:
    """The stages' own directories of a store: nothing else of it is ever scanned or removed."""
    return [store / name for name in STAGE_DIRS if (store / name).is_dir() and not (store / name).is_symlink()]


def _live_paid(manifest: dict) -> bool:
    """A Together fine-tune (its job and model) or endpoint: records of objects that cost money."""
    return manifest.get("provider") == "together" or "job_id" in manifest or "endpoint" in manifest


def scan(store: Path, runs_roots: list[Path]) -> list[Entry]:
    entries: dict[tuple[str, str], Entry] = {}
    if store.is_dir():
        for stage_dir in _stage_dirs(store):
            for art in sorted(p for p in stage_dir.iterdir() if (p / MANIFEST).is_file() and not p.is_symlink()):
                try:
                    manifest = json.loads((art / MANIFEST).read_text())
                except (OSError, ValueError):
                    manifest = None
                if not isinstance(manifest, dict):
                    print(f"warning: {art / MANIFEST} is not a manifest; left alone", file=sys.stderr)
                    continue
                created = (art / MANIFEST).stat().st_mtime
                entry = Entry(stage_dir.name, art.name, art, _size(art), created, last_used=created)
                if _live_paid(manifest):
                    entry.keep = "records a live paid object (Together)"
                entries[(entry.stage, entry.fingerprint)] = entry
    for root in runs_roots:
        for run_file in sorted(root.rglob("run.json")) if root.is_dir() else []:
            try:
                record = json.loads(run_file.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            started = _timestamp(record.get("started"), run_file.stat().st_mtime)
            pending = record.get("status") == "pending"
            for stage, s in (record.get("stages") or {}).items():
                entry = entries.get((stage, s.get("fingerprint", "")))
                if entry is None:
                    continue
                entry.runs.append(str(run_file.parent))
                if s.get("status") == "ok":
                    entry.last_used = max(entry.last_used, started)
                if pending and not entry.keep:
                    entry.keep = f"needed by a pending run ({run_file.parent})"
    return sorted(entries.values(), key=lambda e: (e.stage, -e.last_used))


def _timestamp(value: object, default: float) -> float:
    try:
        return datetime.fromisoformat(str(value)).replace(tzinfo=UTC).timestamp() if value else default
    except ValueError:
        return default


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _date(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M")


def table(entries: list[Entry]) -> str:
    lines = [f"{'stage':<8} {'fingerprint':<20} {'size':>9} {'created':<16} {'last used':<16} {'runs':>4}  note"]
    for e in entries:
        lines.append(
            f"{e.stage:<8} {e.fingerprint:<20} {_human(e.size):>9} {_date(e.created):<16} {_date(e.last_used):<16} "
            f"{len(e.runs):>4}  {e.keep}"
        )
    lines.append(f"{len(entries)} artifacts, {_human(sum(e.size for e in entries))}")
    return "\n".join(lines)


def select(entries: list[Entry], a: argparse.Namespace, now: float) -> list[Entry]:
    """The artifacts the criteria pick (the caller spares those marked `keep`)."""
    chosen = [e for e in entries if not a.stage or e.stage in a.stage]
    if a.older_than is not None:
        chosen = [e for e in chosen if now - e.created > a.older_than * DAY]
    if a.unused_for is not None:
        chosen = [e for e in chosen if now - e.last_used > a.unused_for * DAY]
    if a.keep_last is not None:
        newest: dict[str, list[Entry]] = {}
        for e in sorted(entries, key=lambda e: -e.last_used):
            newest.setdefault(e.stage, []).append(e)
        kept = {id(e) for group in newest.values() for e in group[: a.keep_last]}
        chosen = [e for e in chosen if id(e) not in kept]
    return chosen


def remove(store: Path, entry: Entry) -> bool:
    """Remove one artifact under its build lock and its readers' lock (skipped when a build holds the
    one or a running run reads it); atomic rename first."""
    locks = store / "locks"
    locks.mkdir(exist_ok=True)
    with (
        open(locks / f"{entry.stage}-{entry.fingerprint}.lock", "w") as lock,
        open(locks / f"{entry.stage}-{entry.fingerprint}.readers", "w") as readers,
    ):
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(readers, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        trash = entry.path.with_name(f".prune-{entry.fingerprint}-{uuid.uuid4().hex[:8]}")
        os.rename(entry.path, trash)
        shutil.rmtree(trash, ignore_errors=True)
    return True


def leftovers(store: Path, dry_run: bool) -> list[tuple[Path, int]]:
    """Build directories whose builder is gone (a crash, kill -9: they never complete), and the
    remains of an interrupted prune or replace: removed (or, in a dry run, listed) with their sizes."""
    found = []
    for stage_dir in _stage_dirs(store) if store.is_dir() else []:
        for path in sorted(stage_dir.glob(".*")):
            if not path.is_dir() or path.is_symlink():
                continue
            if path.name.startswith(".tmp-"):
                if not build_is_dead(path):
                    continue  # its builder is alive, here or on another host (its lease)
            elif not path.name.startswith((".prune-", ".old-", ".damaged-")):
                continue
            found.append((path, _size(path)))
            if not dry_run:
                shutil.rmtree(path, ignore_errors=True)
    return found


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="recipe store", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("verb", choices=["list", "prune"])
    parser.add_argument("--store", type=Path, default=Path("outputs/store"), help="store_dir (default outputs/store)")
    parser.add_argument(
        "--runs", type=Path, action="append", help="run directories to read (default outputs/runs, outputs/multiruns)"
    )
    parser.add_argument("--stage", action="append", help="only this stage (repeatable)")
    parser.add_argument("--older-than", type=float, metavar="DAYS", help="created more than DAYS ago")
    parser.add_argument("--unused-for", type=float, metavar="DAYS", help="not used by a run for DAYS")
    parser.add_argument("--keep-last", type=int, metavar="N", help="keep the N most recently used per stage")
    parser.add_argument("--dry-run", action="store_true", help="say what would go; remove nothing")
    a = parser.parse_args(argv)
    runs = a.runs or [Path("outputs/runs"), Path("outputs/multiruns")]
    if a.store.exists() and not is_store(a.store):
        print(
            f"error: {a.store} is not a recipe store (no {MARKER}; a run writes it when it makes the store): "
            "nothing listed or removed",
            file=sys.stderr,
        )
        return 2
    entries = scan(a.store, runs)
    if a.verb == "list":
        print(table([e for e in entries if not a.stage or e.stage in a.stage]))
        return 0
    if a.older_than is None and a.unused_for is None and a.keep_last is None:
        print("error: recipe store prune needs --older-than, --unused-for or --keep-last", file=sys.stderr)
        return 2
    for path, size in leftovers(a.store, a.dry_run):
        print(f"{'would remove' if a.dry_run else 'removed'} {path} ({_human(size)}): a build whose builder is gone")
    chosen = select(entries, a, time.time())
    going = [e for e in chosen if not e.keep]
    for e in chosen:
        if e.keep:
            print(f"kept {e.stage}/{e.fingerprint}: {e.keep}")
    for e in going:
        if a.dry_run:
            print(f"would remove {e.stage}/{e.fingerprint} ({_human(e.size)})")
        elif remove(a.store, e):
            print(f"removed {e.stage}/{e.fingerprint} ({_human(e.size)})")
        else:
            print(f"skipped {e.stage}/{e.fingerprint}: in use (locked)")
    verb = "would free" if a.dry_run else "freed"
    print(f"{verb} {_human(sum(e.size for e in going))} ({len(going)} of {len(entries)} artifacts)")
    return 0
