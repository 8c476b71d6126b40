"""Benchmark: upload of a large JSONL to a loopback Together-shaped server.

    .venv/bin/python tests/benchmarks/bench_upload.py [--gib 1] [--repeats 3]

In one invocation, against the fake Together server in its own process (big PUT bodies are drained
and hashed there, not kept): our upload (`recipe.providers.together.upload_fine_tune_file`: POST
/files -> 302 -> streamed PUT -> preprocess) in a fresh child process, and `curl -T` of the same
file to an upload URL of the same server. Reports median wall times, our throughput as a share of
curl's (target >= 50 %), and the peak RSS of our child for this file and for one a quarter its
size (target <= 150 MB, flat in file size).
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


def make_file(path: Path, size: int) -> None:
    line = (json.dumps({"text": "x" * 1000}) + "\n").encode()
    block = line * ((1 << 20) // len(line))
    with open(path, "wb") as f:
        written = 0
        while written < size:
            f.write(block)
            written += len(block)


def child(base_url: str, path: str) -> None:
    from recipe.providers.http import Client
    from recipe.providers.together import upload_fine_tune_file

    client = Client(base_url, "bench")
    started = time.perf_counter()
    upload_fine_tune_file(client, Path(path))
    seconds = time.perf_counter() - started
    peak = next(
        int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM")
    )
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak / 1024}))


def ours(base_url: str, path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", base_url, str(path)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def curl(base_url: str, path: Path) -> float:
    import requests

    location = requests.post(
        f"{base_url}/files",
        data={"purpose": "fine-tune", "file_name": path.name, "file_type": "jsonl"},
        headers={"Authorization": "Bearer bench"},
        allow_redirects=False,
    ).headers["Location"]
    started = time.perf_counter()
    subprocess.run(["curl", "-sS", "-o", "/dev/null", "-T", str(path), location], check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, str(ROOT))
        child(*args.child)
        return
    work = Path(tempfile.mkdtemp(prefix="upload-", dir=ROOT / "outputs"))
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_together", "0", "--no-validate"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        base_url = server.stdout.readline().strip()
        big, small = work / "big.jsonl", work / "small.jsonl"
        make_file(big, int(args.gib * 2**30))
        make_file(small, int(args.gib * 2**30 / 4))
        size_mb = big.stat().st_size / 2**20
        runs, curls = [], []
        for i in range(args.repeats):
            runs.append(ours(base_url, big))
            curls.append(curl(base_url, big))
            print(
                f"run {i + 1}: ours {runs[-1]['seconds']:.2f} s ({runs[-1]['peak_rss_mb']:.0f} MB RSS), curl -T {curls[-1]:.2f} s"
            )
        quarter = ours(base_url, small)
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)
    ours_s = statistics.median(r["seconds"] for r in runs)
    curl_s = statistics.median(curls)
    print(
        f"{size_mb:.0f} MiB: ours median {ours_s:.2f} s ({size_mb / ours_s:.0f} MiB/s), curl -T median {curl_s:.2f} s "
        f"({size_mb / curl_s:.0f} MiB/s): ours = {curl_s / ours_s:.0%} of curl's throughput (target >= 50 %)"
    )
    print(
        f"peak RSS of the uploading process: {max(r['peak_rss_mb'] for r in runs):.0f} MB for {size_mb:.0f} MiB, "
        f"{quarter['peak_rss_mb']:.0f} MB for {size_mb / 4:.0f} MiB (target <= 150 MB, flat)"
    )


if __name__ == "__main__":
    main()
