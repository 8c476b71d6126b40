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
