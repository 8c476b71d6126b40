"""Decontamination: planted Test prompts are found (verbatim, reworded in case/space/punctuation,
inside a longer turn), near-misses are not; Mix drops, fails or reports; Distill sends nothing for
a contaminated conversation; fingerprints follow the suites' data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig, OmegaConf, open_dict

from recipe.config import SuiteConfig
from recipe.data import contamination
from recipe.data.contamination import Index, Words
from recipe.errors import RecipeError
from recipe.evaluation import contamination as contamination_view
from recipe.runner import Pipeline, run
from recipe.store import ArtifactStore

from .conftest import write_jsonl
from .fake_together import FakeTogether
from .test_mix import artifact, lines, one_source

WITH_TEST = ("mix=samples", "~distill", "~train", "~deploy")  # Test's suites stay composed (not run)

INSTRUCTIONS = [
    "Write a limerick about a cat who is afraid of the dark but loves to watch the stars at night.",
    "Explain the difference between a list and a tuple in Python, with an example of when each is the right choice.",
    "Summarise the main causes of the French Revolution in three short paragraphs for a high school student.",
]
QUESTIONS = ["who wrote the novel moby dick", "when did the first man land on the moon"]


def index(**suites: list[list[str]]) -> Index:
    return Index.build({n: list(enumerate(texts)) for n, texts in suites.items()}, ngram=13, threshold=0.5, min_words=4)


# ---- the matching rule ------------------------------------------------------------------------


def test_planted_copies_are_found_and_near_misses_are_not() -> None:
    idx = index(alpaca=[[t] for t in INSTRUCTIONS], mqa=[[q] for q in QUESTIONS], tiny=[["Hi"]])
    verbatim = [INSTRUCTIONS[0]]
    reworded = [
        "  WRITE a limerick -- about a cat, who is AFRAID of the dark;\nbut loves to watch the stars at night!!"
    ]
    embedded = ["Sure. Here is my task for you today: " + INSTRUCTIONS[1] + " Please answer in English.", "ok"]
    question_inside = ["Document [1] Herman Melville ...\n\nQuestion: Who wrote the novel 'Moby-Dick'?"]
    # Shares a sentence's worth of words with a long instruction: under half of its 13-grams.
    near_miss = ["Summarise the main causes of the French Revolution in a haiku for a poet."]
    other_question = ["who wrote the novel war and peace"]
    tiny_inside = ["Hi there, can you help me?"]  # a two-word prompt only matches a whole message
    tiny_exact = ["hi!"]
    found = idx.scan(
        [verbatim, reworded, embedded, question_inside, near_miss, other_question, tiny_inside, tiny_exact]
    )
    assert found == [
        [("alpaca", 0)],
        [("alpaca", 0)],
        [("alpaca", 1)],
        [("mqa", 0)],
        [],
        [],
        [],
        [("tiny", 0)],
    ]


def test_threshold_is_the_share_of_the_test_prompts_ngrams() -> None:
    words = [f"w{i}" for i in range(40)]  # 28 distinct 13-grams
    idx = index(book=[[" ".join(words)]])
    assert idx.part_grams.tolist() == [28]
    half = " ".join(words[:27])  # 15 of the 28 13-grams: > 0.5
    under = " ".join(words[:25])  # 13 of 28: < 0.5
    assert idx.scan([[half], [under]]) == [[("book", 0)], []]
    # n-grams never span two messages of an example
    assert idx.scan([[" ".join(words[i : i + 12]) for i in range(0, 40, 12)]]) == [[]]


def test_hashes_are_the_same_in_every_process() -> None:
    """Mix's workers and the main process must agree: no per-process string hash."""
    code = "from recipe.data.contamination import Words; print(Words.of(['Hello, World! again']).hashes.tolist())"
    runs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    }
    assert len(runs) == 1 and runs.pop().strip() == str(Words.of(["hello world AGAIN"]).hashes.tolist())


