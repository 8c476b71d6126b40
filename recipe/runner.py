"""The whole control flow: pick stages, fingerprint them, reuse or build artifacts, record run.json."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from recipe import summary, tracking
from recipe.artifacts import Planned
from recipe.secrets import together_api_key
from recipe.stages import CONFIG_KEY, STAGE_ORDER, Stage, StageError, StagePending, build_stage, check_targets
from recipe.store import Artifact, ArtifactStore, fingerprint, write_json_atomic

log = logging.getLogger(__name__)


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


class _Plan:
    """Stages and fingerprints, computed once, upstream first."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.stages: dict[str, Stage] = {}
        self.fingerprints: dict[str, str] = {}

    def stage(self, name: str) -> Stage:
        if name not in self.stages:
            self.stages[name] = build_stage(name, self.cfg)
        return self.stages[name]

    def fingerprint(self, name: str) -> str:
        if name not in self.fingerprints:
            stage = self.stage(name)
            for up in stage.upstream():
                if self.cfg.get(CONFIG_KEY[up]) is None:
                    raise StageError(
                        f"stage {name!r} needs the {up!r} stage's artifact, and {CONFIG_KEY[up]} has no config; "
                        f"choose one with {CONFIG_KEY[up]}=<option>"
                    )
            upstream = {up: self.fingerprint(up) for up in stage.upstream()}
            self.fingerprints[name] = fingerprint(name, stage.version, stage.semantic_config(), upstream)
        return self.fingerprints[name]


def run(cfg: DictConfig, run_dir: Path | None = None) -> dict[str, Any]:
    """Run the selected stages; return (and write to <run dir>/run.json) what happened.

    `run_dir` defaults to Hydra's run directory (the current directory outside a Hydra job)."""
    if run_dir is None:
        run_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path.cwd()
    check_targets(cfg)
    summary.quiet(bool(cfg.get("verbose", False)))
    store = ArtifactStore(cfg.store_dir)
    plan = _Plan(cfg)
    record: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "dry_run": bool(cfg.dry_run),
        "store": str(store.root),
        "stages": {},
    }
    artifacts: dict[str, Artifact] = {}
    plans: dict[str, Planned] = {}  # a dry run's expected artifacts, for downstream plans
    tracker = None if cfg.dry_run else tracking.open_tracker(cfg.get("logger"), "_".join(run_dir.resolve().parts[-2:]))
    try:
        for name in select_stages(cfg):
            started = time.monotonic()
            entry: dict[str, Any] = record["stages"].setdefault(name, {"status": "running"})
            stage = plan.stage(name)
            fp = plan.fingerprint(name)
            stage.store, stage.fingerprint = store, fp
            entry["fingerprint"] = fp
            inputs: dict[str, Artifact | None] = {}
            for up in stage.upstream():
                inputs[up] = artifacts.get(up) or store.get(up, plan.fingerprint(up))
                if inputs[up] is None and not cfg.dry_run:
                    raise StageError(
                        f"stage {name!r} needs the {up!r} artifact {plan.fingerprint(up)}, which is not "
                        f"in {store.root}; run it too: stages=[{up},{name}]"
                    )
            hit = store.get(name, fp) if stage.reusable else None
            entry["cache_hit"] = hit is not None
            if cfg.dry_run:
                entry["status"] = "planned"
                stage.upstream_plans = {up: plans[up] for up in stage.upstream() if inputs[up] is None and up in plans}
                entry["plan"] = "reuse " + str(hit.path) if hit else stage.plan(inputs)
                if stage.planned is not None and not hit:
                    plans[name] = stage.planned
                entry["estimated_usd"] = 0.0 if hit else stage.planned_usd
                if not hit and stage.uses_together() and not together_api_key(cfg):
                    entry["plan"] += "; TOGETHER_API_KEY is not set: a run would stop here"
                    entry["missing"] = "TOGETHER_API_KEY"
                log.info("[dry run] %s %s: %s", name, fp, entry["plan"])
            else:
                if hit is None:
                    log.info("%s %s: running", name, fp)
                    meta = {
                        "stage": name,
                        "fingerprint": fp,
                        "version": stage.version,
                        "upstream": {up: plan.fingerprint(up) for up in stage.upstream()},
                        "config": stage.semantic_config(),
                    }
                    try:
                        hit = store.build(
                            name, fp, lambda out, s=stage, i=inputs: s.run(i, out), meta, replace=not stage.reusable
                        )  # type: ignore[misc]
                    except StagePending as pending:
                        entry.update(status="pending", note=str(pending), **pending.details)
                        entry["seconds"] = round(time.monotonic() - started, 3)
                        log.info("%s %s: pending: %s", name, fp, pending)
                        break  # later stages need this artifact; a later run picks the work up
                    manifest = hit.manifest
                    if hit.reused:  # a twin job built it while this one waited
                        entry["cache_hit"] = True
                    for key in ("usage", "cost_usd"):  # what this run spent (a cache hit spends nothing)
                        if key in manifest and not hit.reused:
                            entry[key] = manifest[key]
                else:
                    log.info("%s %s: cache hit, reusing %s", name, fp, hit.path)
                artifacts[name] = hit
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
        if tracker is not None:
            tracker.close()
    pending = any(s["status"] == "pending" for s in record["stages"].values())
    record["status"] = "planned" if cfg.dry_run else "pending" if pending else "ok"
    record["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    write_json_atomic(run_dir / "run.json", record)
    print_summary(record, run_dir)
    return record


def _usd(entry: dict[str, Any], planned: bool) -> float | None:
    return (
        entry.get("estimated_usd") if planned else entry.get("cost_usd", 0.0 if entry.get("status") == "ok" else None)
    )


def print_summary(record: dict[str, Any], run_dir: Path) -> None:
    """The run table: stage, status, cache, seconds, cost (spent, or for a dry run estimated), where."""
    planned = bool(record.get("dry_run"))
    cost = "est. $" if planned else "cost $"
    print(f"{'stage':<8} {'status':<8} {'cache':<5} {'seconds':>8} {cost:>9}  fingerprint / artifact or plan")
    total, unknown = 0.0, []
    for name, s in record["stages"].items():
        where = s.get("artifact") or s.get("plan", "")
        hit = "hit" if s.get("cache_hit") else "-"
        usd = _usd(s, planned)
        total += usd or 0.0
        if usd is None:
            unknown.append(name)
        money = "?" if usd is None else f"{usd:.2f}"
        line = f"{name:<8} {s['status']:<8} {hit:<5} {s.get('seconds', 0):>8.2f} {money:>9}  {s.get('fingerprint', '')}  {where}"
        print(line)
    if planned or total:
        more = f" + unknown ({', '.join(unknown)})" if unknown else ""
        print(f"{'estimated' if planned else 'spent'} total: ${total:.2f}{more}")
    print(f"run record: {run_dir / 'run.json'}")
