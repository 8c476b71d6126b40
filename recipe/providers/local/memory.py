"""The memory estimate of a local training run, per GPU, before anything is loaded.

Notation: P parameters (T of them trainable: all for a full fine-tune, the LoRA matrices
otherwise), N = devices x nodes, L layers, h hidden size, h_kv = kv heads x head size, i the MLP's
intermediate size, V the vocabulary, s = max_seq_length, b = batch_size (rows per micro-batch),
d the compute dtype's bytes (2 for bf16 on CUDA, 4 for fp32 on CPU). GB = 2^30 bytes.

States (bytes):
- ddp, full: the weights, gradients and AdamW's two moments in the load dtype: 4 d P, plus DDP's
  gradient buckets (another d P) -> 5 d P on every device (bf16: 10 bytes per parameter).
- ddp, LoRA: frozen weights d (P - T), trainable in fp32: 16 T (weight, gradient, two moments).
- fsdp, full: fp32 master weights, fp32 gradients, two fp32 moments, sharded: 16 P / N; plus the
  unsharded bf16 copies FSDP2 gathers for the layer running and the one prefetched (2 x d x P_layer),
  one layer's unsharded fp32 gradients before the reduce-scatter (4 P_layer), and the root unit
  (embeddings, final norm, LM head: d x 2 V h) gathered for the whole step.
- fsdp, LoRA: frozen weights 4 (P - T) / N sharded, trainable 16 T / N, the same gather buffers.
- offload_optimizer (fsdp): weights, gradients and moments live in CPU memory: only the gather
  buffers stay on the GPU.

Activations of one micro-batch (the usual per-layer account, as in Korthikanti et al. 2022,
"Reducing Activation Recomputation in Large Transformer Models", for a LLaMA block: RMSNorm inputs
and outputs, Q K V, the attention output, the gated MLP's gate, up, activation and product):
  A_layer = s b d (7 h + 2 h_kv + 4 i)      (d bytes per element: 14 h + 4 h_kv + 8 i in bf16)
- without checkpointing: L x A_layer;
- with activation_checkpointing: each layer keeps its input (s b d h), one layer is recomputed at a
  time: L s b d h + A_layer.
- the attention itself: flash_attention_2 and flex_attention keep no score matrix; sdpa with packed
  rows builds a dense block-diagonal mask, b s^2 d; eager also keeps scores and probabilities,
  2 b heads s^2 d per layer (per recomputed layer with checkpointing).
- logits: b s V (d + 8): the logits, their fp32 upcast for the loss and its gradient.

Total = (states + activations) x 1.10 (allocator fragmentation) + 1.5 GB (CUDA context, kernels).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GB = float(1 << 30)
OVERHEAD_GB = 1.5
FRAGMENTATION = 1.10


@dataclass(frozen=True)
class Shape:
    """A decoder-only model's dimensions (LLaMA family)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool = False  # LM head shares the embedding matrix

    @property
    def kv_hidden(self) -> int:
        return self.kv_heads * (self.hidden // self.heads)

    @property
    def layer_params(self) -> int:
        h, kv, i = self.hidden, self.kv_hidden, self.intermediate
        return 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h

    @property
    def params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.layers * self.layer_params + embeddings + self.hidden

    def lora_params(self, r: int) -> int:
        """LoRA on every linear layer of every block (target_modules: all-linear)."""
        h, kv, i = self.hidden, self.kv_hidden, self.intermediate
        per_layer = r * ((h + h) * 2 + (h + kv) * 2 + (h + i) * 2 + (i + h))
        return self.layers * per_layer

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Shape:
        return cls(
            layers=config["num_hidden_layers"],
            hidden=config["hidden_size"],
            intermediate=config["intermediate_size"],
            heads=config["num_attention_heads"],
            kv_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
            vocab=config["vocab_size"],
            tied=bool(config.get("tie_word_embeddings", False)),
        )


# Shapes of models users name by hub id, so a dry run plans without the network (from their config.json).
KNOWN_SHAPES = {
    "togethercomputer/LLaMA-2-7B-32K": Shape(32, 4096, 11008, 32, 32, 32000),
    "togethercomputer/Llama-2-7B-32K-Instruct": Shape(32, 4096, 11008, 32, 32, 32000),
    "meta-llama/Llama-2-7b-hf": Shape(32, 4096, 11008, 32, 32, 32000),
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0": Shape(22, 2048, 5632, 32, 4, 32000),
    "TinyLlama/TinyLlama_v1.1": Shape(22, 2048, 5632, 32, 4, 32000),
    "HuggingFaceTB/SmolLM2-135M-Instruct": Shape(30, 576, 1536, 9, 3, 49152, tied=True),
    None: Shape(30, 576, 1536, 9, 3, 49152, tied=True),  # the embedded SmolLM2-135M-Instruct
}


def shape_of(model: str | None) -> Shape | None:
    """A model's shape: known by id, or from a local directory's config.json; None when unknown."""
    if model in KNOWN_SHAPES:
        return KNOWN_SHAPES[model]
    config = Path(model) / "config.json" if model else None
    if config is not None and config.is_file():
        return Shape.from_config(json.loads(config.read_text()))
    return None


@dataclass(frozen=True)
class Setup:
    """What decides memory: how the model is trained, sharded and fed."""

    lora_r: int | None  # None: full fine-tune
    strategy: str  # ddp | fsdp
    world: int  # devices x nodes
    seq: int
    batch: int
    activation_checkpointing: bool
    offload: bool
    attn: str  # sdpa | flex_attention | flash_attention_2 | eager
    dtype_bytes: int = 2


def estimate(shape: Shape, setup: Setup) -> dict[str, float]:
    """GB per GPU by part (see the module docstring for every term) and the total."""
    P, d, s, b = shape.params, setup.dtype_bytes, setup.seq, setup.batch
    T = P if setup.lora_r is None else shape.lora_params(setup.lora_r)
    frozen = P - T if setup.lora_r is not None else 0
    h, kv, i, L = shape.hidden, shape.kv_hidden, shape.intermediate, shape.layers
    out: dict[str, float] = {}
    if setup.strategy == "ddp":
        if setup.lora_r is None:
            out["weights"], out["gradients"], out["optimizer"] = d * P, 2 * d * P, 2 * d * P  # + DDP buckets
        else:
            out["weights"], out["gradients"], out["optimizer"] = d * frozen + 4 * T, 4 * T, 8 * T
    else:
        n = setup.world
        weights = 4 * frozen / n + 4 * T / n
        out["weights"], out["gradients"], out["optimizer"] = weights, 4 * T / n, 8 * T / n
        if setup.offload:
            out["weights"] = out["gradients"] = out["optimizer"] = 0.0
        out["gathered"] = 2 * d * shape.layer_params + 4 * shape.layer_params + d * 2 * shape.vocab * h
    per_layer = s * b * d * (7 * h + 2 * kv + 4 * i)
    if setup.activation_checkpointing:
        out["activations"] = L * s * b * d * h + per_layer
    else:
        out["activations"] = L * per_layer
    if setup.attn == "sdpa":
        out["attention"] = b * s * s * d
    elif setup.attn == "eager":
        out["attention"] = 2 * b * shape.heads * s * s * d * (1 if setup.activation_checkpointing else L)
    out["logits"] = b * s * shape.vocab * (d + 8)
    gb = {k: v / GB for k, v in out.items()}
    gb["total"] = sum(gb.values()) * FRAGMENTATION + OVERHEAD_GB
    return {k: round(v, 2) for k, v in gb.items()}


def describe(shape: Shape, setup: Setup, gb: dict[str, float], limit: float | None) -> str:
    parts = ", ".join(f"{k} {v:g}" for k, v in gb.items() if k != "total" and v)
    kind = "full" if setup.lora_r is None else f"LoRA r={setup.lora_r}"
    fits = "" if limit is None else (" fits" if gb["total"] <= limit else " DOES NOT FIT") + f" {limit:g} GB"
    return (
        f"memory per GPU ({shape.params / 1e9:.2f}B params, {kind}, {setup.strategy} on {setup.world}, "
        f"seq {setup.seq} x batch {setup.batch}, checkpointing {'on' if setup.activation_checkpointing else 'off'}, "
        f"{setup.attn}): ~{gb['total']:g} GB ({parts}){fits}"
    )


def suggestions(shape: Shape, setup: Setup, limit: float) -> list[str]:
    """Changes (config overrides) that would make the estimate fit `limit` GB."""
    from dataclasses import replace

    tries: list[tuple[str, Setup]] = []
    if setup.strategy != "fsdp":
        tries.append(("train.strategy=fsdp", replace(setup, strategy="fsdp")))
    if not setup.activation_checkpointing:
        tries.append(("train.activation_checkpointing=true", replace(setup, activation_checkpointing=True)))
    both = replace(setup, strategy="fsdp", activation_checkpointing=True)
    if both != setup:
        tries.append(("train.strategy=fsdp train.activation_checkpointing=true", both))
    for world in (2, 4, 8, 16, 32, 64):
        if world > setup.world:
            tries.append(
                (
                    f"train.devices x train.launch.nnodes = {world} with fsdp and checkpointing",
                    replace(both, world=world),
                )
            )
    if setup.attn in ("sdpa", "eager"):
        tries.append(
            ("train.attn_implementation=flex_attention (or flash_attention_2)", replace(setup, attn="flex_attention"))
        )
    if setup.lora_r is None:
        tries.append(("train=local_lora (LoRA r=16)", replace(setup, lora_r=16)))
    if setup.strategy == "fsdp" and not setup.offload:
        tries.append(("train.offload_optimizer=true", replace(setup, offload=True)))
    seq = setup.seq // 2
    while seq >= 512:
        tries.append((f"train.args.max_seq_length={seq}", replace(setup, seq=seq)))
        seq //= 2
    out, seen_world = [], False
    for label, candidate in tries:
        if estimate(shape, candidate)["total"] <= limit:
            if "nnodes" in label:
                if seen_world:
                    continue
                seen_world = True
            out.append(f"{label} (~{estimate(shape, candidate)['total']:g} GB)")
    return out