def test_words_hash_by_every_byte_whatever_their_length_or_place() -> None:
    """Words are hashed from 8-byte pieces: words that differ only past the first piece, or only in
    a middle piece of a long one, hash apart; a word hashes the same at any byte offset."""
    long_a, long_b = "1234567890123456789012345", "1234567890123450789012345"  # differ in piece 2 of 4
    pairs = [
        ("internationalization", "internationalisation"),
        (long_a, long_b),
        ("abcdefgh", "abcdefghi"),  # one byte past a whole piece
        ("a", "aa"),
        ("ŝtono", "ştono"),  # UTF-8, two bytes a letter
    ]
    for a, b in pairs:
        assert Words.of([a]).hashes.tolist() != Words.of([b]).hashes.tolist(), (a, b)
    for word in ("x", "abcdefgh", "internationalization", long_a, "ŝtono"):
        alone = Words.of([word]).hashes.tolist()
        for shift in range(1, 9):  # every alignment of its first byte
            assert Words.of([" " * shift + word + " tail"]).hashes[:1].tolist() == alone, (word, shift)
    distinct = {f"w{i:07d}x{i % 7}" * (1 + i % 4) for i in range(2000)}
    assert len(set(Words.of([" ".join(sorted(distinct))]).hashes.tolist())) == len(distinct)


def test_the_lead_bitmap_skips_places_but_never_a_match(monkeypatch) -> None:
    """Only places whose first two words lead one of the test side's n-grams are hashed further
    when those are few; the same places are found when every place is hashed."""
    rng = __import__("random").Random(0)
    vocab = [f"v{i}" for i in range(60)]
    prompts = [" ".join(rng.choice(vocab) for _ in range(30)) for _ in range(5)]
    idx = index(alpaca=[[p] for p in prompts], mqa=[[q] for q in QUESTIONS])
    texts = [[" ".join(rng.choice(vocab) for _ in range(200))] for _ in range(300)]
    texts += [[f"noise {prompts[i]} more noise"] for i in range(5)] + [[f"so: {QUESTIONS[1]}?"]]
    assert idx.long_leads.sparse and idx.short_leads.sparse  # so the first scan takes the bitmap's path
    sparse = idx.scan(texts)
    assert sparse[-6:] == [[("alpaca", i)] for i in range(5)] + [[("mqa", 1)]]
    monkeypatch.setattr(contamination.Leads, "maybe", lambda self, hashes, n, k: np.ones(n, dtype=bool))
    assert idx.scan(texts) == sparse  # every place a candidate: the slices path, the same findings


def test_a_message_hashes_the_same_whatever_shares_its_batch() -> None:
    """A batch is normalised in one pass (NUL between messages), or message by message when its
    text holds NUL itself: either way each message's words hash as they do alone, so what is found
    in a record never depends on the records checked with it."""
    messages = [
        "Hello, World!",
        "Ünïcode — “quotes” and ΣΑΣ and İstanbul",
        "",
        "tabs\tand\nnew lines,   many spaces",
        "a NUL\0inside",
        "control \x01 chars \x1f here ©",
    ]
    for batch in (messages, [m for m in messages if "\0" not in m]):
        together = Words.of(batch)
        for i, message in enumerate(batch):
            alone = Words.of([message]).hashes
            assert together.hashes[together.starts[i] : together.starts[i + 1]].tolist() == alone.tolist(), message
    assert Words.of(["a NUL\0inside"]).hashes.tolist() == Words.of(["A nul\0INSIDE!"]).hashes.tolist()


# ---- the index kept on disk ---------------------------------------------------------------------


