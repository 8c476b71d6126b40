"""The seed experiment as committed (`experiment=llama2_7b_32k_instruct`), end to end through the
loaders its configs name: the Hub client against a loopback Hub (HF_ENDPOINT), the Lost-in-the-
Middle file over http from another loopback server, and Together through the fake Together API.
Only sizes (counts, max tokens) and poll intervals are overridden."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import latest_run
from .fake_hub import LITM_PATH, FakeHub, publish_seed_data
from .fake_together import default_answer

pytestmark = pytest.mark.slow


@pytest.fixture
def hub(tmp_path: Path, monkeypatch) -> Iterator[tuple[FakeHub, FakeHub, dict[str, str]]]:
    """The loopback Hub (HF_ENDPOINT, an empty HF_HOME) and the file server, holding the seed's data."""
    with FakeHub() as hub, FakeHub() as files:
        published = publish_seed_data(hub, files)
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
        yield hub, files, published


def judge_or_answer(body: dict[str, Any]) -> str:
    """The judge prefers Output (a); everyone else answers as the fake does by default."""
    messages = body.get("messages") or []
    if messages and messages[0]["role"] == "system" and "judge" in messages[0]["content"]:
        return "Output (a)"
    return default_answer(body)


SEED_SIZES = (
    "distill.max_conversations=18",
    "distill.max_turns=3",
    "distill.sampling.max_tokens=64",
    "mix.total=12",
    "test.suites.alpaca_eval.max_examples=2",
    "test.suites.alpaca_eval.max_tokens=32",
    "test.suites.booksum.max_examples=1",
    "test.suites.booksum.max_tokens=32",
    "test.suites.mqa.max_examples=2",
    "test.suites.mqa.max_tokens=16",
    "test.suites.mqa.num_documents=[4,8]",  # the shipped records hold 8 documents, the paper's file 30
    "test.heldout.samples=0",
    # execution-only: poll the fakes quickly
    "train.poll_s=0.02",
    "deploy.poll_s=0.02",
    "distill.progress=false",
    "mix.progress=false",
    "train.progress=false",
    "test.progress=false",
    "deploy.progress=false",
)


def test_the_seed_experiment_runs_as_committed_through_the_hub_url_and_together(
    fake, hub, run_cli, tmp_path: Path
) -> None:
    the_hub, files, published = hub
    fake.answer = judge_or_answer
    mqa_url = published["mqa_url"]
    proc = run_cli(
        "experiment=llama2_7b_32k_instruct",
        *SEED_SIZES,
        f"test.suites.mqa.data_files=[{mqa_url}]",  # the file at its path, on the loopback server
        env={"HF_ENDPOINT": os.environ["HF_ENDPOINT"], "HF_HOME": os.environ["HF_HOME"]},
    )
    record = latest_run(tmp_path)
    assert record["status"] == "ok", proc.stdout + proc.stderr
    assert [s["status"] for s in record["stages"].values()] == ["ok"] * 5

    # Distill: the seed script's own prompts, turn after turn, to llama-2-70b-chat.
    sent = [r.body for r in fake.posts("/v1/completions") if r.body["model"] == "togethercomputer/llama-2-70b-chat"]
    assert sent, "the teacher was never asked"
    first = sent[0]
    assert first["prompt"].startswith("  [INST]  ") and first["prompt"].endswith("  [/INST]  ")
    assert first["stop"] == ["[INST]"] and first["max_tokens"] == 64
    assert (first["temperature"], first["top_p"], first["top_k"], first["repetition_penalty"]) == (0.7, 0.7, 50, 1.0)
    follow_ups = [b["prompt"] for b in sent if b["prompt"].count("[INST]") == 2]
    assert follow_ups, "no multi-turn conversation was replayed"
    # Turn 2 carries turn 1's prompt and the teacher's answer as it came (its leading space kept).
    earlier = follow_ups[0].rsplit("  [INST]  ", 1)[0]
    (turn_one,) = [b for b in sent if b["prompt"] != earlier and earlier.startswith(b["prompt"])]
    assert earlier[len(turn_one["prompt"]) :] == " " + default_answer(turn_one)

    # Train: the upload is [INST] text for LLaMA-2-7B-32K, the job the seed's (Full, 4 epochs, 32, 1e-5).
    (job,) = [r.body for r in fake.posts("/v1/fine-tunes")]
    assert job["model"] == "togethercomputer/LLaMA-2-7B-32K" and job["training_type"] == {"type": "Full"}
    assert (job["n_epochs"], job["batch_size"], job["learning_rate"]) == (4, 32, 1e-5)
    uploaded = fake.files[job["training_file"]].decode().splitlines()
    assert len(uploaded) == 12
    assert all(set(json.loads(line)) == {"text"} for line in uploaded)
    assert sum(json.loads(line)["text"].startswith("[INST] ") for line in uploaded) >= 6  # the instructions

    # Test: every suite read through the hub or the URL, both models in the recorded [INST] format.
    assert "alpaca_eval.json" in the_hub.downloaded("tatsu-lab/alpaca_eval")
    assert "test.csv" in the_hub.downloaded("kmfoda/booksum")
    assert LITM_PATH in files.downloaded()
    # Distill stops reading after max_conversations: part 1 holds the first 20.
    assert "sharegpt_90k_raw_dataset/sg_90k_part1.json" in the_hub.downloaded("philschmid/sharegpt-raw")
    assert the_hub.downloaded("togethercomputer/Long-Data-Collections") == {
        "fine-tune/booksum.jsonl.zst",
        "fine-tune/natural_questions_10_200_docs.jsonl.zst",
    }
    test = json.loads((Path(record["stages"]["test"]["artifact"]) / "manifest.json").read_text())
    assert test["prompt_format"] == "text template llama2_inst"
    models = {r.body["model"] for r in fake.posts("/v1/completions")}
    assert "togethercomputer/LLaMA-2-7B-32K" in models  # the base, prompted in [INST] text

    # Decontamination saw every suite's records, in Distill and in Mix.
    mix = json.loads((Path(record["stages"]["mix"]["artifact"]) / "manifest.json").read_text())
    distill = json.loads((Path(record["stages"]["distill"]["artifact"]) / "manifest.json").read_text())
    for manifest in (mix, distill):
        checked = manifest["contamination"]["suites"]
        assert set(checked) == {"alpaca_eval", "booksum", "mqa"}
        assert {name: s["records"] for name, s in checked.items()} == {"alpaca_eval": 6, "booksum": 3, "mqa": 6}
    # The shipped ShareGPT sample opens a conversation with AlpacaEval's "weather and climate" prompt.
    assert distill["contamination_counts"]["alpaca_eval"]["examples_dropped"] >= 1

    # Deploy: one dedicated endpoint for the tuned model.
    assert len(fake.endpoints) == 1
    assert record["stages"]["deploy"]["status"] == "ok"


