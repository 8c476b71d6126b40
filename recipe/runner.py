"""The whole control flow: pick stages, fingerprint them, plan them all (the pre-flight), then reuse or
build their artifacts, and record run.json."""

from __future__ import annotations

import logging
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from tabulate import tabulate

from recipe import summary, threads, tracking
from recipe.artifacts import Planned
from recipe.data import remote
from recipe.errors import RecipeError
from recipe.secrets import together_api_key
from recipe.stages import (
    CONFIG_KEY,
    STAGE_ORDER,
    Plan,
    Stage,
    StageError,
    StagePending,
    Workspace,
)
from recipe.store import Artifact, ArtifactStore, claim, damage, fingerprint, write_json_atomic
from recipe.targets import build_stage, check_config

log = logging.getLogger(__name__)
DETAILS_WIDTH = 110  # the dry run's notes below its table, wrapped


def configured_stages(cfg: DictConfig) -> list[str]:
    return [s for s in STAGE_ORDER if cfg.get(CONFIG_KEY[s]) is not None]


def select_stages(cfg: DictConfig) -> list[str]:
    available = configured_stages(cfg)
    if cfg.stages is None:
        return available
    for name in cfg.stages:
        if name not in STAGE_ORDER:
            raise StageError(f"stages: unknown stage {name!r}; the stages are {', '.join(STAGE_ORDER)}")
        if name not in available:
            raise StageError(f"stages: {name!r} has no config; choose one with {CONFIG_KEY[name]}=<option>")
    return [s for s in STAGE_ORDER if s in cfg.stages]


class Pipeline:
    """The configured stages and their fingerprints, upstream first. A stage's fingerprint hashes
    its semantic config and the content identity of what it reads of its inputs (`Stage.reads`),
    not the inputs' configs: an input rebuilt byte for byte leaves everything below it a cache hit.
    So a fingerprint is known once the stage's inputs exist (None before)."""

    def __init__(self, cfg: DictConfig, store: ArtifactStore) -> None:
        self.cfg, self.store = cfg, store
        self.stages: dict[str, Stage] = {}
        self.fingerprints: dict[str, str] = {}
        self.made: dict[str, Artifact] = {}  # artifacts built or reused by this run

    def stage(self, name: str) -> Stage:
        if name not in self.stages:
            self.stages[name] = build_stage(name, self.cfg)
        return self.stages[name]

    def fingerprint(self, name: str) -> str | None:
        if name not in self.fingerprints:
            stage = self.stage(name)
            for up in stage.upstream():
                if self.cfg.get(CONFIG_KEY[up]) is None:
                    raise StageError(
                        f"stage {name!r} needs the {up!r} stage's artifact, and {CONFIG_KEY[up]} has no config; "
                        f"choose one with {CONFIG_KEY[up]}=<option>"
                    )
            semantic = stage.semantic_config()  # resolved now: a broken interpolation fails before any work
            reads = {}
            for up in stage.upstream():
                artifact = self.artifact(up)
                if artifact is None:
                    return None  # known once `up` is built
                reads[up] = stage.reads(up, artifact)
            self.fingerprints[name] = fingerprint(name, stage.version, semantic, reads)
        return self.fingerprints[name]

    def artifact(self, name: str) -> Artifact | None:
        """The stage's artifact as this run has it, or as the store has it under its fingerprint."""
        if name in self.made:
            return self.made[name]
        fp = self.fingerprint(name)
        return self.store.get(name, fp) if fp is not None else None

    def name_of(self, name: str) -> str:
        """The artifact's fingerprint, or why it is not known yet (for messages)."""
        fp = self.fingerprint(name)
        return fp if fp is not None else f"(its inputs, {', '.join(self.stage(name).upstream())}, are not built)"

    def made_now(self, name: str, artifact: Artifact) -> None:
        """`name`'s artifact is built (or reused): the fingerprints below it are computed from it."""
        self.made[name] = artifact
        self.fingerprints = {n: fp for n, fp in self.fingerprints.items() if n in self.made}


