"""Benchmark: Mix at the seed's scale with decontamination on, against the same Mix with it off.

    .venv/bin/python tests/benchmarks/bench_decontaminate.py [--examples 38000] [--repeats 3] [--dir DIR]

Writes synthetic sources shaped like the seed's mixture (half multi-turn instructions ~600 words,
a quarter BookSum chapters ~4,000 words with summaries, a quarter 20-document QA prompts ~2,000
words; words drawn from a 30,000-word Zipf vocabulary) and Test suites the size of the model card's
(805 AlpacaEval instructions, 1,431 BookSum test chapters ~5,000 words with summaries, 2,655 NQ
questions), with a few test prompts planted in the training side. Then alternates, in fresh child
processes, Mix through the runner with `mix.decontaminate.enabled=false` and with the default
(`report`), the mixture as large as the sources (`total` = every example, so every one is checked):
once in a fresh store (the index of the suites is built) and once in a store that keeps the index
from an earlier run (as every later run and sweep job does). Reports median wall times, the ratios,
the extra seconds, that every planted prompt was found, and that both find the same.
Target: the check adds well under a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


class Text:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
        lengths = self.rng.integers(2, 10, 30_000)
        self.vocab = np.array(["".join(self.rng.choice(letters, n)) for n in lengths])
        p = 1.0 / np.arange(1, len(self.vocab) + 1)
        self.cdf = np.cumsum(p / p.sum())

    def words(self, n: int) -> str:
        picks = np.minimum(np.searchsorted(self.cdf, self.rng.random(n)), len(self.vocab) - 1)
        return " ".join(self.vocab[picks]) + "."


def generate(d: Path, examples: int) -> dict[str, int]:
    """Sources and suites under `d`; returns how many test prompts were planted per suite."""
    t = Text(0)
    d.mkdir(parents=True, exist_ok=True)
    alpaca = [t.words(int(n)) for n in t.rng.integers(8, 60, 805)]
    chapters = [(t.words(int(n)), t.words(400)) for n in t.rng.integers(3000, 7000, 1431)]
    questions = [t.words(int(n)).rstrip(".") + "?" for n in t.rng.integers(6, 13, 2655)]
    with open(d / "alpaca_eval.jsonl", "w") as f:
        f.writelines(json.dumps({"instruction": q, "output": "ref"}) + "\n" for q in alpaca)
    with open(d / "booksum_test.jsonl", "w") as f:
        f.writelines(json.dumps({"chapter": c, "summary_text": s}) + "\n" for c, s in chapters)
    with open(d / "mqa_test.jsonl", "w") as f:
        f.writelines(json.dumps({"question": q, "answers": ["x"], "ctxs": []}) + "\n" for q in questions)
    planted = {"alpaca_eval": 40, "booksum": 10, "mqa": 30}
    n_inst, n_book = examples // 2, examples // 4
    n_mqa = examples - n_inst - n_book
    with open(d / "instructions.jsonl", "w") as f:
        for i in range(n_inst):
            messages = []
            for turn in range(int(t.rng.integers(1, 4))):
                user = t.words(int(t.rng.integers(10, 80)))
                if turn == 0 and i < planted["alpaca_eval"]:
                    user = "Please help. " + alpaca[i].upper()
                messages += [{"role": "user", "content": user}, {"role": "assistant", "content": t.words(200)}]
            f.write(json.dumps({"messages": messages}) + "\n")
    question = "\n\nQ: Can you write an appropriate summary of the above paragraphs?\nA:"
    with open(d / "booksum.jsonl", "w") as f:
        for i in range(n_book):
            chapter = chapters[i][0] if i < planted["booksum"] else t.words(int(t.rng.integers(2000, 6000)))
            f.write(json.dumps({"prompt": chapter + question, "completion": " " + t.words(300)}) + "\n")
    with open(d / "mqa.jsonl", "w") as f:
        for i in range(n_mqa):
            docs = "\n".join(f"Document [{k}](Title: {t.words(3)}) {t.words(100)}" for k in range(1, 21))
            q = questions[i] if i < planted["mqa"] else t.words(9)
            f.write(json.dumps({"prompt": f"{docs}\n\nQuestion: {q}\nAnswer:", "completion": " x"}) + "\n")
    return planted


def overrides(d: Path, examples: int, store: Path, decontaminate: bool) -> list[str]:
    n_inst, n_book = examples // 2, examples // 4
    n_mqa = examples - n_inst - n_book
    out = [
        "stages=[mix]",
        "~distill",
        "~train",
        "~deploy",
        f"store_dir={store}",
        "+source@sources.b_inst=sharegpt_sample",
        "sources.b_inst.kind=messages",
        f"sources.b_inst.data_files=[{d / 'instructions.jsonl'}]",
        "+source@sources.b_book=booksum_sample",
        f"sources.b_book.data_files=[{d / 'booksum.jsonl'}]",
        "+source@sources.b_mqa=mqa_sample",
        f"sources.b_mqa.data_files=[{d / 'mqa.jsonl'}]",
        "mix=samples",
        f"mix.total={examples}",
        "mix.eval_fraction=0",
        "mix.progress=false",
        "mix.components.instructions.source=b_inst",
        "mix.components.booksum.source=b_book",
        "mix.components.mqa.source=b_mqa",
        f"mix.components.instructions.share={n_inst / examples}",
        f"mix.components.booksum.share={n_book / examples}",
        f"mix.components.mqa.share={n_mqa / examples}",
        "mix.decontaminate.action=report",  # keep every example (total = all of them); count
        f"mix.decontaminate.enabled={str(decontaminate).lower()}",
        f"test.suites.alpaca_eval.data_files=[{d / 'alpaca_eval.jsonl'}]",
        "test.suites.alpaca_eval.max_examples=null",
        f"test.suites.booksum.data_files=[{d / 'booksum_test.jsonl'}]",
        "test.suites.booksum.max_examples=null",
        f"test.suites.mqa.data_files=[{d / 'mqa_test.jsonl'}]",
        "test.suites.mqa.max_examples=null",
        "hydra.run.dir=" + str(store / "run"),
    ]
    return out


def once(d: Path, examples: int, mode: str) -> tuple[float, dict]:
    """One Mix in a fresh child process: `off`, `on` (a fresh store: the index is built), or
    `cached` (a store that keeps the index from an earlier run, its mixtures removed)."""
    store = d / f"store-{mode}"
    if mode == "cached":
        for path in store.iterdir() if store.is_dir() else []:
            if path.name != "indexes":
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    else:
        shutil.rmtree(store, ignore_errors=True)
    args = overrides(d, examples, store, mode != "off")
    started = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "recipe"), *args], check=True, capture_output=True, cwd=ROOT)
    seconds = time.perf_counter() - started
    manifest = json.loads(next(store.glob("mix/*/manifest.json")).read_text())
    return seconds, manifest


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=38_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=ROOT / "outputs" / "bench" / "decontaminate")
    a = parser.parse_args()
    started = time.perf_counter()
    planted = generate(a.dir, a.examples)
    size = sum(p.stat().st_size for p in a.dir.glob("*.jsonl")) / 1e6
    print(f"data: {a.examples} examples, {size:.0f} MB of JSON Lines ({time.perf_counter() - started:.0f} s)")
    modes = ("off", "on", "cached")
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    manifests: dict[str, dict] = {}
    shutil.rmtree(a.dir / "store-cached", ignore_errors=True)
    once(a.dir, a.examples, "cached")  # builds the index the cached runs read
    for _ in range(a.repeats):
        for mode in modes:
            seconds, manifests[mode] = once(a.dir, a.examples, mode)
            times[mode].append(seconds)
            print(f"  decontamination {mode}: {seconds:.1f} s")
    off, on, cached = (statistics.median(times[mode]) for mode in modes)
    print(f"Mix without decontamination: median {off:.1f} s")
    print(f"  with, index built:   {on:.1f} s; ratio {on / off:.2f}x, +{on - off:.1f} s")
    print(f"  with, index read:    {cached:.1f} s; ratio {cached / off:.2f}x, +{cached - off:.1f} s")
    suites = manifests["on"]["contamination"]["suites"]
    assert manifests["cached"]["contamination"] == manifests["on"]["contamination"], "the cached index found otherwise"
    for name, want in planted.items():
        got = len(suites[name]["found_in_training"])
        print(f"  {name}: {got} test records found in the training side (planted {want})")
        assert got >= want, name


if __name__ == "__main__":
    main()
