"""The committed experiments run end to end: the seed recipe against the fake Together server.

Only the data is swapped for the shipped samples (the hub is out of reach); every request must
carry the seed's fields."""

from __future__ import annotations

import json
from pathlib import Path

from recipe.artifacts import Mixture, PromptFormat
from recipe.evaluation.suites import BOOKSUM_QUESTION, JUDGE_SYSTEM, MQA_INSTRUCTION
from recipe.providers.model_client import approx_tokens
from recipe.runner import run
from recipe.stages.train_together import render_upload
from recipe.store import ArtifactStore

from .conftest import MIX_AND_TRAIN
from .fake_together import FakeTogether

SEED_SAMPLING = {"max_tokens": 1024, "temperature": 0.7, "top_p": 0.7, "top_k": 50, "repetition_penalty": 1.0}


def test_the_seed_experiment_sends_the_seeds_requests(make_cfg, tmp_path: Path, fake: FakeTogether) -> None:
    cfg = make_cfg(
        "experiment=llama2_7b_32k_instruct",
        "distill.source=sharegpt_sample",
        "distill.max_conversations=8",
        f"distill.cache_path={tmp_path}/cache.sqlite",
        "distill.progress=false",
        "mix.components.booksum.source=booksum_sample",
        "mix.components.mqa.source=mqa_sample",
        "mix.total=16",
        "mix.progress=false",
        "train.poll_s=0.01",
        "train.progress=false",
        "test/suite@test.suites.mqa=mqa_sample",
        "test/suite@test.suites.booksum=booksum_sample",
        "test/suite@test.suites.alpaca_eval=alpaca_eval_sample",
        "test.heldout.samples=1",
        f"test.cache_path={tmp_path}/cache.sqlite",
        "test.progress=false",
        "deploy.poll_s=0.01",
        "deploy.progress=false",
        base=(),
    )
    record = run(cfg, run_dir=tmp_path)
    assert [(n, s["status"]) for n, s in record["stages"].items()] == [
        (n, "ok") for n in ("distill", "mix", "train", "test", "deploy")
    ]
    # Distill: llama-2-70b-chat through raw completions, the seed script's `  [INST]  ...  [/INST]  `
    # prompts (byte for byte: tests/test_distill.py), the seed's fields.
    train = json.loads(Path(record["stages"]["train"]["artifact"], "manifest.json").read_text())
    tuned = train["model_output_name"]
    completions = [r.body for r in fake.posts("/v1/completions")]
    distill = [b for b in completions if b["model"] == "togethercomputer/llama-2-70b-chat"]
    assert distill and all(
        b["prompt"].startswith("  [INST]  ") and b["prompt"].endswith("  [/INST]  ") for b in distill
    )
    assert all({k: b[k] for k in SEED_SAMPLING} == SEED_SAMPLING and b["stop"] == ["[INST]"] for b in distill)
    # Train: a full fine-tune of LLaMA-2-7B-32K, 4 epochs, batch 32, lr 1e-5, on the uploaded mixture.
    (create,) = fake.posts("/v1/fine-tunes")
    body = create.body
    assert body["model"] == "togethercomputer/LLaMA-2-7B-32K" and body["training_type"] == {"type": "Full"}
    assert (body["n_epochs"], body["batch_size"], body["learning_rate"]) == (4, 32, 1e-05)
    mixture = Path(record["stages"]["mix"]["artifact"], "mixture.jsonl").read_bytes()
    assert fake.files[body["training_file"]] == mixture and b"[INST]" in mixture
    # The mixture is already in the model's format, so it is uploaded as it is; rendering the canonical
    # conversations for the model gives the same bytes (BookSum and MQA keep their `raw` template).
    assert train["trained_model"]["format"] == {"kind": "text", "template": "llama2_inst"} and not train["upload_file"]
    mix = Mixture.load(ArtifactStore(cfg.store_dir).get("mix", record["stages"]["mix"]["fingerprint"]))
    render_upload(mix, "train", PromptFormat("text", "llama2_inst"), tmp_path / "rendered.jsonl")
    assert (tmp_path / "rendered.jsonl").read_bytes() == mixture
    # Test: base and tuned prompted in the format Train recorded; the judge on chat completions.
    tested = [b for b in completions if b["model"] in (tuned, "togethercomputer/LLaMA-2-7B-32K")]
    assert {b["model"] for b in tested} == {tuned, "togethercomputer/LLaMA-2-7B-32K"}
    assert all(b["prompt"].startswith("[INST] ") and b["prompt"].endswith(" [/INST]") for b in tested)
    assert {r.body["model"] for r in fake.posts("/v1/chat/completions")} >= {"meta-llama/Llama-3.3-70B-Instruct-Turbo"}
    # Deploy: a dedicated endpoint for the fine-tune, stopped by Together after 15 idle minutes.
    (endpoint,) = fake.posts("/v1/endpoints")
    assert endpoint.body["model"] == tuned and endpoint.body["inactive_timeout"] == 15


