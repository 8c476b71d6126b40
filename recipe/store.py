"""Content-addressed artifact store: fingerprint -> directory holding the outputs and manifest.json.

Layout: `<store_dir>/<stage>/<fingerprint>/manifest.json`. A stage builds into a temporary
directory next to its final place, which is renamed into place only after the stage returned and
its manifest was written, so a directory at the final path is always complete; a crash leaves
only a `.tmp-*` directory, which the next build of that stage (or `recipe store prune`) removes
once its builder is gone.

What is reused is what was made: the manifest lists every file with its size, modification time
and sha256 (`files`). On reuse the cheap check runs always (every file there, same size, same
time); a file whose time moved (a copied store) is hashed and must match; bytes that leave the
machine (an upload) are hashed again before they go. A run holds a shared lock on every artifact
it reads (`locks/<stage>-<fp>.readers`), which `recipe store prune` respects.

Beside the stages: `records/` (paid remote objects), `locks/`, `work/` (work that outlives an
attempt) and `indexes/`, decontamination indexes by what they are built from (a cache: deleting
it costs the next Mix or Distill a build).

A store knows itself: the first run that writes to a directory leaves a `.recipe-store` marker
there, and refuses a directory that holds anything but a store's own layout. `recipe store prune`
and the build cleanup touch nothing without the marker, and nothing outside the stages' own
directories. A build in progress holds a lease (`.lease` in its build directory: host, PID
namespace, PID and a heartbeat renewed every 30 s); it is proven dead only by its own host and PID
namespace seeing the PID gone, or by a heartbeat older than 5 minutes: a store shared by several
hosts or containers (as for Slurm) never loses a live build to a PID that is only absent here.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recipe.errors import RecipeError

INDEXES = "indexes"  # decontamination indexes (recipe/data/contamination.py), beside the stages
MANIFEST = "manifest.json"
MARKER = ".recipe-store"  # in the store's root: this directory is a store (and the format it is in)
STAGE_DIRS = ("distill", "mix", "train", "test", "deploy")
OWN = frozenset({*STAGE_DIRS, "records", "locks", "work", "models", INDEXES})  # a store's own layout
LEASE = ".lease"  # in a build directory: who builds it, and when it last said so
HEARTBEAT_S = 30.0
LEASE_S = 300.0  # a build whose heartbeat is older than this is dead, whoever held it


def is_store(root: Path) -> bool:
    return (Path(root) / MARKER).is_file()


def claim(root: Path) -> None:
    """Make `root` a store (its marker) before anything is written there: an absent or empty
    directory, or one holding only a store's own layout (a store from before the marker), is
    claimed; anything else is refused, naming what it holds."""
    root = Path(root)
    if is_store(root):
        return
    if root.is_dir():
        foreign = sorted(p.name for p in root.iterdir() if p.name not in OWN and not p.name.startswith("."))
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise RecipeError(
                f"store_dir={root}: not a recipe store (no {MARKER}) and it holds {shown}: point store_dir= at an "
                "empty or new directory, or at an existing store"
            )
    root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(root / MARKER, {"format": 1})


def owner() -> dict[str, Any]:
    """Who this process is, as a lease names it: host, PID namespace, boot, PID."""
    return {"host": socket.gethostname(), "pidns": _pid_namespace(), "boot": _boot_id(), "pid": os.getpid()}


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def build_is_dead(build_dir: Path, now: float | None = None) -> bool:
    """Whether a `.tmp-*` build directory's builder is gone (see the module docstring). Without a
    lease (a build of an older version, or one a moment old), only an hour-old directory whose PID
    is gone here counts as dead."""
    now = time.time() if now is None else now
    try:
        lease = json.loads((build_dir / LEASE).read_text())
        if not isinstance(lease, dict):
            raise ValueError("not a lease")
    except (OSError, ValueError):
        try:
            old = now - build_dir.stat().st_mtime > 12 * LEASE_S
            return old and not pid_alive(int(build_dir.name.split("-")[2]))
        except (OSError, IndexError, ValueError):
            return False
    heartbeat = lease.get("heartbeat")
    if not isinstance(heartbeat, int | float) or now - heartbeat > LEASE_S:
        return True
    me = owner()
    same_machine = all(lease.get(k) == me[k] for k in ("host", "pidns", "boot"))
    pid = lease.get("pid")
    return same_machine and isinstance(pid, int) and not pid_alive(pid)


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists here (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lease:
    """A build directory's lease, renewed by a daemon thread until `close()`."""

    def __init__(self, build_dir: Path) -> None:
        self.path = build_dir / LEASE
        self._stop = threading.Event()
        self._beat()
        self._thread = threading.Thread(target=self._run, daemon=True, name="store-lease")
        self._thread.start()

    def _beat(self) -> None:
        with contextlib.suppress(OSError):
            write_json_atomic(self.path, {**owner(), "heartbeat": time.time()})

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self._beat()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self.path.unlink()


