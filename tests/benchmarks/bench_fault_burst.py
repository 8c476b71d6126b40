"""How fast the rate controller recovers from a burst of faults: 200 requests from 64 threads through
the real ModelClient and its rate controller against the fake Together API (tests/fake_together.py),
without faults and with a burst of 20 429s (Retry-After 1), 10 503s and 10 dropped connections at
the start, side by side in one invocation, each against a fresh server and cache.

    .venv/bin/python tests/benchmarks/bench_fault_burst.py [--repeats 3] [--requests 200]

Target (issue "Safe under every fault, round three"): the faulty run within 5x the clean one plus
the Retry-After seconds it was told to wait (here 1 s per 429 that paused every sender).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from recipe.providers.cache import RequestCache  # noqa: E402
from recipe.providers.http import Client  # noqa: E402
from recipe.providers.model_client import paced  # noqa: E402
from tests.fake_together import FakeTogether  # noqa: E402
from tests.limited_server import asker  # noqa: E402


def one(requests: int, faults: bool) -> tuple[float, dict]:
    with FakeTogether(api_key="k") as fake, tempfile.TemporaryDirectory() as tmp:
        if faults:
            fake.fail(429, 20, retry_after=1)
            fake.fail(503, 10)
            fake.drop(10)
        client = Client(fake.base_url, "k", pool_size=64, timeout_s=30)
        cache = RequestCache(Path(tmp) / "cache" / "requests.sqlite")
        controller = paced(cache, client, "m")
        sender = asker(client, cache, controller)
        started = time.monotonic()
        with ThreadPoolExecutor(64) as pool:
            answers = list(pool.map(lambda i: sender.ask([{"role": "user", "content": f"q{i}"}]), range(requests)))
        took = time.monotonic() - started
        cache.close()
        assert len(answers) == requests
        return took, controller.stats.record()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200)
    a = parser.parse_args()
    clean, faulty = [], []
    for _ in range(a.repeats):  # alternating, so both see the same machine
        clean.append(one(a.requests, False)[0])
        took, stats = one(a.requests, True)
        faulty.append(took)
        print(f"clean {clean[-1]:.2f} s, faults {took:.2f} s; {stats}", flush=True)
    c, f = statistics.median(clean), statistics.median(faulty)
    print(f"median of {a.repeats}: clean {c:.2f} s, with the burst {f:.2f} s: {f / c:.1f}x")


if __name__ == "__main__":
    main()
