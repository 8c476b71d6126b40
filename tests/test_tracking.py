"""Experiment trackers, offline: TensorBoard event files and an MLflow file store receive local
training steps, Test's figures and a sweep's summary."""

from __future__ import annotations

import struct
from pathlib import Path

from recipe.runner import run

from .conftest import MIX_AND_TRAIN, tiny_common
from .fake_together import FakeTogether
from .test_eval import answer_and_judge, together_test


def scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TensorBoard event files under `directory` (TFRecord framing, read by hand)."""
    from tensorboardX.proto import event_pb2

    found: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(directory.rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                found.setdefault(value.tag, []).append((event.step, value.simple_value))
    return found


def test_tensorboard_receives_every_training_step(make_cfg, tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = make_cfg(
        *tiny_common(tiny_model_dir)[2:],
        "stages=[mix,train]",
        "train.max_steps=3",
        "logger=tensorboard",
        f"logger.dir={tmp_path / 'tb'}",
        base=MIX_AND_TRAIN,
    )
    (tmp_path / "runs" / "one").mkdir(parents=True)
    run(cfg, run_dir=tmp_path / "runs" / "one")
    tags = scalars(tmp_path / "tb")
    assert [step for step, _ in tags["train/loss"]] == [1, 2, 3]
    assert all(v > 0 for _, v in tags["train/loss"]) and "train/lr" in tags and "train/final_loss" in tags
    assert tags["mix/examples"][0][1] == 8
    assert (tmp_path / "tb" / "runs_one").is_dir()  # one directory per run, named after it


def test_mlflow_file_store_receives_tests_figures(make_cfg, tmp_path: Path, fake: FakeTogether) -> None:
    import mlflow

    fake.answer = answer_and_judge
    cfg = together_test(
        make_cfg,
        f"test.cache_path={tmp_path}/cache.sqlite",
        "logger=mlflow",
        f"logger.tracking_uri=file:{tmp_path / 'mlruns'}",
    )
    (tmp_path / "runs" / "two").mkdir(parents=True)
    record = run(cfg, run_dir=tmp_path / "runs" / "two")
    client = mlflow.tracking.MlflowClient(tracking_uri=f"file:{tmp_path / 'mlruns'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "recipe"]
    (tracked,) = client.search_runs([experiment.experiment_id])
    assert tracked.info.run_name == "runs_two"
    metrics = tracked.data.metrics
    summary = record["stages"]["test"]["metrics"]
    assert metrics["test/tuned/alpaca_eval.win_rate"] == summary["alpaca_eval.win_rate"]
    assert "test/base/mqa.accuracy" in metrics and "mix/contamination/alpaca_eval/examples_dropped" in metrics
    assert tracked.data.params["fingerprint/train"] == record["stages"]["train"]["fingerprint"]


def test_a_sweep_summary_goes_to_the_tracker(run_cli, tmp_path: Path) -> None:
    run_cli(
        "-m",
        "stages=[mix]",
        "mix=samples",
        "mix.progress=false",
        "~distill",
        "~test",
        "mix.seed=1,2",
        "logger=tensorboard",
        "logger.dir=tb",
    )
    sweeps = [p for p in (tmp_path / "tb").iterdir() if p.name.startswith("sweep_")]
    assert len(sweeps) == 1 and list(sweeps[0].glob("events.out.tfevents.*"))
    jobs = [p for p in (tmp_path / "tb").iterdir() if not p.name.startswith("sweep_")]
    assert len(jobs) == 2  # one tracker run per job, and one for the sweep
