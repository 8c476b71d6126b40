"""Distributed local training through torchrun (PyTorch's own launcher): DDP or FSDP2.

`launch()` writes the tokenised rows and the settings to the work directory and runs

    python -m torch.distributed.run --standalone --nproc_per_node N -m recipe.providers.local.ddp SPEC

(across nodes: `--nnodes`, `--node_rank`, `--rdzv_endpoint` from `train.launch` instead of
`--standalone`, one such command per node). Each rank loads the model on its device
(`cuda:<local rank>` with NCCL, or CPU processes with gloo), trains its share of every step (see
trainer.train; `train.strategy=fsdp` shards it, see sharding.py), and rank 0 writes the adapter, the
merged model and `result.json`, which `launch()` returns. The data order is the single-process one,
so a killed run resumes the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recipe import threads
from recipe.errors import RecipeError
from recipe.providers.local.server import child_env, die_with_parent

SPEC = "ddp-spec.json"
RESULT = "result.json"


@dataclass(frozen=True)
class Rendezvous:
    """Where the nodes of a multi-node run meet (train.launch)."""

    nnodes: int = 1
    node_rank: int = 0
    endpoint: str | None = None
    id: str = "recipe"


def torchrun_command(devices: int, rdzv: Rendezvous, spec: Path) -> list[str]:
    """The torchrun command line for this node."""
    if rdzv.nnodes > 1:
        if not rdzv.endpoint:
            raise RecipeError(f"train.launch.nnodes={rdzv.nnodes}: set train.launch.rdzv_endpoint=HOST:PORT (node 0)")
        if not 0 <= rdzv.node_rank < rdzv.nnodes:
            raise RecipeError(f"train.launch.node_rank={rdzv.node_rank}: must be in [0, {rdzv.nnodes})")
        where = [
            f"--nnodes={rdzv.nnodes}",
            f"--node_rank={rdzv.node_rank}",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint={rdzv.endpoint}",
            f"--rdzv_id={rdzv.id}",
        ]
    else:
        where = ["--standalone"]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *where,
        f"--nproc_per_node={devices}",
        "-m",
        "recipe.providers.local.ddp",
        str(spec),
    ]


def launch(
    *,
    model: str | None,
    device: str,
    devices: int,
    settings: Any,
    rows: list[dict[str, list[int]]],
    eval_rows: list[dict[str, list[int]]],
    work_dir: Path,
    out_dir: Path,
    rdzv: Rendezvous = Rendezvous(),
) -> dict[str, Any]:
    """Run the training on `devices` processes (on this node); the result figures (the model is
    saved in out_dir). On a node other than 0 the result is `{"node_rank": n}`: node 0 saves."""
    (work_dir / "rows.json").write_text(json.dumps({"train": rows, "eval": eval_rows}))
    spec = {
        "model": model,
        "device": device,
        "settings": settings.to_dict(),
        "rows": str(work_dir / "rows.json"),
        "work_dir": str(work_dir),
        "out_dir": str(out_dir),
    }
    (work_dir / SPEC).write_text(json.dumps(spec))
    (out_dir / RESULT).unlink(missing_ok=True)
    command = torchrun_command(devices, rdzv, work_dir / SPEC)
    # CPU ranks share the run's threads (recipe/threads.py: every core, or the `threads` key's count)
    env = child_env(OMP_NUM_THREADS=str(max(1, threads.current() // devices)))
    tail = bytearray()
    with subprocess.Popen(command, env=env, stderr=subprocess.PIPE, preexec_fn=die_with_parent) as proc:
        assert proc.stderr is not None
        while chunk := proc.stderr.read1(65536):  # passed through live (progress bars), tail kept
            sys.stderr.buffer.write(chunk)
            sys.stderr.flush()
            tail = (tail + chunk)[-6000:]
    if proc.returncode == 0 and rdzv.node_rank > 0:
        return {"node_rank": rdzv.node_rank}
    if proc.returncode != 0 or not (out_dir / RESULT).is_file():
        last = "\n".join(tail.decode(errors="replace").replace("\r", "\n").strip().splitlines()[-20:])
        raise RecipeError(f"torchrun training on {devices} {device} processes failed ({proc.returncode}):\n{last}")
    result = json.loads((out_dir / RESULT).read_text())
    (out_dir / RESULT).unlink()
    return result


def main(spec_path: str) -> None:
    import torch
    import torch.distributed as dist

    from recipe.providers.local import sharding, trainer

    spec = json.loads(Path(spec_path).read_text())
    local_rank = int(os.environ["LOCAL_RANK"])
    cuda = spec["device"] == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        rank = dist.get_rank()
        settings = trainer.TrainSettings.from_dict(spec["settings"])
        sharded = settings.strategy == "fsdp"
        # FSDP keeps fp32 master weights (bf16 compute through its mixed-precision policy); DDP on
        # CUDA trains in bf16 as loaded.
        dtype = torch.bfloat16 if cuda and not sharded else torch.float32
        model = trainer.load_weights(spec["model"], device, dtype, settings.attn_implementation)
        tokenizer = trainer.load_tokenizer(spec["model"])
        data = json.loads(Path(spec["rows"]).read_text())
        work_dir, out_dir = Path(spec["work_dir"]), Path(spec["out_dir"])
        result = trainer.train(
            model, tokenizer, data["train"], data["eval"], settings, work_dir, device, work_dir / "metrics.jsonl"
        )
        if sharded:  # gather the shards into an ordinary model on rank 0, to merge and save
            state = sharding.full_state_dict(result["model"])
            if rank == 0:
                plain = trainer.load_weights(spec["model"], torch.device("cpu"), torch.float32)
                plain = trainer.with_lora(plain, settings) if settings.lora else plain
                plain.load_state_dict(state)
                result["model"] = plain
        if rank == 0:
            figures = {k: v for k, v in result.items() if k != "model"}
            figures.update(trainer.save_outputs(result["model"], tokenizer, settings.lora, out_dir))
            (out_dir / RESULT).write_text(json.dumps(figures))
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
