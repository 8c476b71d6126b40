"""Train locally: the recipe's Step II without a hosted service, and the offline recipe's default.

What it supports:
- LoRA (`train=local_lora`) or full fine-tuning (`train=local_full`) of the embedded SmolLM2 GGUF
  (dequantised on load), or any local Hugging Face model directory or hub id;
- the Mix artifact as data, tokenised with the model's chat template, loss on assistant tokens
  only unless `train_on_inputs`; packing into `max_seq_length` rows without attention or position
  leakage between examples; a held-out eval loss from the mixture's eval split;
- CPU (fp32) and CUDA (bf16) from the same config; gradient accumulation; linear or cosine
  schedule with warmup; seeds; a tqdm bar with loss and tokens/s; `metrics.jsonl`;
- resume: checkpoints every `checkpoint_every` steps outside the artifact; kill -9, re-run ->
  continues from the last checkpoint with the same data order;
- outputs: the LoRA adapter and a merged model in safetensors with tokenizer and chat template,
  ready to serve; the manifest records steps, tokens, first and final loss, eval loss, seconds.
"""

from __future__ import annotations

import json
import shutil
import statistics
from dataclasses import fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from recipe.data import templates
from recipe.errors import RecipeError
from recipe.stages import Stage, StageError
from recipe.store import Artifact

Message = dict[str, str]


class LocalTrain(Stage):
    """Fine-tune a local model on the Mix artifact; the artifact holds the adapter and merged model."""

    name = "train"
    version = "1"
    execution_keys = frozenset({"device", "checkpoint_every", "progress"})

    def __init__(self, config: DictConfig, root: DictConfig) -> None:
        super().__init__(config, root)
        c = config
        for key in ("max_seq_length", "batch_size", "gradient_accumulation", "n_epochs", "checkpoint_every", "devices"):
            if c[key] < 1:
                raise StageError(f"train.{key}={c[key]}: must be at least 1")
        if root.get("mixture") is None:
            raise StageError("train needs the mix stage's config (mixture=...)")

    def upstream(self) -> tuple[str, ...]:
        return ("mix",)

    def plan(self, inputs: dict[str, Artifact | None]) -> str:
        c = self.config
        kind = f"LoRA r={c.lora.r}" if c.training_type.value == "lora" else "full"
        return (
            f"train {c.model or 'the embedded SmolLM2-135M-Instruct'} locally ({kind}, {c.n_epochs} epochs, "
            f"rows of {c.max_seq_length} tokens{' packed' if c.packing else ''}, lr {c.learning_rate:g}"
            + (f", data parallel on {c.devices} processes through torchrun)" if c.devices > 1 else ")")
        )

    def run(self, inputs: dict[str, Artifact], out_dir: Path) -> dict[str, Any]:
        import torch

        from recipe.providers.local import ddp, trainer

        c = self.config
        assert self.store is not None and self.fingerprint is not None
        mix = inputs["mix"]
        train_messages = read_conversations(mix.path / mix.manifest["file"], mix.manifest)
        eval_info = mix.manifest.get("eval")
        eval_messages = read_conversations(mix.path / eval_info["file"], mix.manifest) if eval_info else []
        if c.device.value == "cuda" and not torch.cuda.is_available():
            raise StageError("train.device=cuda but no CUDA device is available")
        device = torch.device("cuda" if c.device.value != "cpu" and torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        if device.type == "cuda" and c.devices > torch.cuda.device_count():
            raise StageError(f"train.devices={c.devices}: only {torch.cuda.device_count()} CUDA devices are visible")
        tokenizer = trainer.load_tokenizer(c.model)
        to_rows = lambda messages: trainer.pack(  # noqa: E731
            [trainer.tokenize(tokenizer, m, c.train_on_inputs) for m in messages], c.max_seq_length, c.packing
        )
        rows, eval_rows = to_rows(train_messages), to_rows(eval_messages)
        # Keys with the same name in the config and the trainer's settings are copied as they are.
        same = {
            f.name: c[f.name]
            for f in fields(trainer.TrainSettings)
            if f.name in c and f.name not in ("lora", "lr_scheduler")
        }
        settings = trainer.TrainSettings(
            **same,
            lora=c.training_type.value == "lora",
            lora_r=c.lora.r,
            lora_alpha=c.lora.alpha,
            lora_dropout=c.lora.dropout,
            lora_target_modules=c.lora.target_modules,
            lr_scheduler=c.lr_scheduler.value,
        )
        # Checkpoints live outside the artifact's temporary directory, which a crash removes.
        work_dir = self.store.root / "work" / "train" / self.fingerprint
        work_dir.mkdir(parents=True, exist_ok=True)
        if c.devices > 1:  # data parallel under torchrun; rank 0 saves the outputs
            result = ddp.launch(
                model=c.model,
                device=device.type,
                devices=c.devices,
                settings=settings,
                rows=rows,
                eval_rows=eval_rows,
                work_dir=work_dir,
                out_dir=out_dir,
            )
            manifest: dict[str, Any] = {k: result[k] for k in ("adapter",) if k in result}
        else:
            model = trainer.load_weights(c.model, device, dtype)
            result = trainer.train(
                model, tokenizer, rows, eval_rows, settings, work_dir, device, work_dir / "metrics.jsonl"
            )
            manifest = trainer.save_outputs(result["model"], tokenizer, settings.lora, out_dir)
        shutil.copy(work_dir / "metrics.jsonl", out_dir / "metrics.jsonl")
        shutil.rmtree(work_dir, ignore_errors=True)  # the artifact is complete: checkpoints are done with
        losses = result["losses"]
        head = losses[: max(1, min(3, len(losses)))]
        tail = losses[-max(1, min(3, len(losses))) :]
        manifest.update(
            provider="local",
            base_model=c.model or "SmolLM2-135M-Instruct (embedded GGUF)",
            merged="merged",
            metrics="metrics.jsonl",
            device=device.type,
            dtype=str(dtype).removeprefix("torch."),
            rows=len(rows),
            examples=len(train_messages),
            steps=result["steps"],
            resumed_from=result["resumed_from"],
            trained_tokens=result["trained_tokens"],
            target_tokens=result["target_tokens"],
            first_loss=round(statistics.fmean(head), 5) if losses else None,
            final_loss=round(statistics.fmean(tail), 5) if losses else None,
            eval_loss=result["eval_loss"],
            seconds=result["seconds"],
            world_size=result["world_size"],
        )
        return manifest


def read_conversations(path: Path, mix_manifest: dict[str, Any]) -> list[list[Message]]:
    """A mixture file as chat messages, whatever its format (text is parsed with its template)."""
    template = mix_manifest.get("template", "chatml")
    conversations = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            record = json.loads(line)
            if "messages" in record:
                conversations.append(record["messages"])
            elif "prompt" in record:
                conversations.append(
                    [
                        {"role": "user", "content": record["prompt"]},
                        {"role": "assistant", "content": record["completion"]},
                    ]
                )
            else:
                try:
                    conversations.append(templates.parse(record["text"], template))
                except ValueError as e:
                    raise RecipeError(
                        f"{path}:{lineno}: cannot recover the turns of a text record ({e}); mix with "
                        "mixture.format=messages, or a chatml or llama2_inst template"
                    ) from None
    return conversations
