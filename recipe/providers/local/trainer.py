"""A local fine-tuner on transformers + peft: LoRA or full, packed sequences, CPU or CUDA, resumable.

Data: chat messages, tokenised with the model's chat template (loss on assistant tokens only unless
`train_on_inputs`). Packing concatenates examples into rows of at most `max_seq_length` tokens with
position ids restarting at every example and no attention mask, which transformers turns into a
block-diagonal causal mask (each example sees only itself); the first token of every example is
never a target, so no example is asked to predict across a boundary.

Resume: every `checkpoint_every` steps the trainable weights, optimizer, scheduler and step go to
`work_dir/checkpoint-<step>` (written to a temporary name, then renamed; sharded with FSDP). A re-run with the same
work dir continues from the newest one with the same data order (the order is a function of the
seed and the epoch), not from step 0.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from tqdm import tqdm

from recipe.config import TrainArgs
from recipe.data import templates
from recipe.errors import RecipeError
from recipe.providers.local import sharding
from recipe.providers.local.server import embedded_gguf

Message = dict[str, str]


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]


def load_tokenizer(name: str | None) -> Any:
    """The tokenizer (with its chat template) of a local directory or hub id, or (None) the embedded GGUF's."""
    from transformers import AutoTokenizer

    if name is None:
        gguf = embedded_gguf()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    else:
        tokenizer = AutoTokenizer.from_pretrained(name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_weights(name: str | None, device: torch.device, dtype: torch.dtype, attn: str = "sdpa") -> Any:
    """The model of a local directory or hub id, or (None) the embedded SmolLM2 GGUF, dequantised;
    attention through `attn` (see recipe/providers/local/attention.py)."""
    from transformers import AutoModelForCausalLM

    if name is None:
        gguf = embedded_gguf()
        with _gguf_bar_off():
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=dtype, attn_implementation=attn
            )
        # The GGUF loader marks the model quantised; without this save_pretrained refuses.
        model.hf_quantizer.remove_quantization_config(model)
    else:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, attn_implementation=attn)
    return model.to(device)


