"""Train on Together against the fake server: upload, create once, follow, re-attach."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from recipe.data import templates
from recipe.data.filecheck import FileCheckError, check_file
from recipe.errors import RecipeError
from recipe.runner import run

from .conftest import NO_DISTILL, RECIPE, TOGETHER_KEY
from .fake_together import FakeTogether
from .subprocesses import limit, run_to_end

KEY = TOGETHER_KEY


def train_cfg(make_cfg, *overrides: str, train: str = "together_lora"):
    return make_cfg(
        "stages=[mix,train]",
        f"train={train}",
        "train.poll_s=0.01",
        "train.retry_backoff_s=0.01",
        "train.progress=false",
        "mix.progress=false",
        *overrides,
        base=NO_DISTILL,
    )


def manifest(record: dict, stage: str = "train") -> dict:
    return json.loads((Path(record["stages"][stage]["artifact"]) / "manifest.json").read_text())


def test_mixture_to_completed_job_with_the_seed_hyperparameters(make_cfg, tmp_path: Path, fake: FakeTogether) -> None:
    record = run(train_cfg(make_cfg), run_dir=tmp_path)
    entry = record["stages"]["train"]
    assert entry["status"] == "ok" and entry["cost_usd"] == 1.25  # the billed total_price
    (create,) = fake.posts("/v1/fine-tunes")
    body = create.body
    assert body["model"] == "togethercomputer/LLaMA-2-7B-32K"
    assert body["training_type"] == {
        "type": "Lora",
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "lora_trainable_modules": "all-linear",
    }
    assert body["training_method"] == {"method": "sft", "train_on_inputs": "auto"}
    assert (body["n_epochs"], body["batch_size"], body["learning_rate"]) == (4, 32, 1e-05)
    assert body["lr_scheduler"] == {"lr_scheduler_type": "linear", "lr_scheduler_args": {"min_lr_ratio": 0.0}}
    assert body["suffix"] == "llama2-7b-32k-instruct" and "validation_file" not in body
    # Upload as the SDKs do: form POST, presigned PUT (no key), preprocess; price before create.
    order = [(r.method, r.path.split("/")[2] if r.path.startswith("/v1/") else "PUT") for r in fake.requests[:5]]
    assert order == [
        ("POST", "files"),
        ("PUT", "PUT"),
        ("POST", "files"),
        ("POST", "fine-tunes"),
        ("POST", "fine-tunes"),
    ]
    assert fake.posts("/v1/files")[0].body == {
        "purpose": "fine-tune",
        "file_name": "upload.jsonl",
        "file_type": "jsonl",
    }
    # mix=samples is ChatML text (for SmolLM2); LLaMA-2-7B-32K is trained in [INST] text, so the upload
    # is rendered once, from the mixture's conversations, for the target model.
    uploaded = fake.files[body["training_file"]]
    mix = manifest(record, "mix")
    mix_dir = Path(record["stages"]["mix"]["artifact"])
    assert b"<|im_start|>" in (mix_dir / "mixture.jsonl").read_bytes() and b"<|im_start|>" not in uploaded
    conversations = [json.loads(line)["messages"] for line in (mix_dir / "conversations.jsonl").open()]
    texts = [json.loads(line)["text"] for line in uploaded.decode().splitlines()]
    assert texts == [templates.render(c, "llama2_inst") for c in conversations] and len(texts) == 32
    assert all(t.startswith("[INST] ") for t in texts)
    m = manifest(record)
    assert m["trained_model"]["format"] == {"kind": "text", "template": "llama2_inst"}
    assert m["upload_file"] == "upload.jsonl" and (Path(entry["artifact"]) / "upload.jsonl").read_bytes() == uploaded
    assert m["job_id"].startswith("ft-")
    assert m["model_output_name"] and m["status"] == "completed" and m["checkpoints"][0]["step"] == 4
    assert m["price_estimate"]["estimated_total_price"] > 0 and m["total_price"] == 1.25
    assert mix["sha256"]


def test_full_training_and_the_eval_split(make_cfg, tmp_path: Path, fake: FakeTogether) -> None:
    run(
        train_cfg(
            make_cfg,
            "train.n_evals=2",
            "train.args.train_on_inputs=false",
            "train.args.lr_scheduler.type=cosine",
            train="together_full",
        ),
        run_dir=tmp_path,
    )
    (create,) = fake.posts("/v1/fine-tunes")
    assert create.body["training_type"] == {"type": "Full"} and create.body["n_evals"] == 2
    assert (
        create.body["validation_file"] in fake.files and create.body["validation_file"] != create.body["training_file"]
    )
    assert create.body["training_method"]["train_on_inputs"] is False
    assert create.body["lr_scheduler"]["lr_scheduler_args"] == {"min_lr_ratio": 0.0, "num_cycles": 0.5}


def test_the_upload_is_rendered_for_the_target_model(make_cfg, tmp_path: Path, fake: FakeTogether) -> None:
    # A model of unknown format takes `messages`: Together applies its own chat template.
    record = run(train_cfg(make_cfg, "train.model=org/chat-model"), run_dir=tmp_path)
    uploaded = fake.files[fake.posts("/v1/fine-tunes")[0].body["training_file"]].decode().splitlines()
    mix_dir = Path(record["stages"]["mix"]["artifact"])
    assert [json.loads(line) for line in uploaded] == [
        {"messages": json.loads(line)["messages"]} for line in (mix_dir / "conversations.jsonl").open()
    ]
    assert manifest(record)["trained_model"]["format"] == {"kind": "chat_template", "template": None}
    # Formats the seed's base model is known not to take are refused before any request.
    requests = len(fake.requests)
    with pytest.raises(
        RecipeError, match=r"train.format=messages: togethercomputer/LLaMA-2-7B-32K has no chat template"
    ):
        run(train_cfg(make_cfg, "train.format=messages"), run_dir=tmp_path)
    with pytest.raises(
        RecipeError, match=r"train.template='chatml': togethercomputer/LLaMA-2-7B-32K is trained .* llama2_inst"
    ):
        run(train_cfg(make_cfg, "train.format=text", "train.template=chatml"), run_dir=tmp_path)
    with pytest.raises(RecipeError, match=r"mix.template='chatml': togethercomputer/LLaMA-2-7B-32K"):
        run(train_cfg(make_cfg, "train.format=mixture"), run_dir=tmp_path)  # mix=samples is ChatML
    with pytest.raises(RecipeError, match=r"train.format=text: set train.template .* for org/chat-model"):
        run(train_cfg(make_cfg, "train.format=text", "train.model=org/chat-model"), run_dir=tmp_path)
    assert len(fake.requests) == requests


def test_format_mixture_uploads_the_mixture_as_mix_wrote_it(make_cfg, tmp_path: Path, fake: FakeTogether) -> None:
    overrides = ("train.format=mixture", "train.model=org/chatml-model", "mix.format=prompt_completion")
    record = run(train_cfg(make_cfg, *overrides), run_dir=tmp_path)
    uploaded = fake.files[fake.posts("/v1/fine-tunes")[0].body["training_file"]]
    assert uploaded == (Path(record["stages"]["mix"]["artifact"]) / "mixture.jsonl").read_bytes()
    assert b'"prompt"' in uploaded and manifest(record)["upload_file"] is None
    # prompt_completion rendered in ChatML: the model is prompted in that text template.
    assert manifest(record)["trained_model"]["format"] == {"kind": "text", "template": "chatml"}


def test_transient_failures_on_every_step_are_survived(make_cfg, tmp_path: Path, fake: FakeTogether) -> None:
    fake.fail(503, 1, paths=("/v1/files",))
    fake.fail(503, 2, paths=("/upload/*",))  # the SDKs never retry the presigned PUT
    fake.fail(429, 2, retry_after_ms=1, paths=("/v1/fine-tunes",))
    fake.fail(503, 2, paths=("/v1/fine-tunes",))
    fake.drop(3, paths=("/v1/fine-tunes/*",))  # dropped polls
    record = run(train_cfg(make_cfg), run_dir=tmp_path)
    assert record["stages"]["train"]["status"] == "ok"
    # 2 refused (429), 1 failed (503) and looked up (the look-up took the second 503, retried), 1 created
    assert len(fake.jobs) == 1 and len(fake.posts("/v1/fine-tunes")) == 4


def test_the_same_mixture_twice_is_uploaded_once(make_cfg, tmp_path: Path, fake: FakeTogether) -> None:
    run(train_cfg(make_cfg), run_dir=tmp_path)
    run(train_cfg(make_cfg, "train.args.n_epochs=2"), run_dir=tmp_path)  # another job, same data
    assert len(fake.posts("/v1/files")) == 1 and len(fake.jobs) == 2


def test_a_mixture_edited_to_break_a_rule_sends_nothing(make_cfg, tmp_path: Path, fake: FakeTogether) -> None:
    record = run(make_cfg("stages=[mix]", "mix.progress=false"), run_dir=tmp_path)
    mixture = Path(record["stages"]["mix"]["artifact"]) / "mixture.jsonl"
    mixture.write_bytes(mixture.read_bytes() + b'{"text": "ok", "extra": 1}\n')  # damaged after the fact
    # train.format=mixture uploads mixture.jsonl as Mix wrote it (ChatML: fine for a model of unknown format).
    overrides = ("stages=[train]", "train=together_lora", "train.format=mixture", "train.model=org/chatml-model")
    with pytest.raises(RecipeError, match=r"that train reads is damaged: .*mixture\.jsonl changed since it was made"):
        run(make_cfg(*overrides, base=NO_DISTILL), run_dir=tmp_path)
    assert fake.requests == []
    # The file check still stands between a file and Together: a rendered file that breaks a rule.
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "ok"}\n{"text": "ok", "extra": 1}\n')
    with pytest.raises(FileCheckError, match=r"bad.jsonl:2: unexpected keys \['extra'\]"):
        check_file(bad)


def test_kill_9_while_polling_then_rerun_attaches_to_the_same_job(tmp_path: Path, fake: FakeTogether, spawn) -> None:
    fake.job_steps = 10_000  # keeps running until the test lets it finish
    args = [
        RECIPE,
        "stages=[mix,train]",
        "mix=samples",
        "train=together_lora",
        "train.poll_s=0.02",
        "train.progress=false",
        "mix.progress=false",
    ]
    env = {**os.environ, "TOGETHER_API_KEY": KEY, "TOGETHER_BASE_URL": fake.base_url}
    proc = spawn(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + limit(60)
    while not any(j["_step"] >= 3 for j in fake.jobs.values()) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(fake.jobs) == 1
    (job,) = fake.jobs.values()
    fake.job_steps = job["_step"] + 1
    run_to_end(args, cwd=tmp_path, env=env, timeout_s=600)
    assert len(fake.posts("/v1/fine-tunes")) == 1 and len(fake.posts("/v1/files")) == 1
    assert job["status"] == "completed"


def test_wait_false_returns_pending_and_a_later_run_picks_it_up(make_cfg, tmp_path: Path, fake: FakeTogether) -> None:
    record = run(train_cfg(make_cfg, "train.wait=false"), run_dir=tmp_path)
    assert record["status"] == "pending" and record["stages"]["train"]["status"] == "pending"
    assert record["stages"]["train"]["job_id"] in fake.jobs and "artifact" not in record["stages"]["train"]
    record = run(train_cfg(make_cfg), run_dir=tmp_path)
    assert record["stages"]["train"]["status"] == "ok" and len(fake.jobs) == 1


def test_a_failed_job_is_an_error_and_only_relaunch_pays_again(make_cfg, tmp_path: Path, fake: FakeTogether) -> None:
    fake.job_outcome = "error"
    with pytest.raises(RecipeError, match=r"ended error; .*train.relaunch=true"):
        run(train_cfg(make_cfg), run_dir=tmp_path)
    with pytest.raises(RecipeError, match=r"ended error; set train.relaunch=true"):
        run(train_cfg(make_cfg), run_dir=tmp_path)  # re-attaches, does not launch
    assert len(fake.jobs) == 1
    fake.job_outcome = "completed"
    record = run(train_cfg(make_cfg, "train.relaunch=true"), run_dir=tmp_path)
    assert record["stages"]["train"]["status"] == "ok" and len(fake.jobs) == 2


def test_cancel_the_recorded_job(make_cfg, tmp_path: Path, fake: FakeTogether) -> None:
    run(train_cfg(make_cfg, "train.wait=false"), run_dir=tmp_path)
    with pytest.raises(RecipeError, match="cancelled Together fine-tune ft-"):
        run(train_cfg(make_cfg, "train.cancel=true"), run_dir=tmp_path)
    (job,) = fake.jobs.values()
    assert job["status"] == "cancelled" and len(fake.posts("/v1/fine-tunes")) == 1


def test_the_budget_is_checked_against_the_estimate_before_creating(
    make_cfg, tmp_path: Path, fake: FakeTogether
) -> None:
    # Priced offline (train.price_per_mtok), the pre-flight refuses before any request.
    with pytest.raises(RecipeError, match=r"pre-flight: train would cost ~\$.*, over train.budget.max_usd=0.001"):
        run(train_cfg(make_cfg, "train.budget.max_usd=0.001"), run_dir=tmp_path)
    assert fake.requests == []
    # Not priced offline, Together's own estimate is held against the budget before the job is created.
    unpriced = ("train.budget.max_usd=0.001", "train.price_per_mtok=null")
    with pytest.raises(RecipeError, match=r"over train.budget.max_usd=0.001; nothing was launched"):
        run(train_cfg(make_cfg, *unpriced), run_dir=tmp_path)
    assert fake.posts("/v1/fine-tunes/estimate-price") and not fake.posts("/v1/fine-tunes")


def test_download_and_multipart_upload(make_cfg, tmp_path: Path, fake: FakeTogether) -> None:
    record = run(
        train_cfg(
            make_cfg, "train.multipart_threshold_gb=1e-6", "train.multipart_part_mb=0.01", "train.download=merged"
        ),
        run_dir=tmp_path,
    )
    (initiate,) = fake.posts("/v1/files/multipart/initiate")
    assert initiate.body["num_parts"] == 3 and len(fake.posts("/v1/files/multipart/complete")) == 1
    training_file = fake.posts("/v1/fine-tunes")[0].body["training_file"]
    m = manifest(record)
    assert fake.files[training_file] == (Path(record["stages"]["train"]["artifact"]) / m["upload_file"]).read_bytes()
    assert (
        (Path(record["stages"]["train"]["artifact"]) / m["download"]["file"]).stat().st_size
        == m["download"]["bytes"]
        > 0
    )


def test_wandb_key_is_sent_but_never_stored(make_cfg, tmp_path: Path, fake: FakeTogether, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "wandb-secret-0123456789")
    run(train_cfg(make_cfg, "train.wandb.enabled=true", "train.wandb.project_name=recipe"), run_dir=tmp_path)
    body = fake.posts("/v1/fine-tunes")[0].body
    # The official SDKs (1.x, 2.x, 3.x) send the key as `wandb_key`.
    assert body["wandb_key"] == "wandb-secret-0123456789" and body["wandb_project_name"] == "recipe"
    assert "wandb_api_key" not in body
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert b"wandb-secret" not in path.read_bytes() and KEY.encode() not in path.read_bytes(), path


def test_cli_mix_and_train_fill_run_json(run_cli, tmp_path: Path, fake: FakeTogether) -> None:
    run_cli(
        "stages=[mix,train]",
        "mix=samples",
        "train=together_lora",
        "train.poll_s=0.01",
        "train.progress=false",
        env={"TOGETHER_API_KEY": KEY, "TOGETHER_BASE_URL": fake.base_url},
    )
    record = json.loads(sorted((tmp_path / "outputs" / "runs").glob("*/*/run.json"))[-1].read_text())
    assert record["status"] == "ok"
    assert set(record["stages"]["train"]) >= {"status", "fingerprint", "artifact", "cache_hit", "seconds", "cost_usd"}
