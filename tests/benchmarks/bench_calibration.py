"""How often each word the project prints is wrong, by seeded simulation with planted truths
(tests/calibration.py), with more draws than tests/test_calibration.py takes.

    .venv/bin/python tests/benchmarks/bench_calibration.py                 # this tree
    .venv/bin/python tests/benchmarks/bench_calibration.py --tree /tmp/old  # and another checkout, side by side

`--tree` runs the same simulations against another checkout's `recipe` package (a git worktree of an
older commit), in a subprocess, so the two columns come from one invocation; each row says the
seconds it took in each tree. (This checkout's editable install maps `recipe` to itself ahead of
sys.path: the subprocess drops that finder, and checks which `recipe` it imported.)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]


def rates(sims: int) -> dict[str, dict[str, float]]:
    # This checkout's simulations (by file), the `recipe` package of whichever tree is first on sys.path.
    spec = importlib.util.spec_from_file_location("calibration", ROOT / "tests" / "calibration.py")
    assert spec and spec.loader
    calibration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(calibration)

    out: dict[str, float] = {}
    seconds: dict[str, float] = {}
    clock = [time.perf_counter()]

    def timed(key: str, value: float) -> None:
        now = time.perf_counter()
        out[key], seconds[key] = value, now - clock[0]
        clock[0] = now

    for jobs, prompts in ((4, 50), (4, 200), (10, 50), (10, 200)):
        timed(
            f"identical jobs split ({jobs} jobs, {prompts} prompts; target <= 5%)",
            calibration.rank_split_rate(jobs, prompts, sims, seed=jobs * prompts),
        )
    for margin in (0.10, 0.15, 0.20):
        timed(
            f"a +{margin:.2f} job alone in group 1 (4 jobs, 200 prompts; power)",
            calibration.rank_power(4, 200, margin, sims, seed=1),
        )
    timed(
        "any word vs baseline, 10 identical jobs, 100 prompts (target <= 5%)",
        calibration.baseline_word_rate(10, 100, sims, seed=3),
    )
    for hard, noise in ((0.5, 0.3), (0.5, 0.6), (1.0, 0.5)):
        timed(
            f"false 'better', skewed loss lognormal({hard}, {noise}), 30 examples (target <= 3.5%)",
            calibration.skewed_false_better(30, sims * 2, seed=4, hard=hard, noise=noise),
        )
    timed(
        "interval covers, 40 questions x 9 settings (target 95%)", calibration.clustered_coverage(40, 9, sims, seed=5)
    )
    timed(
        "pure-noise sweep gets a proposal, 16 jobs (target <= 5%)",
        calibration.noise_proposal_rate(16, 4, max(sims // 3, 50), seed=6),
    )
    return {"rates": out, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=1000)
    parser.add_argument("--tree", type=Path, help="another checkout to measure beside this one")
    parser.add_argument("--json", action="store_true", help="print the rates as JSON (used for --tree)")
    args = parser.parse_args()
    tree = ROOT
    if args.json and args.tree:
        tree = args.tree.resolve()
        sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path.insert(0, str(tree))
    import recipe

    assert Path(recipe.__file__).is_relative_to(tree), f"measuring {recipe.__file__}, not {tree}"
    if args.json:
        print(json.dumps(rates(args.sims)))
        return
    ours = rates(args.sims)
    other = None
    if args.tree:
        done = subprocess.run(
            [sys.executable, str(HERE), "--json", "--tree", str(args.tree), "--sims", str(args.sims)],
            capture_output=True,
            text=True,
            check=True,
            timeout=7200,
        )
        other = json.loads(done.stdout)
    print(f"{args.sims} simulated sweeps or runs per row (skewed losses: {args.sims * 2})")
    header = "| what | this tree | seconds |" + (f" {args.tree} | seconds |" if other else "")
    print(header)
    print("|---|---|---|" + ("---|---|" if other else ""))
    for key, value in ours["rates"].items():
        row = f"| {key} | {value:.1%} | {ours['seconds'][key]:.1f} |"
        if other is not None:
            row += (
                f" {other['rates'][key]:.1%} | {other['seconds'][key]:.1f} |" if key in other["rates"] else " - | - |"
            )
        print(row)


if __name__ == "__main__":
    main()
