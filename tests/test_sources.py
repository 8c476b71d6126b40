"""Bringing your own data: column mapping, split slicing, and the errors that name the source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recipe.errors import RecipeError
from recipe.runner import Pipeline, run
from recipe.store import ArtifactStore

from .conftest import write_jsonl
from .test_mix import artifact, lines, one_source


def alpaca_like(tmp_path: Path, n: int = 30) -> Path:
    return write_jsonl(
        tmp_path / "alpaca_like.jsonl",
        [{"instruction": f"Question {i}: what is {i} squared?", "output": f"{i * i}", "extra": i} for i in range(n)],
    )


def test_columns_map_your_fields_onto_the_record_kind_and_split_slices_records(make_cfg, tmp_path: Path) -> None:
    source = {
        "kind": "prompt_completion",
        "data_files": [str(alpaca_like(tmp_path))],
        "columns": {"prompt": "instruction", "completion": "output"},
        "split": "train[10:20]",
    }
    cfg = one_source(make_cfg("stages=[mix]"), "mine", source, total=10)
    entry = run(cfg, run_dir=tmp_path)["stages"]["mix"]
    path, manifest = artifact(entry)
    prompts = sorted(r["messages"][0]["content"] for r in lines(path / "conversations.jsonl"))
    assert prompts == sorted(f"Question {i}: what is {i} squared?" for i in range(10, 20))  # records 10..19 only
    assert manifest["sources"]["mine"]["records"] == 10
    # The mapping and the slice are part of what the source holds: both enter the fingerprint.
    base = Pipeline(cfg, ArtifactStore(tmp_path / "fp-store")).fingerprint("mix")
    cfg.sources.mine.split = "train[10:21]"
    assert Pipeline(cfg, ArtifactStore(tmp_path / "fp-store")).fingerprint("mix") != base


def test_a_missing_column_names_the_column_the_key_and_the_line(make_cfg, tmp_path: Path) -> None:
    path = alpaca_like(tmp_path)
    source = {"kind": "prompt_completion", "data_files": [str(path)], "columns": {"prompt": "question"}}
    cfg = one_source(make_cfg("stages=[mix]"), "mine", source, total=5)
    with pytest.raises(RecipeError) as err:
        run(cfg, run_dir=tmp_path)
    message = str(err.value)
    assert "no column 'question' (sources.mine.columns.prompt)" in message and "alpaca_like.jsonl:1" in message
    assert "this record has: extra, instruction, output" in message


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"columns": {"answer": "output"}},
            "sources.mine.columns.answer: a prompt_completion record has prompt, completion",
        ),
        ({"split": "train[:ten]"}, "sources.mine.split='train[:ten]': use a split name, optionally sliced by record"),
    ],
)
def test_bad_source_settings_are_named(make_cfg, tmp_path: Path, change: dict, message: str) -> None:
    source = {"kind": "prompt_completion", "data_files": [str(alpaca_like(tmp_path))], **change}
    cfg = one_source(make_cfg("stages=[mix]"), "mine", source, total=5)
    with pytest.raises(RecipeError, match=message.replace("[", r"\[").replace("(", r"\(")):
        run(cfg, run_dir=tmp_path)


def test_distill_reads_a_sharegpt_source_through_its_columns(make_cfg, tmp_path: Path) -> None:
    src = tmp_path / "dialogs.json"
    src.write_text(json.dumps([{"dialog": [{"from": "human", "value": "Hello there"}], "uid": "a"}]))
    cfg = make_cfg(
        "stages=[distill]",
        "distill.source=sharegpt_sample",
        f"sources.sharegpt_sample.data_files=[{src}]",
        "+sources.sharegpt_sample.columns.conversations=dialog",
        "+sources.sharegpt_sample.columns.id=uid",
        "dry_run=true",
        base=("mix=samples", "~train", "~test", "~deploy"),
    )
    plan = run(cfg, run_dir=tmp_path)["stages"]["distill"]["plan"]
    assert plan.startswith("1 conversations (1 turns) -> ")