def test_the_seed_dry_run_plans_and_prices_every_stage_without_the_network(run_cli, tmp_path: Path) -> None:
    """No key, no hub: every stage still plans and is priced from stated assumptions (each named in
    its plan), downstream stages from the upstream plans; a missing key is flagged on each Together
    stage; one table with the estimated total."""
    env = {
        "TOGETHER_API_KEY": "",
        # Any attempt to reach the hub or Together would fail at once on this closed port.
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HF_HUB_OFFLINE": "0",
    }
    out = run_cli("experiment=llama2_7b_32k_instruct", "dry_run=true", env=env).stdout
    record = json.loads(next((tmp_path / "outputs" / "runs").glob("*/*/run.json")).read_text())
    stages = record["stages"]
    assert list(stages) == ["distill", "mix", "train", "test", "deploy"]
    assert all(s["status"] == "planned" for s in stages.values())
    distill = stages["distill"]
    assert "19,000 conversations" in distill["plan"] and "not read offline" in distill["plan"]
    assert "assuming 3 turns of 100 tokens and answers of 300" in distill["plan"]
    # 19000 x (100 x 3 x 4 / 2 + 300 x 3 x 2 / 2) prompt tokens + 19000 x 3 x 300 answer tokens at $0.9/M
    assert distill["estimated_usd"] == round((19000 * (600 + 900) + 19000 * 900) * 0.9 / 1e6, 2)
    assert stages["mix"]["estimated_usd"] == 0.0
    for name in ("distill", "train", "test", "deploy"):
        assert stages[name]["missing"] == "TOGETHER_API_KEY", name
    assert "TOGETHER_API_KEY is not set: a run would stop before any work (distill, train, test, deploy)" in out
    # Mix: Distill's planned conversations (3 turns of 100 + 300 tokens) and the hub sources' stated
    # sizes (sources.*.estimate_tokens), in the seed's 50/25/25 shares of 38,000 examples.
    tokens = 19000 * 3 * (100 + 300) + 9500 * 5600 + 9500 * 14700
    assert stages["mix"]["planned_size"] == {"examples": 38000, "tokens": tokens}
    assert f"~{tokens:,} tokens" in stages["mix"]["plan"] and "Distill's plan" in stages["mix"]["plan"]
    # Train: Together bills 4 epochs x the mixture's tokens, at the full fine-tune rate the config states,
    # within the budget the experiment states for it (and says why in its header).
    assert stages["train"]["estimated_usd"] == round(4 * tokens * 0.54 / 1e6, 2)
    assert f"~{4 * tokens:,} tokens billed" in stages["train"]["plan"]
    assert stages["train"]["budget"] == {"key": "train.budget.max_usd", "max_usd": 600}
    # Test: base and tuned on 2655 questions x 3 document counts x 3 gold positions, 1431 chapters,
    # 805 instructions and 5 held-out samples; the judge reads each instruction in both orders per model.
    test = stages["test"]
    assert "52,272 generations and 3,220 judge calls" in test["plan"]
    # Prompts from the suites' stated sizes (~140 tokens per document, ~5100 per chapter, ~50 per
    # instruction), every answer at its max_tokens (100, 512, 1024; 512 held out): an upper bound.
    mqa_frame, question = approx_tokens(MQA_INSTRUCTION) + 20, approx_tokens(BOOKSUM_QUESTION)
    prompts = 2655 * 3 * sum(d * 140 + mqa_frame for d in (20, 30, 50)) + 1431 * (5100 + question) + 805 * 50
    answers = 2655 * 9 * 100 + 1431 * 512 + 805 * 1024 + 5 * 512
    judge_in, judge_out = 805 * (approx_tokens(JUDGE_SYSTEM) + 50 + 1024 + 1024), 805 * 64
    tokens_in, tokens_out = 2 * (prompts + 2 * judge_in), 2 * (answers + 2 * judge_out)
    assert f"~{tokens_in:,} prompt tokens" in test["plan"]
    assert test["estimated_usd"] == round((tokens_in + tokens_out) * 0.2 / 1e6, 2)
    assert test["estimate_bound"] == "at most" and test["estimated_usd"] <= test["budget"]["max_usd"]
    assert not any(s.get("over_budget") for s in stages.values())  # the seed admits its own plan
    # Deploy: at least the 15 idle minutes before Together stops the endpoint, at the stated hourly rate.
    assert stages["deploy"]["estimated_usd"] == round(3.36 * 15 / 60, 2)
    assert "billed per minute while started" in stages["deploy"]["plan"]
    total = sum(s["estimated_usd"] for s in stages.values())
    assert f"estimated total: ${total:,.2f}\n" in out  # every stage priced: nothing unknown
    assert any(line.startswith("stage ") and "est. $" in line for line in out.splitlines())  # the cost column
    assert out.count(stages["train"]["summary"]) == 1  # each plan once: a table row, its details below


def test_a_dry_run_prices_together_training_from_the_mixtures_tokens(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("stages=[mix]", "mix.progress=false", base=MIX_AND_TRAIN)
    tokens = run(cfg, run_dir=tmp_path)["stages"]["mix"]
    mix_tokens = json.loads((Path(tokens["artifact"]) / "manifest.json").read_text())["tokens"]
    cfg = make_cfg(
        "stages=[mix,train]",
        "train=together_lora",
        "train.price_per_mtok=3.0",
        "dry_run=true",
        base=MIX_AND_TRAIN,
    )
    stages = run(cfg, run_dir=tmp_path)["stages"]
    assert stages["mix"]["cache_hit"] and stages["mix"]["estimated_usd"] == 0.0
    expected = round(4 * mix_tokens * 3.0 / 1e6, 2)  # together_lora: 4 epochs, no evals
    assert stages["train"]["estimated_usd"] == expected
    assert (
        f"~{4 * mix_tokens:,} tokens billed (4 epochs x {mix_tokens:,} tokens (the mixture's count))"
        in stages["train"]["plan"]
    )
