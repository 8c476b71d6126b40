"""Benchmark: a 3-job offline mixture sweep against one single run, in the same invocation.

    .venv/bin/python tests/benchmarks/bench_sweep.py [--scenario full|data|both] [--launcher basic|parallel]

Each measurement starts cold: a fresh artifact store and a fresh request cache under
outputs/bench/sweep/ (the single run is exactly `make run` after install, pointed at those dirs).

- `full`: every stage of `experiment=smollm2_offline` (Distill, Mix, LoRA training, Test, Deploy);
  the sweep is `mix.components.instructions.share=0.4,0.5,0.6` with `mix.rescale=instructions`.
  Distill runs once; each job trains, tests and deploys its own model.
- `data`: the same sweep over the data stages only (`stages=[distill,mix]`): what a mixture sweep
  costs before any training.

Prints wall seconds of the single run and the sweep and their ratio (target <= 1.3x), and the
single run's wall time against the `make run` target (<= 5 min on the 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / ".venv" / "bin" / "recipe"
WORK = ROOT / "outputs" / "bench" / "sweep"
SHARES = "mix.components.instructions.share=0.4,0.5,0.6"


def recipe(name: str, *args: str) -> float:
    """Run `recipe` with a fresh store and cache under WORK/name; wall seconds."""
    where = WORK / name
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    cache = where / "cache.sqlite"
    common = [
        "experiment=smollm2_offline",
        f"store_dir={where / 'store'}",
        f"distill.cache_path={cache}",
        f"test.cache_path={cache}",
        f"hydra.run.dir={where / 'run'}",
        f"hydra.sweep.dir={where / 'multirun'}",
        "distill.progress=false",
        "mix.progress=false",
        "train.progress=false",
        "test.progress=false",
    ]
    started = time.monotonic()
    proc = subprocess.run([str(RECIPE), *args, *common], cwd=ROOT, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"recipe {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds


def stage_seconds(where: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    for run in sorted(where.rglob("run.json")):
        for name, stage in json.loads(run.read_text())["stages"].items():
            out[name] = round(out.get(name, 0.0) + stage.get("seconds", 0.0), 1)
    return out


def scenario(name: str, stages: list[str], launcher: str) -> None:
    extra = [f"stages=[{','.join(stages)}]"] if stages else []
    single = recipe(f"{name}-single", *extra)
    sweep_args = ["-m", *extra, "mix.rescale=instructions", SHARES]
    if launcher == "parallel":
        sweep_args.append("hydra/launcher=parallel")
    sweep = recipe(f"{name}-sweep", *sweep_args)
    print(f"\n[{name}] single run: {single:.1f} s   stages: {stage_seconds(WORK / f'{name}-single')}")
    print(f"[{name}] 3-job sweep ({launcher}): {sweep:.1f} s   stages: {stage_seconds(WORK / f'{name}-sweep')}")
    print(f"[{name}] sweep / single = {sweep / single:.2f}x (target <= 1.3x)")
    if not stages:
        print(f"[{name}] make-run equivalent: {single / 60:.2f} min (target <= 5 min)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=["full", "data", "both"], default="both")
    parser.add_argument("--launcher", choices=["basic", "parallel"], default="basic")
    args = parser.parse_args()
    if args.scenario in ("data", "both"):
        scenario("data", ["distill", "mix"], args.launcher)
    if args.scenario in ("full", "both"):
        scenario("full", [], args.launcher)


if __name__ == "__main__":
    main()
