"""Train on this machine (`train=local_lora|local_full`): the recipe's Step II without a provider.

LoRA or full fine-tuning of the embedded SmolLM2 (or any local Hugging Face model) with transformers
+ peft, through `recipe.providers.local.finetune`: the model's own chat template (or `train.template`
text for a base model without one), loss on assistant
tokens, packing without leakage (the attention implementation chosen for packed rows), CPU or CUDA,
resumable checkpoints; under torchrun data parallel (ddp) or sharded (FSDP2), on one node or many
(`train.launch`); activation checkpointing; a memory plan per GPU checked before anything is
loaded. Adapter and merged model in the artifact, described as a `TrainedModel` like Together's.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from recipe.artifacts import Mixture, Planned, PromptFormat, TrainedModel
from recipe.config import LocalTrainConfig
from recipe.data import templates
from recipe.stages import Plan, Stage, StageError, StagePending, missing_extra
from recipe.store import Artifact

EMBEDDED = "SmolLM2-135M-Instruct (embedded GGUF)"
# LocalTrainConfig keys passed to the trainer as they are (the others are converted in LocalTrain.run).
SAME_NAMES = (
    "train_on_inputs max_seq_length packing batch_size gradient_accumulation learning_rate warmup_ratio n_epochs "
    "max_steps weight_decay max_grad_norm seed checkpoint_every progress activation_checkpointing offload_optimizer "
    "template"
).split()


class LocalTrain(Stage):
    """Fine-tune a local model on the Mix artifact; the artifact holds the adapter and merged model."""

    name = "train"
    version = "2"
    schema = LocalTrainConfig

    def __init__(self, config: DictConfig, root: DictConfig) -> None:
        super().__init__(config, root)
        c = config
        for key in ("max_seq_length", "batch_size", "gradient_accumulation", "n_epochs", "checkpoint_every", "devices"):
            if c[key] < 1:
                raise StageError(f"train.{key}={c[key]}: must be at least 1")
        if c.template is not None:
            templates.check_template(c.template, "train.template")
        if c.offload_optimizer and c.strategy.value != "fsdp":
            raise StageError("train.offload_optimizer=true needs train.strategy=fsdp (FSDP2's CPU offload)")
        if c.launch.nnodes < 1:
            raise StageError(f"train.launch.nnodes={c.launch.nnodes}: must be at least 1")

    def upstream(self) -> tuple[str, ...]:
        return ("mix",)

    def plan(self, inputs: dict[str, Artifact | None], upstream: dict[str, Planned]) -> Plan:
        c = self.config
        kind = f"LoRA r={c.lora.r}" if c.training_type.value == "lora" else "full"
        world = c.devices * c.launch.nnodes
        missing = missing_extra("train=local_*", gguf=c.model is None)
        memory = None if missing else self.memory()
        details = (
            f"rows of {c.max_seq_length:,} tokens{' packed' if c.packing else ''}, lr {c.learning_rate:g}, "
            + (f"{c.template} text" if c.template else "the model's chat template")
            + (f", {c.strategy.value} on {world} processes through torchrun" if world > 1 else "")
            + (f"; {memory}" if memory else "")
        )
        model = c.model or "the embedded SmolLM2-135M-Instruct"
        size = Planned(None, provider="local")
        return Plan(
            f"{kind} of {model} on this machine, {c.n_epochs} epochs", details, usd=0.0, size=size, needs=missing
        )

    def _cuda(self) -> bool:
        import torch

        return self.config.device.value == "cuda" or (self.config.device.value == "auto" and torch.cuda.is_available())

    def memory(self) -> str | None:
        """The memory plan per GPU (recipe/providers/local/memory.py); a plan that cannot fit
        `train.gpu_memory_gb` (default: the detected GPU's) is refused, with what would fit."""
        import torch

        from recipe.providers.local import attention
        from recipe.providers.local import memory as M

        c = self.config
        if not self._cuda() and c.gpu_memory_gb is None:
            return None
        shape = M.shape_of(c.model)
        if shape is None:
            return f"no memory plan: the shape of {c.model!r} is unknown (a local directory with config.json has one)"
        lora = c.training_type.value == "lora"
        setup = M.Setup(
            lora_r=c.lora.r if lora else None,
            strategy=c.strategy.value,
            world=c.devices * c.launch.nnodes,
            seq=c.max_seq_length,
            batch=c.batch_size,
            activation_checkpointing=c.activation_checkpointing,
            offload=c.offload_optimizer,
            attn=attention.resolve(c.attn_implementation.value, "cuda"),
        )
        limit = c.gpu_memory_gb
        if limit is None and torch.cuda.is_available():
            limit = torch.cuda.get_device_properties(0).total_memory / M.GB
        gb = M.plan(shape, setup)
        text = M.describe(shape, setup, gb, limit)
        if limit is not None and gb["total"] > limit:
            fixes = M.suggestions(shape, setup, limit)
            raise StageError(
                f"train: {text} (train.gpu_memory_gb={limit:g}); "
                + (f"would fit: {'; '.join(fixes)}" if fixes else "nothing tried fits: a larger GPU or a smaller model")
            )
        return text

    def run(self, inputs: dict[str, Artifact], out_dir: Path) -> dict[str, Any]:
        from recipe.providers.local import attention, ddp, finetune, trainer

        c = self.config
        assert self.store is not None and self.fingerprint is not None
        if c.offload_optimizer and not self._cuda():
            raise StageError("train.offload_optimizer=true moves state off a GPU: it needs train.device=cuda")
        memory = self.memory()
        mixture = Mixture.load(inputs["mix"])
        settings = trainer.TrainSettings(
            lora=c.training_type.value == "lora",
            lora_r=c.lora.r,
            lora_alpha=c.lora.alpha,
            lora_dropout=c.lora.dropout,
            lora_target_modules=c.lora.target_modules,
            lr_scheduler=c.lr_scheduler.value,
            strategy=c.strategy.value,
            attn_implementation=attention.resolve(c.attn_implementation.value, "cuda" if self._cuda() else "cpu"),
            **{f.name: c[f.name] for f in fields(trainer.TrainSettings) if f.name in SAME_NAMES},
        )
        launch = c.launch
        rdzv = ddp.Rendezvous(launch.nnodes, launch.node_rank or 0, launch.rdzv_endpoint, launch.rdzv_id)
        # Checkpoints live outside the artifact's temporary directory, which a crash removes.
        result = finetune.fine_tune(
            model=c.model,
            settings=settings,
            conversations=mixture.conversations("train"),
            eval_conversations=mixture.conversations("eval"),
            device_request=c.device.value,
            devices=c.devices,
            work_dir=self.store.root / "work" / "train" / self.fingerprint,
            out_dir=out_dir,
            rdzv=rdzv,
        )
        if "node_rank" in result:  # node 0 writes the artifact; this node's share is done
            raise StagePending(f"train: node {result['node_rank']} of {launch.nnodes} finished; node 0 saves the model")
        trained = TrainedModel(
            provider="local",
            model=result["merged"],
            base_model=c.model,
            format=PromptFormat("text", c.template) if c.template else PromptFormat("chat_template"),
            weights=f"train:{self.fingerprint}",
            max_seq_length=c.max_seq_length,
            eval_loss=result["eval_loss"],
        )
        return {
            **trained.manifest(),
            "provider": "local",
            "base_model": c.model or EMBEDDED,
            "memory_plan": memory,
            **result,
        }