def preflight(cfg: DictConfig, names: list[str], pipeline: Pipeline, store: ArtifactStore) -> dict[str, dict[str, Any]]:
    """What every selected stage would do, before anything runs: its fingerprint, whether its artifact
    exists, and its plan (cost, size, what the install lacks), each planned from the artifacts that
    exist or from the plan upstream. A run refuses here, before any work, when a key is missing, an
    input can come from nowhere, or a stage cannot run on this install."""
    entries: dict[str, dict[str, Any]] = {}
    for name in names:
        stage, fp = pipeline.stage(name), pipeline.fingerprint(name)
        hit = store.get(name, fp) if stage.reusable and fp is not None else None
        problem = damage(hit) if hit is not None else None
        if problem:  # not what was made: built again (a dry run says so)
            hit = None
        entries[name] = {"status": "planned", "fingerprint": fp, "cache_hit": hit is not None}
        if problem:
            entries[name]["damaged"] = problem
        if hit is not None:
            entries[name]["artifact"] = str(hit.path)
    need_key = [n for n in names if not entries[n]["cache_hit"] and pipeline.stage(n).uses_together()]
    if need_key and not together_api_key(cfg):
        if not cfg.dry_run:
            raise StageError(
                f"TOGETHER_API_KEY is not set, and {', '.join(need_key)} would call Together: export it (or pass "
                "together.api_key=...) and run again; nothing was run"
            )
        for name in need_key:
            entries[name]["missing"] = "TOGETHER_API_KEY"
    sizes: dict[str, Planned] = {}
    for name in names:
        stage, entry = pipeline.stage(name), entries[name]
        inputs: dict[str, Artifact | None] = {up: pipeline.artifact(up) for up in stage.upstream()}
        for up in stage.upstream():
            problem = damage(inputs[up]) if inputs[up] is not None else None  # type: ignore[arg-type]
            if problem and up not in names:
                raise StageError(
                    f"the {up} artifact {pipeline.name_of(up)} that {name} reads is damaged: {problem}; build it "
                    f"again: stages=[{','.join(sorted({*names, up}, key=STAGE_ORDER.index))}]; nothing was run"
                )
            if problem:
                inputs[up] = None  # rebuilt in this run, before this stage
            elif inputs[up] is not None and not cfg.dry_run:
                store.hold(up, inputs[up].fingerprint)  # type: ignore[union-attr]  # never pruned while this run needs it
        if entry["cache_hit"] and not cfg.dry_run:
            store.hold(name, entry["fingerprint"])
        absent = [up for up in stage.upstream() if inputs[up] is None and up not in names]
        if absent and not cfg.dry_run:
            up = absent[0]
            raise StageError(
                f"stage {name!r} needs the {up!r} artifact {pipeline.name_of(up)}, which is not in {store.root}; "
                f"run it too: stages=[{','.join(sorted({*names, *absent}, key=STAGE_ORDER.index))}]; nothing was run"
            )
        if entry["cache_hit"]:
            plan = Plan(f"reuse {entry['artifact']}", usd=0.0)
        else:
            upstream = {up: sizes[up] for up in stage.upstream() if inputs[up] is None and up in sizes}
            plan = stage.plan(inputs, upstream)
            if plan.needs and not cfg.dry_run:
                raise StageError(f"{name}: {plan.needs}; nothing was run")
        if plan.size is not None:
            sizes[name] = plan.size
            if plan.size.examples is not None:
                entry["planned_size"] = {"examples": plan.size.examples, "tokens": plan.size.tokens}
        entry.update(plan=plan.text, summary=plan.summary, details=plan.details, estimated_usd=plan.usd)
        if plan.needs:
            entry["needs"] = plan.needs
        if plan.usd is not None and plan.bound != "about":
            entry["estimate_bound"] = plan.bound
        budget = stage.budget()
        if budget is not None and budget[1] is not None:
            entry["budget"] = {"key": budget[0], "max_usd": budget[1]}
            if plan.usd is not None and plan.usd > budget[1]:
                entry["over_budget"] = True
    return entries


def refusal(entries: dict[str, dict[str, Any]]) -> str | None:
    """The pre-flight's refusal when a plan exceeds its stage's budget (None: every plan fits)."""
    over = [(n, e) for n, e in entries.items() if e.get("over_budget")]
    if not over:
        return None
    said = "; ".join(
        f"{n} would cost {_bound(e)}${e['estimated_usd']:,.2f}, over {e['budget']['key']}={e['budget']['max_usd']:g}"
        for n, e in over
    )
    keys = " ".join(f"{e['budget']['key']}=<more>" for _, e in over)
    return (
        f"pre-flight: {said}. Nothing was run and nothing was spent. Raise the budget ({keys}), change the "
        "plan, or accept the risk with preflight=warn (the budgets still stop spending at the cap during the run)"
    )


