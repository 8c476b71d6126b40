"""The synthetic long-context task: one generator for a source and a suite, disjoint by construction,
rendered by one renderer, seen by decontamination."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from recipe.config import SourceConfig, SuiteConfig
from recipe.data import mqa, synthetic
from recipe.data.sources import DataError, iter_records, source_identity, to_messages
from recipe.evaluation import suites

from .test_mix import artifact, lines, mix, one_source


def make(people: str = "train", seed: int = 0, examples: int = 60, **kw) -> list[dict]:
    layout = {"num_documents": [3, 6], "gold_positions": None, "document_sentences": 0} | kw
    return list(
        synthetic.records(
            seed, people, examples, layout["document_sentences"], layout["num_documents"], layout["gold_positions"]
        )
    )


def test_records_are_the_mqa_shape_with_one_gold_document_holding_the_answer() -> None:
    for record in make(examples=40):
        question, answers, ctxs, gold_at = mqa.parts(record, "here")
        assert len(ctxs) == record["documents"] and sum(bool(c.get("isgold")) for c in ctxs) == 1
        gold = ctxs[gold_at]
        assert gold["title"] in question and answers[0] in gold["text"]
        # Every other document is about someone else, never the asked person.
        assert all(gold["title"] not in c["text"] for i, c in enumerate(ctxs) if i != gold_at)


def test_the_same_settings_make_the_same_records_and_a_seed_makes_others() -> None:
    assert make(seed=3) == make(seed=3)
    assert make(seed=3) != make(seed=4)


def test_the_train_and_test_halves_never_share_a_person() -> None:
    names = lambda records: {c["title"] for r in records for c in r["ctxs"]}  # noqa: E731
    train, test = names(make("train", examples=300)), names(make("test", examples=300))
    assert train and test and not train & test
    # Also with the same seed: the halves, not the seeds, keep them apart.
    assert not names(make("train", seed=5)) & names(make("test", seed=5))


def test_a_suites_settings_come_in_turn_and_a_sources_gold_is_anywhere() -> None:
    made = make("test", examples=60, gold_positions=["first", "middle", "last"])
    settings = Counter((r["documents"], r["gold"]) for r in made)
    assert settings == {(n, p): 10 for n in (3, 6) for p in ("first", "middle", "last")}
    for r in made:
        gold_at = next(i for i, c in enumerate(r["ctxs"]) if c.get("isgold"))
        assert gold_at == mqa.gold_index(r["documents"], r["gold"])
    anywhere = Counter(next(i for i, c in enumerate(r["ctxs"]) if c.get("isgold")) for r in make(examples=600))
    assert set(anywhere) == set(range(6)) and min(anywhere.values()) > 30  # every slot, roughly evenly


def test_length_grows_with_documents_and_sentences() -> None:
    def mean_tokens(**kw: object) -> float:
        made = make(examples=20, **kw)
        return sum(len(mqa.prompt(r["question"], r["ctxs"])) / 4 for r in made) / len(made)

    assert mean_tokens(num_documents=[8]) > 1.8 * mean_tokens(num_documents=[4])
    assert mean_tokens(num_documents=[4], document_sentences=6) > 1.8 * mean_tokens(num_documents=[4])
    # The seed's scale: 200 documents of 6 extra sentences each are ~26K approx tokens (~32K of
    # SmolLM2's tokenizer, which splits the made-up names finely).
    big = make(examples=1, num_documents=[200], document_sentences=6)[0]
    assert 22_000 < len(mqa.prompt(big["question"], big["ctxs"])) / 4 < 30_000


def synthetic_node(schema: type, **kw: object) -> object:
    return OmegaConf.merge(OmegaConf.structured(schema), {"kind": "synthetic", **kw})


def test_a_source_example_is_the_suites_prompt_and_the_sentence_stating_the_answer() -> None:
    """One renderer: the training prompt is byte for byte what Test sends for the same record; the
    reply is the gold document's sentence holding the answer (or the bare answer, `reply: answer`)."""
    layout = {"num_documents": [3], "gold_positions": ["middle"]}
    source = synthetic_node(SourceConfig, synthetic={"examples": 5}, **layout)
    suite = synthetic_node(SuiteConfig, synthetic={"examples": 5, "people": "train"}, **layout)
    records = list(iter_records("longctx", source))
    messages = [to_messages(r, "synthetic", where, "chatml") for r, where in records]
    items = suites.synthetic_items("longctx", iter_records("test.suites.longctx", suite))
    assert len(items) == len(messages) == 5
    for (record, _), m in zip(records, messages, strict=True):
        gold = next(c for c in record["ctxs"] if c.get("isgold"))
        assert m == [
            {"role": "user", "content": mqa.prompt(record["question"], record["ctxs"])},
            {"role": "assistant", "content": record["reply"]},
        ]
        assert record["reply"] in gold["text"] and record["answers"][0] in record["reply"]
        assert m[0]["content"].endswith(f"Question: {record['question']}\nAnswer:")
    # A suite over the source's own half, seed and layout (a mistake) asks exactly its prompts.
    assert [i.prompt for i in items] == [m[0]["content"] for m in messages]
    bare = synthetic_node(SourceConfig, synthetic={"examples": 5, "reply": "answer"}, **layout)
    for record, where in iter_records("longctx", bare):
        assert to_messages(record, "synthetic", where, "chatml")[1]["content"] == record["answers"][0]