class StoreFull(RecipeError):
    """The disk filled up while an artifact was written (nothing half-written is left)."""


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def content_digest(value: Any, length: int = 20) -> str:
    """sha256 of `value` as canonical JSON, its first `length` hex digits: the same value, the same
    digest, on every machine."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:length]


def fingerprint(stage: str, version: str, config: Any, upstream: dict[str, str]) -> str:
    """hash(semantic config, upstream fingerprints, stage version) as 20 hex digits."""
    return content_digest({"stage": stage, "version": version, "config": config, "upstream": upstream})


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


# Files whose writer hashed them as it wrote them: absolute path -> (bytes, mtime_ns, sha256).
_WRITTEN: dict[str, tuple[int, int, str]] = {}


def note_sha256(path: Path, digest: str) -> None:
    """Say that `path`, just written and closed, has this sha256 (its writer hashed what it wrote):
    `inventory` takes it instead of reading a large output a second time, as long as the file still
    has the size and modification time it has now."""
    st = path.stat()
    _WRITTEN[str(path.resolve())] = (st.st_size, st.st_mtime_ns, digest)


def inventory(directory: Path) -> dict[str, dict[str, Any]]:
    """Every file under `directory` but the manifest: size, modification time (ns) and sha256."""
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST):
        st = path.stat()
        noted = _WRITTEN.pop(str(path.resolve()), None)
        unchanged = noted is not None and noted[:2] == (st.st_size, st.st_mtime_ns)
        files[path.relative_to(directory).as_posix()] = {
            "bytes": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "sha256": noted[2] if unchanged else sha256_file(path),
        }
    return files


def damage(artifact: Artifact) -> str | None:
    """What changed in an artifact since it was made (one line naming the file), or None. Cheap
    (stat) for every file; a file whose time moved is hashed. Artifacts written before manifests
    listed their files are not checked."""
    files = artifact.manifest.get("files")
    if not isinstance(files, dict):
        return None
    for name, made in files.items():
        path = artifact.path / name
        try:
            st = path.stat()
        except FileNotFoundError:
            return f"{path} is missing"
        if st.st_size != made["bytes"]:
            return f"{path} changed since it was made ({st.st_size} bytes, not {made['bytes']})"
        if st.st_mtime_ns != made["mtime_ns"] and sha256_file(path) != made["sha256"]:
            return f"{path} changed since it was made (its sha256 differs)"
    return None


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
        self._held: dict[tuple[str, str], Any] = {}  # artifacts this process reads: their open lock files

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
        claim(self.root)
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
        remove_stale_builds(stage_dir)
        tmp = stage_dir / f".tmp-{fp}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        lease = Lease(tmp)
        try:
            try:
                manifest = {**meta, **produce(tmp)}
            finally:
                lease.close()
            manifest["files"] = inventory(tmp)
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
        claim(self.root)
        directory = self.root / "records" / kind
        directory.mkdir(parents=True, exist_ok=True)
        write_json_atomic(directory / f"{key}.json", value)

    def delete_record(self, kind: str, key: str) -> None:
        (self.root / "records" / kind / f"{key}.json").unlink(missing_ok=True)

    def records(self, kind: str) -> list[dict[str, Any]]:
        """Every record of `kind`, oldest first (by when it was written)."""
        directory = self.root / "records" / kind
        paths = sorted(directory.glob("*.json"), key=lambda p: p.stat().st_mtime) if directory.is_dir() else []
        out = []
        for path in paths:
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, json.JSONDecodeError):
                continue  # removed or half-written meanwhile
        return out

    def discard(self, stage: str, fp: str) -> None:
        """Remove a complete artifact that is not what was made (under its build lock), to build it again."""
        locks = self.root / "locks"
        locks.mkdir(exist_ok=True)
        with open(locks / f"{stage}-{fp}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            path = self.root / stage / fp
            if path.is_dir():
                aside = path.with_name(f".damaged-{fp}-{uuid.uuid4().hex[:8]}")
                os.rename(path, aside)
                shutil.rmtree(aside, ignore_errors=True)

    # ---- artifacts in use: what a running run reads is never pruned under it -------------------------
    def hold(self, stage: str, fp: str) -> None:
        """Hold a shared lock on an artifact this process reads, until `release()`."""
        if (stage, fp) in self._held:
            return
        locks = self.root / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        handle = open(locks / f"{stage}-{fp}.readers", "w")
        fcntl.flock(handle, fcntl.LOCK_SH)
        self._held[(stage, fp)] = handle

    def release(self) -> None:
        for handle in self._held.values():
            handle.close()  # the lock goes with the file
        self._held.clear()


def remove_stale_builds(stage_dir: Path) -> list[Path]:
    """Remove build directories whose builder is gone (a crash, kill -9; build_is_dead), of any
    fingerprint: they can never complete. Only in a store (its marker), only `.tmp-*` directories
    of a stage. What was removed."""
    if stage_dir.name not in STAGE_DIRS or not is_store(stage_dir.parent):
        return []
    removed = []
    for leftover in stage_dir.glob(".tmp-*"):
        if leftover.is_dir() and not leftover.is_symlink() and build_is_dead(leftover):
            shutil.rmtree(leftover, ignore_errors=True)
            removed.append(leftover)
    return removed
