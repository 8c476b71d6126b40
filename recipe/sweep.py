"""Sweeps: a Hydra callback that keeps a summary at the multirun root, and stops early on request.

After every job (and at the end of the sweep) `summary.csv`, `summary.md` and `summary.png` are
rewritten at the multirun root from what the job directories hold: each job's overrides (from
`.hydra/overrides.yaml`, which the secrets callback has already scrubbed), its `run.json` (status,
Test's headline figures, whether Distill was a cache hit, seconds) and the job's outcome. Rewriting
from the directories, not from memory, keeps it right under any launcher (jobs in other processes or
on other machines) and when the sweep itself stops on a failed job.

Jobs are compared, not only listed (recipe/evaluation/comparison.py): for each Test figure of the
tuned model, every job's paired difference to the baseline job (`sweep.baseline`) on the prompts
both answered, with its interval and word, and a rank group (jobs that cannot be told apart share
one). Mix's examples and tokens per component are columns too.

`sweep.fail_fast=true`: once a job has failed, the next job to start stops the sweep.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from recipe import pages, tracking
from recipe.errors import RecipeError
from recipe.evaluation import comparison, uncertainty
from recipe.evaluation import fit as fitting
from recipe.evaluation import report as reporting
from recipe.evaluation.report import is_bound
from recipe.evaluation.uncertainty import Settings

log = logging.getLogger(__name__)
JOB_FILE = "job.json"
last_sweep: dict[str, Any] = {}  # the last multirun of this process: root, jobs, failed, summary (for the exit code)


@dataclass(frozen=True)
class JobFailed:
    """What a sweep job returns when it stopped on a RecipeError (its one-line error was printed):
    the sweep goes on, and the summary marks the job failed with that error. It is not a number:
    a search sweeper (Optuna) records the trial as failed."""

    error: str


def _multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _write_atomic(path: Path, text: str | bytes) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_bytes(text.encode() if isinstance(text, str) else text)
    os.replace(partial, path)


class SweepSummary(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ[tracking.VARIES_ENV] = json.dumps(tracking.varied_keys(config.hydra))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not _multirun() or not config.get("sweep") or not config.sweep.fail_fast:
            return
        job_dir = Path(config.hydra.runtime.output_dir)
        failed = [row["job"] for row in collect(job_dir.parent) if row["status"] == "failed"]
        if failed:
            skipped = {
                "job": config.hydra.job.num,
                "status": "skipped",
                "error": f"sweep.fail_fast after job {failed[0]}",
            }
            _write_atomic(job_dir / JOB_FILE, json.dumps(skipped) + "\n")
            write_summary(job_dir.parent)
            root = job_dir.parent
            # SystemExit, not an Exception: Hydra turns a callback's exceptions into warnings.
            raise SystemExit(
                f"error: sweep.fail_fast: job {failed[0]} failed, so the sweep stops before job "
                f"{config.hydra.job.num} (summary: {root / 'summary.md'})"
            )

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if not _multirun():
            return
        job_dir = Path(config.hydra.runtime.output_dir)
        outcome = {"job": config.hydra.job.num, "status": job_return.status.name.lower()}
        if job_return.status == JobStatus.FAILED:
            outcome["error"] = str(job_return._return_value)  # reading .return_value would re-raise
        elif isinstance(job_return._return_value, JobFailed):
            outcome.update(status="failed", error=job_return._return_value.error)
        _write_atomic(job_dir / JOB_FILE, json.dumps(outcome) + "\n")
        write_summary(job_dir.parent)
        last_sweep["root"] = str(job_dir.parent)  # for what the console script says if the sweeper fails

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ.pop(tracking.VARIES_ENV, None)
        root = Path(str(config.hydra.sweep.dir))
        if root.is_dir():
            rows, found = write_summary(root)
            print(f"sweep summary ({len(rows)} jobs): {root / 'summary.html'} (text: {root / 'summary.md'})")
            for line in found:
                print(f"  {line}")
            if any(r["metrics"] for r in rows):
                said = ("**Best job**", "**Objective**", "recipe ")
                proposed = [line for line in fit(root).splitlines() if line.startswith(said)]
                write_summary(root)  # summary.html with the proposal
                print(f"proposed mixture: {root / 'proposal.md'}" + "".join(f"\n  {line}" for line in proposed))
            failed = sum(row["status"] in ("failed", "refused") for row in rows)
            last_sweep.update(jobs=len(rows), failed=failed, summary=str(root / "summary.md"))
            tracker = tracking.open_sweep_tracker(config.get("logger"), root)
            if tracker is not None:
                tracker.text("summary.md", (root / "summary.md").read_text())
                tracker.files("sweep", [root / n for n in tracking.SWEEP_PAGES if (root / n).is_file()])
                for row in rows:
                    if isinstance(row["job"], int):
                        tracker.metrics({f"sweep/{k}": v for k, v in row["metrics"].items()}, step=row["job"])
                tracker.close()


def _job_dirs(root: Path) -> list[Path]:
    dirs = [p for p in root.iterdir() if (p / ".hydra").is_dir()] if root.is_dir() else []
    return sorted(dirs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def collect(root: Path) -> list[dict[str, Any]]:
    """One row per job directory: overrides, status, Test figures, Distill reuse, seconds, error."""
    rows = []
    for job_dir in _job_dirs(root):
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
        run = json.loads((job_dir / "run.json").read_text()) if (job_dir / "run.json").is_file() else None
        job = json.loads((job_dir / JOB_FILE).read_text()) if (job_dir / JOB_FILE).is_file() else None
        stages = (run or {}).get("stages", {})
        status = (run or {}).get("status") or ("running" if job is None else job["status"])
        if job is not None and job["status"] == "failed":
            status = "failed"
        error = (job or {}).get("error") or next((s["error"] for s in stages.values() if s.get("error")), None)
        rows.append(
            {
                "job": int(job_dir.name) if job_dir.name.isdigit() else job_dir.name,
                "overrides": list(overrides or []),
                "status": status,
                "metrics": (stages.get("test") or {}).get("metrics") or {},
                "per_prompt": _per_prompt(stages.get("test")),
                "mix": _mixture(stages.get("mix")),
                "report": _report(stages.get("test")),
                "distill_cache_hit": (stages.get("distill") or {}).get("cache_hit"),
                "seconds": round(sum(s.get("seconds", 0) for s in stages.values()), 2),
                "error": error,
            }
        )
    return rows


def check_objective(cfg: DictConfig, stages: list[str]) -> None:
    """Before any work: `sweep.objective` names a figure this run's Test can make."""
    name = cfg.sweep.objective
    if not name:
        return
    if "test" not in stages:
        raise RecipeError(f"sweep.objective={name}: a figure of the Test stage, which this run does not run")
    suites = list((cfg.test.get("suites") or {}).keys())
    components = sorted((cfg.get("mix") or {}).get("components") or {})
    if name.split(".")[0] not in [*suites, "heldout"]:
        raise RecipeError(
            f"sweep.objective={name}: no Test suite {name.split('.')[0]!r} (a figure is <suite>.<metric> of "
            f"{', '.join(suites) or 'no suite'}, heldout.loss or heldout.loss.<component>)"
        )
    if name.startswith("heldout.") and name != "heldout.loss":
        component = name.removeprefix("heldout.loss.") if name.startswith("heldout.loss.") else None
        if component not in components:
            raise RecipeError(
                f"sweep.objective={name}: a held-out figure is heldout.loss or heldout.loss.<component> "
                f"of the mixture's components ({', '.join(components) or 'none'})"
            )


