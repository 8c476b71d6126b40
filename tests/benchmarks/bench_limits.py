"""How close the model clients come to a provider's rate limit, with nobody setting a number.

    .venv/bin/python tests/benchmarks/bench_limits.py                  # ~14 minutes
    .venv/bin/python tests/benchmarks/bench_limits.py --warmup 10 --measure 10   # a quick look

A loopback server (tests/limited_server.py) enforces `--limit` requests per second in 1-second
windows (429 + Retry-After beyond), answers after `--latency` seconds, and sends Together's
`x-ratelimit-*` headers in one mode and none in the other. Each way of sending runs against a fresh
server, side by side in this one invocation, through the real ModelClient:

- `controller`: the rate controller (recipe/providers/limits.py), 128 threads, no number set;
- `controller x3`: three processes doing the same on one key (sharing the controller's state);
- `fixed 16` / `fixed 64`: today's fixed concurrency, 429s retried by the HTTP client (urllib3,
  honouring Retry-After), no controller;
- `hand-set`: the usual "parallel request processor" anchor: a sliding-window throttle set to the
  true limit, 128 threads, no controller;
- `test` / `test x3`: Test's generations as the Test stage sends them (its own `_generate`: its
  thread pool, its rate controller for the model, its ModelClient), in one process and in three
  on one key; each process is given prompts for 1.3x the run at its share of the limit.

`--ways test,controller` runs some of them.

Printed per way: served requests/s over the limit after the warm-up, the share answered 429, and
the warm-up (the first second from which a 5-second average stays at 0.9 of the limit). Then, with
no limit and 2 s answers, the controller against fixed concurrency 128.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from recipe.providers.cache import RequestCache  # noqa: E402
from recipe.providers.http import Client  # noqa: E402
from recipe.providers.model_client import paced  # noqa: E402
from tests.limited_server import LimitedServer, asker  # noqa: E402


class SlidingWindow:
    """The anchor: at most `rps` requests in any second (a hand-set RPM throttle)."""

    def __init__(self, rps: float) -> None:
        self.rps, self.sent, self.lock = rps, collections.deque(), threading.Lock()

    def wait(self) -> None:
        while True:
            with self.lock:
                now = time.monotonic()
                while self.sent and now - self.sent[0] >= 1.0:
                    self.sent.popleft()
                if len(self.sent) < self.rps:
                    self.sent.append(now)
                    return
                delay = 1.0 - (now - self.sent[0])
            time.sleep(max(delay, 0.001))


def drive(url: str, way: str, seconds: float, state: Path, limit: float | None, tag: str) -> None:
    """Send continuously for `seconds` in the given way (a worker process or this one)."""
    threads = {"fixed 16": 16, "fixed 64": 64, "fixed 128": 128}.get(way, 128)
    client = Client(url, "bench-key", pool_size=threads, timeout_s=120, max_retries=30, backoff_s=0.25)
    cache = RequestCache(state / f"requests-{tag}.sqlite")
    controller = paced(cache, client, "m") if way.startswith("controller") else None
    throttle = SlidingWindow(limit) if way == "hand-set" and limit else None
    sender = asker(client, cache, controller)
    deadline = time.monotonic() + seconds
    counter = iter(range(10**9))
    lock = threading.Lock()

    def loop() -> None:
        while time.monotonic() < deadline:
            with lock:
                n = next(counter)
            if throttle is not None:
                throttle.wait()
            try:
                sender.ask([{"role": "user", "content": f"{tag}-{n}"}])
            except Exception:  # a request that ran out of retries: counted by the server as refused
                pass

    with ThreadPoolExecutor(threads) as pool:
        for _ in range(threads):
            pool.submit(loop)
    cache.close()


def drive_test(url: str, seconds: float, state: Path, limit: float, share: int, tag: str) -> None:
    """Test's generations through the Test stage's own sending code, prompts for 1.3x `seconds` at
    1/`share` of the limit."""
    from hydra import compose, initialize_config_dir

    from recipe.artifacts import PromptFormat
    from recipe.cli import CONF_DIR
    from recipe.evaluation.suites import Item
    from recipe.providers.limits import ADAPTIVE_IN_FLIGHT
    from recipe.providers.model_client import Ledger
    from recipe.providers.serving import ModelAccess
    from recipe.stages.test import Test

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["stages=[test]", "test.progress=false"])
    stage = Test(cfg.test, cfg)
    stage.controllers = {}  # as Test.run starts them
    client = Client(url, "bench-key", pool_size=ADAPTIVE_IN_FLIGHT, timeout_s=120, max_retries=30, backoff_s=0.25)
    access = ModelAccess("tuned", client, "m", "together", None, PromptFormat("chat_template"))
    cache = RequestCache(state / f"requests-{tag}.sqlite")
    suite = next(iter(cfg.test.suites))
    prompts = [Item(suite, f"{tag}-{i}", f"prompt {tag}-{i}") for i in range(int(1.3 * seconds * limit / share))]
    stage._generate(access, cache, Ledger(0, 0, None), {suite: prompts}, [])
    cache.close()


def measure(way: str, limit: float | None, latency: float, headers: bool, warmup: float, span: float) -> dict:
    with LimitedServer(limit, latency_s=latency, headers=headers) as server, tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        start = time.time()
        seconds = warmup + span
        if way in ("controller x3", "test x3"):
            worker = [sys.executable, __file__, "--worker", way.removesuffix(" x3"), server.base_url, str(seconds), tmp]
            procs = [subprocess.Popen([*worker, str(i), str(limit)]) for i in range(3)]
            for p in procs:
                p.wait()
        elif way == "test":
            assert limit is not None
            drive_test(server.base_url, seconds, state, limit, 1, "0")
        else:
            drive(server.base_url, way, seconds, state, limit, "0")
        reference = limit or 1.0
        rate = server.rate(start + warmup, start + seconds)
        warm = next(
            (
                t
                for t in range(int(seconds) - 4)
                if all(server.rate(start + u, start + u + 5) >= 0.9 * reference for u in range(t, int(seconds) - 4))
            ),
            None,
        )
        return {
            "rate": rate,
            "of_limit": rate / reference if limit else None,
            "refused": server.refused_share(start + warmup, start + seconds),
            "warmup_s": warm,
        }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=float, default=50.0, help="requests per second the server allows")
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--warmup", type=float, default=30.0)
    parser.add_argument("--measure", type=float, default=15.0)
    parser.add_argument("--ways", default=None, help="comma-separated ways to run (default: all)")
    parser.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        way, url, seconds, state, tag, limit = args.worker
        if way == "test":
            drive_test(url, float(seconds), Path(state), float(limit), 3, tag)
        else:
            drive(url, way, float(seconds), Path(state), None, tag)
        return
    ways = ["controller", "controller x3", "fixed 16", "fixed 64", "hand-set", "test", "test x3"]
    if args.ways:
        unknown = set(args.ways.split(",")) - set(ways)
        if unknown:
            parser.error(f"--ways: unknown {', '.join(sorted(unknown))} (known: {', '.join(ways)})")
        ways = [w for w in ways if w in args.ways.split(",")]
    print(
        f"limit {args.limit:g} requests/s in 1 s windows, answers after {args.latency:g} s; "
        f"warm-up {args.warmup:g} s, then {args.measure:g} s measured"
    )
    print(f"{'headers':8} {'way':14} {'req/s':>7} {'/ limit':>8} {'429 share':>10} {'warm-up s':>10}")
    for headers in (True, False):
        for way in ways:
            found = measure(way, args.limit, args.latency, headers, args.warmup, args.measure)
            print(
                f"{'yes' if headers else 'no':8} {way:14} {found['rate']:7.1f} {found['of_limit']:8.2f} "
                f"{found['refused']:10.3%} {found['warmup_s'] if found['warmup_s'] is not None else '-':>10}",
                flush=True,
            )
    if args.ways and "fixed 128" not in args.ways:
        return
    print("no limit, answers after 2 s:")
    base = measure("fixed 128", None, 2.0, False, args.warmup, args.measure)["rate"]
    ours = measure("controller", None, 2.0, False, args.warmup, args.measure)["rate"]
    print(f"  fixed 128: {base:.1f} req/s; controller: {ours:.1f} req/s ({ours / base:.2f} of it)")


if __name__ == "__main__":
    main()
