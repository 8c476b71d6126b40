"""Train on this machine (`train=local_lora|local_full`): the recipe's Step II without a provider.

LoRA or full fine-tuning of the embedded SmolLM2 (or any local Hugging Face model) with transformers
+ peft, through `recipe.providers.local.finetune`: the model's own chat template (or `train.template`
text for a base model without one), loss on assistant
tokens, packing without leakage (the attention implementation chosen for packed rows), CPU or CUDA,
resumable checkpoints; under torchrun data parallel (ddp) or sharded (FSDP2), on one node or many
(`train.launch`); activation checkpointing; a memory estimate per GPU checked before anything is
loaded. Adapter and merged model in the artifact, described as a `TrainedModel` like Together's.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from recipe.artifacts import Mixture, Planned, PromptFormat, TrainedModel, content_id
from recipe.config import LocalTrainConfig, TrainArgs
from recipe.data import templates
from recipe.stages import Output, Plan, Stage, StageError, StagePending, Workspace, missing_extra
from recipe.store import Artifact

EMBEDDED = "SmolLM2-135M-Instruct (embedded GGUF)"


class LocalTrain(Stage):
    """Fine-tune a local model on the Mix artifact; the artifact holds the adapter and merged model."""

    name = "train"
    version = "2"
    schema = LocalTrainConfig

    def __init__(self, config: DictConfig, root: DictConfig) -> None:
        super().__init__(config, root)
        c = config
        TrainArgs.check(c.args)
        if c.args.max_seq_length is None:
            raise StageError("train.args.max_seq_length: local training needs a row length (e.g. 512)")
        for key in ("micro_batch_size", "checkpoint_every", "devices"):
            if c[key] < 1:
                raise StageError(f"train.{key}={c[key]}: must be at least 1")
        self.accumulation = self._accumulation()
        if c.template is not None:
            templates.check_template(c.template, "train.template")
        if c.offload_optimizer and c.strategy.value != "fsdp":
            raise StageError("train.offload_optimizer=true needs train.strategy=fsdp (FSDP2's CPU offload)")
        if c.launch.nnodes < 1:
            raise StageError(f"train.launch.nnodes={c.launch.nnodes}: must be at least 1")

    def upstream(self) -> tuple[str, ...]:
        return ("mix",)

    def reads(self, name: str, artifact: Artifact) -> str:
        return content_id(name, artifact, contamination=False)  # the examples, not what the check found

    def _accumulation(self) -> int:
        """Micro-batches accumulated per optimizer step: args.global_batch_size over the rows every
        forward pass takes on every device of every node."""
        c = self.config
        per_pass = c.micro_batch_size * c.devices * c.launch.nnodes
        wanted = c.args.global_batch_size
        if wanted is None:
            return 1
        if wanted % per_pass:
            raise StageError(
                f"train.args.global_batch_size={wanted}: not a multiple of train.micro_batch_size x devices x nodes "
                f"= {per_pass}; choose a global batch that is, or another micro_batch_size"
            )
        return wanted // per_pass

    def plan(self, inputs: dict[str, Artifact | None], upstream: dict[str, Planned]) -> Plan:
        c = self.config
        args = c.args
        kind = f"LoRA r={args.lora.r}" if args.training_type.value == "lora" else "full"
        world = c.devices * c.launch.nnodes
        lacks = missing_extra("train=local_*", gguf=c.model is None)
        memory_estimate = None if lacks else self.memory_estimate()
        missing = lacks or self._no_device()
        details = (
            f"rows of {args.max_seq_length:,} tokens{' packed' if args.packing else ''}, lr {args.learning_rate:g}, "
            f"{c.micro_batch_size} rows a pass x {self.accumulation} accumulated per step, "
            + (f"{c.template} text" if c.template else "the model's chat template")
            + (f", {c.strategy.value} on {world} processes through torchrun" if world > 1 else "")
            + (f"; {memory_estimate}" if memory_estimate else "")
        )
        model = c.model or "the embedded SmolLM2-135M-Instruct"
        size = Planned(None, provider="local")
        return Plan(
            f"{kind} of {model} on this machine, {args.n_epochs} epochs", details, usd=0.0, size=size, needs=missing
        )

    def _no_device(self) -> str | None:
        """What a run on this machine lacks of the devices asked for (found in the pre-flight, not
        after Distill and Mix); None on the nodes of a multi-node launch, which are elsewhere."""
        c = self.config
        if c.device.value != "cuda" or c.launch.nnodes > 1:
            return None
        import torch

        if not torch.cuda.is_available():
            return (
                "train.device=cuda but this machine has no CUDA device: train.device=auto (or cpu), or run it on a GPU"
            )
        if c.devices > torch.cuda.device_count():
            return f"train.devices={c.devices}: only {torch.cuda.device_count()} CUDA devices are visible"
        return None

    def _cuda(self) -> bool:
        import torch

        return self.config.device.value == "cuda" or (self.config.device.value == "auto" and torch.cuda.is_available())

    def memory_estimate(self) -> str | None:
        """The memory estimate per GPU (recipe/providers/local/memory.py); one that cannot fit
        `train.gpu_memory_gb` (default: the detected GPU's) is refused, with what would fit."""
        import torch

        from recipe.providers.local import attention, memory

        c = self.config
        if not self._cuda() and c.gpu_memory_gb is None:
            return None
        shape = memory.shape_of(c.model)
        if shape is None:
            return (
                f"no memory estimate: the shape of {c.model!r} is unknown (a local directory with config.json has one)"
            )
        lora = c.args.training_type.value == "lora"
        setup = memory.Setup(
            lora_r=c.args.lora.r if lora else None,
            strategy=c.strategy.value,
            world=c.devices * c.launch.nnodes,
            seq=c.args.max_seq_length,
            batch=c.micro_batch_size,
            activation_checkpointing=c.activation_checkpointing,
            offload=c.offload_optimizer,
            attn=attention.resolve(c.attn_implementation.value, "cuda"),
        )
        limit = c.gpu_memory_gb
        if limit is None and torch.cuda.is_available():
            limit = torch.cuda.get_device_properties(0).total_memory / memory.GB
        gb = memory.estimate(shape, setup)
        text = memory.describe(shape, setup, gb, limit)
        if limit is not None and gb["total"] > limit:
            fixes = memory.suggestions(shape, setup, limit)
            raise StageError(
                f"train: {text} (train.gpu_memory_gb={limit:g}); "
                + (f"would fit: {'; '.join(fixes)}" if fixes else "nothing tried fits: a larger GPU or a smaller model")
            )
        return text

    def run(self, inputs: dict[str, Artifact], workspace: Workspace) -> Output:
        from recipe.providers.local import attention, ddp, finetune, trainer

        c = self.config
        if c.offload_optimizer and not self._cuda():
            raise StageError("train.offload_optimizer=true moves state off a GPU: it needs train.device=cuda")
        memory_estimate = self.memory_estimate()
        mixture = Mixture.load(inputs["mix"])
        settings = trainer.TrainSettings(
            args=OmegaConf.to_object(c.args),  # the shared training arguments, as they are
            micro_batch_size=c.micro_batch_size,
            gradient_accumulation=self.accumulation,
            max_steps=c.max_steps,
            checkpoint_every=c.checkpoint_every,
            progress=c.progress,
            strategy=c.strategy.value,
            activation_checkpointing=c.activation_checkpointing,
            offload_optimizer=c.offload_optimizer,
            attn_implementation=attention.resolve(c.attn_implementation.value, "cuda" if self._cuda() else "cpu"),
            template=c.template,
        )
        launch = c.launch
        rdzv = ddp.Rendezvous(launch.nnodes, launch.node_rank or 0, launch.rdzv_endpoint, launch.rdzv_id)
        # Checkpoints live outside the artifact's temporary directory, which a crash removes.
        # The embedded model from its export in the store (the same weights, loaded in a second).
        model = c.model if c.model is not None else str(trainer.embedded_model(workspace.store.root)[0])
        result = finetune.fine_tune(
            model=model,
            settings=settings,
            conversations=mixture.conversations("train"),
            eval_conversations=mixture.conversations("eval"),
            device_request=c.device.value,
            devices=c.devices,
            work_dir=workspace.store.root / "work" / "train" / workspace.fingerprint,
            out_dir=workspace.out_dir,
            rdzv=rdzv,
        )
        if "node_rank" in result:  # node 0 writes the artifact; this node's share is done
            raise StagePending(f"train: node {result['node_rank']} of {launch.nnodes} finished; node 0 saves the model")
        trained = TrainedModel(
            provider="local",
            model=result["merged"],
            base_model=c.model,
            format=PromptFormat("text", c.template) if c.template else PromptFormat("chat_template"),
            weights=f"train:{workspace.fingerprint}",
            max_seq_length=c.args.max_seq_length,
            eval_loss=result["eval_loss"],
        )
        return Output(
            trained,
            {"provider": "local", "base_model": c.model or EMBEDDED, "memory_estimate": memory_estimate, **result},
        )
