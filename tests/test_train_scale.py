"""Local training at the seed's scale, on two CPU cores: FSDP2 over gloo against one process,
kill -9 and resume with sharded checkpoints, activation checkpointing, every attention
implementation that runs on CPU against packed-row leakage, the memory estimate and its refusals,
the multi-node launch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from recipe.errors import RecipeError
from recipe.providers.local import attention, memory
from recipe.providers.local.ddp import Rendezvous, torchrun_command
from recipe.providers.local.trainer import Example, collate, enable_activation_checkpointing, pack
from recipe.runner import run

from . import test_train_local
from .conftest import MIX_AND_TRAIN, tiny_common
from .test_train_local import kill_9_two_processes_and_resume, tiny_llama

GIB = 2**30


# ---- FSDP2 ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_fsdp_on_two_gloo_processes_matches_one_process(run_cli, tmp_path: Path, tiny_model_dir: Path) -> None:
    """FSDP2 shards a full fine-tune over two CPU processes, one row each per step: the same step
    losses and the same merged weights as one process accumulating both rows."""
    common = (
        *tiny_common(tiny_model_dir),
        "train=local_full",
        "train.max_steps=3",
        "train.args.global_batch_size=2",
        "train.args.learning_rate=1e-3",
        "train.checkpoint_every=2",
    )
    run_cli(*common, "train.strategy=fsdp", "train.devices=2")
    run_cli(*common, "train.devices=1")
    runs = sorted((tmp_path / "outputs" / "runs").glob("*/*/run.json"))
    sharded, single = (Path(json.loads(r.read_text())["stages"]["train"]["artifact"]) for r in runs)
    manifests = [json.loads((a / "manifest.json").read_text()) for a in (sharded, single)]
    assert [m["world_size"] for m in manifests] == [2, 1] and [m["strategy"] for m in manifests] == ["fsdp", "ddp"]
    assert manifests[0]["steps"] == manifests[1]["steps"] == 3
    assert manifests[0]["attn_implementation"] == "sdpa"  # auto's choice on CPU, reported
    losses = [
        [json.loads(line)["loss"] for line in (a / "metrics.jsonl").read_text().splitlines()] for a in (sharded, single)
    ]
    assert losses[0] == pytest.approx(losses[1], abs=1e-4)
    from safetensors.torch import load_file

    a, b = (load_file(str(x / "merged" / "model.safetensors")) for x in (sharded, single))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


@pytest.mark.slow
def test_kill_9_during_fsdp_training_resumes_from_the_sharded_checkpoint(
    tmp_path: Path, tiny_model_dir: Path, spawn, monkeypatch
) -> None:
    work = tmp_path / "outputs" / "store" / "work" / "train"
    formats: list[bool] = []
    real_rerun = test_train_local.rerun_and_check_it_resumed

    def rerun(args: list[str], cwd: Path, killed_at: int) -> dict:
        checkpoint = next(work.glob("*/checkpoint-*"))
        formats.append((checkpoint / ".metadata").is_file())  # torch.distributed.checkpoint's sharded format
        return real_rerun(args, cwd, killed_at)

    monkeypatch.setattr(test_train_local, "rerun_and_check_it_resumed", rerun)
    manifest = kill_9_two_processes_and_resume(
        tmp_path, tiny_model_dir, spawn, "train.strategy=fsdp", "train.activation_checkpointing=true"
    )
    assert formats == [True]
    assert manifest["world_size"] == 2 and manifest["strategy"] == "fsdp" and manifest["activation_checkpointing"]


# ---- activation checkpointing and attention -----------------------------------------------------


def test_activation_checkpointing_gives_the_same_gradients() -> None:
    rows = pack(
        [Example(list(range(1, 20)), list(range(1, 20))), Example(list(range(30, 41)), list(range(30, 41)))], 64, True
    )
    batch = collate(rows, 0, torch.device("cpu"))
    grads = []
    for checkpointing in (False, True):
        model = tiny_llama().train()
        if checkpointing:
            enable_activation_checkpointing(model)
        model(**batch, use_cache=False).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    plain, recomputed = grads
    assert plain.keys() == recomputed.keys()
    assert all(torch.allclose(plain[n], recomputed[n], atol=1e-6) for n in plain)


@pytest.mark.slow
@pytest.mark.parametrize("implementation", ["sdpa", "eager", "flex_attention"])
def test_packed_rows_do_not_leak_with_every_cpu_attention(implementation: str) -> None:
    """The second example's logits are the same packed after the first as alone."""
    model = tiny_llama()
    model.set_attn_implementation(implementation)
    a = Example(list(range(1, 11)), list(range(1, 11)))
    b = Example(list(range(20, 32)), list(range(20, 32)))
    (row,) = pack([a, b], max_len=64, packing=True)
    with torch.no_grad():
        batch = {k: v for k, v in collate([row], 0, torch.device("cpu")).items() if k != "labels"}
        packed = model(**batch, use_cache=False).logits
        alone = model(input_ids=torch.tensor([b.input_ids]), use_cache=False).logits
    assert model.config._attn_implementation == implementation
    assert torch.allclose(packed[0, 10:], alone[0], atol=1e-5)