@contextlib.contextmanager
def _gguf_bar_off() -> Any:
    """transformers draws its GGUF conversion bar with tqdm.auto directly (272 updates, 44 lines in a
    log), past its own switch: turned off with the other libraries' bars (recipe/summary.py quiet)."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") != "1":
        yield
        return
    drawn = gguf_utils.tqdm
    gguf_utils.tqdm = lambda *args, **kwargs: drawn(*args, **{**kwargs, "disable": True})
    try:
        yield
    finally:
        gguf_utils.tqdm = drawn


def load_model(name: str | None, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    """(model, tokenizer), see load_weights and load_tokenizer."""
    return load_weights(name, device, dtype), load_tokenizer(name)


def save_outputs(trained: Any, tokenizer: Any, lora: bool, out_dir: Path) -> dict[str, Any]:
    """The adapter (LoRA) and the merged model in safetensors with the tokenizer and chat template."""
    manifest: dict[str, Any] = {}
    if lora:
        trained.save_pretrained(out_dir / "adapter")
        manifest["adapter"] = "adapter"
        trained = trained.merge_and_unload()
    trained.save_pretrained(out_dir / "merged", safe_serialization=True)
    tokenizer.save_pretrained(out_dir / "merged")
    return manifest


def tokenize(tokenizer: Any, messages: list[Message], train_on_inputs: bool, template: str | None = None) -> Example:
    """Token ids of a conversation in the model's chat template (or, with `template`, rendered as
    text by recipe.data.templates between the tokenizer's BOS and EOS: the seed's `[INST]` text for
    a base model without a chat template), and labels: assistant turns only (the whole text with
    `train_on_inputs`), the first token never a target."""
    if template is None and not getattr(tokenizer, "chat_template", None):
        raise RecipeError("the model has no chat template: set train.template (e.g. llama2_inst, the seed's)")

    def prompt(upto: int) -> str:  # messages[:upto] and the generation prefix
        if template is None:
            return tokenizer.apply_chat_template(messages[:upto], tokenize=False, add_generation_prompt=True)
        return templates.render_prompt(messages[:upto], template)

    def rendered(upto: int) -> str:  # messages[:upto], the last one an answer
        if template is None:
            return tokenizer.apply_chat_template(messages[:upto], tokenize=False)
        return templates.render(messages[:upto], template)

    text = rendered(len(messages))
    spans = []  # character spans of assistant answers (with their end-of-turn tokens)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before, through = prompt(i), rendered(i + 1)
        if not text.startswith(through) or not through.startswith(before):
            raise RecipeError("the model's chat template does not render conversations prefix by prefix")
        spans.append((len(before), len(through)))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    if template is not None:  # a text example is a document: BOS first, EOS (a target: stop here) last
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        encoded["offset_mapping"] = ([(0, 0)] if bos is not None else []) + list(encoded["offset_mapping"])
        ids = ([bos] if bos is not None else []) + list(ids)
        if eos is not None:
            ids.append(eos)
            end = len(text)
            encoded["offset_mapping"].append((end - 1, end) if messages[-1]["role"] == "assistant" else (0, 0))
    if train_on_inputs:
        labels = list(ids)
    else:
        labels = [
            t if any(a <= start and end <= b for a, b in spans) and end > start else -100
            for t, (start, end) in zip(ids, encoded["offset_mapping"], strict=True)
        ]
    if labels:
        labels[0] = -100
    return Example(ids, labels)


# Attention implementations that read packed rows' boundaries from the position ids (varlen kernels,
# a block mask of skipped blocks). With sdpa or eager, transformers would build a dense
# block-diagonal mask (rows x seq^2), which sends SDPA to its math path: on two CPU cores a packed
# 1,024-token row of micro-batch 2 took 62 s a step and 9.8 GB; one example a row takes neither.
PACKS = ("flash_attention_2", "flex_attention")


def packs(packing: bool, attn_implementation: str) -> bool:
    """Whether rows hold several examples: asked for, and the attention takes their boundaries."""
    return packing and attn_implementation in PACKS


def pack(examples: list[Example], max_len: int, packing: bool) -> list[dict[str, list[int]]]:
    """Rows of at most `max_len` tokens: examples packed first-fit in order (or one per row), each
    with position ids from 0; longer examples are cut at `max_len`, and an example left with no
    target token (its answer cut off) is dropped: it would teach nothing, and a row of nothing but
    such examples has a loss of 0/0. See `packs` for when packing is asked of it."""
    rows: list[dict[str, list[int]]] = []
    current: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
    for ex in examples:
        ids, labels = ex.input_ids[:max_len], ex.labels[:max_len]
        if all(label == -100 for label in labels):
            continue
        if current["input_ids"] and (not packing or len(current["input_ids"]) + len(ids) > max_len):
            rows.append(current)
            current = {"input_ids": [], "labels": [], "position_ids": []}
        current["input_ids"] += ids
        current["labels"] += labels
        current["position_ids"] += list(range(len(ids)))
    if current["input_ids"]:
        rows.append(current)
    return rows


def collate(rows: list[dict[str, list[int]]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Pad to the longest row; padding is its own segment (positions from 0) and never a target."""
    width = max(len(r["input_ids"]) for r in rows)
    batch: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "position_ids": []}
    for r in rows:
        pad = width - len(r["input_ids"])
        batch["input_ids"].append(r["input_ids"] + [pad_id] * pad)
        batch["labels"].append(r["labels"] + [-100] * pad)
        batch["position_ids"].append(r["position_ids"] + list(range(pad)))
    return {k: torch.tensor(v, device=device) for k, v in batch.items()}


def target_positions(labels: torch.Tensor) -> torch.Tensor:
    """The positions whose logits predict a target (the next token's label is not -100) in any row
    of the batch: the only logits a loss needs."""
    return torch.nonzero((labels[:, 1:] != -100).any(dim=0)).flatten()


