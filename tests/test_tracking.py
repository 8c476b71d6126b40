"""Experiment trackers, offline: TensorBoard event files and an MLflow store receive local training
steps, Test's figures and a sweep's summary; the README's viewers (`tensorboard`, `mlflow ui`) run
from the installed extra and show them."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from recipe.runner import run

from .conftest import MIX_AND_TRAIN, tiny_common
from .fake_together import FakeTogether
from .subprocesses import limit
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


def summaries(directory: Path) -> list[tuple[str, str, int]]:
    """(tag, plugin, step) of every summary under `directory`, HParams' session records included."""
    from tensorboardX.proto import event_pb2

    found = []
    for path in sorted(directory.rglob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                found.append((value.tag, value.metadata.plugin_data.plugin_name, event.step))
    return found


def test_tensorboard_keeps_every_text_entry_and_writes_hparams(tmp_path: Path) -> None:
    """The config and each stage's fingerprint once shared one text tag at one step (only the last
    showed); HParams was empty. Now each kind has its tag and each call its step, and the run's
    overrides are its HParams against its Test figures."""
    from recipe.tracking import TensorBoard

    board = TensorBoard(tmp_path / "tb")
    board.params({"override/mix.components.longctx.share": "0.25", "config/mix.total": 60})
    board.params({"fingerprint/mix": "abc"})
    board.params({"fingerprint/test": "def"})
    board.metrics({"test/tuned-base/longctx.accuracy/value": 0.48, "train/final_loss": 0.1})
    board.close()
    found = summaries(tmp_path / "tb")
    texts = sorted((tag, step) for tag, plugin, step in found if plugin == "text")
    assert texts == [("params/config/text_summary", 0), ("params/fingerprint/text_summary", 0),
                     ("params/fingerprint/text_summary", 1), ("params/override/text_summary", 0)]  # fmt: skip
    hparams = {tag for tag, plugin, _ in found if plugin == "hparams"}
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= hparams, found
    assert ("test/tuned-base/longctx.accuracy/value", "", 0) in found  # the figure HParams shows


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


def test_mlflow_receives_tests_figures(make_cfg, tmp_path: Path, fake: FakeTogether) -> None:
    import mlflow

    fake.answer = answer_and_judge
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = together_test(
        make_cfg, f"test.cache_path={tmp_path}/cache.sqlite", "logger=mlflow", f"logger.tracking_uri={store}"
    )
    (tmp_path / "runs" / "two").mkdir(parents=True)
    record = run(cfg, run_dir=tmp_path / "runs" / "two")
    client = mlflow.tracking.MlflowClient(tracking_uri=store)
    (experiment,) = [e for e in client.search_experiments() if e.name == "recipe"]
    (tracked,) = client.search_runs([experiment.experiment_id])
    assert tracked.info.run_name == "runs_two"
    metrics = tracked.data.metrics
    summary = record["stages"]["test"]["metrics"]
    assert metrics["test/tuned/alpaca_eval.win_rate"] == summary["alpaca_eval.win_rate"]
    assert "test/base/mqa.accuracy" in metrics and "mix/contamination/alpaca_eval/examples_dropped" in metrics
    assert tracked.data.params["fingerprint/train"] == record["stages"]["train"]["fingerprint"]
    # What a person opens is attached to the run, readable after the store is pruned.
    attached = {Path(a.path).name for a in client.list_artifacts(tracked.info.run_id, "test")}
    assert {"report.html", "report.md", "chart.png", "metrics.json", "generations.jsonl"} <= attached


MIX_ONLY = ("stages=[mix]", "mix=samples", "mix.progress=false", "~distill", "~test")


def test_a_sweep_jobs_run_is_named_by_the_values_it_varies(monkeypatch) -> None:
    """The keys a sweep varies are its sweep overrides (a list, `choice`, `interval`) and a search
    sweeper's params; a job is named by its values of those, never by the constant overrides."""
    from omegaconf import OmegaConf

    from recipe import tracking

    hydra = OmegaConf.create(
        {
            "overrides": {"task": ["mix=samples", "mix.seed=0,1", "+x=3", "mix.total=choice(8,16)", "t=${oc.env:T}"]},
            "sweeper": {"params": {"mix.components.mqa.share": "interval(0.1,0.5)", "mix.seed": "range(3)"}},
        }
    )
    varied = tracking.varied_keys(hydra)
    assert varied == ["mix.seed", "mix.total", "mix.components.mqa.share"]
    monkeypatch.setenv(tracking.VARIES_ENV, json.dumps(varied))
    job = ["mix=samples", "mix.seed=1", "+x=3", "mix.total=16", "+mix.components.mqa.share=0.3"]
    assert tracking.job_name("4", job) == "mix.seed=1,mix.total=16,mix.components.mqa.share=0.3"
    assert tracking.job_name("4", ["mix=samples"]) == "4"  # varies none of them: its number
    monkeypatch.delenv(tracking.VARIES_ENV)
    assert tracking.job_name("4", job) == "4"  # the sweep's keys unknown (a job started by hand)


def test_a_sweep_summary_goes_to_the_tracker(run_cli, tmp_path: Path) -> None:
    run_cli(
        "-m",
        *MIX_ONLY,
        "mix.seed=1,2",
        "logger=tensorboard",
        "logger.dir=tb",
    )
    (sweep,) = list((tmp_path / "tb").iterdir())  # one directory for the sweep ...
    assert sweep.name.startswith("sweep_") and list(sweep.glob("events.out.tfevents.*"))  # ... its summary
    # ... and a run per job, named by its number and what it varies
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0_mix.seed=1", "1_mix.seed=2"]


def test_an_mlflow_sweep_is_one_parent_run_with_its_jobs_and_their_configs(run_cli, tmp_path: Path) -> None:
    import mlflow

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    secret = "sk-tracked-nowhere-0123456789"
    run_cli(
        "-m", *MIX_ONLY, "mix.seed=1,2", "logger=mlflow", f"logger.tracking_uri={store}", f"together.api_key={secret}"
    )
    client = mlflow.tracking.MlflowClient(tracking_uri=store)
    (experiment,) = [e for e in client.search_experiments() if e.name == "recipe"]
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.info.run_name.startswith("sweep_")]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    # Jobs named by what they vary; mix=samples and the other constant overrides are not in the name.
    assert len(runs) == 3 and sorted(r.info.run_name for r in children) == ["mix.seed=1", "mix.seed=2"]
    assert sorted(r.data.params["override/mix.seed"] for r in children) == ["1", "2"]  # what was swept
    assert {r.data.params["config/mix.total"] for r in children} == {"32"}  # and the composed config
    assert not any(secret in f"{k}={v}" for r in runs for k, v in r.data.params.items())  # the key: nowhere
    assert "sweep/mix.booksum.examples" not in parent.data.metrics  # no Test: no figures to compare
    assert client.list_artifacts(parent.info.run_id, "")[0].path == "summary.md"  # the sweep's summary