def test_an_mqa_source_reads_the_suites_record_shape(tmp_path: Path) -> None:
    path = tmp_path / "mqa.jsonl"
    record = {
        "question": "Who?",
        "answers": ["Ann"],
        "ctxs": [{"title": "A", "text": "Ann did."}, {"title": "B", "text": "x"}],
    }
    path.write_text(json.dumps(record) + "\n" + json.dumps({"question": "Who?"}) + "\n")
    source = OmegaConf.merge(OmegaConf.structured(SourceConfig), {"kind": "mqa", "data_files": [str(path)]})
    records = list(iter_records("mine", source))
    assert to_messages(records[0][0], "mqa", records[0][1], "chatml") == [
        {"role": "user", "content": mqa.prompt("Who?", record["ctxs"])},
        {"role": "assistant", "content": "Ann"},
    ]
    with pytest.raises(DataError, match=r"mqa.jsonl:2: `answers` must be a non-empty list"):
        to_messages(records[1][0], "mqa", records[1][1], "chatml")


def test_a_synthetic_sources_identity_is_its_generator_and_settings() -> None:
    source = synthetic_node(SourceConfig)
    identity = source_identity("longctx", source)
    assert identity["synthetic"]["version"] == synthetic.VERSION and "files" not in identity
    other = synthetic_node(SourceConfig, synthetic={"seed": 1})
    assert source_identity("longctx", other) != identity
    with pytest.raises(DataError, match=r"sources\.longctx: a synthetic task makes its records"):
        source_identity("longctx", synthetic_node(SourceConfig, data_files=["x.jsonl"]))
    with pytest.raises(DataError, match=r"test\.suites\.longctx: a synthetic task makes its records"):
        source_identity("test.suites.longctx", synthetic_node(SuiteConfig, hub_id="x/y"))


def test_decontamination_sees_the_task_on_both_sides(make_cfg, tmp_path: Path) -> None:
    """A source made from the suite's own half and seed is the test itself: Mix drops every example
    the suite asks about; the source as shipped (the other half) loses none."""
    layout = {"num_documents": [3], "gold_positions": ["first"]}
    suite = {"kind": "synthetic", "synthetic": {"examples": 12, "people": "test"}, **layout}

    def mixed(people: str) -> dict:
        cfg = one_source(
            make_cfg("stages=[mix]", base=("mix=samples", "~distill", "~train", "~deploy")),
            "task",
            {"kind": "synthetic", "synthetic": {"examples": 24, "people": people}, **layout},
            total=10,
        )
        cfg.test.suites.longctx = OmegaConf.merge(cfg.test.suites.longctx, suite)
        cfg.mix.decontaminate.suites = ["longctx"]
        (tmp_path / people).mkdir()
        return mix(cfg, tmp_path / people)

    _, manifest = artifact(mixed("train"))
    assert manifest["contamination_counts"]["longctx"]["examples_dropped"] == 0
    path, manifest = artifact(mixed("test"))  # its first 12 records are the suite's 12
    assert manifest["contamination_counts"]["longctx"]["examples_dropped"] == 12
    assert len(lines(path / "mixture.jsonl")) == 10