def token_losses(net: Any, batch: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Each target token's cross-entropy (a flat tensor, rows in order), computed from the logits of
    the target positions alone (`logits_to_keep`): the model's head and its vocabulary-sized logits
    skip the prompt, which is most of a long-context example. `dtype`: float64 for exact figures."""
    keep = target_positions(batch["labels"])
    out = net(input_ids=batch["input_ids"], position_ids=batch["position_ids"], logits_to_keep=keep, use_cache=False)
    targets = batch["labels"][:, keep + 1]
    chosen = targets != -100
    return torch.nn.functional.cross_entropy(out.logits[chosen].to(dtype), targets[chosen], reduction="none")


@dataclass
class TrainSettings:
    """What the trainer is handed: the shared training arguments (`train.args`, the same object a
    Together request is shaped from) and how this machine runs them."""

    args: TrainArgs
    micro_batch_size: int  # rows per device per forward pass
    gradient_accumulation: int  # micro-batches per optimizer step (from args.global_batch_size)
    max_steps: int | None
    checkpoint_every: int
    progress: bool
    strategy: str = "ddp"  # ddp | fsdp (FSDP2, recipe/providers/local/sharding.py)
    activation_checkpointing: bool = False
    offload_optimizer: bool = False
    attn_implementation: str = "sdpa"  # as resolved (recipe/providers/local/attention.py)
    template: str | None = None  # null: the model's chat template; else a recipe.data.templates text template

    @property
    def lora(self) -> bool:
        return self.args.training_type.value == "lora"

    @property
    def train_on_inputs(self) -> bool:
        return str(self.args.train_on_inputs).lower() == "true"  # auto: the answers only, as most trainers do

    @property
    def max_seq_length(self) -> int:
        if self.args.max_seq_length is None:
            raise RecipeError("train.args.max_seq_length: local training needs a row length (e.g. 512)")
        return self.args.max_seq_length

    def to_dict(self) -> dict[str, Any]:
        """A JSON form (for torchrun workers); `from_dict` reads it back."""
        plain = {k: v for k, v in vars(self).items() if k != "args"}
        args = OmegaConf.to_container(OmegaConf.structured(self.args), enum_to_str=True)
        return {**plain, "args": args}

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> TrainSettings:
        args = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainArgs), value["args"]))
        return cls(**{**value, "args": args})


def _schedule(args: TrainArgs, warmup: int, total: int) -> Callable[[int], float]:
    """The learning-rate factor per step: linear warm-up, then linear or cosine decay to min_lr_ratio
    (cosine over num_cycles cycles: 0.5 is one half cosine)."""
    kind, floor, cycles = args.lr_scheduler.type.value, args.lr_scheduler.min_lr_ratio, args.lr_scheduler.num_cycles

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(warmup, 1)
        progress = (step - warmup) / max(total - warmup, 1)
        if kind == "cosine":
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * 2 * cycles * progress))
        return floor + (1 - floor) * max(0.0, 1 - progress)

    return factor


def _order(n: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def train(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, list[int]]],
    eval_rows: list[dict[str, list[int]]],
    s: TrainSettings,
    work_dir: Path,
    device: torch.device,
    metrics_path: Path,
) -> dict[str, Any]:
    """Train (resuming from work_dir if a checkpoint is there); return the run's figures.

    Under torchrun (a process group initialised, see recipe/providers/local/ddp.py) this is data
    parallel: every rank draws the same global order, takes its share of each optimizer step's
    rows, and the gradients are averaged: by DistributedDataParallel (`ddp`; rank 0 alone writes
    checkpoints), or by FSDP2's reduce-scatter over sharded weights (`fsdp`, sharding.py; every
    rank writes its shards of each checkpoint). Rank 0 writes the metrics."""
    distributed = dist.is_available() and dist.is_initialized()
    world = dist.get_world_size() if distributed else 1
    rank = dist.get_rank() if distributed else 0
    sharded = s.strategy == "fsdp"
    if sharded and not distributed:
        raise RecipeError("train.strategy=fsdp runs under torchrun (recipe/providers/local/ddp.py launches it)")
    torch.manual_seed(s.args.seed or 0)
    if s.activation_checkpointing:  # per decoder layer, recomputed in the backward pass
        enable_activation_checkpointing(model)
    if s.lora:
        model = with_lora(model, s)
    net = model
    if sharded:
        sharding.shard(model, device.type, s.offload_optimizer)
    elif world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=s.args.learning_rate, weight_decay=s.args.weight_decay)
    per_step = s.micro_batch_size * s.gradient_accumulation * world  # rows per optimizer step, all ranks
    steps_per_epoch = math.ceil(len(rows) / per_step)
    total = min(s.max_steps or steps_per_epoch * s.args.n_epochs, steps_per_epoch * s.args.n_epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(s.args, int(s.args.warmup_ratio * total), total))
    step, resumed_from = 0, None
    checkpoint = sharding.latest(work_dir) if sharded else _latest_checkpoint(work_dir)
    if checkpoint is not None and sharded:
        step = resumed_from = sharding.load(model, optimizer, scheduler, checkpoint)
    elif checkpoint is not None:
        state = torch.load(checkpoint / "state.pt", map_location=device, weights_only=False)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        model.load_state_dict({k: v for k, v in state["model"].items() if k in trainable}, strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, resumed_from = state["step"], state["step"]
    model.train()
    started = time.monotonic()
    tokens = targets = 0
    losses: list[float] = []
    bar = tqdm(total=total, initial=step, desc="train", unit=" step", disable=not s.progress or rank != 0)
    with open(metrics_path, "a") if rank == 0 else contextlib.nullcontext() as metrics:
        while step < total:
            epoch, offset = divmod(step * per_step, len(rows) if len(rows) else 1)
            order = _order(len(rows), s.args.seed or 0, epoch)
            chosen = [order[(offset + i) % len(order)] for i in range(per_step)][rank::world]  # this rank's share
            optimizer.zero_grad(set_to_none=True)
            step_started = time.monotonic()
            step_loss, step_tokens, step_targets = 0.0, 0, 0
            for micro in range(s.gradient_accumulation):
                micro_rows = [rows[i] for i in chosen[micro * s.micro_batch_size : (micro + 1) * s.micro_batch_size]]
                batch = collate(micro_rows, tokenizer.pad_token_id, device)
                last = micro == s.gradient_accumulation - 1
                # Gradients are averaged across ranks once per optimizer step, at the last micro-batch.
                if sharded:
                    model.set_requires_gradient_sync(last)
                with net.no_sync() if world > 1 and not sharded and not last else contextlib.nullcontext():
                    loss = token_losses(net, batch).mean()  # the mean over the micro-batch's target tokens
                    (loss / s.gradient_accumulation).backward()
                step_loss += loss.item() / s.gradient_accumulation
                step_tokens += sum(len(r["input_ids"]) for r in micro_rows)  # real tokens, padding excluded
                step_targets += int((batch["labels"] != -100).sum())
            if world > 1:  # the step's figures over all ranks: mean loss, summed tokens
                figures = torch.tensor([step_loss, step_tokens, step_targets], dtype=torch.float64, device=device)
                dist.all_reduce(figures)
                step_loss, step_tokens, step_targets = figures[0].item() / world, int(figures[1]), int(figures[2])
            if s.args.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, s.args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            tokens += step_tokens
            targets += step_targets
            losses.append(step_loss)
            elapsed = time.monotonic() - started
            record = {
                "step": step,
                "loss": round(step_loss, 5),
                "lr": scheduler.get_last_lr()[0],
                "tokens": step_tokens,
                "targets": step_targets,
                "tokens_per_s": round(tokens / max(elapsed, 1e-9), 1),
                "step_s": round(time.monotonic() - step_started, 4),
            }
            if metrics is not None:
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
            bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=record["tokens_per_s"], refresh=False)
            bar.update()
            if step % s.checkpoint_every == 0 and step < total:
                if sharded:  # every rank writes its shards
                    sharding.save(model, optimizer, scheduler, step, work_dir)
                elif rank == 0:
                    _save_checkpoint(model, optimizer, scheduler, step, work_dir)
                if world > 1:
                    dist.barrier()  # no rank runs ahead of a checkpoint it might resume from
    bar.close()
    eval_loss = evaluate(model, eval_rows, tokenizer, device) if eval_rows else None
    return {
        "model": model,
        "steps": step,
        "total_steps": total,
        "resumed_from": resumed_from,
        "losses": losses,
        "trained_tokens": tokens,
        "target_tokens": targets,
        "eval_loss": eval_loss,
        "seconds": round(time.monotonic() - started, 2),
        "world_size": world,
    }


def enable_activation_checkpointing(model: Any) -> None:
    """Recompute every decoder layer in the backward pass (non-reentrant torch.utils.checkpoint),
    under the name the installed transformers gives it."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def with_lora(model: Any, s: TrainSettings) -> Any:
    """The model with LoRA adapters on `s.args.lora.target_modules` (peft)."""
    from peft import LoraConfig, get_peft_model

    lora = s.args.lora
    target = "all-linear" if lora.target_modules == "all-linear" else lora.target_modules.split(",")
    config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=target, task_type="CAUSAL_LM"
    )
    return get_peft_model(model, config)


