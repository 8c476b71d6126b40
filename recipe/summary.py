"""What a run prints: one line per artifact (counts, tokens, cost, loss), and third-party noise off.

A manifest is a record for people; these lines read its documented fields, and a field a stage
did not write is simply left out of its line.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from typing import Any

# Library loggers that talk at INFO (absl: rouge-score's tokenizer) or retry noisily.
NOISY_LOGGERS = (
    "absl",
    "datasets",
    "huggingface_hub",
    "transformers",
    "peft",
    "urllib3",
    "filelock",
    "httpx",
    "httpx2",  # huggingface_hub 2.x's HTTP client
    "fsspec",
    "aiohttp",
)


# What a terminal acts on rather than shows: C0 controls but newline and tab (ESC starts the
# sequences that clear the screen, move the cursor, set the title or write the clipboard, OSC 52),
# DEL, C1 controls (a one-character CSI or OSC) and the bidirectional overrides that reorder text.
CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """Text from a model, a server or a file, safe to print: controls shown escaped (`\\x1b`),
    newlines and tabs kept. Each control is escaped on its own, so text printed in pieces as it
    streams is as safe as the whole."""
    return CONTROLS.sub(lambda m: repr(m.group())[1:-1], text)


def quiet(verbose: bool) -> None:
    """Third-party warnings and INFO lines off (verbose=true keeps them), here and in the processes
    we start (torchrun workers, servers), which inherit the environment."""
    if verbose:
        return
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning,ignore::DeprecationWarning,ignore::UserWarning")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    # Other libraries' progress bars (transformers' "Converting and de-quantizing GGUF tensors" x44,
    # "Loading weights", "Writing model shards"; datasets'): our stages draw their own.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # urllib3 warns once per retry ("Retrying (...) after connection broken"): the progress bar counts
    # retries, and a request that still fails ends the stage with one line naming its cause.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


def _money(manifest: dict[str, Any]) -> str:
    cost = manifest.get("cost_usd")
    return f"${cost:.2f}" if isinstance(cost, (int, float)) else ""


def _contamination(manifest: dict[str, Any]) -> str:
    counts = manifest.get("contamination_counts") or {}
    dropped = sum(c.get("examples_dropped", 0) for c in counts.values())
    kept = sum(c.get("examples_in_training", 0) for c in counts.values())
    if not counts:
        return ""
    return (
        f"contaminated: {dropped} dropped, {kept} kept"
        if dropped or kept
        else "no Test prompt found in the training data"
    )


def line(stage: str, manifest: dict[str, Any]) -> str | None:
    """One line saying what the artifact holds, or None when there is nothing to say."""
    parts: list[str] = []
    if stage == "distill" and "conversations" in manifest:
        conv, turns = manifest["conversations"], manifest.get("turns", {})
        parts.append(f"{conv.get('distilled', 0)} conversations ({turns.get('answered', 0)} turns answered)")
        if conv.get("failed"):
            parts.append(f"{conv['failed']} failed")
    elif stage == "mix" and "examples" in manifest:
        counts = ", ".join(f"{k} {v}" for k, v in (manifest.get("counts") or {}).items())
        parts.append(f"{manifest['examples']} examples ({counts}), ~{manifest.get('tokens', 0)} tokens")
        if manifest.get("eval"):
            parts.append(f"eval {manifest['eval'].get('examples', 0)}")
    elif stage == "train" and "steps" in manifest:
        loss = f"loss {manifest.get('first_loss')} -> {manifest.get('final_loss')}"
        evaluated = f", eval loss {manifest['eval_loss']}" if manifest.get("eval_loss") is not None else ""
        where = f"{manifest.get('world_size', 1)} x {manifest.get('device', '?')}"
        parts.append(f"{manifest['steps']} steps on {where} ({manifest.get('strategy', 'ddp')}), {loss}{evaluated}")
    elif stage == "train" and manifest.get("job_id"):
        status = manifest.get("status", "")
        parts.append(f"Together job {manifest['job_id']} {status}".rstrip())
        if manifest.get("model_output_name"):
            parts.append(f"model {manifest['model_output_name']}")
    parts += [p for p in (_contamination(manifest), _money(manifest)) if p]
    return "; ".join(parts) or None
