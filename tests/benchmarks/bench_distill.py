"""Benchmark: Distill throughput against a loopback server that answers after a fixed delay, and
the time to resume over a full cache.

    .venv/bin/python tests/benchmarks/bench_distill.py [--requests 3200] [--concurrency 32]
        [--delay 0.1] [--resume 10000] [--repeats 3]

In one invocation, with the fake Together server in its own process (validation off, so the
server's CPU is not what is measured):
1. concurrency C against a server answering after L seconds: throughput as a share of the limit
   C / L (target >= 0.9);
2. the seed's way, one request at a time (concurrency 1), in the same run: its share of 1 / L and
   the speed-up of (1);
3. resume: a run over `--resume` conversations whose answers are all cached, with the server
   stopped (any request would fail the run): its wall time (target <= 5 s, zero requests).
Medians of `--repeats` runs; each run uses a fresh store, runs 1-2 a fresh cache.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def sharegpt(path: Path, n: int, offset: int = 0) -> Path:
    path.write_text(
        json.dumps(
            [
                {"id": f"c{i}", "conversations": [{"from": "human", "value": f"question number {i}?"}]}
                for i in range(offset, offset + n)
            ]
        )
    )
    return path


class Server:
    def __init__(self, delay: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fake_together", str(delay), "--no-validate"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.base_url = self.proc.stdout.readline().strip()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def distill(data: Path, work: Path, base_url: str, concurrency: int, cache: Path, **extra: str) -> tuple[float, dict]:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    from recipe.cli import CONF_DIR
    from recipe.config import SourceConfig, register_configs
    from recipe.runner import run

    register_configs()
    store = Path(tempfile.mkdtemp(dir=work))
    overrides = [
        f"store_dir={store}",
        "stages=[distill]",
        "mix=samples",
        "distill=together",
        "distill.teacher.api=chat",
        "distill.max_conversations=null",
        f"distill.concurrency={concurrency}",
        "distill.progress=false",
        f"distill.cache_path={cache}",
        f"together.base_url={base_url}",
        "together.api_key=bench",
        *(f"{k}={v}" for k, v in extra.items()),
    ]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    with open_dict(cfg):
        cfg.sources.bench = OmegaConf.structured(SourceConfig(kind="sharegpt", data_files=[str(data)]))  # type: ignore[arg-type]
        cfg.distill.source = "bench"
    started = time.perf_counter()
    record = run(cfg, run_dir=store)
    seconds = time.perf_counter() - started
    shutil.rmtree(store)
    return seconds, record["stages"]["distill"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3200)
    parser.add_argument("--sequential", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--delay", type=float, default=0.1)
    parser.add_argument("--resume", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    work = Path(tempfile.mkdtemp(prefix="distill-", dir=ROOT / "outputs"))
    try:
        server = Server(args.delay)
        parallel, sequential = [], []
        for i in range(args.repeats):
            data = sharegpt(work / f"p{i}.json", args.requests, offset=i * args.requests)
            s, entry = distill(data, work, server.base_url, args.concurrency, work / f"p{i}.sqlite")
            assert entry["usage"]["requests"] == args.requests
            parallel.append(args.requests / s)
            data = sharegpt(work / f"s{i}.json", args.sequential, offset=10**7 + i * args.sequential)
            s, entry = distill(data, work, server.base_url, 1, work / f"s{i}.sqlite")
            sequential.append(args.sequential / s)
            print(
                f"run {i + 1}: concurrency {args.concurrency}: {parallel[-1]:.1f} req/s; sequential: {sequential[-1]:.2f} req/s"
            )
        server.stop()

        # Resume: fill a cache quickly (no delay), then re-run with the server gone.
        fast = Server(0.0)
        data = sharegpt(work / "resume.json", args.resume, offset=10**8)
        fill, _ = distill(data, work, fast.base_url, args.concurrency, work / "resume.sqlite")
        fast.stop()
        resumes = []
        for _ in range(args.repeats):
            s, entry = distill(
                data,
                work,
                fast.base_url,
                args.concurrency,
                work / "resume.sqlite",
                **{"distill.max_retries": "0", "distill.max_failure_share": "0"},
            )
            assert entry["usage"]["requests"] == 0 and entry["usage"]["cached_requests"] == args.resume
            resumes.append(s)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    limit = args.concurrency / args.delay
    p, q = statistics.median(parallel), statistics.median(sequential)
    print(
        f"concurrency {args.concurrency}, server delay {args.delay * 1000:.0f} ms: median {p:.1f} req/s = "
        f"{p / limit:.2f} of the limit C/L = {limit:.0f} req/s (target >= 0.9)"
    )
    print(
        f"sequential (the seed's way): median {q:.2f} req/s = {q / (1 / args.delay):.2f} of 1/L; concurrency is {p / q:.1f}x faster"
    )
    print(
        f"resume over {args.resume} cached conversations, server stopped: median {statistics.median(resumes):.2f} s, "
        f"0 requests (target <= 5 s); filling that cache took {fill:.1f} s"
    )


if __name__ == "__main__":
    main()
