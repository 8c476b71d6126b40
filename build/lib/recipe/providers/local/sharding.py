"""FSDP2 for local training (`train.strategy=fsdp`): PyTorch's own `fully_shard`, per decoder layer.

- Every decoder layer (the classes the model lists in `_no_split_modules`) is its own FSDP unit,
  the root (embeddings, final norm, LM head) another; parameters, gradients and optimizer state
  are sharded over the process group.
- Mixed precision on CUDA: fp32 master weights and optimizer state, bf16 parameters for compute,
  fp32 gradient reduce-scatter. On CPU (gloo) everything stays fp32.
- `offload_optimizer`: FSDP2's CPUOffloadPolicy (sharded weights, gradients and optimizer state in
  host memory; the optimizer step runs on the CPU).
- Checkpoints are sharded (torch.distributed.checkpoint: each rank writes its own shards) to a
  temporary directory that rank 0 renames once every rank is done, so a kill -9 leaves either the
  previous checkpoint or the new one. The merged model is gathered to rank 0 at the end
  (`full_state_dict`) and saved as safetensors by the caller.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

STATE = "trainer_state.json"


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks: modules of the classes it names in `_no_split_modules`."""
    names: set[str] = set()
    for module in model.modules():
        names |= set(getattr(module, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise RuntimeError(f"{type(model).__name__}: no decoder layer classes found (_no_split_modules)")
    return layers


def shard(model: torch.nn.Module, device_type: str, offload: bool) -> torch.nn.Module:
    """Apply fully_shard to every decoder layer, then to the root; the model is changed in place."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    if device_type == "cuda":
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    else:
        mp = MixedPrecisionPolicy()
    policy = CPUOffloadPolicy() if offload else OffloadPolicy()
    for layer in decoder_layers(model):
        fully_shard(layer, mp_policy=mp, offload_policy=policy)
    fully_shard(model, mp_policy=mp, offload_policy=policy)
    return model


def latest(work_dir: Path) -> Path | None:
    found = [p for p in work_dir.glob("checkpoint-*") if (p / STATE).is_file()] if work_dir.exists() else []
    return max(found, key=lambda p: int(p.name.split("-")[1]), default=None)


def save(model: Any, optimizer: Any, scheduler: Any, step: int, work_dir: Path) -> None:
    """A sharded checkpoint of the trainable weights, the optimizer and the schedule (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    rank = dist.get_rank()
    options = StateDictOptions(ignore_frozen_params=True)
    model_state, optim_state = get_state_dict(model, optimizer, options=options)
    tmp = work_dir / f".tmp-checkpoint-{step}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(tmp))
    dist.barrier()
    if rank == 0:
        (tmp / STATE).write_text(json.dumps({"step": step, "scheduler": scheduler.state_dict()}))
        os.rename(tmp, work_dir / f"checkpoint-{step}")
        for old in work_dir.glob("checkpoint-*"):
            if int(old.name.split("-")[1]) < step:
                shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def load(model: Any, optimizer: Any, scheduler: Any, checkpoint: Path) -> int:
    """Restore a sharded checkpoint (collective); the step it was taken at."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

    options = StateDictOptions(ignore_frozen_params=True)
    model_state, optim_state = get_state_dict(model, optimizer, options=options)
    state = {"model": model_state, "optimizer": optim_state}
    dcp.load(state, checkpoint_id=str(checkpoint))
    # Frozen weights (LoRA's base) are not in the checkpoint: they come from the base model as loaded.
    loading = StateDictOptions(ignore_frozen_params=True, strict=False)
    result = set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"], options=loading
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    missing = [k for k in getattr(result, "missing_keys", []) if k in trainable]
    if missing:
        raise RuntimeError(f"{checkpoint}: trainable weights missing from the checkpoint: {missing[:5]}")
    saved = json.loads((checkpoint / STATE).read_text())
    scheduler.load_state_dict(saved["scheduler"])
    return int(saved["step"])


def full_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """Every weight, unsharded, on rank 0's CPU (an empty dict elsewhere); collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