def objective(record: dict[str, Any], name: str) -> float:
    """The tuned model's figure `name` from a finished run's record: what the task function returns
    to Hydra, so a search sweeper optimises it. A figure the run did not make is an error naming
    the ones it did."""
    figures = ((record.get("stages") or {}).get("test") or {}).get("metrics") or {}
    value = figures.get(name)
    if not isinstance(value, (int, float)):
        made = ", ".join(m for m in figures if not is_bound(m)) or "none"
        raise RecipeError(f"sweep.objective={name}: Test made no such figure (it made: {made})")
    return float(value)


def direction(cfg: DictConfig) -> str:
    """sweep.direction, or its default for the objective: minimize a loss, maximize the rest."""
    if cfg.sweep.direction is not None:
        return str(cfg.sweep.direction.value if hasattr(cfg.sweep.direction, "value") else cfg.sweep.direction)
    return "minimize" if comparison.lower_is_better(str(cfg.sweep.objective or "")) else "maximize"


def _manifest(entry: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    path = Path(entry["artifact"]) / name if entry and entry.get("status") == "ok" and entry.get("artifact") else None
    try:
        return json.loads(path.read_text()) if path is not None else None
    except (OSError, ValueError):
        return None  # pruned or unreadable: the row keeps its figures from run.json


def _per_prompt(test: dict[str, Any] | None) -> dict[str, dict[str, float | None]]:
    """The tuned model's per-prompt scores by figure, from the Test artifact's metrics.json."""
    metrics = _manifest(test, "metrics.json")
    if not metrics or not metrics.get("models"):
        return {}
    which = "tuned" if "tuned" in metrics["models"] else next(iter(metrics["models"]))
    return reporting.per_prompt(metrics, which)


def _report(test: dict[str, Any] | None) -> str | None:
    """The job's Test report page, as a file URI (summary.html links to it)."""
    if not test or test.get("status") != "ok" or not test.get("artifact"):
        return None
    page = Path(test["artifact"]) / "report.html"
    return page.resolve().as_uri() if page.is_file() else None


def _mixture(mix: dict[str, Any] | None) -> dict[str, Any]:
    """Mix's shares as applied, examples and tokens per component (`mix.<component>.share|examples|tokens`)."""
    manifest = _manifest(mix, "manifest.json") or {}
    out: dict[str, Any] = {f"mix.{c}.share": s for c, s in (manifest.get("shares") or {}).items()}
    out.update({f"mix.{c}.examples": n for c, n in (manifest.get("counts") or {}).items()})
    out.update({f"mix.{c}.tokens": n for c, n in (manifest.get("tokens_by_component") or {}).items()})
    return out


def config_dirs(root: Path, rows: list[dict[str, Any]]) -> list[str]:
    """The `--config-dir` the sweep ran with (its jobs' .hydra/hydra.yaml config sources), so a
    printed command runs as printed."""
    for row in rows:
        hydra_file = root / str(row["job"]) / ".hydra" / "hydra.yaml"
        if hydra_file.is_file():
            sources = ((yaml.safe_load(hydra_file.read_text()) or {}).get("hydra") or {}).get("runtime") or {}
            return [
                f"--config-dir {src['path']}"
                for src in sources.get("config_sources") or []
                if src.get("provider") == "command-line" and src.get("schema") == "file"
            ]
    return []


def _job_config(root: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The config the sweep's jobs were composed with (the first job's .hydra/config.yaml), or {}."""
    for row in rows:
        config_file = root / str(row["job"]) / ".hydra" / "config.yaml"
        if config_file.is_file():
            return yaml.safe_load(config_file.read_text()) or {}
    return {}


def _settings(config: dict[str, Any]) -> tuple[Settings, str | None]:
    """test.uncertainty and sweep.baseline in the config the sweep's jobs were composed with."""
    settings = Settings(**((config.get("test") or {}).get("uncertainty") or {}))
    baseline = (config.get("sweep") or {}).get("baseline")
    return settings, None if baseline is None else str(baseline)


def compare(
    config: dict[str, Any], rows: list[dict[str, Any]], metrics: list[str]
) -> tuple[int, dict[str, list[Any]], str]:
    """The baseline row, per figure each row's difference to it and its rank group, and what went
    wrong choosing the baseline (the summary then lists the jobs without comparing them). `config`:
    the jobs' composed config (`_job_config`)."""
    settings, spec = _settings(config)
    try:
        base = comparison.baseline_index(rows, spec)
    except ValueError as error:
        return 0, {}, str(error)
    out: dict[str, list[Any]] = {}
    for metric in metrics:
        scores = [row["per_prompt"].get(metric) for row in rows]
        if all(s is None for s in scores):
            continue
        out[f"{metric}.vs_baseline"] = comparison.against_baseline(scores, base, metric, settings)
        out[f"{metric}.rank"] = comparison.rank_groups(scores, metric, settings)
    return base, out, ""


def headline(
    rows: list[dict[str, Any]],
    keys: list[str],
    compared: dict[str, list[Any]],
    base: int,
    objective: str | None,
    level: float,
) -> list[str]:
    """What the sweep found, first, in words that carry their error rate: failed jobs; on the
    objective (else the first figure compared), which jobs are better or worse than the baseline,
    or that none can be told apart yet; which jobs are in rank group 1."""
    lines = []
    failed = [r for r in rows if r["status"] in ("failed", "refused")]
    if failed:
        lines.append(f"{len(failed)} of {len(rows)} jobs failed: {', '.join(_job(r, keys) for r in failed)}.")
    compared_on = [k.removesuffix(".vs_baseline") for k in compared if k.endswith(".vs_baseline")]
    metric = objective if objective in compared_on else (compared_on[0] if compared_on else None)
    if metric is None:
        return lines
    vs, ranks = compared[f"{metric}.vs_baseline"], compared[f"{metric}.rank"]
    words = {i: d["verdict"] for i, d in enumerate(vs) if d and i != base}
    chance = f"{1 - level:.0%}"
    baseline = _job(rows[base], keys)
    if words and all(w == uncertainty.TOO_FEW for w in words.values()):
        lines.append(f"{metric}: too few prompts to tell any job from the baseline ({baseline}).")
        return lines
    better = [_job(rows[i], keys) for i, w in words.items() if w == uncertainty.BETTER]
    worse = [_job(rows[i], keys) for i, w in words.items() if w == uncertainty.WORSE]
    if not better and not worse:
        lines.append(f"{metric}: no job can be told apart from the baseline ({baseline}) yet.")
    else:
        said = [f"better than the baseline ({baseline}): {', '.join(better)}"] if better else []
        said += [f"worse: {', '.join(worse)}"] if worse else []
        lines.append(
            f"{metric}: {'; '.join(said)} (with no true difference, any such word in at most {chance} of sweeps)."
        )
    group = [_job(rows[i], keys) for i, g in enumerate(ranks) if g == 1]
    if 0 < len(group) < sum(g is not None for g in ranks):
        lines.append(
            f"{metric}: rank group 1 (no other job beats them detectably): {', '.join(group)} (identical jobs are "
            f"split from it in at most {chance} of sweeps)."
        )
    return lines


def _job(row: dict[str, Any], keys: list[str]) -> str:
    """`job 3 (mix.seed=2)`: a job by its number and the values it was swept with."""
    values = ", ".join(f"{k}={_value(row, k)}" for k in keys if _value(row, k))
    return f"job {row['job']}" + (f" ({values})" if values else "")


def _difference(d: dict[str, Any] | None) -> str:
    if not d or d.get("value") is None:
        return ""
    return f"{d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] {d['verdict']}"


def fit(root: Path, objective: str | None = None, maximize: bool | None = None) -> str:
    """proposal.md at the sweep's root: for each figure, how well the shares predict it across the
    finished jobs (recipe/evaluation/fit.py), and for the objective (`sweep.objective` unless given)
    the proposed shares with the override line that runs them. Returns the text."""
    rows = [r for r in collect(root) if r["status"] == "ok"]
    configured = _job_config(root, rows).get("sweep") or {}
    objective = objective or configured.get("objective")
    if maximize is None:
        chosen = configured.get("direction")
        maximize = chosen == "maximize" if chosen else not comparison.lower_is_better(str(objective or ""))
    shares = [{k.split(".")[1]: v for k, v in r["mix"].items() if k.endswith(".share")} for r in rows]
    usable = [(s, r) for s, r in zip(shares, rows, strict=True) if s]
    metrics = list(dict.fromkeys(m for r in rows for m in r["metrics"] if not is_bound(m)))

    def proposal(metric: str, best_high: bool) -> fitting.Proposal:
        pairs = [(s, r["metrics"][metric]) for s, r in usable if isinstance(r["metrics"].get(metric), (int, float))]
        return fitting.propose([p[0] for p in pairs], [p[1] for p in pairs], maximize=best_high)

    lines = [f"# Proposed mixture: {root}", "", fitting.__doc__.split("\n\n")[0].replace("\n", " "), ""]
    lines += ["| figure | jobs | leave-one-out error | the mean's | what it says |", "|---|---|---|---|---|"]
    proposals = {}
    for metric in metrics:
        found = proposals[metric] = proposal(metric, not comparison.lower_is_better(metric))
        error = "-" if found.loo_error is None else f"{found.loo_error:.4g}"
        mean = "-" if found.mean_error is None else f"{found.mean_error:.4g}"
        lines.append(f"| {metric} | {found.jobs} | {error} | {mean} | {found.verdict} |")
    lines.append("")
    if not objective:
        lines.append("No objective: set `sweep.objective=<figure>` (or `recipe sweep fit DIR --objective FIGURE`).")
    elif objective not in proposals:
        lines.append(f"The objective {objective} is not among the sweep's figures ({', '.join(metrics) or 'none'}).")
    else:
        found = proposal(objective, maximize)
        way = "maximize" if maximize else "minimize"
        # What every job was run with (the experiment, the stages), then a mixture's shares.
        common = [o for o in (rows[0]["overrides"] if rows else []) if all(o in r["overrides"] for r in rows)]
        kept = config_dirs(root, rows)
        kept += [_quoted(o) for o in common if not o.startswith(("mix.components.", "hydra/", "hydra."))]
        best = best_job(rows, objective, maximize)
        if best is not None:
            row, job_shares = best
            figures = row["metrics"]
            value = reporting.with_interval(
                figures[objective], figures.get(f"{objective}_low"), figures.get(f"{objective}_high")
            )
            mixture = " ".join(f"mix.components.{c}.share={v:.4g}" for c, v in job_shares.items())
            lines += [f"**Best job** {row['job']}: {objective} = {value}. Run its mixture:", ""]
            lines += ["```bash", " ".join(["recipe", *kept, mixture]), "```", ""]
        lines.append(f"**Objective** {objective} ({way}): {found.verdict}.")
        if found.shares is not None:
            ranges = ", ".join(f"{c} {lo:.3f}-{hi:.3f}" for c, (lo, hi) in found.bounds.items())
            lines += ["", f"Shares searched within what the sweep tried: {ranges}.", ""]
            if found.beats_best:
                lines += ["Run it:", ""]
            else:
                lines += ["Run it only to check the fit (the best job's mixture above is expected to do as well):", ""]
            lines += ["```bash", " ".join(["recipe", *kept, found.override() or ""]), "```"]
    text = "\n".join(lines) + "\n"
    _write_atomic(root / "proposal.md", text)
    return text


def best_job(
    rows: list[dict[str, Any]], objective: str, maximize: bool
) -> tuple[dict[str, Any], dict[str, float]] | None:
    """The finished job with the best `objective` and its shares as applied (what a search
    sweeper's best trial ran), or None when no job made the figure."""
    scored = [
        r for r in rows if r["status"] == "ok" and isinstance(r["metrics"].get(objective), (int, float)) and r["mix"]
    ]
    if not scored:
        return None
    row = (max if maximize else min)(scored, key=lambda r: r["metrics"][objective])
    return row, {k.split(".")[1]: v for k, v in row["mix"].items() if k.endswith(".share")}


def _quoted(override: str) -> str:
    return f"'{override}'" if any(ch in override for ch in "[]{}(),*? ") else override


def fit_main(argv: list[str]) -> int:
    """`recipe sweep fit [DIR] [--objective FIGURE] [--direction maximize|minimize]` (DIR: the newest
    sweep under ./outputs/multiruns)."""
    import argparse

    parser = argparse.ArgumentParser(prog="recipe sweep fit", description=fit.__doc__.split("\n")[0])
    parser.add_argument(
        "root", type=Path, nargs="?", help="a multirun directory (default: the newest under outputs/multiruns)"
    )
    parser.add_argument("--objective", help="the figure to optimise (default: the sweep's sweep.objective)")
    parser.add_argument("--direction", choices=["maximize", "minimize"])
    args = parser.parse_args(argv)
    if args.root is None:
        sweeps = sorted(Path("outputs/multiruns").glob("*/*"))
        if not sweeps:
            print(
                "error: no sweep under outputs/multiruns (run one with recipe -m ..., or name its directory)",
                file=sys.stderr,
            )
            return 2
        args.root = sweeps[-1]
    if not args.root.is_dir() or not _job_dirs(args.root):
        print(f"error: {args.root}: not a sweep's directory (no job directories in it)", file=sys.stderr)
        return 2
    maximize = None if args.direction is None else args.direction == "maximize"
    print(fit(args.root, args.objective, maximize), end="")
    print(f"(written to {args.root / 'proposal.md'})")
    return 0


def swept_keys(rows: list[dict[str, Any]]) -> list[str]:
    """Override keys whose values differ between jobs (all of them for a one-job sweep)."""
    values: dict[str, set[str]] = {}
    for row in rows:
        for override in row["overrides"]:
            key, _, value = override.partition("=")
            values.setdefault(key, set()).add(value)
    varying = [k for k, v in values.items() if len(v) > 1]
    return varying or list(values)


def _value(row: dict[str, Any], key: str) -> str:
    return next((o.partition("=")[2] for o in row["overrides"] if o.partition("=")[0] == key), "")


def write_summary(root: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """summary.csv, summary.md, summary.html and summary.png at a sweep's root; its jobs' rows and
    what it found (`headline`)."""
    rows = collect(root)
    keys = swept_keys(rows)
    metrics = list(dict.fromkeys(m for row in rows for m in row["metrics"] if not is_bound(m)))
    mix_columns = list(dict.fromkeys(k for row in rows for k in row["mix"]))
    config = _job_config(root, rows)  # read once: the comparison's settings and the objective
    base, compared, trouble = compare(config, rows, metrics) if rows else (0, {}, "")
    settings, _ = _settings(config)
    objective = (config.get("sweep") or {}).get("objective")
    said = headline(rows, keys, compared, base, objective, settings.level)
    # summary.csv: one column per number (intervals and differences split into their parts)
    csv_metrics = [
        column
        for m in metrics
        for column in (m, f"{m}_low", f"{m}_high")
        if column == m or any(column in row["metrics"] for row in rows)
    ]
    differences = [m for m in metrics if f"{m}.vs_baseline" in compared]
    csv_compared = [
        f"{m}.{part}"
        for m in differences
        for part in ("diff", "diff_low", "diff_high", "verdict", "diff_low_unadjusted", "diff_high_unadjusted", "rank")
    ]
    header = [
        "job",
        *keys,
        "status",
        *csv_metrics,
        *csv_compared,
        *mix_columns,
        "distill_cache_hit",
        "seconds",
        "error",
    ]
    table, md_rows = [], []
    for i, row in enumerate(rows):
        vs = {m: compared[f"{m}.vs_baseline"][i] for m in differences}
        ranks = {m: compared[f"{m}.rank"][i] for m in differences}
        common = [row["job"], *(_value(row, k) for k in keys), row["status"]]
        tail = [
            *(row["mix"].get(k, "") for k in mix_columns),
            "" if row["distill_cache_hit"] is None else row["distill_cache_hit"],
            row["seconds"],
            (row["error"] or "")[:300],
        ]
        parts = []
        for m in differences:
            d = vs[m] or {}
            alone = d.get("unadjusted") or {}
            parts += [d.get("value", ""), d.get("low", ""), d.get("high", ""), d.get("verdict", "")]
            parts += [alone.get("low", ""), alone.get("high", ""), ranks[m] or ""]
        table.append([*common, *(row["metrics"].get(m, "") for m in csv_metrics), *parts, *tail])
        figures = []
        for m in metrics:
            value = row["metrics"].get(m)
            low, high = row["metrics"].get(f"{m}_low"), row["metrics"].get(f"{m}_high")
            shown = "" if value is None else reporting.with_interval(value, low, high)
            if m in differences and i != base:
                shown += f" ({_difference(vs[m])})" if vs[m] else ""
            if m in differences and ranks[m] is not None:
                shown += f" group {ranks[m]}"
            figures.append(shown)
        md_rows.append([*common, *figures, *tail])
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(table)
    _write_atomic(root / "summary.csv", buffer.getvalue())
    failed = sum(row["status"] == "failed" for row in rows)
    md_header = ["job", *keys, "status", *metrics, *mix_columns, "distill_cache_hit", "seconds", "error"]
    lines = [f"# Sweep summary: {len(rows)} jobs, {failed} failed", ""]
    lines += [f"**{line}**" for line in said] + ([""] if said else [])
    if trouble:
        lines += [f"**Not compared**: {trouble}.", ""]
    if rows and differences:
        lines += [
            f"Baseline: job {rows[base]['job']} (`sweep.baseline`). Each figure: value [interval]; for the other "
            "jobs, (difference to the baseline on the prompts every job answered [interval] and what it says), the "
            f"interval simultaneous over the sweep's {len(rows) - 1} comparisons with the baseline (max-t bootstrap: "
            "with no true difference, no word at all in 95% of sweeps; summary.csv also has each comparison's "
            "unadjusted interval). `group 1`: could be the best, no job beats it detectably (all pairs "
            "simultaneously, at 95%); group 2 the same among the rest.",
            "",
        ]
    lines.append("| " + " | ".join(md_header) + " |")
    lines.append("|" + "---|" * len(md_header))
    for cells in md_rows:
        text = ["**FAILED**" if c == "failed" else str(c).replace("|", "\\|").replace("\n", " ") for c in cells]
        lines.append("| " + " | ".join(text) + " |")
    _write_atomic(root / "summary.md", "\n".join(lines) + "\n")
    proposal = (root / "proposal.md").read_text() if (root / "proposal.md").is_file() else None
    reports = [row["report"] for row in rows]
    _write_atomic(
        root / "summary.html",
        pages.sweep_summary(
            str(root),
            rows,
            [{k: _value(r, k) for k in keys} for r in rows],
            metrics,
            compared,
            base,
            proposal,
            reports,
            said,
        ),
    )
    if metrics:
        _plot(root / "summary.png", rows, keys, metrics)
    return rows, said


def _plot(path: Path, rows: list[dict[str, Any]], keys: list[str], metrics: list[str]) -> None:
    """One panel per Test metric against the swept value (numeric axis when one key sweeps numbers);
    failed jobs are drawn as red crosses on the axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [", ".join(f"{k.rsplit('.', 1)[-1]}={_value(r, k)}" for k in keys) or f"job {r['job']}" for r in rows]
    try:
        xs: list[float] = [float(_value(r, keys[0])) for r in rows] if len(keys) == 1 else []
    except ValueError:
        xs = []
    numeric = bool(xs)
    positions = xs if numeric else list(range(len(rows)))
    columns = min(3, len(metrics))
    rows_of_panels = (len(metrics) + columns - 1) // columns
    fig, axes = plt.subplots(rows_of_panels, columns, figsize=(4.2 * columns, 3.2 * rows_of_panels), squeeze=False)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        ok = [(x, r["metrics"][metric]) for x, r in zip(positions, rows, strict=True) if metric in r["metrics"]]
        ok.sort()
        if ok:
            ax.plot([p[0] for p in ok], [p[1] for p in ok], marker="o")
        bad = [x for x, r in zip(positions, rows, strict=True) if r["status"] == "failed"]
        if bad:
            ax.scatter(bad, [ax.get_ylim()[0]] * len(bad), marker="x", color="red", label="failed")
            ax.legend()
        ax.set_title(metric)
        ax.set_xlabel(keys[0] if numeric else "job")
        if not numeric:
            ax.set_xticks(positions, labels, rotation=30, ha="right", fontsize=7)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    _write_atomic(path, buffer.getvalue())
