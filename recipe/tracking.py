"""Experiment trackers (`logger=none|tensorboard|mlflow|wandb`), through their own libraries (the
`trackers` extra: tensorboardX, mlflow and wandb, with the viewers `tensorboard` and `mlflow ui`).

Each run is one tracker run, named after its run directory. It receives, as parameters, the
command line's overrides (`override/<key>`) and every leaf of the composed config
(`config/<key>`, uninterpolated, no secret-named key), and when a stage finishes (built or
reused): its fingerprint; local training's steps (loss, learning rate, tokens/s from the
artifact's metrics.jsonl, by step); Test's headline figures per model (`test/<model>/<metric>`,
with their intervals, `_low`/`_high`), tuned - base (`test/tuned-base/<metric>/value|low|high`)
and contamination counts; Mix's and Distill's counts and cost.

A sweep is one group: its jobs are children of one MLflow parent run (made by the first job, under
a lock in the sweep's directory), directories under one TensorBoard directory
`sweep_<date>_<time>/<job>_<what it varies>`, or W&B runs of the group `sweep_<date>_<time>`; a
job's run is named by the values it varies (`mix.components.mqa.share=0.3`), not its number; the sweep's summary
goes to that parent run, directory or a run of the group (job type `sweep`) at the end.

TensorBoard: event files under `logger.dir/<run>`. MLflow: `logger.tracking_uri`, by default a
SQLite store (`sqlite:///outputs/mlflow.db`, relative to where recipe runs: MLflow 3's recommended
local backend; its artifacts beside it in `outputs/mlartifacts`), experiment `logger.experiment`.
A `file:` store still works for writing (MLflow 3 keeps it behind MLFLOW_ALLOW_FILE_STORE, set
for it here). Weights & Biases: project `logger.project`, offline under `logger.dir` by default
(`wandb sync <dir>/wandb/offline-run-*` uploads them), figures in each run's summary and steps as
its history.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from recipe.errors import RecipeError


class Tracker:
    def params(self, values: dict[str, Any]) -> None: ...
    def metrics(self, values: dict[str, float], step: int | None = None) -> None: ...
    def text(self, name: str, body: str) -> None: ...
    def files(self, folder: str, paths: list[Path]) -> None: ...  # attached to the run, under `folder`
    def close(self) -> None: ...
    def where(self) -> str:  # how to look at the run: a viewer's command, an address
        return ""


class TensorBoard(Tracker):
    def __init__(self, directory: Path, root: Path | None = None) -> None:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise RecipeError("logger=tensorboard needs tensorboardX: pip install 'recipe[trackers]'") from None
        self.writer = SummaryWriter(logdir=str(directory))
        self.root = root or directory  # what `tensorboard --logdir` is given: every run beside this one
        self.step = 0
        self.written: dict[str, int] = {}  # text tag -> entries so far: the next goes at that step
        self.hparams: dict[str, Any] = {}  # the command line's overrides: what this run varies
        self.latest: dict[str, float] = {}  # each figure's last value

    def params(self, values: dict[str, Any]) -> None:
        """One text entry per kind of parameter (`params/config`, `params/override`,
        `params/fingerprint`), each call a step of its own: a later call never hides an earlier one.
        The overrides are also the run's HParams, written with its figures when it closes."""
        kinds: dict[str, list[str]] = {}
        for key, value in sorted(values.items()):
            kind, _, name = key.partition("/") if "/" in key else ("params", "", key)
            kinds.setdefault(kind, []).append(f"    {key}: {value}")
            if kind == "override":
                self.hparams[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
        for kind, lines in kinds.items():
            self.text(f"params/{kind}", "\n".join(lines))

    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, self.step if step is None else step)
            self.latest[key] = float(value)

    def text(self, name: str, body: str) -> None:
        step = self.written.get(name, 0)
        self.writer.add_text(name, body, step)
        self.written[name] = step + 1

    def where(self) -> str:
        return f"`tensorboard --logdir {self.root}`"

    def close(self) -> None:
        """The HParams view: what the run varied (its overrides), against Test's headline figures
        (each model's and tuned - base, with intervals) or, without a Test, the training loss."""
        figures = {k: v for k, v in self.latest.items() if k.startswith("test/")}
        figures = figures or {k: v for k, v in self.latest.items() if k in ("train/final_loss", "train/eval_loss")}
        if figures:
            self.writer.add_hparams(self.hparams or {"overrides": "(none)"}, figures, name="hparams")
        self.writer.close()


