"""The local fine-tuner behind one call: conversations in, adapter and merged model out.

One process (CPU or one GPU), or `devices` processes per node through torchrun: data parallel
(ddp) or sharded (fsdp, always under torchrun, one process included). The model's own chat template
renders the conversations (see trainer.tokenize); checkpoints go to `work_dir`, which a re-run with
the same work dir resumes from.
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path
from typing import Any

from recipe.errors import RecipeError

Message = dict[str, str]


def fine_tune(
    *,
    model: str | None,
    settings: Any,
    conversations: list[list[Message]],
    eval_conversations: list[list[Message]],
    device_request: str,
    devices: int,
    work_dir: Path,
    out_dir: Path,
    rdzv: Any = None,
) -> dict[str, Any]:
    """Train and save into `out_dir` (`merged/`, and `adapter/` for LoRA, `metrics.jsonl`); return
    the figures for the manifest (steps, tokens, first and final loss, eval loss, device, seconds)."""
    import torch

    from recipe.providers.local import ddp, trainer

    if device_request == "cuda" and not torch.cuda.is_available():
        raise RecipeError("train.device=cuda but no CUDA device is available")
    device = torch.device("cuda" if device_request != "cpu" and torch.cuda.is_available() else "cpu")
    sharded = settings.strategy == "fsdp"
    dtype = torch.bfloat16 if device.type == "cuda" and not sharded else torch.float32
    if device.type == "cuda" and devices > torch.cuda.device_count():
        raise RecipeError(f"train.devices={devices}: only {torch.cuda.device_count()} CUDA devices are visible")
    tokenizer = trainer.load_tokenizer(model)
    s = settings

    examples = [trainer.tokenize(tokenizer, m, s.train_on_inputs, s.template) for m in conversations]
    packing = trainer.packs(s.args.packing, s.attn_implementation)
    rows = trainer.pack(examples, s.max_seq_length, packing)
    eval_rows = trainer.heldout_rows(tokenizer, eval_conversations, s.template, s.max_seq_length, packing)
    work_dir.mkdir(parents=True, exist_ok=True)
    rdzv = rdzv or ddp.Rendezvous()
    if devices > 1 or sharded or rdzv.nnodes > 1:  # under torchrun; global rank 0 saves the outputs
        result = ddp.launch(
            model=model,
            device=device.type,
            devices=devices,
            settings=settings,
            rows=rows,
            eval_rows=eval_rows,
            work_dir=work_dir,
            out_dir=out_dir,
            rdzv=rdzv,
        )
        if "node_rank" in result:
            return result
        manifest: dict[str, Any] = {k: result[k] for k in ("adapter",) if k in result}
    else:
        weights = trainer.load_weights(model, device, dtype, settings.attn_implementation)
        result = trainer.train(
            weights, tokenizer, rows, eval_rows, settings, work_dir, device, work_dir / "metrics.jsonl"
        )
        manifest = trainer.save_outputs(result["model"], tokenizer, settings.lora, out_dir)
    history = whole_run(work_dir / "metrics.jsonl", result["steps"])
    (out_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    shutil.rmtree(work_dir, ignore_errors=True)  # the artifact is complete: checkpoints are done with
    losses = [r["loss"] for r in history]
    head = losses[: max(1, min(3, len(losses)))]
    tail = losses[-max(1, min(3, len(losses))) :]
    manifest.update(
        merged="merged",
        metrics="metrics.jsonl",
        device=device.type,
        dtype=str(dtype).removeprefix("torch."),
        rows=len(rows),
        packed=packing,
        examples=len(conversations),
        steps=result["steps"],
        resumed_from=result["resumed_from"],
        # The whole run's figures, over every attempt (a resumed run continued the steps before it).
        trained_tokens=sum(r["tokens"] for r in history),
        target_tokens=sum(r.get("targets", 0) for r in history),
        first_loss=round(statistics.fmean(head), 5) if losses else None,
        final_loss=round(statistics.fmean(tail), 5) if losses else None,
        eval_loss=result["eval_loss"],
        seconds=round(sum(r.get("step_s", 0.0) for r in history[: result["resumed_from"] or 0]) + result["seconds"], 2),
        attempt_seconds=result["seconds"],
        world_size=result["world_size"],
        strategy=settings.strategy,
        attn_implementation=settings.attn_implementation,
        activation_checkpointing=settings.activation_checkpointing,
        offload_optimizer=settings.offload_optimizer,
    )
    return manifest


def whole_run(metrics_path: Path, steps: int) -> list[dict[str, Any]]:
    """The training run's step records 1..steps over every attempt: metrics.jsonl is appended to by
    each attempt, and a step that an attempt killed after its last checkpoint had logged is logged
    again by the attempt that resumed from that checkpoint, which counts."""
    kept: dict[int, dict[str, Any]] = {}
    for line in metrics_path.read_text().splitlines() if metrics_path.is_file() else []:
        if line.strip():
            record = json.loads(line)
            kept[record["step"]] = record
    history = [kept[step] for step in range(1, steps + 1) if step in kept]
    if len(history) != steps:
        raise RecipeError(f"{metrics_path}: {steps} steps trained but {len(history)} logged; the run's log is damaged")
    return history