@torch.no_grad()
def heldout_rows(
    tokenizer: Any, conversations: list[list[Message]], template: str | None, max_seq_length: int, packing: bool
) -> list[dict[str, list[int]]]:
    """The held-out split as training's eval loss reads it: in the format the model was trained in
    (`template`: a recipe text template, None: the model's chat template), the answers' tokens the
    only targets (whatever train_on_inputs was: losses stay comparable across it), in rows of the
    trainer's length, packed as training packs (`packs`)."""
    return pack([tokenize(tokenizer, m, False, template) for m in conversations], max_seq_length, packing)


def heldout_loss(
    model_dir: str, conversations: list[list[Message]], template: str | None, max_seq_length: int
) -> tuple[float, list[float | None]]:
    """The model in `model_dir` on the held-out conversations (CPU, float32 weights): the mean loss
    per answer token over all of them (what training's eval loss computes on packed rows), and each
    conversation's own (None when cutting it at `max_seq_length` leaves no answer token: counted
    as dropped by Test), from one pass of one conversation at a time."""
    model, tokenizer = load_model(model_dir, torch.device("cpu"), torch.float32)
    sums = example_sums(model, tokenizer, conversations, template, max_seq_length, torch.device("cpu"))
    counted = [(total, n) for total, n in sums if n]
    overall = sum(t for t, _ in counted) / sum(n for _, n in counted) if counted else float("nan")
    return round(overall, 6), [round(total / n, 6) if n else None for total, n in sums]


