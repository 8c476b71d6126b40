"""Local training: packing without leakage (tiny model), and the embedded model trained for real."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from recipe.providers.local.trainer import Example, collate, pack  # noqa: E402

from .conftest import RECIPE, tiny_common  # noqa: E402
from .subprocesses import limit, run_to_end  # noqa: E402

# A small run on the shipped samples that still learns something measurable on two CPU cores.


def tiny_llama():
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def test_packed_examples_do_not_see_each_other() -> None:
    model = tiny_llama()
    a = Example(list(range(1, 11)), list(range(1, 11)))
    b = Example(list(range(20, 32)), list(range(20, 32)))
    (row,) = pack([a, b], max_len=64, packing=True)
    assert row["position_ids"] == list(range(10)) + list(range(12))
    with torch.no_grad():
        packed = model(
            **{k: v for k, v in collate([row], 0, torch.device("cpu")).items() if k != "labels"}, use_cache=False
        ).logits
        alone = model(input_ids=torch.tensor([b.input_ids]), use_cache=False).logits
    # The second example's logits are the same whether it is packed after the first or alone.
    assert torch.allclose(packed[0, 10:], alone[0], atol=1e-5)


def test_rows_respect_the_length_and_padding_is_never_a_target() -> None:
    examples = [Example([1] * n, [2] * n) for n in (5, 7, 9, 30)]
    rows = pack(examples, max_len=16, packing=True)
    assert [len(r["input_ids"]) for r in rows] == [12, 9, 16]  # 5+7 | 9 | 30 cut to 16
    batch = collate(rows, pad_id=0, device=torch.device("cpu"))
    assert batch["input_ids"].shape == (3, 16)
    assert (batch["labels"][1, 9:] == -100).all() and batch["position_ids"][1, 9:].tolist() == list(range(7))
    assert len(pack(examples, max_len=16, packing=False)) == 4
    # An example whose answer lies beyond the cut has nothing to learn: dropped, never a 0/0 loss.
    prompt_only = Example([1] * 20, [-100] * 18 + [5, 6])
    assert pack([prompt_only, examples[0]], max_len=16, packing=False) == pack([examples[0]], 16, False)


def kill_at_first_checkpoint(spawn, args: list[str], cwd: Path, poll_s: float) -> int:
    """Start `recipe`, kill -9 it as soon as a checkpoint exists; the checkpoint's step."""
    proc = spawn(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = cwd / "outputs" / "store" / "work" / "train"
    deadline = time.monotonic() + limit(240)
    while not list(work.glob("*/checkpoint-*")) and time.monotonic() < deadline:
        time.sleep(poll_s)
    checkpoints = list(work.glob("*/checkpoint-*"))
    assert checkpoints, "no checkpoint was written"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return int(checkpoints[0].name.split("-")[1])


def rerun_and_check_it_resumed(args: list[str], cwd: Path, killed_at: int) -> dict:
    """Run `recipe` again: it must continue from the checkpoint, not restart; the train manifest."""
    run_to_end(args, cwd=cwd, timeout_s=1200)
    store = cwd / "outputs" / "store" / "train"
    manifest = json.loads(next(store.glob("*/manifest.json")).read_text())
    assert manifest["resumed_from"] is not None and manifest["resumed_from"] >= killed_at
    records = [json.loads(line) for line in next(store.glob("*/metrics.jsonl")).read_text().splitlines()]
    steps = [r["step"] for r in records]
    # Every step once (a step the killed attempt logged after its checkpoint is the resumed one's),
    # continued, not restarted.
    assert steps == list(range(1, manifest["steps"] + 1)) and manifest["resumed_from"] + 1 in steps
    # The manifest's figures are the whole run's, the killed attempt's steps included.
    assert manifest["trained_tokens"] == sum(r["tokens"] for r in records)
    assert manifest["first_loss"] == pytest.approx(sum(r["loss"] for r in records[:3]) / 3, abs=1e-5)
    assert manifest["seconds"] > manifest["attempt_seconds"]
    return manifest


@pytest.mark.slow
def test_kill_9_mid_training_resumes_from_the_checkpoint(tmp_path: Path, spawn, tiny_model_dir: Path) -> None:
    # Enough steps past the first checkpoint that the kill lands before the end on a fast machine;
    # the re-run trains only the rest (it once trained 320 steps, then 300 under torchrun).
    args = [
        RECIPE,
        *tiny_common(tiny_model_dir),
        "train.args.n_epochs=40",
        "train.max_steps=60",
        "train.checkpoint_every=2",
    ]
    killed_at = kill_at_first_checkpoint(spawn, args, tmp_path, poll_s=0.05)
    rerun_and_check_it_resumed(args, tmp_path, killed_at)


@pytest.mark.slow
def test_data_parallel_through_torchrun_matches_one_process(run_cli, tmp_path: Path, tiny_model_dir: Path) -> None:
    """train.devices=2 runs two gloo processes under torchrun, one row each per step; DDP averages
    their gradients, which is exactly one process accumulating the same two rows: same losses,
    same weights."""
    common = (
        *tiny_common(tiny_model_dir),
        "train.max_steps=3",
        "train.args.n_epochs=4",
        "train.args.global_batch_size=2",
        "train.args.lora.dropout=0",
        "train.args.learning_rate=1e-3",
        "train.checkpoint_every=2",
    )
    run_cli(*common, "train.devices=2")
    run_cli(*common, "train.devices=1")
    runs = sorted((tmp_path / "outputs" / "runs").glob("*/*/run.json"))
    parallel, single = (Path(json.loads(r.read_text())["stages"]["train"]["artifact"]) for r in runs)
    manifests = [json.loads((a / "manifest.json").read_text()) for a in (parallel, single)]
    assert [m["world_size"] for m in manifests] == [2, 1] and manifests[0]["steps"] == manifests[1]["steps"] == 3
    assert manifests[0]["trained_tokens"] == manifests[1]["trained_tokens"]
    losses = [
        [json.loads(line)["loss"] for line in (a / "metrics.jsonl").read_text().splitlines()]
        for a in (parallel, single)
    ]
    assert losses[0] == pytest.approx(losses[1], abs=1e-4)
    from safetensors.torch import load_file

    a, b = (load_file(str(x / "merged" / "model.safetensors")) for x in (parallel, single))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def ddp_workers(spec_dir: Path) -> list[int]:
    """Processes of torchrun or its workers started for a spec under `spec_dir`."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(spec_dir).encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


@pytest.mark.slow
def test_kill_9_during_data_parallel_training_stops_the_workers_and_resumes(
    tmp_path: Path, tiny_model_dir: Path, spawn
) -> None:
    kill_9_two_processes_and_resume(tmp_path, tiny_model_dir, spawn)


def kill_9_two_processes_and_resume(tmp_path: Path, tiny_model_dir: Path, spawn, *extra: str) -> dict:
    """Train on two processes under torchrun, kill -9 the run at its first checkpoint: torchrun and
    its workers must go with it, and a re-run resumes. The train manifest."""
    args = [
        RECIPE,
        *tiny_common(tiny_model_dir),
        *extra,
        "train.devices=2",
        "train.args.n_epochs=100",
        "train.max_steps=60",
        "train.checkpoint_every=2",
    ]
    killed_at = kill_at_first_checkpoint(spawn, args, tmp_path, poll_s=0.05)
    work = tmp_path / "outputs" / "store" / "work" / "train"
    deadline = time.monotonic() + limit(30)
    while ddp_workers(work) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not ddp_workers(work), "torchrun or its workers outlived the killed run"
    manifest = rerun_and_check_it_resumed(args, tmp_path, killed_at)
    assert manifest["world_size"] == 2 and manifest["steps"] > killed_at
    return manifest


@pytest.mark.parametrize("fmt", ["text", "prompt_completion"])
def test_rendered_mixtures_train_on_the_original_conversations(make_cfg, tmp_path: Path, fmt: str) -> None:
    """Whatever mix.format renders mixture.jsonl as, the trainer tokenises the conversations with the
    model's own chat template exactly once: no markup inside a message's content."""
    from recipe.artifacts import Mixture
    from recipe.providers.local.trainer import load_tokenizer, tokenize
    from recipe.runner import run
    from recipe.store import ArtifactStore

    def mixture(*overrides: str) -> Mixture:
        record = run(make_cfg("stages=[mix]", "mix.progress=false", *overrides), run_dir=tmp_path)
        entry = record["stages"]["mix"]
        return Mixture.load(ArtifactStore(tmp_path / "store").get("mix", entry["fingerprint"]))

    original = mixture("mix.format=messages")
    originals = [json.loads(line)["messages"] for line in (original.dir / "mixture.jsonl").open()]
    rendered = mixture(f"mix.format={fmt}", "mix.template=chatml")
    assert (rendered.dir / "mixture.jsonl").read_bytes() != (original.dir / "mixture.jsonl").read_bytes()
    assert rendered.conversations("train") == originals and rendered.conversations("eval")
    tokenizer = load_tokenizer(None)
    for messages, expected in zip(rendered.conversations("train"), originals, strict=True):
        ids = tokenize(tokenizer, messages, train_on_inputs=False).input_ids
        assert ids == tokenizer.apply_chat_template(expected, tokenize=True, return_dict=False)
        assert not any("<|im_start|>" in m["content"] for m in messages)  # no doubled markup


@pytest.mark.slow
def test_the_heldout_loss_reads_the_format_the_model_was_trained_in(
    run_cli, tmp_path: Path, tiny_model_dir: Path
) -> None:
    """A model trained with train.template is scored in that template: Test's held-out loss
    (trainer.heldout_loss, as Test calls it with the Train artifact's format) is the trainer's own eval
    loss, and the model's chat template would give another figure."""
    from recipe.artifacts import Mixture, TrainedModel
    from recipe.providers.local.trainer import heldout_loss, heldout_rows, load_tokenizer
    from recipe.store import ArtifactStore

    common = [o for o in tiny_common(tiny_model_dir) if not o.startswith("mix.eval_fraction")]
    run_cli(*common, "mix.eval_fraction=0.5", "train.template=llama2_inst", "train.max_steps=2")
    (record,) = (json.loads(p.read_text()) for p in (tmp_path / "outputs" / "runs").glob("*/*/run.json"))
    store = ArtifactStore(tmp_path / "outputs" / "store")
    trained = TrainedModel.load(store.get("train", record["stages"]["train"]["fingerprint"]))
    held_out = Mixture.load(store.get("mix", record["stages"]["mix"]["fingerprint"])).conversations("eval")
    assert trained.format.template == "llama2_inst" and held_out and trained.eval_loss is not None
    as_trained, each = heldout_loss(trained.model, held_out, trained.format.template, trained.max_seq_length)
    as_chat, _ = heldout_loss(trained.model, held_out, None, trained.max_seq_length)
    # The same rows as the trainer's. The chat template's rows are other tokens, so their loss is
    # another figure; how far apart depends on the random tiny model (nearly uniform after 2 steps).
    tokenizer = load_tokenizer(trained.model)
    rows = heldout_rows(tokenizer, held_out, trained.format.template, trained.max_seq_length, False)
    assert rows != heldout_rows(tokenizer, held_out, None, trained.max_seq_length, False)
    assert as_trained == pytest.approx(trained.eval_loss, abs=1e-4)
    print(f"held-out loss: as trained {as_trained}, in the chat template {as_chat}")
    assert as_chat != as_trained
    # Each example's own loss (unpacked): one per conversation (None: its answer starts past the
    # 128-token cut, as the packed rows drop it too), near the packed mean.
    present = [v for v in each if v is not None]
    assert len(each) == len(held_out) and present and all(v > 0 for v in present)
    assert min(present) - 0.5 < as_trained < max(present) + 0.5


def test_each_heldout_examples_loss_is_its_float64_cross_entropy(tiny_model_dir: Path) -> None:
    """Test's per-example held-out loss against a float64 reference written here from the same
    logits: log-softmax over the vocabulary, the next token's log-probability, averaged over the
    answer tokens. Within 1e-6 (a float32 cross-entropy over the (N, V, L) layout was ~1e-4 low)."""
    from recipe.providers.local.trainer import heldout_loss, load_model, tokenize

    conversations = [
        [
            {"role": "user", "content": f"Question {i}: what is {i} plus {i}?"},
            {"role": "assistant", "content": f"{2 * i}, as {i} + {i} = {2 * i}."},
        ]
        for i in range(1, 5)
    ]
    _, each = heldout_loss(str(tiny_model_dir), conversations, None, 512)
    model, tokenizer = load_model(str(tiny_model_dir), torch.device("cpu"), torch.float32)
    model.eval()
    for messages, ours in zip(conversations, each, strict=True):
        example = tokenize(tokenizer, messages, False)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([example.input_ids])).logits[0].double()
        logp = torch.log_softmax(logits[:-1], dim=-1)
        targets = torch.tensor(example.labels[1:])
        kept = targets != -100
        reference = -logp[kept].gather(1, targets[kept, None]).mean().item()
        assert ours == pytest.approx(reference, abs=1e-6)