def run(cfg: DictConfig, run_dir: Path | None = None) -> dict[str, Any]:
    """Run the selected stages; return (and write to <run dir>/run.json) what happened.

    `run_dir` defaults to Hydra's run directory (the current directory outside a Hydra job)."""
    if run_dir is None:
        run_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path.cwd()
    check_config(cfg)
    summary.quiet(bool(cfg.get("verbose", False)))
    store = ArtifactStore(cfg.store_dir)
    pipeline = Pipeline(cfg, store)
    names = select_stages(cfg)
    record: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "dry_run": bool(cfg.dry_run),
        "store": str(store.root),
        "stages": {},
    }
    try:
        record["stages"] = preflight(cfg, names, pipeline, store)
    except BaseException as e:
        store.release()
        record.update(status="refused" if isinstance(e, StageError) else "failed", error=str(e))
        write_json_atomic(run_dir / "run.json", record)
        raise
    if cfg.dry_run:
        store.release()
        record.update(status="planned", finished=datetime.now(UTC).isoformat(timespec="seconds"))
        write_json_atomic(run_dir / "run.json", record)
        print_summary(record, run_dir)
        return record
    refused = refusal(record["stages"])
    # Remote inputs are looked up only for a run that will go on (a refusal reads nothing).
    going = not (refused and cfg.preflight.value == "refuse")
    absent = remote.missing(cfg, [n for n in names if not record["stages"][n]["cache_hit"]]) if going else []
    if absent:  # an input from nowhere: found before anything is paid (recipe/data/remote.py)
        text = f"pre-flight: {'; '.join(absent)}. Nothing was run and nothing was spent"
        refused = f"{refused}\n{text}" if refused else text
    try:
        claim(store.root)  # a store knows itself: marked before anything is written to it
    except RecipeError:
        store.release()
        raise
    if refused and cfg.preflight.value == "refuse":
        store.release()
        record.update(status="refused", error=refused)
        write_json_atomic(run_dir / "run.json", record)
        print_summary(record, run_dir)
        raise StageError(refused)
    if refused:
        print(f"warning (preflight=warn): {refused.split('. Nothing was run')[0]}", flush=True)
    else:
        said = preflight_line(record["stages"])
        if said:
            print(said, flush=True)
    record["threads"] = set_threads(cfg.get("threads"))
    return _build(cfg, names, pipeline, store, record, run_dir)


def parallel_jobs() -> int:
    """How many jobs of this sweep run at once: the launcher's n_jobs (joblib), else 1."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return 1
    n_jobs = HydraConfig.get().launcher.get("n_jobs")
    if not isinstance(n_jobs, int) or n_jobs == 0:
        return 1
    return threads.cores() if n_jobs < 0 else n_jobs


def set_threads(configured: int | None) -> int | None:
    """Size the threads of this run's processes (recipe/threads.py); say so when shared out."""
    jobs = parallel_jobs()
    count = threads.share(configured, jobs, threads.cores())
    if count is None:
        return None
    threads.apply(count)
    if configured is None:
        print(f"threads: {count} per process ({threads.cores()} cores, {jobs} jobs at once; `threads=N` sets it)")
    return count