def wandb_records(path: Path) -> Iterator[Any]:
    """The records of an offline W&B run file (`run-<id>.wandb`: a 7-byte `:W&B` header, then
    LevelDB log framing in 32 KiB blocks around protobuf `Record`s), read by hand."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    at, block, parts = 7, 32768, b""
    while at + 7 <= len(data):
        if block - at % block < 7:  # a block's tail too short for a header is padding
            at += block - at % block
            continue
        length, kind = struct.unpack("<HB", data[at + 4 : at + 7])
        parts += data[at + 7 : at + 7 + length]
        at += 7 + length
        if kind in (1, 4):  # FULL, or the LAST piece of a record split across blocks
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def test_a_wandb_sweep_is_one_group_of_offline_runs_with_configs_and_figures(run_cli, tmp_path: Path) -> None:
    """logger=wandb (offline, as the seed's fine-tune reported to W&B): a run per job and one for
    the sweep's summary, in one group; the swept overrides and the composed config as the run's
    config, Mix's counts in its summary; a key given on the command line is in none of W&B's files."""
    secret = "sk-tracked-nowhere-0123456789"
    run_cli("-m", *MIX_ONLY, "mix.seed=1,2", "logger=wandb", f"together.api_key={secret}")
    runs = sorted((tmp_path / "outputs" / "wandb" / "wandb").glob("offline-run-*/run-*.wandb"))
    seen = {}
    for path in runs:
        found: dict[str, Any] = {"config": {}, "summary": {}}
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                found.update(name=record.run.display_name, group=record.run.run_group, type=record.run.job_type)
            elif kind == "config":
                found["config"].update({u.key: u.value_json for u in record.config.update})
            elif kind == "summary":
                found["summary"].update({u.key: u.value_json for u in record.summary.update if u.key})
        seen[found["name"]] = found
    sweep = next(name for name in seen if name.startswith("sweep_"))
    jobs = ("mix.seed=1", "mix.seed=2")  # named by what they vary
    assert sorted(seen) == [*jobs, sweep] and {r["group"] for r in seen.values()} == {sweep}
    assert seen[sweep]["type"] == "sweep" and {seen[j]["type"] for j in jobs} == {"run"}
    assert [seen[j]["config"]["override/mix.seed"] for j in jobs] == ['"1"', '"2"']
    assert {seen[j]["config"]["config/mix.total"] for j in jobs} == {"32"}
    assert all(float(seen[j]["summary"]["mix/examples"]) == 32 for j in jobs)
    assert any(p.name == "summary.md" for p in (tmp_path / "outputs" / "wandb").rglob("summary.md"))
    # The sweep's pages are attached to its run, beside the summary's text.
    assert list((tmp_path / "outputs" / "wandb").rglob("files/sweep/summary.html"))
    leaked = [
        p for p in (tmp_path / "outputs" / "wandb").rglob("*") if p.is_file() and secret.encode() in p.read_bytes()
    ]
    assert not leaked


def wait_for(url: str, proc: subprocess.Popen, what: str, timeout_s: float = 240) -> requests.Response:
    deadline = time.monotonic() + limit(timeout_s)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited {proc.returncode} before answering:\n{proc.stdout.read()}")
        try:
            response = requests.get(url, timeout=5)
            if response.status_code == 200:
                return response
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{what} did not answer {url} within {timeout_s:.0f} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def viewer(command: str, cwd: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """A README viewer command from the venv, on a free loopback port, in its own process group
    (mlflow ui starts a server, job runners and queue consumers): the whole group is stopped after,
    also when the test fails. (the process, its base URL)."""
    port = free_port()
    args = [str(Path(sys.executable).parent / command.split()[0]), *command.split()[1:]]
    proc = subprocess.Popen(
        [*args, "--host", "127.0.0.1", "--port", str(port)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=limit(60))
        except subprocess.TimeoutExpired:
            pass
        time.sleep(1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever ignored SIGTERM
        proc.wait()


@pytest.mark.slow
def test_the_readmes_viewers_show_what_a_run_logged(run_cli, tmp_path: Path, browser) -> None:
    """docs/trackers.md's `tensorboard --logdir outputs/tensorboard` and `mlflow ui --backend-store-uri
    sqlite:///outputs/mlflow.db`, from the installed `trackers` extra, on loopback ports; the page a
    run names (`tracked: ...`) opens on the run in MLflow 3's model-training view, not its GenAI one."""
    said = {}
    for logger in ("tensorboard", "mlflow"):
        out = run_cli("stages=[mix]", "mix=samples", "mix.progress=false", f"logger={logger}").stdout
        said[logger] = re.search(r"^tracked: (.*)$", out, re.MULTILINE).group(1)
    assert said["tensorboard"] == "`tensorboard --logdir outputs/tensorboard`"
    page = re.fullmatch(r"`mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db`, then (\S+)", said["mlflow"])
    assert page, said["mlflow"]
    readme = (Path(__file__).resolve().parents[1] / "docs" / "trackers.md").read_text()
    tensorboard = "tensorboard --logdir outputs/tensorboard"
    mlflow_ui = "mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db"
    assert tensorboard in readme and mlflow_ui in readme
    with viewer(tensorboard, tmp_path) as (board, url):
        shown = wait_for(f"{url}/data/runs", board, "tensorboard").json()
    logged = sorted((tmp_path / "outputs" / "runs").glob("*/*/run.json"))[0].parent  # the tensorboard run
    assert f"{logged.parent.name}_{logged.name}" in shown, shown
    with viewer(mlflow_ui, tmp_path) as (ui, url):
        wait_for(f"{url}/health", ui, "mlflow ui")
        found = requests.post(f"{url}/api/2.0/mlflow/experiments/search", json={"max_results": 10}, timeout=30).json()
        (experiment,) = [e for e in found["experiments"] if e["name"] == "recipe"]
        searched = requests.post(
            f"{url}/api/2.0/mlflow/runs/search", json={"experiment_ids": [experiment["experiment_id"]]}, timeout=30
        ).json()
        browser.get(page.group(1).replace("http://127.0.0.1:5000", url))
        deadline, shown = time.monotonic() + limit(120), ""
        while "mix/examples" not in shown and time.monotonic() < deadline:
            time.sleep(1)
            shown = browser.find_element("tag name", "body").text
        browser.save_screenshot(str(tmp_path / "mlflow-run.png"))
    assert "Parameters" in shown and "mix/examples" in shown, shown[:2000]
    assert "Model metrics" in shown and "Observability" not in shown, shown[:2000]  # training's tabs, not GenAI's
    metrics = searched["runs"][0]["data"]["metrics"]
    assert len(searched["runs"]) == 1 and any(m["key"] == "mix/examples" for m in metrics)
