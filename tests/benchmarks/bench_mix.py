"""Benchmark: Mix on 1 M synthetic records (~1 GB) against a plain read-and-parse pass.

    .venv/bin/python tests/benchmarks/bench_mix.py [--records 1000000] [--repeats 3] [--dir DIR] [--baseline TREE]

`--baseline TREE` also times Mix with another checkout's code (a `git worktree add` of the commit
before a change), alternating with this one's, for before/after ratios measured in one run.

Writes three JSON Lines sources in the recipe's shapes (50% llama-instruct `text`, 25% BookSum
`prompt`/`completion`, 25% multi-document QA with 3-20 documents, stratified by document count),
then alternates, in fresh child processes, (a) the baseline, a plain pass that reads every line and
`json.loads` it, (b) the same pass with orjson (the parser Mix uses), and (c) the Mix stage through
the runner (fresh store each time, default settings: one worker per CPU), building a mixture of half
the records plus a 1% eval split, decontaminated against the default (offline) Test suites, and
(d) the same Mix with `mix.decontaminate.enabled=false`, and (e) what people would write instead, a
Hugging Face `datasets` script (load_dataset json, shuffle, select the same 50/25/25 of half the
records, concatenate, to_json; a fresh cache each time). Reports the median wall time of each, the
ratios, peak RSS
(VmHWM) of each child, and for Mix also the sampled peak of its process tree (workers too, every
0.2 s). Targets: Mix <= 2x the plain read pass, <= the `datasets` script, <= 500 MB RSS.

Data and stores go under outputs/bench/ (the store's own filesystem; on these machines /tmp
writes several times slower than the working tree's disk, which would skew the comparison).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her she there been one all we their has would when if so no will more can out up about who them into"
).split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def generate(directory: Path, records: int, seed: int = 0) -> list[Path]:
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / "instructions.jsonl", directory / "booksum.jsonl", directory / "mqa.jsonl"]
    counts = [records // 2, records // 4, records - records // 2 - records // 4]
    with open(paths[0], "w") as f:
        for i in range(counts[0]):
            turns = " ".join(
                f"[INST] {sentence(rng, 20)} {i} [/INST] {sentence(rng, 60)}" for _ in range(rng.randint(1, 3))
            )
            f.write(json.dumps({"text": turns}) + "\n")
    with open(paths[1], "w") as f:
        for i in range(counts[1]):
            prompt = f"Chapter {i}. " + " ".join(sentence(rng, 25) for _ in range(8))
            prompt += "\n\nQ: Can you write an appropriate summary of the above paragraphs?\nA:"
            completion = " " + sentence(rng, 40)
            f.write(json.dumps({"prompt": prompt, "completion": completion, "text": prompt + completion}) + "\n")
    with open(paths[2], "w") as f:
        for i in range(counts[2]):
            n = rng.choice([3, 5, 10, 20])
            docs = "\n".join(f"Document [{k + 1}](Title: T{i}-{k}) {sentence(rng, 6)}" for k in range(n))
            prompt = f"Write a high-quality answer for the given question using only the provided search results.\n\n{docs}\n\nQuestion: q{i}?\n"
            completion = f"Answer: a{i}"
            f.write(json.dumps({"prompt": prompt, "completion": completion, "text": prompt + completion}) + "\n")
    return paths


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child_read(directory: Path, parser: str) -> dict:
    import orjson

    loads = orjson.loads if parser == "orjson" else json.loads
    started = time.perf_counter()
    n = 0
    for path in sorted(directory.glob("*.jsonl")):
        with open(path, "rb") as f:
            for line in f:
                loads(line)
                n += 1
    return {"seconds": time.perf_counter() - started, "records": n}


def child_datasets(directory: Path, out: Path, records: int) -> dict:
    """What people would write instead: Hugging Face `datasets` reads the three JSON Lines files,
    shuffles each, takes the same 50/25/25 of half the records, concatenates and writes JSON Lines
    (a fresh cache directory, so the JSON-to-Arrow conversion is timed as a first run pays it)."""
    from datasets import concatenate_datasets, disable_progress_bars, load_dataset

    disable_progress_bars()
    started = time.perf_counter()
    wanted = {"instructions": records // 4, "booksum": records // 8, "mqa": records // 2 - records // 4 - records // 8}
    parts = []
    for name, n in wanted.items():
        ds = load_dataset("json", data_files=str(directory / f"{name}.jsonl"), split="train", cache_dir=str(out / "hf"))
        parts.append(ds.select_columns(["text"]).shuffle(seed=0).select(range(n)))
    mixture = concatenate_datasets(parts).shuffle(seed=0)
    mixture.to_json(str(out / "mixture.jsonl"))
    return {"seconds": time.perf_counter() - started, "examples": len(mixture)}


def tree_rss_mb() -> float:
    """Resident memory of this process and its descendants (the forkserver and its workers), read
    from the few /proc files of that tree: a scan of all of /proc every sample cost the measured
    process a fifth of a core (py-spy: 6 s of CPU in a 26 s Mix)."""
    total, todo, page = 0, [os.getpid()], os.sysconf("SC_PAGE_SIZE")
    while todo:
        pid = todo.pop()
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return total / 2**20


def child_mix(directory: Path, store: Path, records: int, workers: int = 0, decontaminate: bool = True) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    from recipe.cli import CONF_DIR
    from recipe.config import ComponentConfig, SourceConfig, register_configs
    from recipe.runner import run

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        # Mix only: the default config goes on to Distill, train, test and deploy, which is not what is timed.
        overrides = [f"store_dir={store}", "stages=[mix]", "~distill", "mix.progress=false"]
        cfg = compose(config_name="config", overrides=overrides)
    kinds = {"instructions": "text", "booksum": "prompt_completion", "mqa": "prompt_completion"}
    shares = {"instructions": 0.5, "booksum": 0.25, "mqa": 0.25}
    with open_dict(cfg):
        cfg.mix.components = {}
        for name, kind in kinds.items():
            cfg.sources[f"bench_{name}"] = OmegaConf.merge(
                OmegaConf.structured(SourceConfig), {"kind": kind, "data_files": [str(directory / f"{name}.jsonl")]}
            )
            component = {"source": f"bench_{name}", "share": shares[name]}
            if name == "mqa":
                component["strata"] = "num_documents"
            cfg.mix.components[name] = OmegaConf.merge(OmegaConf.structured(ComponentConfig), component)
        cfg.mix.total = records // 2
        cfg.mix.eval_fraction = 0.01
        cfg.mix.eval_per_component = 0  # the offline mixture holds 3 of each out instead: this one, 1 %
        cfg.mix.workers = workers
        cfg.mix.decontaminate.enabled = decontaminate  # against the default (offline) Test suites
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            peak[0] = max(peak[0], tree_rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    record = run(cfg, run_dir=store)
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    assert list(record["stages"]) == ["mix"], record["stages"]  # nothing but Mix was run
    manifest = json.loads((Path(record["stages"]["mix"]["artifact"]) / "manifest.json").read_text())
    return {"seconds": seconds, "examples": manifest["examples"], "counts": manifest["counts"], "tree_rss_mb": peak[0]}


def spawn(*args: str, tree: Path | None = None) -> dict:
    """Run one child (a new session: it and its workers stop together). `tree`: import `recipe` from
    there, in the child and in its workers, whose forkserver puts its working directory first on
    sys.path (so the child runs in `tree`, and every path it is given is absolute)."""
    env = {**os.environ, "PYTHONPATH": str(tree)} if tree else None
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        capture_output=True,
        text=True,
        start_new_session=True,
        env=env,
        cwd=tree or ROOT,
    )
    if out.returncode:
        raise SystemExit(f"child {' '.join(args)} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    code = Path(result.get("code") or ROOT / "recipe")
    if code.resolve() != ((tree or ROOT) / "recipe").resolve():  # the code timed is the code meant
        raise SystemExit(f"child {' '.join(args)} ran the recipe code in {code}, not {tree or ROOT}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="mix.workers (0: one per CPU)")
    parser.add_argument("--dir", type=Path, default=None, help="keep the generated data here (reused if present)")
    parser.add_argument("--baseline", type=Path, default=None, help="also time Mix with the recipe code of this tree")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, directory, *rest = args.child
        if kind == "read":
            result = child_read(Path(directory), rest[0])
        elif kind == "datasets":
            result = child_datasets(Path(directory), Path(rest[0]), int(rest[1]))
        else:
            result = child_mix(Path(directory), Path(rest[0]), int(rest[1]), int(rest[2]), rest[3] == "on")
        result["peak_rss_mb"] = peak_rss_mb()
        if kind == "mix":  # which recipe code this child and its workers ran
            from recipe.data.jsonl import worker_pool

            with worker_pool(1) as pool:
                in_worker = pool.submit(eval, "__import__('recipe').__file__").result()
            here = sys.modules["recipe"].__file__
            result["code"] = str(Path(here).parent) if here == in_worker else f"{here} here, {in_worker} in workers"
        print(json.dumps(result))
        return

    root = ROOT / "outputs" / "bench"
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mix-", dir=root))
    data = (args.dir or work / "data").resolve()
    baseline = args.baseline.resolve() if args.baseline else None
    if not (data / "mqa.jsonl").exists():
        started = time.perf_counter()
        generate(data, args.records)
        print(f"generated {args.records} records in {time.perf_counter() - started:.1f}s")
    size = sum(p.stat().st_size for p in data.glob("*.jsonl"))
    print(f"data: {size / 1e9:.2f} GB in {data}")
    reads, fast_reads, mixes, plain, hf, before = [], [], [], [], [], []
    try:
        for i in range(args.repeats):
            reads.append(spawn("read", str(data), "json"))
            fast_reads.append(spawn("read", str(data), "orjson"))
            store = work / f"store{i}"
            mixes.append(spawn("mix", str(data), str(store), str(args.records), str(args.workers), "on"))
            shutil.rmtree(store, ignore_errors=True)
            plain.append(spawn("mix", str(data), str(store), str(args.records), str(args.workers), "off"))
            shutil.rmtree(store, ignore_errors=True)
            hf.append(spawn("datasets", str(data), str(store), str(args.records)))
            shutil.rmtree(store, ignore_errors=True)
            if args.baseline:
                before.append(
                    spawn("mix", str(data), str(store), str(args.records), str(args.workers), "on", tree=baseline)
                )
                shutil.rmtree(store, ignore_errors=True)
            print(
                f"run {i + 1}: read(json) {reads[-1]['seconds']:.1f}s, read(orjson) {fast_reads[-1]['seconds']:.1f}s, "
                f"mix {mixes[-1]['seconds']:.1f}s, mix RSS {mixes[-1]['peak_rss_mb']:.0f} MB, "
                f"mix without decontamination {plain[-1]['seconds']:.1f}s, datasets {hf[-1]['seconds']:.1f}s"
                + (f", mix with the baseline's code {before[-1]['seconds']:.1f}s" if before else "")
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    read_s = statistics.median(r["seconds"] for r in reads)
    fast_s = statistics.median(r["seconds"] for r in fast_reads)
    mix_s = statistics.median(m["seconds"] for m in mixes)
    print(f"records: {reads[0]['records']}, mixture: {mixes[0]['examples']} examples {mixes[0]['counts']}")
    print(f"read pass, json.loads:   median {read_s:.1f}s, peak RSS {max(r['peak_rss_mb'] for r in reads):.0f} MB")
    print(f"read pass, orjson.loads: median {fast_s:.1f}s, peak RSS {max(r['peak_rss_mb'] for r in fast_reads):.0f} MB")
    print(
        f"mix stage:               median {mix_s:.1f}s, peak RSS {max(m['peak_rss_mb'] for m in mixes):.0f} MB "
        f"(with its worker processes, sampled: {max(m['tree_rss_mb'] for m in mixes):.0f} MB)"
    )
    print(f"ratio mix / read(json): {mix_s / read_s:.2f}x (target <= 2x); mix / read(orjson): {mix_s / fast_s:.2f}x")
    plain_s = statistics.median(m["seconds"] for m in plain)
    print(
        f"mix without decontamination: median {plain_s:.1f}s ({plain_s / read_s:.2f}x read(json)); the check of "
        f"{mixes[0]['examples']} examples against the Test suites adds {mix_s - plain_s:.1f}s ({mix_s / plain_s:.2f}x)"
    )
    hf_s = statistics.median(m["seconds"] for m in hf)
    print(
        f"datasets script (load_dataset json, shuffle, select, concatenate, to_json): median {hf_s:.1f}s, peak RSS "
        f"{max(m['peak_rss_mb'] for m in hf):.0f} MB; mix / datasets: {mix_s / hf_s:.2f}x (target <= 1x), "
        f"without decontamination {plain_s / hf_s:.2f}x"
    )
    if before:
        before_s = statistics.median(m["seconds"] for m in before)
        print(
            f"mix with {args.baseline}'s code: median {before_s:.1f}s ({before_s / read_s:.2f}x read(json), "
            f"{before_s / hf_s:.2f}x datasets); this tree / that one: {mix_s / before_s:.2f}x"
        )


if __name__ == "__main__":
    main()