def test_auto_attention_picks_the_best_available_and_refuses_what_cannot_run() -> None:
    assert attention.resolve("auto", "cpu") == "sdpa"
    assert attention.resolve("auto", "cuda") in ("flash_attention_2", "flex_attention")
    assert attention.resolve("flex_attention", "cpu") == "flex_attention"
    with pytest.raises(RecipeError, match="flash_attention_2 needs a CUDA device and the flash-attn package"):
        attention.resolve("flash_attention_2", "cpu")


# ---- the memory estimate --------------------------------------------------------------------------


def formula_gb(
    P: int, layers: int, h: int, kv: int, i: int, V: int, *, T: int, world: int, seq: int, ac: bool
) -> float:
    """The docstring's formula for fsdp (bf16 compute, fp32 states) with flex attention, by hand."""
    layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    states = 16 * T / world + 4 * (P - T) / world
    gathered = 2 * 2 * layer + 4 * layer + 2 * 2 * V * h
    per_layer = seq * 2 * (7 * h + 2 * kv + 4 * i)
    acts = layers * seq * 2 * h + per_layer if ac else layers * per_layer
    logits = seq * V * 10
    return (states + gathered + acts + logits) / GIB * 1.10 + 1.5


@pytest.mark.parametrize(
    ("model", "published_params", "seq", "dims"),
    [
        ("TinyLlama/TinyLlama_v1.1", 1_100_048_384, 8192, (22, 2048, 256, 5632, 32000)),
        ("togethercomputer/LLaMA-2-7B-32K", 6_738_415_616, 32768, (32, 4096, 4096, 11008, 32000)),
    ],
)
def test_the_memory_estimate_follows_its_formula(model: str, published_params: int, seq: int, dims: tuple) -> None:
    shape = memory.shape_of(model)
    assert shape is not None and shape.params == published_params  # the models' published sizes
    layers, h, kv, i, V = dims
    for world, ac in ((1, False), (8, True)):
        setup = memory.Setup(None, "fsdp", world, seq, 1, ac, False, "flex_attention")
        planned = memory.estimate(shape, setup)["total"]
        by_hand = formula_gb(published_params, layers, h, kv, i, V, T=published_params, world=world, seq=seq, ac=ac)
        assert planned == pytest.approx(by_hand, rel=0.15)
    # The seed's run: 7B full fine-tune at 32K. DDP on one 80 GB GPU cannot hold it; FSDP over 8
    # GPUs with checkpointing can.
    if "7B" in model:
        ddp = memory.estimate(shape, memory.Setup(None, "ddp", 1, seq, 1, False, False, "sdpa"))["total"]
        fsdp = memory.estimate(shape, memory.Setup(None, "fsdp", 8, seq, 1, True, False, "flex_attention"))["total"]
        assert ddp > 80 >= fsdp
        # the 16 bytes per parameter of a full fine-tune (weights, gradients, Adam) are ~100 GB
        assert 16 * published_params / GIB == pytest.approx(100.4, abs=0.1)


