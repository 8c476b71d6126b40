"""Content-addressed artifact store: fingerprint -> directory holding the outputs and manifest.json.

Layout: `<store_dir>/<stage>/<fingerprint>/manifest.json`. A stage builds into a temporary
directory next to its final place, which is renamed into place only after the stage returned and
its manifest was written, so a directory at the final path is always complete; a crash leaves
only a `.tmp-*` directory, which is removed on the next build of that stage.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recipe.errors import RecipeError

MANIFEST = "manifest.json"


class StoreFull(RecipeError):
    """The disk filled up while an artifact was written (nothing half-written is left)."""


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def fingerprint(stage: str, version: str, config: Any, upstream: dict[str, str]) -> str:
    """hash(semantic config, upstream fingerprints, stage version) as 20 hex digits."""
    payload = canonical_json({"stage": stage, "version": version, "config": config, "upstream": upstream})
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, value: Any) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, path)


@dataclass(frozen=True)
class Artifact:
    stage: str
    fingerprint: str
    path: Path
    reused: bool = False  # build() found it finished by a twin (same fingerprint) it waited for

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads((self.path / MANIFEST).read_text())


class ArtifactStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def get(self, stage: str, fp: str) -> Artifact | None:
        """The complete artifact with this fingerprint, or None."""
        path = self.root / stage / fp
        return Artifact(stage, fp, path) if (path / MANIFEST).is_file() else None

    def build(
        self,
        stage: str,
        fp: str,
        produce: Callable[[Path], dict[str, Any]],
        meta: dict[str, Any],
        replace: bool = False,
    ) -> Artifact:
        """Run `produce(tmpdir)`, write its manifest (merged over `meta`), then publish atomically.

        On any error the temporary directory is removed and the error propagates: nothing
        half-written is left in the store. Builds of one fingerprint take turns (a file lock), so
        twin jobs of a parallel sweep wait for the first and reuse its artifact instead of paying
        for the same work again.
        """
        stage_dir = self.root / stage
        stage_dir.mkdir(parents=True, exist_ok=True)
        locks = self.root / "locks"
        locks.mkdir(exist_ok=True)
        with open(locks / f"{stage}-{fp}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if we die
            done = self.get(stage, fp)
            if done is not None and not replace:
                return Artifact(stage, fp, done.path, reused=True)
            return self._build_locked(stage_dir, stage, fp, produce, meta, replace)

    def _build_locked(
        self,
        stage_dir: Path,
        stage: str,
        fp: str,
        produce: Callable[[Path], dict[str, Any]],
        meta: dict[str, Any],
        replace: bool,
    ) -> Artifact:
        self._remove_stale_tmp(stage_dir, fp)
        tmp = stage_dir / f".tmp-{fp}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            manifest = {**meta, **produce(tmp)}
            write_json_atomic(tmp / MANIFEST, manifest)
            final = stage_dir / fp
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / MANIFEST).is_file():  # not a concurrent twin: a real failure
                    raise
                if replace:  # a stage that runs every time: the newest record wins
                    old = stage_dir / f".old-{fp}-{uuid.uuid4().hex[:8]}"
                    os.rename(final, old)
                    os.rename(tmp, final)
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    shutil.rmtree(tmp)  # an identical build (same fingerprint) finished first
            return Artifact(stage, fp, final)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreFull(
                    f"no space left on the device while writing the {stage} artifact in {stage_dir} "
                    f"({e.filename or 'a file'}): nothing half-written was kept; free some space, or point "
                    "store_dir= at a larger disk, and run again"
                ) from None
            raise

    # ---- records of paid, long-lived remote objects (uploaded files, jobs, endpoints) ---------------
    def record(self, kind: str, key: str) -> dict[str, Any] | None:
        """What was stored under `records/<kind>/<key>.json`, or None."""
        path = self.root / "records" / kind / f"{key}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def put_record(self, kind: str, key: str, value: dict[str, Any]) -> None:
        """Store a record atomically, before anything waits on the object it describes."""
        directory = self.root / "records" / kind
        directory.mkdir(parents=True, exist_ok=True)
        write_json_atomic(directory / f"{key}.json", value)

    @staticmethod
    def _remove_stale_tmp(stage_dir: Path, fp: str) -> None:
        """Remove leftovers of crashed builds of this fingerprint (their process is gone)."""
        for leftover in stage_dir.glob(f".tmp-{fp}-*"):
            try:
                pid = int(leftover.name.split("-")[2])
            except (IndexError, ValueError):
                continue
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                shutil.rmtree(leftover, ignore_errors=True)
            except PermissionError:
                pass
