"""Experiment trackers (`logger=none|tensorboard|mlflow`), through their own libraries (the
`trackers` extra: tensorboardX and mlflow, with their viewers `tensorboard` and `mlflow ui`).

Each run is one tracker run, named after its run directory. What it receives, when a stage
finishes (built or reused): the stage fingerprints as parameters; local training's steps (loss,
learning rate, tokens/s from the artifact's metrics.jsonl, by step); Test's headline figures per
model (`test/<model>/<metric>`) and contamination counts; Mix's and Distill's counts and cost.
A sweep's summary table goes to a run of its own (`sweep`) at the end of the multirun.

TensorBoard: event files under `logger.dir/<run>`. MLflow: `logger.tracking_uri`, by default a
SQLite store (`sqlite:///outputs/mlflow.db`, relative to where recipe runs: MLflow 3's recommended
local backend; its artifacts beside it in `outputs/mlartifacts`), experiment `logger.experiment`.
A `file:` store still works for writing (MLflow 3 keeps it behind MLFLOW_ALLOW_FILE_STORE, set
for it here).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from recipe.errors import RecipeError


class Tracker:
    def params(self, values: dict[str, Any]) -> None: ...
    def metrics(self, values: dict[str, float], step: int | None = None) -> None: ...
    def text(self, name: str, body: str) -> None: ...
    def close(self) -> None: ...


class TensorBoard(Tracker):
    def __init__(self, directory: Path) -> None:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise RecipeError("logger=tensorboard needs tensorboardX: pip install 'recipe[trackers]'") from None
        self.writer = SummaryWriter(logdir=str(directory))
        self.step = 0

    def params(self, values: dict[str, Any]) -> None:
        self.text("params", "\n".join(f"    {k}: {v}" for k, v in sorted(values.items())))

    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, self.step if step is None else step)

    def text(self, name: str, body: str) -> None:
        self.writer.add_text(name, body)

    def close(self) -> None:
        self.writer.close()


class MLflow(Tracker):
    def __init__(self, uri: str, experiment: str, run_name: str) -> None:
        try:
            import mlflow
        except ImportError:
            raise RecipeError("logger=mlflow needs mlflow: pip install 'recipe[trackers]'") from None
        artifacts = None
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = "file:" + str(Path(uri.removeprefix("file:")).resolve())
        elif uri.startswith("sqlite:///"):
            database = Path(uri.removeprefix("sqlite:///")).resolve()
            database.parent.mkdir(parents=True, exist_ok=True)
            uri, artifacts = f"sqlite:///{database}", (database.parent / "mlartifacts").as_uri()
        self.mlflow = mlflow
        mlflow.set_tracking_uri(uri)
        if artifacts is not None and mlflow.get_experiment_by_name(experiment) is None:
            mlflow.create_experiment(experiment, artifact_location=artifacts)
        mlflow.set_experiment(experiment)
        self.run = mlflow.start_run(run_name=run_name)

    def params(self, values: dict[str, Any]) -> None:
        self.mlflow.log_params({k: str(v)[:500] for k, v in values.items()})

    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        clean = {k.replace("@", "_"): float(v) for k, v in values.items()}
        self.mlflow.log_metrics(clean, step=step)

    def text(self, name: str, body: str) -> None:
        self.mlflow.log_text(body, name)

    def close(self) -> None:
        self.mlflow.end_run()


def open_tracker(config: DictConfig | None, run_name: str) -> Tracker | None:
    """The configured tracker for one run, or None (logger=none)."""
    kind = config.kind.value if config is not None else "none"
    if kind == "tensorboard":
        return TensorBoard(Path(config.dir) / run_name)  # type: ignore[union-attr]
    if kind == "mlflow":
        return MLflow(config.tracking_uri, config.experiment, run_name)  # type: ignore[union-attr]
    return None


def _numbers(prefix: str, values: dict[str, Any]) -> dict[str, float]:
    return {
        f"{prefix}/{k}": float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def log_stage(tracker: Tracker, stage: str, manifest: dict[str, Any], artifact: Path) -> None:
    """What a finished stage's artifact tells a tracker."""
    figures: dict[str, float] = {}
    if stage == "train" and (artifact / "metrics.jsonl").is_file():
        for line in (artifact / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line)
            tracker.metrics(
                _numbers("train", {k: row[k] for k in ("loss", "lr", "tokens_per_s") if k in row}), row["step"]
            )
        figures.update(_numbers("train", {k: manifest.get(k) for k in ("final_loss", "eval_loss", "steps")}))
    if stage == "test":
        for model, values in (manifest.get("summary") or {}).items():
            figures.update(_numbers(f"test/{model}", values))  # with each figure's _low and _high
        for metric, d in (manifest.get("differences") or {}).items():  # tuned - base, paired
            figures.update(_numbers(f"test/tuned-base/{metric}", {k: d.get(k) for k in ("value", "low", "high")}))
    if stage == "mix":
        figures.update(_numbers("mix", {"examples": manifest.get("examples"), "tokens": manifest.get("tokens")}))
    if stage == "distill":
        figures.update(_numbers("distill", manifest.get("conversations") or {}))
    for suite, counts in (manifest.get("contamination_counts") or {}).items():
        figures.update(_numbers(f"{stage}/contamination/{suite}", counts))
    if isinstance(manifest.get("cost_usd"), (int, float)):
        figures[f"{stage}/cost_usd"] = float(manifest["cost_usd"])
    if figures:
        tracker.metrics(figures)
