"""Mix: the stratified mixture that ends the recipe's Distill step (50% instructions / 25% BookSum /
25% multi-document QA in the seed).

What it supports:
- components, each a source with a `share` of the final file; shares sum to 1;
- `total` in `unit: examples | tokens`; per-component counts (or token budgets) by largest
  remainder, so they add up to `total` exactly;
- `strata` inside a component (a record field, or `num_documents` / `num_turns`), sampled
  proportionally to the strata's sizes;
- sampling without replacement (an error when a source is too small, unless `replace: true`);
- exact-duplicate removal within and across components; a deterministic shuffle from `seed`;
- a held-out eval split (`eval_fraction`) drawn from records that are not in the mixture;
- output as `text` (through a template), `messages` or `prompt_completion`;
- the Together file check on its own output.

How: one streaming pass reads every source record, normalises it to messages, formats its output
line, and appends the line to a spool file, keeping only (offset, length, tokens, stratum, hash) per
record in memory. Selection then works on those arrays with numpy, and the output is written by
copying the chosen lines out of the memory-mapped spool in shuffled order. Memory stays at a few
tens of bytes per record whatever the records' size; the same config and seed give a
byte-identical file.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import re
import zlib
from array import array
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from recipe.data import templates
from recipe.data.filecheck import check_file
from recipe.data.sources import iter_raw, parse_line, source_identity, to_messages
from recipe.stages import Stage, StageError
from recipe.store import Artifact

Message = dict[str, str]
MIXTURE_FILE = "mixture.jsonl"
EVAL_FILE = "eval.jsonl"
_DOCUMENT_LINE = re.compile(r"(?m)^Document \[\d+\]")

TOKEN_COUNTERS: dict[str, Callable[[str], int]] = {
    "approx": lambda s: (len(s) + 3) // 4,  # ~4 characters per token, the usual rule of thumb
    "whitespace": lambda s: len(s.split()),
}


def largest_remainder(total: int, weights: Sequence[float]) -> list[int]:
    """Split `total` into integers proportional to `weights` that add up to `total` exactly."""
    weight_sum = float(sum(weights))
    if total == 0 or weight_sum == 0:
        return [0] * len(weights)
    quotas = [total * w / weight_sum for w in weights]
    counts = [int(q) for q in quotas]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def format_example(messages: list[Message], fmt: str, template: str) -> dict[str, Any]:
    if fmt == "messages":
        return {"messages": messages}
    if fmt == "prompt_completion":
        return {
            "prompt": templates.render_prompt(messages[:-1], template),
            "completion": templates.render_completion(messages[-1], template),
        }
    return {"text": templates.render(messages, template)}


def example_text(example: dict[str, Any]) -> str:
    """The text a model trains on, for token counting."""
    if "messages" in example:
        return "".join(m["content"] for m in example["messages"])
    return example.get("text") or example["prompt"] + example["completion"]


class Mix(Stage):
    """Build `mixture.jsonl` (+ `eval.jsonl`) and a manifest of counts, tokens and sha256."""

    name = "mix"
    version = "1"
    execution_keys = frozenset({"progress"})

    def __init__(self, config: DictConfig, root: DictConfig) -> None:
        super().__init__(config, root)
        self.components = sorted(config.components)  # sorted: overrides may reorder keys
        self._validate()

    # ---- config ---------------------------------------------------------------------------
    def _validate(self) -> None:
        c = self.config
        if c.total <= 0:
            raise StageError(f"mixture.total={c.total}: must be a positive number of {c.unit.value}")
        if not self.components:
            raise StageError("mixture.components is empty: add at least one component with a source and a share")
        shares = {name: c.components[name].share for name in self.components}
        for name, share in shares.items():
            if not 0 < share <= 1:
                raise StageError(f"mixture.components.{name}.share={share}: must be in (0, 1]")
        if abs(sum(shares.values()) - 1) > 1e-6:
            quoted = ", ".join(f"{n}={s:g}" for n, s in shares.items())
            raise StageError(f"mixture.components: shares must sum to 1, got {sum(shares.values()):g} ({quoted})")
        if not 0 <= c.eval_fraction < 1:
            raise StageError(f"mixture.eval_fraction={c.eval_fraction}: must be in [0, 1)")
        if c.tokenizer not in TOKEN_COUNTERS:
            raise StageError(f"mixture.tokenizer={c.tokenizer!r}: use one of {', '.join(TOKEN_COUNTERS)}")
        templates.check_template(c.template, "mixture.template")
        for name in self.components:
            comp = c.components[name]
            if comp.source not in self.root.sources:
                known = ", ".join(sorted(self.root.sources)) or "none"
                raise StageError(f"mixture.components.{name}.source={comp.source!r}: no such source (known: {known})")
            if comp.template is not None:
                templates.check_template(comp.template, f"mixture.components.{name}.template")
            source = self.root.sources[comp.source]
            if source.kind.value == "text" and source.template not in ("llama2_inst", "chatml"):
                raise StageError(
                    f"sources.{comp.source}.template={source.template!r}: text sources are parsed as llama2_inst or chatml"
                )

    def semantic_config(self) -> dict[str, Any]:
        """The mixture node plus what each referenced source holds (file contents by sha256)."""
        semantic = super().semantic_config()
        used = sorted({self.config.components[n].source for n in self.components})
        semantic["sources"] = {name: source_identity(name, self.root.sources[name]) for name in used}
        return semantic

    def _targets(self, total: int) -> dict[str, int]:
        shares = [self.config.components[n].share for n in self.components]
        return dict(zip(self.components, largest_remainder(total, shares), strict=True))

    def plan(self, inputs: dict[str, Artifact | None]) -> str:
        c = self.config
        parts = [f"{n}={k} from {c.components[n].source}" for n, k in self._targets(c.total).items()]
        held_out = round(c.total * c.eval_fraction)
        return f"mix {c.total} {c.unit.value} ({', '.join(parts)}); eval {held_out} {c.unit.value}; format {c.format.value}"

    # ---- run ------------------------------------------------------------------------------
    def run(self, inputs: dict[str, Artifact], out_dir: Path) -> dict[str, Any]:
        c = self.config
        spool_path = out_dir / ".spool"
        index = _Index()
        stats: dict[str, dict[str, Any]] = {}
        with open(spool_path, "wb") as spool:
            for comp_id, name in enumerate(self.components):
                stats[name] = self._read_component(comp_id, name, spool, index)
        arrays = index.freeze()

        keep = np.ones(len(arrays["hash"]), dtype=bool)
        if c.dedupe and len(keep):
            keep[:] = False
            keep[np.unique(arrays["hash"], return_index=True)[1]] = True  # first occurrence wins
        train_targets = self._targets(c.total)
        eval_targets = self._targets(round(c.total * c.eval_fraction))
        train_parts, eval_parts = [], []
        for comp_id, name in enumerate(self.components):
            mine = np.flatnonzero((arrays["component"] == comp_id) & keep)
            stats[name]["duplicates_removed"] = int(np.count_nonzero(arrays["component"] == comp_id)) - len(mine)
            train, held = self._select(
                name, mine, arrays, index.strata[comp_id], train_targets[name], eval_targets[name]
            )
            train_parts.append(train)
            eval_parts.append(held)
        shuffle = np.random.default_rng(np.random.SeedSequence([c.seed, zlib.crc32(b"\0shuffle")]))
        train_order = shuffle.permutation(np.concatenate(train_parts))
        eval_order = shuffle.permutation(np.concatenate(eval_parts))

        manifest: dict[str, Any] = {
            "total": c.total,
            "unit": c.unit.value,
            "seed": c.seed,
            "format": c.format.value,
            "template": c.template,
        }
        with open(spool_path, "rb") as spool_file:
            spool = mmap.mmap(spool_file.fileno(), 0, access=mmap.ACCESS_READ) if arrays["offset"].size else b""
            manifest.update(self._write(out_dir / MIXTURE_FILE, train_order, spool, arrays, index))
            if len(eval_order):
                manifest["eval"] = self._write(out_dir / EVAL_FILE, eval_order, spool, arrays, index)
            else:
                manifest["eval"] = None
            if isinstance(spool, mmap.mmap):
                spool.close()
        spool_path.unlink()
        manifest["sources"] = stats
        if c.check:
            manifest["check"] = check_file(out_dir / MIXTURE_FILE)
            if manifest["eval"]:
                check_file(out_dir / EVAL_FILE)
        return manifest

    def _read_component(self, comp_id: int, name: str, spool: Any, index: _Index) -> dict[str, Any]:
        """Stream one component's source into the spool; return its read statistics."""
        c = self.config
        comp = c.components[name]
        source = self.root.sources[comp.source]
        kind = source.kind.value
        fmt = c.format.value
        template = comp.template or c.template
        count_tokens = TOKEN_COUNTERS[c.tokenizer]
        strata_key = comp.strata
        strata_ids = index.new_component()
        records = skipped = 0
        progress = tqdm(desc=f"mix {name}", unit=" rec", disable=not c.progress, mininterval=0.5)
        for raw, where in iter_raw(comp.source, source):
            record = parse_line(raw, where) if isinstance(raw, bytes) else raw
            records += 1
            messages = to_messages(record, kind, where, source.template)
            if messages is None:
                skipped += 1
                continue
            example = format_example(messages, fmt, template)
            line = (json.dumps(example, ensure_ascii=False) + "\n").encode()
            if strata_key is None:
                stratum = None
            elif strata_key == "num_documents":
                stratum = len(_DOCUMENT_LINE.findall(messages[-2]["content"]))
            elif strata_key == "num_turns":
                stratum = sum(m["role"] == "user" for m in messages)
            elif strata_key in record:
                stratum = record[strata_key]
                if not isinstance(stratum, (str, int, float, bool)):
                    raise StageError(
                        f"{where}: field {strata_key!r} (mixture.components.{name}.strata) must be a scalar"
                    )
            else:
                raise StageError(f"{where}: missing field {strata_key!r} named by mixture.components.{name}.strata")
            index.add(
                comp_id, strata_ids.setdefault(stratum, len(strata_ids)), line, count_tokens(example_text(example))
            )
            spool.write(line)
            progress.update()
        progress.close()
        if records == 0:
            raise StageError(f"sources.{comp.source}: no records (mixture.components.{name})")
        if records == skipped:
            raise StageError(f"sources.{comp.source}: none of its {records} records holds an answered user turn")
        return {"source": comp.source, "records": records, "skipped": skipped}

    def _select(
        self,
        name: str,
        mine: np.ndarray,
        arrays: dict[str, np.ndarray],
        strata_ids: dict[Any, int],
        target: int,
        eval_target: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Pick this component's train and eval records, stratum by stratum."""
        comp = self.config.components[name]
        by_tokens = self.config.unit.value == "tokens"
        rng = np.random.default_rng(np.random.SeedSequence([self.config.seed, zlib.crc32(name.encode())]))
        # Strata in a stable order (numbers numerically, then strings) so the draw is reproducible.
        ordered = sorted(strata_ids.items(), key=lambda kv: (isinstance(kv[0], str), kv[0] if kv[0] is not None else 0))
        groups = [mine[arrays["stratum"][mine] == sid] for _, sid in ordered]
        weight = [float(arrays["tokens"][g].sum()) if by_tokens else float(len(g)) for g in groups]
        train_k = largest_remainder(target, weight)
        eval_k = largest_remainder(eval_target, weight)
        train, held = [], []
        for (label, _), group, k, e in zip(ordered, groups, train_k, eval_k, strict=True):
            perm = rng.permutation(group)
            size = arrays["tokens"][perm] if by_tokens else np.ones(len(perm), dtype=np.int64)
            n_train = _take(size, k)
            if n_train is None:  # not enough records for the training share
                if not comp.replace:
                    self._too_small(name, label, len(ordered) > 1, k, int(size.sum()), len(mine))
                reps = -(-k // max(int(size.sum()), 1))
                tiled = np.tile(perm, reps)
                train.append(tiled[: _take(np.tile(size, reps), k)])
                n_train = len(perm)
            else:
                train.append(perm[:n_train])
            rest, rest_size = perm[n_train:], size[n_train:]
            n_eval = _take(rest_size, e)
            if n_eval is None:
                raise StageError(
                    f"mixture.eval_fraction={self.config.eval_fraction}: component {name!r}"
                    f"{f' stratum {label!r}' if len(ordered) > 1 else ''} needs {e} held-out "
                    f"{self.config.unit.value} but only {int(rest_size.sum())} are left outside the mixture"
                )
            held.append(rest[:n_eval])
        return np.concatenate(train or [mine[:0]]), np.concatenate(held or [mine[:0]])

    def _too_small(self, name: str, label: Any, stratified: bool, need: int, have: int, records: int) -> None:
        unit = self.config.unit.value
        where = f" in stratum {label!r}" if stratified else ""
        raise StageError(
            f"mixture.components.{name}: needs {need} {unit}{where} but source "
            f"{self.config.components[name].source!r} has {have} ({records} distinct records); lower "
            f"mixture.total or this share, or set mixture.components.{name}.replace=true"
        )

    def _write(
        self, path: Path, order: np.ndarray, spool: Any, arrays: dict[str, np.ndarray], index: _Index
    ) -> dict[str, Any]:
        digest = hashlib.sha256()
        starts = arrays["offset"][order]
        ends = (starts + arrays["length"][order]).tolist()
        with open(path, "wb") as out:
            for start, end in zip(starts.tolist(), ends, strict=True):
                line = spool[start:end]
                digest.update(line)
                out.write(line)
        counts: dict[str, int] = {}
        tokens: dict[str, int] = {}
        strata: dict[str, dict[str, int]] = {}
        for comp_id, name in enumerate(self.components):
            chosen = order[arrays["component"][order] == comp_id]
            counts[name] = len(chosen)
            tokens[name] = int(arrays["tokens"][chosen].sum())
            labels = {sid: label for label, sid in index.strata[comp_id].items()}
            if self.config.components[name].strata:
                ids, n = np.unique(arrays["stratum"][chosen], return_counts=True)
                strata[name] = {str(labels[int(s)]): int(k) for s, k in zip(ids, n, strict=True)}
        return {
            "file": path.name,
            "sha256": digest.hexdigest(),
            "examples": len(order),
            "tokens": int(sum(tokens.values())),
            "counts": counts,
            "tokens_by_component": tokens,
            "strata": strata,
        }


def _take(size: np.ndarray, target: int) -> int | None:
    """How many leading records reach `target` (records, or tokens when sizes are token counts);
    None when all of them together fall short."""
    if target <= 0:
        return 0
    cumulative = np.cumsum(size)
    if len(cumulative) == 0 or cumulative[-1] < target:
        return None
    return int(np.searchsorted(cumulative, target, side="left")) + 1


class _Index:
    """Per-record facts kept in memory while reading: a few dozen bytes each."""

    def __init__(self) -> None:
        self.offset = array("q")
        self.length = array("q")
        self.tokens = array("q")
        self.component = array("i")
        self.stratum = array("i")
        self.hash = array("q")
        self.strata: list[dict[Any, int]] = []
        self._position = 0

    def new_component(self) -> dict[Any, int]:
        self.strata.append({})
        return self.strata[-1]

    def add(self, component: int, stratum: int, line: bytes, tokens: int) -> None:
        self.offset.append(self._position)
        self.length.append(len(line))
        self._position += len(line)
        self.tokens.append(tokens)
        self.component.append(component)
        self.stratum.append(stratum)
        self.hash.append(int.from_bytes(hashlib.blake2b(line, digest_size=8).digest(), "little", signed=True))

    def freeze(self) -> dict[str, np.ndarray]:
        return {
            "offset": np.frombuffer(self.offset, dtype=np.int64),
            "length": np.frombuffer(self.length, dtype=np.int64),
            "tokens": np.frombuffer(self.tokens, dtype=np.int64),
            "component": np.frombuffer(self.component, dtype=np.int32),
            "stratum": np.frombuffer(self.stratum, dtype=np.int32),
            "hash": np.frombuffer(self.hash, dtype=np.int64),
        }