def test_the_preflight_refuses_a_plan_over_budget_before_any_request(fake, hub, run_cli, tmp_path: Path) -> None:
    """As committed but with Train's budget below its plan: nothing is read, sent or spent."""
    the_hub, files, _ = hub
    proc = run_cli("experiment=llama2_7b_32k_instruct", "train.budget.max_usd=100", check=False)
    assert proc.returncode == 2
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: pre-flight: train would cost ~$465.80, over train.budget.max_usd=100. ")
    assert "Nothing was run and nothing was spent" in error and "preflight=warn" in error
    assert fake.requests == [] and the_hub.requests == [] and files.requests == []
    assert latest_run(tmp_path)["status"] == "refused"


def test_preflight_warn_runs_a_plan_over_budget_saying_so(fake, hub, run_cli, tmp_path: Path) -> None:
    _, _, published = hub
    over = ("train.price_per_mtok=100000", "preflight=warn", "stages=[distill,mix,train]")
    mqa = f"test.suites.mqa.data_files=[{published['mqa_url']}]"  # decontamination reads it
    proc = run_cli("experiment=llama2_7b_32k_instruct", *SEED_SIZES, mqa, *over)
    assert "warning (preflight=warn): pre-flight: train would cost ~$" in proc.stdout
    assert latest_run(tmp_path)["status"] == "ok" and len(fake.posts("/v1/fine-tunes")) == 1


def test_a_missing_key_is_said_before_anything_is_tried(hub, run_cli, tmp_path: Path, monkeypatch) -> None:
    the_hub, _, _ = hub
    monkeypatch.delenv("TOGETHER_API_KEY", raising=False)
    proc = run_cli("distill=together", "stages=[distill]", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: TOGETHER_API_KEY is not set, and distill would call Together: export it (or pass "
        "together.api_key=...) and run again; nothing was run"
    )
    assert the_hub.requests == []  # the hub source was never read


@pytest.mark.parametrize(
    ("override", "said"),
    [
        ("sources.booksum.hub_id=togethercomputer/Long-Data-Colections", "sources.booksum: hub dataset "),
        ("sources.mqa.revision=0123456789abcdef", "no such revision"),
        ("sources.booksum.data_files=[fine-tune/booksum.jsonl.zstd]", "no file matches data_files entry"),
        ("test.suites.mqa.data_files=[http://127.0.0.1:9/missing.jsonl]", "test.suites.mqa: data file"),
        ("HF_HUB_OFFLINE=1", "the hub is switched off"),
    ],
    ids=["typo", "revision", "file", "url", "offline"],
)
def test_an_input_from_nowhere_is_refused_before_anything_is_paid(
    fake, hub, run_cli, tmp_path: Path, override: str, said: str
) -> None:
    """The seed experiment as committed, with one remote input that does not exist (or the hub off):
    refused in the pre-flight, naming the source and what is wrong; no request reached Together."""
    _, _, published = hub
    env = {"HF_ENDPOINT": os.environ["HF_ENDPOINT"], "HF_HOME": os.environ["HF_HOME"]}
    overrides = [f"test.suites.mqa.data_files=[{published['mqa_url']}]"]
    if override.startswith("HF_HUB_OFFLINE"):
        env["HF_HUB_OFFLINE"] = "1"
    else:
        overrides.append(override)
    proc = run_cli("experiment=llama2_7b_32k_instruct", *SEED_SIZES, *overrides, env=env, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert said in proc.stderr and "Nothing was run and nothing was spent" in proc.stderr, proc.stderr
    assert fake.posts("/v1/completions") == [] and fake.posts("/v1/chat/completions") == []