class MLflow(Tracker):
    def __init__(
        self, uri: str, experiment: str, run_name: str, group: Path | None = None, resume: bool = False
    ) -> None:
        self.uri = uri
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
        # MLflow 3's viewer shows an experiment of this kind as training runs, not a GenAI overview.
        mlflow.set_experiment_tag("mlflow.experimentKind", "custom_model_development")
        if group is None:
            self.run = mlflow.start_run(run_name=run_name)
        elif resume:  # the sweep's own run: its parent run, made by its first job (or now)
            self.run = mlflow.start_run(run_id=_parent_run(mlflow, experiment, group))
        else:  # a sweep's job: a child of the sweep's parent run, made by whichever job comes first
            parent = _parent_run(mlflow, experiment, group)
            self.run = mlflow.start_run(run_name=run_name, tags={"mlflow.parentRunId": parent, "sweep": group.name})

    def params(self, values: dict[str, Any]) -> None:
        # MLflow's names: letters, digits and _ - . : / and space (a group's `@` and the like become _)
        items = [(re.sub(r"[^\w\-.:/ ]", "_", k), str(v)[:500]) for k, v in values.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 parameters per batch
            self.mlflow.log_params(dict(items[start : start + 100]))

    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        clean = {k.replace("@", "_"): float(v) for k, v in values.items()}
        self.mlflow.log_metrics(clean, step=step)

    def text(self, name: str, body: str) -> None:
        self.mlflow.log_text(body, name)

    def files(self, folder: str, paths: list[Path]) -> None:
        for path in paths:
            self.mlflow.log_artifact(str(path), artifact_path=folder)

    def close(self) -> None:
        self.mlflow.end_run()

    def where(self) -> str:
        """The run's page, opened on MLflow 3's model-training view (its viewer opens on the GenAI
        view, with nothing in it, otherwise); for a local store, after the viewer's command."""
        page = f"#/experiments/{self.run.info.experiment_id}/runs/{self.run.info.run_id}?workflowType=machine_learning"
        if self.uri.startswith(("http://", "https://")):
            return f"{self.uri.rstrip('/')}/{page}"
        return f"`mlflow ui --backend-store-uri {self.uri}`, then http://127.0.0.1:5000/{page}"


class WandB(Tracker):
    """A Weights & Biases run (the seed's fine-tune reports to W&B). `logger.mode=offline` (the
    default) writes it under `logger.dir` for `wandb sync` later; `online` sends it to
    `logger.project` (WANDB_API_KEY, or `wandb login`). W&B's own capture of the command line,
    the environment and the console is off: a key given on the command line stays out of it."""

    def __init__(self, config: DictConfig, run_name: str, group: str | None = None, job_type: str = "run") -> None:
        try:
            import wandb
        except ImportError:
            raise RecipeError("logger=wandb needs wandb: pip install 'recipe[trackers]'") from None
        directory = Path(config.dir).resolve()
        directory.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(
            silent=True,
            console="off",
            x_disable_meta=True,  # no argv, host, git or program in the run's metadata
            x_disable_stats=True,
            save_code=False,
            disable_git=True,
        )
        self.wandb = wandb
        self.run = wandb.init(
            project=config.project,
            entity=config.entity,
            name=run_name,
            group=group,
            job_type=job_type,
            dir=str(directory),
            mode=config.mode.value if hasattr(config.mode, "value") else str(config.mode),
            settings=settings,
            reinit="create_new",
        )

    def params(self, values: dict[str, Any]) -> None:
        self.run.config.update(values, allow_val_change=True)

    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in values.items()}
        if step is None:  # a figure, not a curve: the run's summary (W&B's run table) holds it
            self.run.summary.update(clean)
        else:
            self.run.log(clean, step=step)

    def text(self, name: str, body: str) -> None:
        path = Path(self.run.dir) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
        self.run.save(str(path), base_path=self.run.dir, policy="now")

    def where(self) -> str:
        if self.run.settings.mode == "offline":
            return f"`wandb sync {Path(self.run.dir).parent}` uploads it"
        return str(self.run.url or "")

    def files(self, folder: str, paths: list[Path]) -> None:
        for path in paths:  # copied into the run's files (synced with it): the store may be pruned
            kept = Path(self.run.dir) / folder / path.name
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, kept)
            self.run.save(str(kept), base_path=self.run.dir, policy="now")

    def close(self) -> None:
        self.run.finish()


