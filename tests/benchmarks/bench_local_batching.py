"""Benchmark: `transformers serve` one request at a time (what Test uses) against its
`--continuous-batching`, on the embedded SmolLM2 (CPU), side by side in this one invocation.

    .venv/bin/python tests/benchmarks/bench_local_batching.py [--starts 3] [--requests 8] [--max-tokens 64]

Each start is a fresh server on the embedded model's export in the store (outputs/bench/batching/),
batching with the KV cache Test gives it (recipe/providers/local/server.py: batching_flags).
Per start and way: seconds to ready, then two rounds of `--requests` greedy chat requests sent at
once (the first round of a batching server also allocates its paged cache); a round that gets no
answer within `--timeout` counts as a hang, and the server's threads are printed from its log.
Then the medians, the batching/sequential ratio of the second rounds, and whether the greedy
answers were identical. Test keeps one request at a time on `transformers serve` (see
recipe/providers/serving.py): this is what would have to change before it sends more.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from recipe.providers.local.server import batching_flags, free_port  # noqa: E402
from recipe.providers.local.trainer import embedded_model  # noqa: E402

WORK = ROOT / "outputs" / "bench" / "batching"


def start(model: Path, batching: bool, log: Path) -> tuple[subprocess.Popen[bytes], str, float]:
    port = free_port()
    command = [str(Path(sys.executable).with_name("transformers")), "serve", str(model)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    command += batching_flags(model) if batching else []  # as Test starts it
    began = time.monotonic()
    proc = subprocess.Popen(
        command,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    url = f"http://127.0.0.1:{port}"
    while time.monotonic() - began < 300:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}: see {log}")
        try:
            if requests.get(url + "/health", timeout=1).status_code == 200:
                return proc, url, time.monotonic() - began
        except requests.RequestException:
            pass
        time.sleep(0.1)
    stop(proc)
    raise SystemExit(f"the server was not ready after 300 s: see {log}")


def stop(proc: subprocess.Popen[bytes]) -> float:
    began = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return time.monotonic() - began


def round_of(url: str, model: Path, n: int, max_tokens: int, timeout: float) -> tuple[float | None, list[str]]:
    """n greedy requests at once: (seconds, answers), or (None, []) when one got no answer in time."""

    def ask(i: int) -> str:
        body = {
            "model": str(model),
            "messages": [{"role": "user", "content": f"Name {i + 2} colours and say why you like them."}],
            "max_tokens": max_tokens,
            "temperature": 0,
        }
        answer = requests.post(url + "/v1/chat/completions", json=body, timeout=timeout)
        answer.raise_for_status()
        return answer.json()["choices"][0]["message"]["content"]

    began = time.monotonic()
    try:
        with ThreadPoolExecutor(n) as pool:
            answers = list(pool.map(ask, range(n)))
    except requests.Timeout:
        return None, []
    return time.monotonic() - began, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=3, help="fresh servers per way")
    parser.add_argument("--requests", type=int, default=8, help="requests sent at once per round")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=120, help="seconds before a round counts as a hang")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    model, _ = embedded_model(WORK / "store")
    seen: dict[str, list[tuple[float, float | None, float | None]]] = {"sequential": [], "batching": []}
    answers: dict[str, list[str]] = {}
    hangs = {"sequential": 0, "batching": 0}
    for attempt in range(args.starts):
        for way in ("sequential", "batching"):  # alternated, so a slower minute hits both
            log = WORK / f"{way}-{attempt}.log"
            proc, url, ready = start(model, way == "batching", log)
            rounds: list[float | None] = []
            try:
                for _ in range(2):
                    seconds, got = round_of(url, model, args.requests, args.max_tokens, args.timeout)
                    rounds.append(seconds)
                    if seconds is None:
                        hangs[way] += 1
                        print(f"{way} start {attempt}: no answer in {args.timeout:.0f} s; log tail:")
                        print("\n".join(log.read_text(errors="replace").splitlines()[-10:]))
                        break
                    answers.setdefault(way, got)
            finally:
                stopped = stop(proc)
            rounds += [None] * (2 - len(rounds))
            seen[way].append((ready, rounds[0], rounds[1]))
            shown = ", ".join("hang" if r is None else f"{r:.1f} s" for r in rounds)
            print(f"{way:10s} start {attempt}: ready {ready:.1f} s; rounds {shown}; stopped in {stopped:.1f} s")

    def median(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    print(
        f"\n{args.requests} greedy requests at once, {args.max_tokens} tokens at most, medians of {args.starts} starts"
    )
    print(f"{'way':10s} {'ready':>7s} {'round 1':>8s} {'round 2':>8s} {'hangs':>6s}")
    for way, rows in seen.items():
        ready, first, second = (median([r[i] for r in rows]) for i in range(3))
        cells = ["-" if v is None else f"{v:.1f}" for v in (ready, first, second)]
        print(f"{way:10s} {cells[0]:>7s} {cells[1]:>8s} {cells[2]:>8s} {hangs[way]:>6d}")
    sequential = median([r[2] for r in seen["sequential"]])
    batching = median([r[2] for r in seen["batching"]])
    if sequential and batching:
        print(f"batching / sequential, second rounds: {batching / sequential:.2f}x the time")
    if len(answers) == 2:
        print(f"greedy answers identical: {answers['sequential'] == answers['batching']}")


if __name__ == "__main__":
    main()