@torch.no_grad()
def example_sums(
    model: Any,
    tokenizer: Any,
    conversations: list[list[Message]],
    template: str | None,
    max_seq_length: int,
    device: torch.device,
) -> list[tuple[float, int]]:
    """Each conversation's summed cross-entropy over its answer tokens and their count (0: none
    left within `max_seq_length`), one row each, unpadded (a conversation's loss does not depend on
    its neighbours in a packed row); cross-entropy in float64 from the model's logits."""
    model.eval()
    out: list[tuple[float, int]] = []
    for messages in conversations:
        rows = pack([tokenize(tokenizer, messages, False, template)], max_seq_length, False)
        if not rows:
            out.append((0.0, 0))
            continue
        losses = token_losses(model, collate(rows, tokenizer.pad_token_id, device), torch.float64)
        out.append((float(losses.sum()), len(losses)))
    model.train()
    return out


@torch.no_grad()
def evaluate(model: Any, rows: list[dict[str, list[int]]], tokenizer: Any, device: torch.device) -> float:
    """The mean loss per target token over `rows` (no gradients are kept)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(rows), 2):
        batch = collate(rows[i : i + 2], tokenizer.pad_token_id, device)
        if int((batch["labels"][:, 1:] != -100).sum()):
            losses = token_losses(model, batch, torch.float64)
            total += float(losses.sum())
            count += len(losses)
    model.train()
    return round(total / max(count, 1), 5)


def _latest_checkpoint(work_dir: Path) -> Path | None:
    found = sorted(work_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])) if work_dir.exists() else []
    return found[-1] if found else None


def _save_checkpoint(model: Any, optimizer: Any, scheduler: Any, step: int, work_dir: Path) -> None:
    work_dir.mkdir(parents=True, exist_ok=True)
    tmp = work_dir / f".tmp-checkpoint-{step}-{os.getpid()}"
    tmp.mkdir()
    trainable = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
    torch.save(
        {"model": trainable, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step},
        tmp / "state.pt",
    )
    os.rename(tmp, work_dir / f"checkpoint-{step}")
    for old in work_dir.glob("checkpoint-*"):
        if int(old.name.split("-")[1]) < step:
            shutil.rmtree(old, ignore_errors=True)


def embedded_model(store_root: Path) -> tuple[Path, str]:
    """(directory, weights identity) of the embedded GGUF as a Hugging Face model directory in the
    store (`models/`), exported the first time. Training and serving load it from there: safetensors
    load in under a second, where dequantising the GGUF takes ~15 s on two cores, every time."""
    gguf = embedded_gguf()
    size = gguf.stat().st_size
    return export_embedded(store_root / "models" / f"{gguf.stem}-{size}"), f"{gguf.name}:{size}"


def export_embedded(target: Path) -> Path:
    """The embedded GGUF as a Hugging Face model directory (dequantised fp32 safetensors, tokenizer and
    chat template), written once to `target` through a temporary directory and reused after."""
    if (target / "config.json").is_file():
        return target
    model, tokenizer = load_model(None, torch.device("cpu"), torch.float32)
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    try:
        os.replace(partial, target)
    except OSError:  # a twin process finished first
        shutil.rmtree(partial, ignore_errors=True)
    return target
