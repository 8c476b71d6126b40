"""The method, tested: the main job at reduced size must still make the tuned model measurably better
than its base on the long-context task. A broken loss mask, template, adapter merge or learning rate
makes this test fail (its note shows it failing with the learning rate at 0)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import latest_run

pytestmark = pytest.mark.slow

# The main job (experiment=longctx_offline), smaller: the shipped llama-instruct sample instead of a
# Distill, 40 examples of the task over 2-4 documents, 36 held-out prompts over 3 documents x three
# positions (12 each: the paired word needs test.uncertainty.min_prompts=30), no held-out loss.
REDUCED = (
    "experiment=longctx_offline",
    "stages=[mix,train,test]",
    "mix.components.instructions.source=llama_instruct_sample",
    "~mix.components.booksum",
    "~mix.components.mqa",
    "mix.total=48",
    "mix.components.instructions.share=0.25",
    "mix.components.longctx.share=0.75",
    "mix.components.instructions.eval=2",
    "mix.components.longctx.eval=2",
    "sources.longctx.synthetic.examples=60",
    "sources.longctx.num_documents=[2,3,4]",
    "test.suites.longctx.synthetic.examples=36",
    "test.suites.longctx.num_documents=[3]",
    "test.heldout.loss=false",
    "test.heldout.samples=0",
    "mix.progress=false",
    "train.progress=false",
    "test.progress=false",
)


def method_lift(run_cli, root: Path, *overrides: str) -> dict:
    """Run the reduced main job; return Test's tuned - base difference on the task's accuracy."""
    run_cli(*REDUCED, *overrides)
    record = latest_run(root)
    metrics = json.loads((Path(record["stages"]["test"]["artifact"]) / "metrics.json").read_text())
    return metrics["differences"]["longctx.accuracy"]


def test_the_tuned_model_is_better_on_the_long_context_task(run_cli, tmp_path: Path) -> None:
    lift = method_lift(run_cli, tmp_path)
    assert lift["n"] == 36
    assert lift["verdict"] == "better" and lift["value"] >= 0.2, lift