def same_index(a: Index, b: Index) -> None:
    assert (a.ngram, a.threshold, a.min_words, a.parts, a.records) == (
        b.ngram,
        b.threshold,
        b.min_words,
        b.parts,
        b.records,
    )
    for name in ("part_grams", "short_length", "short_hash"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    for name in ("long", "short", "tiny"):
        x, y = getattr(a, name), getattr(b, name)
        for array in ("keys", "offsets", "owners", "filters"):
            np.testing.assert_array_equal(getattr(x, array), getattr(y, array))
        assert x.mask == y.mask
    for name in ("long_leads", "short_leads"):
        x, y = getattr(a, name), getattr(b, name)
        np.testing.assert_array_equal(x.bitmap, y.bitmap)
        assert (x.shift, x.sparse) == (y.shift, y.sparse)


def test_a_saved_index_reads_back_array_for_array_and_finds_the_same(tmp_path: Path) -> None:
    idx = index(alpaca=[[t] for t in INSTRUCTIONS], mqa=[[q] for q in QUESTIONS], tiny=[["Hi"]])
    path = tmp_path / "index.npz"
    idx.save(path)
    back = Index.load(path)
    same_index(idx, back)
    examples = [[f"Please: {INSTRUCTIONS[1]} Thanks."], [f"Q: {QUESTIONS[1].upper()}?"], ["hi"], ["no test text here"]]
    found = idx.scan(examples)
    assert found[0] == [("alpaca", 1)] and found[1] == [("mqa", 1)] and found[2] == [("tiny", 0)] and not found[3]
    assert back.scan(examples) == found
    assert [p.name for p in tmp_path.iterdir()] == ["index.npz"]  # nothing half-written beside it


def test_an_index_file_that_is_not_this_codes_is_refused(tmp_path: Path, monkeypatch) -> None:
    idx = index(alpaca=[[t] for t in INSTRUCTIONS])
    good = tmp_path / "index.npz"
    idx.save(good)
    data = good.read_bytes()
    for name, content in (("truncated", data[: len(data) // 2]), ("garbage", b"not an index"), ("empty", b"")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(contamination.IndexFileError, match=f"{name}: not a readable index"):
            Index.load(tmp_path / name)
    monkeypatch.setattr(contamination, "INDEX_FORMAT", contamination.INDEX_FORMAT + 1)
    with pytest.raises(contamination.IndexFileError, match="written in another format"):
        Index.load(good)
    monkeypatch.undo()
    Index.load(good)
    # The code that hashes text changed since the file was written: its n-gram hashes mean nothing now.
    monkeypatch.setattr(contamination, "_mix", lambda x: x ^ np.uint64(1))
    with pytest.raises(contamination.IndexFileError, match="hashed by other code"):
        Index.load(good)


# ---- Mix --------------------------------------------------------------------------------------


def planted_mix(make_cfg, tmp_path: Path, *overrides: str, n: int = 60, total: int = 40) -> tuple[DictConfig, set[int]]:
    """One instruction component of `n` records, three of them holding the suite's prompts
    (verbatim, reworded, embedded), one a near-miss; Test's suite is a file of those prompts."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    suite_file = write_jsonl(tmp_path / "suite.jsonl", [{"instruction": t, "output": "ref"} for t in INSTRUCTIONS])
    records = [{"prompt": f"Question number {i}: what is {i} plus {i}?", "completion": f"{2 * i}"} for i in range(n)]
    planted = {
        3: INSTRUCTIONS[0],
        11: INSTRUCTIONS[1].upper().replace(",", " ;"),
        17: "Hi! " + INSTRUCTIONS[2] + " Thanks",
    }
    for i, text in planted.items():
        records[i]["prompt"] = text
    records[19]["prompt"] = "Summarise the main causes of the French Revolution in a haiku for a poet."
    source = {"kind": "prompt_completion", "data_files": [str(write_jsonl(tmp_path / "src.jsonl", records))]}
    cfg = make_cfg("stages=[mix]", *overrides, base=WITH_TEST)
    with open_dict(cfg):
        cfg.test.suites = {
            "alpaca_eval": OmegaConf.merge(
                OmegaConf.structured(SuiteConfig), {"kind": "judge", "data_files": [str(suite_file)]}
            )
        }
    return one_source(cfg, "instructions", source, total), set(planted)


def prompts(entry: dict) -> list[str]:
    path, _ = artifact(entry)
    return [r["messages"][0]["content"] for r in lines(path / "conversations.jsonl")]


def test_drop_removes_them_and_draws_the_next_records_in_mix_order(make_cfg, tmp_path: Path) -> None:
    cfg, _ = planted_mix(make_cfg, tmp_path / "a", "mix.decontaminate.enabled=false", n=60, total=40)
    plain = prompts(run(cfg, run_dir=tmp_path / "a")["stages"]["mix"])
    cfg, _ = planted_mix(make_cfg, tmp_path / "b", n=60, total=40)
    entry = run(cfg, run_dir=tmp_path / "b")["stages"]["mix"]
    clean = prompts(entry)
    assert len(clean) == 40  # mix.total exactly
    assert not any(t in p for t in INSTRUCTIONS for p in clean)
    assert not any("FRENCH" in p or "Thanks" in p or "LIST AND A TUPLE" in p for p in clean)
    near_miss = "Summarise the main causes of the French Revolution in a haiku for a poet."
    assert near_miss in plain and near_miss in clean  # below the threshold: kept
    # Every clean example of the undecontaminated draw is kept; the dropped ones are replaced.
    dropped_from_plain = [p for p in plain if p not in clean]
    assert set(plain) - set(dropped_from_plain) <= set(clean)
    assert all(any(t.lower()[:20] in p.lower() for t in INSTRUCTIONS) for p in dropped_from_plain)
    _, manifest = artifact(entry)
    suite = manifest["contamination"]["suites"]["alpaca_eval"]
    assert suite["found_in_training"] == [] and suite["examples_kept"] == 0
    assert suite["examples_dropped"] == len(dropped_from_plain) >= 1
    assert all(i.startswith("instructions#") for i in suite["example_ids"])
    assert entry["contamination_counts"]["alpaca_eval"]["examples_dropped"] == suite["examples_dropped"]


def test_drop_when_every_record_is_needed_meets_total_only_with_replacement(make_cfg, tmp_path: Path) -> None:
    cfg, _ = planted_mix(make_cfg, tmp_path, n=40, total=39)
    with pytest.raises(RecipeError, match="needs 39 examples but source 'instructions' has 37"):
        run(cfg, run_dir=tmp_path)
    cfg.mix.components.instructions.replace = True
    clean = prompts(run(cfg, run_dir=tmp_path)["stages"]["mix"])
    assert len(clean) == 39 and not any(t in p for t in INSTRUCTIONS for p in clean)


def test_fail_names_the_suite_and_examples_and_stores_nothing(make_cfg, tmp_path: Path) -> None:
    cfg, planted = planted_mix(make_cfg, tmp_path, "mix.decontaminate.action=fail", n=20, total=20)
    with pytest.raises(RecipeError) as err:
        run(cfg, run_dir=tmp_path)
    message = str(err.value)
    assert "mix.decontaminate.action=fail" in message and "suite 'alpaca_eval': 3 example(s)" in message
    for i in sorted(planted):
        assert f"instructions#{i + 1}" in message
    assert not list((tmp_path / "store").glob("mix/*/manifest.json"))


def test_report_counts_and_keeps_the_mixture_as_it_was(make_cfg, tmp_path: Path) -> None:
    cfg, _ = planted_mix(make_cfg, tmp_path / "a", "mix.decontaminate.enabled=false", n=20, total=20)
    plain = artifact(run(cfg, run_dir=tmp_path / "a")["stages"]["mix"])[1]["sha256"]
    cfg, _ = planted_mix(make_cfg, tmp_path / "b", "mix.decontaminate.action=report", n=20, total=20)
    entry = run(cfg, run_dir=tmp_path / "b")["stages"]["mix"]
    _, manifest = artifact(entry)
    assert manifest["sha256"] == plain
    suite = manifest["contamination"]["suites"]["alpaca_eval"]
    assert suite["found_in_training"] == [0, 1, 2] and suite["examples_kept"] == 3
    assert entry["contamination_counts"] == {"alpaca_eval": {"examples_in_training": 3, "examples_dropped": 0}}


def test_fingerprint_follows_the_suites_data_and_settings_not_their_generation_keys(make_cfg, tmp_path: Path) -> None:
    cfg, _ = planted_mix(make_cfg, tmp_path, n=20, total=20)

    def fp(change=None) -> str:
        c = cfg.copy()
        if change:
            change(c)
        return Pipeline(c, ArtifactStore(tmp_path / "fp-store")).fingerprint("mix")

    base = fp()
    assert fp(lambda c: setattr(c.test.suites.alpaca_eval, "max_tokens", 7)) == base
    assert fp(lambda c: setattr(c.test.suites.alpaca_eval, "description", "x")) == base
    assert fp(lambda c: setattr(c.mix.decontaminate, "ngram", 8)) != base
    assert fp(lambda c: setattr(c.mix.decontaminate, "action", "report")) != base
    assert fp(lambda c: setattr(c.test.suites.alpaca_eval, "instruction_field", "output")) != base
    other = write_jsonl(tmp_path / "other.jsonl", [{"instruction": "Something else entirely.", "output": "x"}])
    assert fp(lambda c: setattr(c.test.suites.alpaca_eval, "data_files", [str(other)])) != base
    (tmp_path / "suite.jsonl").write_text(json.dumps({"instruction": "Edited in place.", "output": "x"}) + "\n")
    assert fp() != base  # the data by content, not by path


def test_unknown_suite_is_named(make_cfg, tmp_path: Path) -> None:
    cfg, _ = planted_mix(make_cfg, tmp_path, "mix.decontaminate.suites=[alpaca_evl]", n=20, total=20)
    with pytest.raises(
        RecipeError, match=r"mix.decontaminate.suites: alpaca_evl not among the Test suites \(alpaca_eval\)"
    ):
        run(cfg, run_dir=tmp_path)


def test_dry_run_says_what_would_be_checked(make_cfg, tmp_path: Path) -> None:
    cfg, _ = planted_mix(make_cfg, tmp_path, "dry_run=true", n=20, total=20)
    plan = run(cfg, run_dir=tmp_path)["stages"]["mix"]["plan"]
    assert "decontaminate against alpaca_eval (judge): 13-grams, threshold 0.5, action drop" in plan


# ---- Distill ----------------------------------------------------------------------------------


def test_distill_never_buys_an_answer_for_a_test_prompt(make_cfg, tmp_path: Path, fake: FakeTogether) -> None:
    sharegpt = [
        {"id": "clean", "conversations": [{"from": "human", "value": "Tell me a fact about otters."}]},
        {
            "id": "dirty",
            "conversations": [
                {"from": "human", "value": "hello"},
                {"from": "gpt", "value": "hi"},
                {"from": "human", "value": INSTRUCTIONS[1]},
            ],
        },
    ]
    suite_file = write_jsonl(tmp_path / "suite.jsonl", [{"instruction": t, "output": "ref"} for t in INSTRUCTIONS])
    src = tmp_path / "sharegpt.json"
    src.write_text(json.dumps(sharegpt))
    cfg = make_cfg(
        "distill=together",
        "distill.source=sharegpt_sample",
        "distill.progress=false",
        f"distill.cache_path={tmp_path / 'cache.sqlite'}",
        "stages=[distill]",
        f"sources.sharegpt_sample.data_files=[{src}]",
        base=("mix=samples", "~train", "~deploy"),
    )
    with open_dict(cfg):
        cfg.test.suites = {
            "alpaca_eval": OmegaConf.merge(
                OmegaConf.structured(SuiteConfig), {"kind": "judge", "data_files": [str(suite_file)]}
            )
        }
    entry = run(cfg, run_dir=tmp_path)["stages"]["distill"]
    sent = json.dumps([r.body for r in fake.posts("/v1/completions") + fake.posts("/v1/chat/completions")])
    assert "Tell me a fact about otters." in sent and INSTRUCTIONS[1] not in sent and "hello" not in sent
    manifest = json.loads((Path(entry["artifact"]) / "manifest.json").read_text())
    assert manifest["contamination"]["suites"]["alpaca_eval"]["example_ids"] == ["dirty"]
    assert entry["contamination_counts"]["alpaca_eval"] == {"examples_in_training": 0, "examples_dropped": 1}


# ---- Test's view ------------------------------------------------------------------------------


def test_test_counts_only_the_prompts_it_asks_and_never_reports_an_unchecked_suite_as_clean(tmp_path: Path) -> None:
    suite_file = write_jsonl(tmp_path / "suite.jsonl", [{"instruction": t, "output": "ref"} for t in INSTRUCTIONS])
    suite = OmegaConf.merge(OmegaConf.structured(SuiteConfig), {"kind": "judge", "data_files": [str(suite_file)]})
    identity = contamination.suite_identity(suite, "x")
    recorded = {
        "suites": {
            "alpaca_eval": {
                "records": 3,
                "found_in_training": [0, 2],
                "found_and_dropped": [1],
                "identity": identity,
            }
        }
    }
    suites = OmegaConf.create({"alpaca_eval": suite, "other": suite})
    view = contamination_view.suite_view(recorded, suites, lambda n: f"test.suites.{n}")
    assert view["alpaca_eval"] == {"checked": True, "prompts": 3, "in_training": 2, "dropped": 1}
    assert view["other"] == {"checked": False}
    suites.alpaca_eval.max_examples = 2  # Test asks the first two records only
    lines = contamination_view.view_lines(contamination_view.suite_view(recorded, suites, lambda n: f"test.suites.{n}"))
    assert lines == [
        "contamination alpaca_eval: 1 of 2 prompts found in the training mixture (1 more found in the sources and dropped by Mix)",
        "contamination other: NOT CHECKED (the mixture was not decontaminated against this data)",
    ]
    # Other data under the same name is not the data Mix checked.
    (tmp_path / "suite.jsonl").write_text(json.dumps({"instruction": "changed", "output": "x"}) + "\n")
    assert contamination_view.suite_view(recorded, suites, str)["alpaca_eval"] == {"checked": False}


def test_the_check_on_worker_processes_finds_the_same(make_cfg, tmp_path: Path, monkeypatch) -> None:
    """Large mixtures are checked in batches on Mix's worker count of processes: same findings, same file."""
    import recipe.data.spool as spool
    import recipe.stages.mix as mix_stage

    cfg, _ = planted_mix(make_cfg, tmp_path / "a", n=60, total=40)
    alone = artifact(run(cfg, run_dir=tmp_path / "a")["stages"]["mix"])[1]
    monkeypatch.setattr(mix_stage, "POOL_MIN_BYTES", 0)  # Mix's own pool even for a small source
    monkeypatch.setattr(mix_stage, "CHUNK_BYTES", 1024)  # ... read in several ranges
    monkeypatch.setattr(spool, "PARALLEL_BYTES", 1)
    monkeypatch.setattr(spool, "CHECK_ROWS", 7)
    pools: list[bool] = []
    close = spool.ContentCheck.close
    # the check ran on the reading's worker processes: the index went to them through its file
    monkeypatch.setattr(
        spool.ContentCheck, "close", lambda self: (pools.append(self._index_file is not None), close(self))
    )
    cfg, _ = planted_mix(make_cfg, tmp_path / "b", "mix.workers=2", n=60, total=40)
    with open_dict(cfg):
        cfg.store_dir = str(tmp_path / "store-b")
    parallel = artifact(run(cfg, run_dir=tmp_path / "b")["stages"]["mix"])[1]
    assert parallel["sha256"] == alone["sha256"]
    assert parallel["contamination"]["suites"] == alone["contamination"]["suites"]
    assert parallel["contamination"]["checked_examples"] == alone["contamination"]["checked_examples"]
    assert pools == [True]  # the check did run on worker processes


def test_the_index_is_built_once_per_suites_and_settings_and_rebuilt_when_unusable(
    make_cfg, tmp_path: Path, monkeypatch, caplog
) -> None:
    """Mix keeps the index in the store's indexes/: later runs with other mixture settings read it
    (and decide the same as a fresh build), other suites' settings build their own, and a damaged
    file is built again and replaced."""
    builds: list[int] = []
    build = Index.build.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(Index, "build", classmethod(lambda cls, *a, **k: (builds.append(1), build(cls, *a, **k))[1]))
    caplog.set_level("INFO", logger="recipe.data.contamination")

    def mix(name: str, *overrides: str, store: str = "store") -> dict:
        cfg, _ = planted_mix(make_cfg, tmp_path, *overrides, n=60, total=40)
        with open_dict(cfg):
            cfg.store_dir = str(tmp_path / store)
        (tmp_path / name).mkdir()
        return artifact(run(cfg, run_dir=tmp_path / name)["stages"]["mix"])[1]

    first = mix("a")
    saved = list((tmp_path / "store" / "indexes").iterdir())
    assert len(builds) == 1 and len(saved) == 1 and saved[0].suffix == ".npz"
    assert first["contamination"]["suites"]["alpaca_eval"]["examples_dropped"] >= 1
    cached = mix("b", "mix.seed=1")
    assert len(builds) == 1 and "decontamination index read from" in caplog.text
    fresh = mix("c", "mix.seed=1", store="other-store")
    assert len(builds) == 2
    assert cached["sha256"] == fresh["sha256"] and cached["contamination"] == fresh["contamination"]
    mix("d", "mix.decontaminate.ngram=8")  # another index: built and kept beside the first
    assert len(builds) == 3 and len(list((tmp_path / "store" / "indexes").iterdir())) == 2
    saved[0].write_bytes(saved[0].read_bytes()[:100])  # damaged
    caplog.clear()
    again = mix("e", "mix.seed=2")
    assert len(builds) == 4 and "not a readable index" in caplog.text and "building it again" in caplog.text
    Index.load(saved[0])  # replaced by a whole one
    assert again["contamination"]["suites"]["alpaca_eval"]["examples_dropped"] >= 1
    assert not list((tmp_path / "store" / "indexes").glob(".*"))  # no temporary file left


def test_an_index_of_other_suites_under_this_name_or_with_a_huge_header_is_refused(tmp_path: Path) -> None:
    """An index file records what it was built from: one of other suites saved under this key's name
    (a store others can write to) is refused, not read; one whose array header claims 10^11
    elements is refused from its headers, before numpy allocates 745 GiB."""
    import io
    import zipfile

    ours = index(alpaca=[[t] for t in INSTRUCTIONS])
    theirs = index(mqa=[[q] for q in QUESTIONS])
    path = tmp_path / "k.npz"
    theirs.save(path, key="their-key")
    with pytest.raises(contamination.IndexFileError, match="built from other suites or settings"):
        Index.load(path, key="our-key")
    ours.save(path, key="our-key")
    Index.load(path, key="our-key")
    # A member rewritten with a header claiming 10^11 uint64s and 8 bytes of data.
    huge = tmp_path / "huge.npz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(huge, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "long_keys.npy":
                head = io.BytesIO()
                np.lib.format.write_array_header_1_0(head, {"descr": "<u8", "fortran_order": False, "shape": (10**11,)})
                data = head.getvalue() + b"\0" * 8  # the header writer writes the magic too
            dst.writestr(info.filename, data)
    with pytest.raises(contamination.IndexFileError, match=r"long_keys\.npy claims 800000000000 bytes and holds 8"):
        Index.load(huge, key="our-key")