def test_seed_scale_local_experiment_plans_to_fit_and_refusals_name_what_would(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("experiment=llama2_7b_32k_local", "dry_run=true", "stages=[train]", base=())
    plan = run(cfg, run_dir=tmp_path)["stages"]["train"]["plan"]
    assert "fsdp on 8" in plan and "fits 80 GB" in plan and "checkpointing on" in plan
    cfg = make_cfg(
        "experiment=llama2_7b_32k_local",
        "dry_run=true",
        "stages=[train]",
        "train.devices=1",
        "train.strategy=ddp",
        "train.activation_checkpointing=false",
        base=(),
    )
    with pytest.raises(RecipeError) as err:
        run(cfg, run_dir=tmp_path)
    message = str(err.value)
    assert "DOES NOT FIT 80 GB" in message and "train.gpu_memory_gb=80" in message
    assert "would fit:" in message and "with fsdp and checkpointing" in message


# ---- multi-node launch ------------------------------------------------------------------------


def test_slurm_launch_config_starts_one_torchrun_per_node(make_cfg, monkeypatch) -> None:
    monkeypatch.setenv("SLURM_NNODES", "2")
    monkeypatch.setenv("SLURM_NODEID", "1")
    monkeypatch.setenv("RECIPE_RDZV_ENDPOINT", "node-a:29500")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    cfg = make_cfg("experiment=llama2_7b_32k_local", "train/launch=slurm", base=())
    launch = cfg.train.launch
    assert (launch.nnodes, launch.node_rank, launch.rdzv_endpoint, launch.rdzv_id) == (2, 1, "node-a:29500", "4242")
    command = torchrun_command(
        cfg.train.devices, Rendezvous(launch.nnodes, launch.node_rank, launch.rdzv_endpoint, launch.rdzv_id), Path("s")
    )
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert command[3:9] == [
        "--nnodes=2",
        "--node_rank=1",
        "--rdzv_backend=c10d",
        "--rdzv_endpoint=node-a:29500",
        "--rdzv_id=4242",
        "--nproc_per_node=8",
    ]
    with pytest.raises(RecipeError, match=r"set train\.launch\.rdzv_endpoint"):
        torchrun_command(8, Rendezvous(2, 0, None), Path("s"))
    assert "--standalone" in torchrun_command(2, Rendezvous(), Path("s"))


# ---- a base model without a chat template -----------------------------------------------------


def test_a_text_template_trains_a_base_model_on_the_answers_between_bos_and_eos(tiny_model_dir: Path) -> None:
    from recipe.data import templates
    from recipe.providers.local.trainer import load_tokenizer, tokenize

    tokenizer = load_tokenizer(str(tiny_model_dir))
    tokenizer.chat_template = None  # as LLaMA-2-7B-32K's
    messages = [
        {"role": "user", "content": "What is two plus two?"},
        {"role": "assistant", "content": "Four."},
        {"role": "user", "content": "And three plus three?"},
        {"role": "assistant", "content": "Six."},
    ]
    with pytest.raises(RecipeError, match=r"no chat template: set train\.template"):
        tokenize(tokenizer, messages, False)
    ex = tokenize(tokenizer, messages, False, "llama2_inst")
    text = templates.render(messages, "llama2_inst")
    assert text == "[INST] What is two plus two? [/INST] Four. [INST] And three plus three? [/INST] Six."
    assert ex.input_ids[0] == tokenizer.bos_token_id and ex.input_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ex.input_ids[1:-1]) == text
    targets = tokenizer.decode([t for t, label in zip(ex.input_ids, ex.labels, strict=True) if label != -100])
    assert targets.replace(" ", "").startswith("Four.") and "Six." in targets and "INST" not in targets
    assert ex.labels[-1] == tokenizer.eos_token_id  # it learns to stop


def test_cpu_offload_is_refused_where_it_cannot_run(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("stages=[train]", "train.offload_optimizer=true", base=MIX_AND_TRAIN)
    with pytest.raises(RecipeError, match=r"offload_optimizer=true needs train\.strategy=fsdp"):
        run(cfg, run_dir=tmp_path)
    cfg = make_cfg(
        "stages=[mix,train]",
        "train.offload_optimizer=true",
        "train.strategy=fsdp",
        "train.device=cpu",
        base=MIX_AND_TRAIN,
    )
    with pytest.raises(RecipeError, match=r"it needs train\.device=cuda"):
        run(cfg, run_dir=tmp_path)
    assert not list((tmp_path / "store").glob("train/*/manifest.json"))
