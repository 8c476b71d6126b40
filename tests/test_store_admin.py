"""`recipe store list|prune` on a store built by real runs: sizes, dates, the runs that used each
artifact; pruning by age, disuse or count, never a live paid object's record or what a pending run needs."""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

import pytest

MIX = ("stages=[mix]", "mix=samples", "mix.progress=false", "~distill", "~test")


def mix_artifacts(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "outputs" / "store" / "mix").glob("*/manifest.json"))


@pytest.mark.slow
def test_list_and_prune(run_cli, tmp_path: Path) -> None:
    run_cli(*MIX, "mix.seed=1")
    run_cli(*MIX, "mix.seed=2")
    run_cli(*MIX, "mix.seed=2")  # a second run reuses the seed-2 mixture: it counts as used again
    store = tmp_path / "outputs" / "store"
    old, new = sorted(mix_artifacts(tmp_path), key=lambda m: json.loads(m.read_text())["seed"])
    # Age the seed-1 artifact by 40 days (its manifest's time is its creation; its run too).
    for path in (old,):
        stamp = time.time() - 40 * 86400
        os.utime(path, (stamp, stamp))
    for run in (tmp_path / "outputs" / "runs").glob("*/*/run.json"):
        record = json.loads(run.read_text())
        if record["stages"]["mix"]["fingerprint"] == old.parent.name:
            record["started"] = "2000-01-01T00:00:00"
            run.write_text(json.dumps(record))
    # A Together fine-tune's artifact (a live paid model) and one a pending run still needs.
    paid = store / "train" / "1234567890abcdef0000"
    paid.mkdir(parents=True)
    (paid / "manifest.json").write_text(json.dumps({"provider": "together", "job_id": "ft-1"}))
    os.utime(paid / "manifest.json", (time.time() - 90 * 86400,) * 2)
    (store / "records" / "jobs").mkdir(parents=True)
    (store / "records" / "jobs" / "k.json").write_text("{}")

    index = store / "indexes" / "0123abcd.npz"  # a decontamination index (a cache: not an artifact)
    index.parent.mkdir()
    index.write_bytes(b"an index")

    listed = run_cli("store", "list").stdout
    rows = {line.split()[1]: line for line in listed.splitlines()[1:-1]}
    assert rows[new.parent.name].split()[-1] == "2" and rows[old.parent.name].split()[-1] == "1"  # runs
    assert "live paid object" in rows[paid.name] and "3 artifacts" in listed

    dry = run_cli("store", "prune", "--unused-for", "30", "--dry-run").stdout
    assert f"would remove mix/{old.parent.name}" in dry and new.parent.name not in dry
    assert f"kept train/{paid.name}: records a live paid object" in dry
    assert old.exists()  # a dry run removes nothing

    pending = tmp_path / "outputs" / "runs" / "x" / "y"
    pending.mkdir(parents=True)
    (pending / "run.json").write_text(
        json.dumps(
            {
                "status": "pending",
                "started": "2000-01-01T00:00:00",
                "stages": {"mix": {"fingerprint": new.parent.name, "status": "ok"}},
            }
        )
    )
    with open(store / "locks" / f"mix-{old.parent.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a run is reading it
        out = run_cli("store", "prune", "--keep-last", "0").stdout
        assert f"skipped mix/{old.parent.name}: in use" in out and old.exists()
    out = run_cli("store", "prune", "--keep-last", "0").stdout
    assert f"removed mix/{old.parent.name}" in out and not old.parent.exists()
    assert f"kept mix/{new.parent.name}: needed by a pending run" in out and new.exists()
    assert paid.exists() and (store / "records" / "jobs" / "k.json").exists()
    assert index.exists() and "indexes" not in listed  # never listed or pruned as a stage
    assert not list((store / "mix").glob(".prune-*"))

    refused = run_cli("store", "prune", check=False)
    assert refused.returncode == 2 and "needs --older-than, --unused-for or --keep-last" in refused.stderr


def test_prune_refuses_a_directory_that_is_not_a_store_and_a_run_will_not_write_into_one(
    run_cli, tmp_path: Path
) -> None:
    """An ordinary directory holding `manifest.json` files (a web app, a tool, a JSON list): prune
    touches nothing there, and a run refuses to make it its store; a store of the old layout
    without the marker is adopted by the next run."""
    site = tmp_path / "site"
    for name, content in (("web/app", '{"name": "app"}'), ("ext/tool", "[1, 2]"), ("mix/abc", "[]")):
        (site / name).mkdir(parents=True)
        (site / name / "manifest.json").write_text(content)
    refused = run_cli("store", "prune", "--store", str(site), "--keep-last", "0", check=False)
    assert refused.returncode == 2 and "is not a recipe store" in refused.stderr and "Traceback" not in refused.stderr
    assert all((site / name / "manifest.json").is_file() for name in ("web/app", "ext/tool", "mix/abc"))
    run = run_cli(*MIX, f"store_dir={site}", check=False)
    assert run.returncode == 2 and "not a recipe store (no .recipe-store) and it holds ext, web" in run.stderr
    assert not (site / ".recipe-store").exists()
    # A store made before the marker (only the store's own layout): the next run adopts it.
    old_store = tmp_path / "old-store"
    (old_store / "mix").mkdir(parents=True)
    run_cli(*MIX, f"store_dir={old_store}")
    assert (old_store / ".recipe-store").is_file() and list((old_store / "mix").glob("*/manifest.json"))
    # In a store, a manifest that is not one is left alone with a word, never a traceback.
    (old_store / "mix" / "odd").mkdir()
    (old_store / "mix" / "odd" / "manifest.json").write_text("[]")
    listed = run_cli("store", "list", "--store", str(old_store))
    assert "is not a manifest; left alone" in listed.stderr and (old_store / "mix" / "odd").is_dir()


def test_a_build_on_another_host_is_alive_while_its_lease_is_fresh(tmp_path: Path) -> None:
    """A `.tmp-*` build of another host (or PID namespace) whose PID is absent here: kept while its
    heartbeat is fresh, removed once it is older than the lease; one of this host whose PID is gone:
    removed at once."""
    from recipe.store import LEASE_S, claim, owner, remove_stale_builds

    claim(tmp_path)
    stage = tmp_path / "mix"
    stage.mkdir()
    dead_pid = 2**22 + 12345  # beyond pid_max: no process here has it

    def build(name: str, **lease: object) -> Path:
        path = stage / f".tmp-{name}-{dead_pid}-abcd1234"
        path.mkdir()
        (path / ".lease").write_text(json.dumps({**owner(), "pid": dead_pid, "heartbeat": time.time(), **lease}))
        return path

    elsewhere = build("aaaa", host="another-host")
    other_namespace = build("bbbb", pidns="pid:[1]")
    stale = build("cccc", host="another-host", heartbeat=time.time() - LEASE_S - 1)
    here = build("dddd")
    removed = remove_stale_builds(stage)
    assert set(removed) == {stale, here}
    assert elsewhere.is_dir() and other_namespace.is_dir()
    # Outside a store, or outside a stage's directory, nothing is removed at all.
    ordinary = tmp_path / "plain" / "mix"
    (ordinary / f".tmp-x-{dead_pid}-y").mkdir(parents=True)
    assert remove_stale_builds(ordinary) == [] and (ordinary / f".tmp-x-{dead_pid}-y").is_dir()


def test_two_pid_namespaces_sharing_a_store_keep_each_others_builds(tmp_path: Path) -> None:
    """A build running in another PID namespace (`unshare --pid`, as another container or host
    sharing the store): its PID means nothing here, yet prune keeps it while it heartbeats."""
    import shutil
    import subprocess
    import sys

    from .subprocesses import limit

    if not shutil.which("unshare") or subprocess.run(["unshare", "--pid", "--fork", "true"]).returncode != 0:
        pytest.skip("unshare --pid is not permitted here")
    from recipe.store import claim

    store = tmp_path / "store"
    claim(store)
    builder = (
        "import sys, time; from pathlib import Path; from recipe.store import ArtifactStore\n"
        "def produce(d):\n"
        "    print('building', flush=True); time.sleep(30); return {}\n"
        "ArtifactStore(Path(sys.argv[1])).build('mix', 'f' * 20, produce, {})\n"
    )
    # Burn PIDs inside the namespace first (they are handed out in order from 1, the shell), so the
    # builder's PID there is one that no process has here: the old PID check called it dead.
    absent = next(p for p in range(400, 4_000_000) if not Path(f"/proc/{p}").exists())
    script = f'i=2; while [ $i -lt {absent} ]; do /bin/true; i=$((i+1)); done; {sys.executable} -c "$0" "$1"'
    proc = subprocess.Popen(
        ["unshare", "--pid", "--fork", "sh", "-c", script, builder, str(store)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "building"
        (build,) = list((store / "mix").glob(".tmp-*"))
        pid_there = int(build.name.split("-")[2])
        assert pid_there == absent and not Path(f"/proc/{pid_there}").exists()  # no such process here
        out = subprocess.run(
            [str(Path(sys.executable).parent / "recipe"), "store", "prune", "--store", str(store), "--keep-last", "0"],
            capture_output=True,
            text=True,
            timeout=limit(120),
        )
        assert out.returncode == 0, out.stderr
        assert build.is_dir() and "builder is gone" not in out.stdout
    finally:
        proc.kill()
        proc.wait(timeout=limit(30))
