"""Benchmark: our trainer's packed rows against a plain Hugging Face loop with dynamic padding.

    python tests/benchmarks/bench_train_gpu.py                      # on a GPU: TinyLlama-1.1B shape, 8192
    python tests/benchmarks/bench_train_gpu.py --device cpu --tiny  # a smoke run of the same code on CPU
    python tests/benchmarks/bench_train_gpu.py --activation-checkpointing      # + per-layer recomputation
    torchrun --standalone --nproc_per_node=N tests/benchmarks/bench_train_gpu.py --strategy fsdp

Same randomly initialised model of a known architecture (TinyLlama-1.1B: hidden 2048, 22 layers,
32 heads, 4 KV heads, MLP 5632, vocab 32000), same data (a realistic length mix: half short
instructions of 64-512 tokens, half long documents of 2K-8K tokens), same GPU, in one run:

1. `padded`: examples in batches of `--padded-batch`, padded to the longest, `attention_mask`;
2. `packed-<attn>`: our path, `recipe.providers.local.trainer.pack` + `collate` (rows of `--seq`
   tokens, position ids restarting per example, which transformers turns into per-example
   attention) for each attention implementation in `--attn` (sdpa, flex_attention,
   flash_attention_2 when installed).

Before timing, each packed implementation is checked for leakage: the logits of an example packed
behind others must equal its logits alone (max abs difference printed). Reported per variant:
real (non-padding) tokens/s over `--steps` timed steps after `--warmup`, MFU = 6 * params *
tokens/s / the GPU's dense bf16 peak, and the speed-up over `padded`. Target on an H100/H200 at
8192: >= 4x the padded loop and MFU >= 30 %, with no leakage.

`--strategy fsdp` (under torchrun) shards every variant with recipe.providers.local.sharding (FSDP2,
fp32 master weights, bf16 compute; every process runs the same batches, tokens/s are per process);
`--activation-checkpointing` recomputes every decoder layer.
Each variant also reports its peak GPU memory beside the memory estimate's figure for the same setup
(recipe/providers/local/memory.py: the plan assumes AdamW and a DDP gradient bucket).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from typing import Any

import torch
import torch.distributed as dist

from recipe.providers.local import memory, sharding
from recipe.providers.local.trainer import Example, collate, enable_activation_checkpointing, pack

# Dense bf16 peaks (TFLOP/s, no sparsity) by GPU name fragment.
PEAKS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAKS.items() if k in name), None)


def make_model(tiny: bool, attn: str, device: torch.device, dtype: torch.dtype) -> Any:
    import transformers

    if tiny:
        shape = dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
        )
    else:
        shape = dict(
            hidden_size=2048,
            intermediate_size=5632,
            num_hidden_layers=22,
            num_attention_heads=32,
            num_key_value_heads=4,
        )
    config = transformers.LlamaConfig(vocab_size=32000, max_position_embeddings=16384, **shape)
    config._attn_implementation = attn
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).to(device=device, dtype=dtype)


def make_examples(n: int, seq: int, tiny: bool, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    short, long = ((16, 64), (128, seq)) if tiny else ((64, 512), (2048, min(8192, seq)))
    out = []
    for i in range(n):
        length = rng.randint(*short) if i % 2 == 0 else rng.randint(*long)
        ids = [rng.randrange(3, 32000) for _ in range(length)]
        out.append(Example(ids, list(ids)))
    return out


def padded_batches(examples: list[Example], batch: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    out = []
    for i in range(0, len(examples), batch):
        chunk = examples[i : i + batch]
        width = max(len(e.input_ids) for e in chunk)
        ids = [e.input_ids + [0] * (width - len(e.input_ids)) for e in chunk]
        mask = [[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in chunk]
        labels = [e.labels + [-100] * (width - len(e.labels)) for e in chunk]
        out.append(
            {
                "input_ids": torch.tensor(ids, device=device),
                "attention_mask": torch.tensor(mask, device=device),
                "labels": torch.tensor(labels, device=device),
            }
        )
    return out


def leakage(model: Any, examples: list[Example], seq: int, device: torch.device) -> float:
    """Max |logits(packed) - logits(alone)| of the last example of the first packed row."""
    row = pack(examples, seq, True)[0]
    starts = [i for i, p in enumerate(row["position_ids"]) if p == 0]
    if len(starts) < 2:
        return 0.0
    begin = starts[-1]
    batch = collate([row], 0, device)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        alone = model(input_ids=batch["input_ids"][:, begin:], use_cache=False).logits
    return float((packed[0, begin:] - alone[0]).abs().max())


def timed(model: Any, batches: list[dict[str, torch.Tensor]], steps: int, warmup: int, device: torch.device) -> float:
    """Real tokens per second of forward + backward + AdamW over `steps` batches after `warmup`."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    model.train()
    tokens, started = 0, 0.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup + steps):
        batch = batches[i % len(batches)]
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started, tokens = time.perf_counter(), 0
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int((batch["labels"] != -100).sum())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a tiny model and short sequences (CPU smoke run)")
    parser.add_argument("--seq", type=int, default=8192)
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--padded-batch", type=int, default=2)
    parser.add_argument("--rows-per-step", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--attn", default="sdpa,flex_attention")
    parser.add_argument("--compile", action="store_true", help="torch.compile the packed models")
    parser.add_argument("--strategy", choices=["none", "fsdp"], default="none", help="fsdp: run under torchrun")
    parser.add_argument("--activation-checkpointing", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    fsdp = args.strategy == "fsdp"
    if fsdp:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", dist.get_rank() % torch.cuda.device_count())
            torch.cuda.set_device(device)
    # FSDP keeps fp32 master weights and computes in bf16 (its mixed-precision policy).
    dtype = torch.bfloat16 if device.type == "cuda" and not fsdp else torch.float32

    def prepared(model: Any) -> Any:
        if args.activation_checkpointing:
            enable_activation_checkpointing(model)
        return sharding.shard(model, device.type, False) if fsdp else model

    def peak_gb() -> float | None:
        return round(torch.cuda.max_memory_allocated(device) / memory.GB, 2) if device.type == "cuda" else None

    def planned_gb(attn: str, rows: int, strategy: str) -> float | None:
        if args.tiny:
            return None
        world = dist.get_world_size() if fsdp else 1
        setup = memory.Setup(None, strategy, world, seq, rows, args.activation_checkpointing, False, attn)
        return memory.estimate(memory.KNOWN_SHAPES["TinyLlama/TinyLlama_v1.1"], setup)["total"]

    seq = 256 if args.tiny and args.seq == 8192 else args.seq
    examples = make_examples(args.examples, seq, args.tiny)
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    model = make_model(args.tiny, "sdpa", device, dtype)
    params = sum(p.numel() for p in model.parameters())
    peak = peak_tflops(device)
    results.update(
        params=params, seq=seq, peak_tflops=peak, strategy=args.strategy, checkpointing=args.activation_checkpointing
    )
    model = prepared(model)
    padded = timed(model, padded_batches(examples, args.padded_batch, device), args.steps, args.warmup, device)
    results["padded"] = {"tokens_per_s": round(padded), "peak_gb": peak_gb()}
    del model
    rows = pack(examples, seq, True)
    packed_batches = [
        {k: v for k, v in collate(rows[i : i + args.rows_per_step], 0, device).items()}
        for i in range(0, len(rows), args.rows_per_step)
    ]
    for attn in [a for a in args.attn.split(",") if a]:
        try:
            model = make_model(args.tiny, attn, device, dtype)
        except (ImportError, ValueError) as e:
            results[f"packed-{attn}"] = {"skipped": str(e)[:200]}
            continue
        try:
            leak = leakage(model, examples[:4], seq, device)
            model = prepared(model)
            if args.compile:
                model = torch.compile(model)
            speed = timed(model, packed_batches, args.steps, args.warmup, device)
        except (NotImplementedError, RuntimeError) as e:  # e.g. flex attention has no CPU backward
            results[f"packed-{attn}"] = {"skipped": f"{type(e).__name__}: {str(e)[:200]}"}
            del model
            continue
        entry: dict[str, Any] = {"tokens_per_s": round(speed), "vs_padded": round(speed / padded, 2), "leakage": leak}
        entry.update(peak_gb=peak_gb(), plan_gb=planned_gb(attn, args.rows_per_step, "fsdp" if fsdp else "ddp"))
        if peak:
            entry["mfu"] = round(6 * params * speed / (peak * 1e12), 3)
        results[f"packed-{attn}"] = entry
        del model
    if peak:
        results["padded"]["mfu"] = round(6 * params * padded / (peak * 1e12), 3)
    if not fsdp or dist.get_rank() == 0:
        print(json.dumps(results, indent=2))
    if fsdp:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