def _build(
    cfg: DictConfig, names: list[str], pipeline: Pipeline, store: ArtifactStore, record: dict[str, Any], run_dir: Path
) -> dict[str, Any]:
    """Build (or reuse) each stage in order, recording each in run.json as it ends; the run's table."""
    tracker = _open_tracker(cfg, run_dir)
    try:
        for name in names:
            if not _build_stage(name, pipeline, store, record["stages"][name], tracker):
                break  # pending: later stages need its artifact; a later run picks the work up
            write_json_atomic(run_dir / "run.json", record)
    except BaseException as e:
        failed = [n for n, s in record["stages"].items() if s.get("status") == "running"]
        for name in failed:
            record["stages"][name].update(status="failed", error=str(e) or type(e).__name__)
            record["stages"][name].update(getattr(e, "details", {}))
        record["status"] = "failed"
        write_json_atomic(run_dir / "run.json", record)
        raise
    finally:
        store.release()
        if tracker is not None:
            tracker.close()
            record["tracked"] = tracker.where()
    for entry in record["stages"].values():
        if entry["status"] == "planned":  # after a pending stage
            entry["status"] = "not run"
    pending = any(s["status"] == "pending" for s in record["stages"].values())
    record["status"] = "pending" if pending else "ok"
    record["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    write_json_atomic(run_dir / "run.json", record)
    print_summary(record, run_dir)
    return record


def _open_tracker(cfg: DictConfig, run_dir: Path) -> tracking.Tracker | None:
    """The run's tracker (logger=...), named after its run directory, or a sweep job's after what it
    varies and grouped with its sweep; given the run's overrides and composed config."""
    sweep_root, overrides = None, []
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        overrides = list(hydra_cfg.overrides.task)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            sweep_root = run_dir.resolve().parent
    if sweep_root is not None:
        name = tracking.job_name(run_dir.name, overrides)
    else:
        name = "_".join(run_dir.resolve().parts[-2:])
    tracker = tracking.open_tracker(cfg.get("logger"), name, sweep_root, job=run_dir.name)
    if tracker is not None:
        tracker.params(tracking.run_params(cfg, overrides))
    return tracker


def _build_stage(
    name: str, pipeline: Pipeline, store: ArtifactStore, entry: dict[str, Any], tracker: tracking.Tracker | None
) -> bool:
    """One stage: its inputs from the store, its artifact reused or built, what it made said and
    recorded in `entry`. False when it is pending (a paid job still running)."""
    started = time.monotonic()
    entry["status"] = "running"
    stage = pipeline.stage(name)
    inputs = _inputs(name, stage, pipeline, store)
    fp = pipeline.fingerprint(name)  # its inputs exist now
    assert fp is not None
    entry["fingerprint"] = fp
    hit = _reusable(name, stage, fp, store)
    entry["cache_hit"] = hit is not None
    if hit is None:
        log.info("%s %s: running", name, fp)
        try:
            hit = _run_stage(name, stage, fp, inputs, store)
        except StagePending as pending:
            entry.update(status="pending", note=str(pending), **pending.details)
            entry["seconds"] = round(time.monotonic() - started, 3)
            log.info("%s %s: pending: %s", name, fp, pending)
            return False
        if hit.reused:  # a twin job built it while this one waited
            entry["cache_hit"] = True
        for key in ("usage", "cost_usd"):  # what this run spent (a cache hit spends nothing)
            if key in hit.manifest and not hit.reused:
                entry[key] = hit.manifest[key]
    else:
        log.info("%s %s: cache hit, reusing %s", name, fp, hit.path)
    pipeline.made_now(name, hit)
    store.hold(name, fp)
    entry.update(status="ok", artifact=str(hit.path))
    manifest = hit.manifest
    for key in ("metrics", "contamination_counts"):  # headline figures, for sweep summaries
        if manifest.get(key) is not None:
            entry[key] = manifest[key]
    if tracker is not None:
        tracker.params({f"fingerprint/{name}": fp})
        tracking.log_stage(tracker, name, manifest, hit.path)
    said = summary.line(name, manifest)
    if said:
        print(f"{name}: {said}{' (reused)' if entry['cache_hit'] else ''}", flush=True)
    report = stage.report(hit)
    if report:
        print(report, flush=True)
    entry["seconds"] = round(time.monotonic() - started, 3)
    return True


def _inputs(name: str, stage: Stage, pipeline: Pipeline, store: ArtifactStore) -> dict[str, Artifact]:
    """The artifacts a stage reads, each held in the store (never pruned while read)."""
    inputs: dict[str, Artifact] = {}
    for up in stage.upstream():
        artifact = pipeline.artifact(up)
        if artifact is None:
            raise StageError(
                f"stage {name!r} needs the {up!r} artifact {pipeline.name_of(up)}, which is not "
                f"in {store.root}; run it too: stages=[{up},{name}]"
            )
        store.hold(up, artifact.fingerprint)
        inputs[up] = artifact
    return inputs


def _reusable(name: str, stage: Stage, fp: str, store: ArtifactStore) -> Artifact | None:
    """The stored artifact of this fingerprint, unless the stage is never reused or it is damaged
    (then it is discarded and built again)."""
    hit = store.get(name, fp) if stage.reusable else None
    if hit is not None and (problem := damage(hit)):
        print(f"{name}: {problem}: building it again", flush=True)
        store.discard(name, fp)
        return None
    return hit


def _run_stage(name: str, stage: Stage, fp: str, inputs: dict[str, Artifact], store: ArtifactStore) -> Artifact:
    """Run a stage into a new artifact; the manifest records what it read, by content and artifact."""
    meta = {
        "stage": name,
        "fingerprint": fp,
        "version": stage.version,
        "upstream": {up: stage.reads(up, inputs[up]) for up in stage.upstream()},
        "inputs": {up: inputs[up].fingerprint for up in stage.upstream()},
        "config": stage.semantic_config(),
    }
    try:
        return store.build(
            name,
            fp,
            lambda out: stage.run(dict(inputs), Workspace(out, fp, store)).manifest(),
            meta,
            replace=not stage.reusable,
        )
    except FileNotFoundError as e:  # an input removed under the run (outside recipe)
        raise StageError(
            f"{name}: {e.filename or 'a file'} vanished while {name} read it (removed outside recipe?); "
            "run again to build what is missing"
        ) from None


def _bound(entry: dict[str, Any]) -> str:
    return {"at most": "at most ", "at least": "at least "}.get(entry.get("estimate_bound", ""), "~")


def _money(usd: float | None, prefix: str = "") -> str:
    return "?" if usd is None else f"{prefix}{usd:,.2f}"


def preflight_line(entries: dict[str, dict[str, Any]]) -> str | None:
    """One line before a run that may cost money: the estimate per stage, within every budget."""
    paid = {n: e for n, e in entries.items() if not e["cache_hit"] and e.get("estimated_usd") != 0.0}
    if not paid:
        return None
    parts = ", ".join(
        f"{n} {_bound(e)}${e['estimated_usd']:,.2f}" if e["estimated_usd"] is not None else f"{n} not priced"
        for n, e in paid.items()
    )
    return f"pre-flight: {parts}; within every budget"


def print_summary(record: dict[str, Any], run_dir: Path) -> None:
    """The run table (a dry run's: what each stage would do and cost, its budget; a run's: status,
    seconds, cost, artifact), then a dry run's details, the total, and what a run would refuse."""
    planned = record.get("dry_run") or record.get("status") == "refused"
    stages = record["stages"]
    rows = []
    total, unknown = 0.0, []
    for name, s in stages.items():
        hit = "hit" if s.get("cache_hit") else "-"
        if planned:
            usd = s.get("estimated_usd")
            budget = s.get("budget")
            flag = "OVER" if s.get("over_budget") else ("no key" if s.get("missing") else "")
            money = _money(usd, {"at most": "≤", "at least": "≥"}.get(s.get("estimate_bound", ""), ""))
            rows.append([name, hit, money, f"{budget['max_usd']:,.2f}" if budget else "-", flag, s.get("summary", "")])
        else:
            usd = s.get("cost_usd", 0.0 if s.get("status") == "ok" else None)
            where = s.get("artifact") or s.get("note") or s.get("error", "")
            rows.append([name, s["status"], hit, f"{s.get('seconds', 0):,.1f}", _money(usd), where])
        total += usd or 0.0
        if usd is None:
            unknown.append(name)
    if planned:
        if record.get("dry_run"):
            print("dry run: what each stage would do and cost; nothing was run or sent")
        headers = ["stage", "cache", "est. $", "budget $", "", "plan"]
        print(
            tabulate(rows, headers, disable_numparse=True, colalign=("left", "left", "right", "right", "left", "left"))
        )
        notes = [(n, s["details"]) for n, s in stages.items() if s.get("details")]
        notes += [(n, s["needs"]) for n, s in stages.items() if s.get("needs")]
        keyless = [n for n, s in stages.items() if s.get("missing")]
        if keyless:
            notes.append(
                ("key", f"TOGETHER_API_KEY is not set: a run would stop before any work ({', '.join(keyless)})")
            )
        if notes:
            print()
        for name, text in notes:
            print(textwrap.fill(f"{name}: {text}", width=DETAILS_WIDTH, subsequent_indent="  "))
        more = f" + unknown ({', '.join(unknown)})" if unknown else ""
        refused = refusal(stages)
        print(f"\nestimated total: ${total:,.2f}{more}{' if every stage ran' if refused else ''}")
        if refused:
            said = refused.split(". Nothing")[0].replace("pre-flight: ", "")
            print(f"as configured, a run refuses at the pre-flight and spends nothing: {said}")
    else:
        headers = ["stage", "status", "cache", "seconds", "cost $", "artifact"]
        print(
            tabulate(rows, headers, disable_numparse=True, colalign=("left", "left", "left", "right", "right", "left"))
        )
        if total:
            more = f" + unknown ({', '.join(unknown)})" if unknown else ""
            print(f"spent: ${total:,.2f}{more}")
    print(f"run record: {run_dir / 'run.json'}")
    if record.get("tracked"):
        print(f"tracked: {record['tracked']}")
    if not planned and stages.get("train", {}).get("status") == "ok" and record.get("status") == "ok":
        print("next: `recipe playground` puts one prompt to base and tuned side by side in a browser")