def _parent_run(mlflow: Any, experiment_name: str, sweep_root: Path) -> str:
    """The sweep's parent run id: created once (under a lock, jobs may run in parallel) and kept in
    the sweep's directory; its own summary goes to it at the end of the sweep."""
    import fcntl

    sweep_root.mkdir(parents=True, exist_ok=True)
    with open(sweep_root / ".mlflow_parent.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        kept = sweep_root / "mlflow_parent_run"
        if kept.is_file():
            return kept.read_text().strip()
        experiment = mlflow.get_experiment_by_name(experiment_name).experiment_id
        run = mlflow.MlflowClient().create_run(experiment, run_name=sweep_name(sweep_root))
        kept.write_text(run.info.run_id + "\n")
        return run.info.run_id


# The keys a multirun varies, from its start (the sweep's own overrides, which its jobs never see)
# to each job's tracker run, in this process or a launcher's worker (they inherit the environment).
VARIES_ENV = "RECIPE_SWEEP_VARIES"


def varied_keys(hydra: DictConfig) -> list[str]:
    """The keys a multirun's `hydra` node varies: its sweep overrides (`mix.seed=0,1,2`,
    `choice(...)`, `interval(...)`) and a search sweeper's `params`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    task = hydra.overrides.task
    typed = [task._get_node(i)._value() for i in range(len(task))]  # as typed: iterating would resolve them
    swept = [o.key_or_group for o in OverridesParser.create().parse_overrides(typed) if o.is_sweep_override()]
    params = hydra.sweeper.get("params") or {}
    return list(dict.fromkeys([*swept, *params]))


def job_name(job: str, overrides: list[str]) -> str:
    """A sweep job's run name: the values it varies, `key=value` joined by commas; its number when
    the sweep's varied keys are not known (or it varies none of them)."""
    varied = set(json.loads(os.environ.get(VARIES_ENV, "[]")))
    said = [o.lstrip("+~") for o in overrides if o.partition("=")[0].lstrip("+~") in varied]
    return ",".join(said) or job


def _directory_name(job: str, name: str) -> str:
    """A TensorBoard run directory: the job's number first (runs sort in order), then what it varies,
    one path component (a `/` in a value is not a subdirectory), at most 200 characters."""
    return job if name == job else f"{job}_{name.replace(os.sep, '_')}"[:200]


def sweep_name(sweep_root: Path) -> str:
    """`sweep_<date>_<time>`: the name of a sweep's tracker run (MLflow) or directory (TensorBoard)."""
    return f"sweep_{sweep_root.parent.name}_{sweep_root.name}"


def open_tracker(
    config: DictConfig | None, run_name: str, sweep_root: Path | None = None, job: str | None = None
) -> Tracker | None:
    """The configured tracker for one run, or None (logger=none). A sweep's job (`sweep_root`, its
    number `job`) is grouped with its sweep: TensorBoard under `<dir>/sweep_<date>_<time>/<job>_<name>`,
    MLflow as a child of the sweep's parent run."""
    kind = config.kind.value if config is not None else "none"
    if kind == "tensorboard":
        base = Path(config.dir)  # type: ignore[union-attr]
        if sweep_root is None:
            return TensorBoard(base / run_name, root=base)
        return TensorBoard(base / sweep_name(sweep_root) / _directory_name(job or run_name, run_name), root=base)
    if kind == "mlflow":
        return MLflow(config.tracking_uri, config.experiment, run_name, sweep_root)  # type: ignore[union-attr]
    if kind == "wandb":
        return WandB(config, run_name, sweep_name(sweep_root) if sweep_root else None)  # type: ignore[arg-type]
    return None


def open_sweep_tracker(config: DictConfig | None, sweep_root: Path) -> Tracker | None:
    """The tracker run of a sweep's own summary: the sweep's TensorBoard directory, or its MLflow
    parent run (resumed)."""
    kind = config.kind.value if config is not None else "none"
    if kind == "tensorboard":
        return TensorBoard(Path(config.dir) / sweep_name(sweep_root))  # type: ignore[union-attr]
    if kind == "mlflow":
        return MLflow(config.tracking_uri, config.experiment, sweep_name(sweep_root), sweep_root, resume=True)  # type: ignore[union-attr]
    if kind == "wandb":  # a run of its own in the sweep's group
        return WandB(config, sweep_name(sweep_root), sweep_name(sweep_root), job_type="sweep")  # type: ignore[arg-type]
    return None


def run_params(cfg: DictConfig, overrides: list[str]) -> dict[str, Any]:
    """What a tracker records of a run's config: the command line's overrides (`override/<key>`) and
    every leaf of the composed config (`config/<dotted key>`, uninterpolated, no secret-named key)."""
    from omegaconf import OmegaConf

    from recipe.secrets import is_secret_key, strip_secrets

    out: dict[str, Any] = {}
    for line in overrides:
        key, _, value = line.partition("=")
        name = key.lstrip("+~")
        if not is_secret_key(name.rsplit(".", 1)[-1]):
            out[f"override/{name}"] = "(removed)" if key.startswith("~") else value
    node = strip_secrets(OmegaConf.to_container(cfg, resolve=False, enum_to_str=True))

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            out[f"config/{prefix}"] = json.dumps(value, default=str) if isinstance(value, list) else value

    walk({k: v for k, v in node.items() if k != "hydra"}, "")
    return out


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
    attached = [artifact / name for name in ATTACHED.get(stage, ()) if (artifact / name).is_file()]
    if attached:
        tracker.files(stage, attached)


# What a stage's artifact attaches to the tracker's run (MLflow and W&B; TensorBoard keeps no files):
# what a person opens, so a run reads in the tracker's own UI after the store is pruned.
ATTACHED = {
    "test": ("report.html", "report.md", "chart.png", "metrics.json", "generations.jsonl", "summary.txt"),
    "train": ("metrics.jsonl",),
}
SWEEP_PAGES = ("summary.html", "summary.md", "summary.csv", "summary.png", "proposal.md")
