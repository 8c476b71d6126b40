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
import os
import zlib
from array import array
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from recipe.config import SourceConfig, SourceKind
from recipe.data import templates
from recipe.data.filecheck import check_block, check_report
from recipe.data.jsonl import (
    CHUNK_BYTES,
    POOL_MIN_BYTES,
    count_lines_before,
    encode_line,
    jsonl_chunks,
    read_jsonl_range,
    worker_count,
    worker_pool,
)
from recipe.data.sources import (
    hash_files,
    is_plain_jsonl,
    iter_raw,
    parse_line,
    source_files,
    source_identity,
    to_messages,
)
from recipe.errors import RecipeError
from recipe.stages import Stage, StageError
from recipe.store import Artifact

Message = dict[str, str]
MIXTURE_FILE = "mixture.jsonl"
DISTILLED = "distill"  # a component source naming the Distill stage's conversations
EVAL_FILE = "eval.jsonl"
BLOCK_LINES = 8192  # output lines built (and checked) per task while writing

TOKEN_COUNTERS: dict[str, Callable[[dict[str, Any]], int]] = {
    # ~4 characters per token, the usual rule of thumb
    "approx": lambda example: (sum(len(part) for part in _trained_text(example)) + 3) // 4,
    "whitespace": lambda example: sum(len(part.split()) for part in _trained_text(example)),
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


def _trained_text(example: dict[str, Any]) -> list[str]:
    """The pieces of text a model trains on, for token counting."""
    if "messages" in example:
        return [m["content"] for m in example["messages"]]
    if "text" in example:
        return [example["text"]]
    return [example["prompt"], example["completion"]]


class Mix(Stage):
    """Build `mixture.jsonl` (+ `eval.jsonl`) and a manifest of counts, tokens and sha256."""

    name = "mix"
    version = "1"
    execution_keys = frozenset({"progress", "workers"})

    def __init__(self, config: DictConfig, root: DictConfig) -> None:
        super().__init__(config, root)
        self.components = sorted(config.components)  # sorted: overrides may reorder keys
        self._distilled: DictConfig | None = None
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
        if c.rescale is not None:
            shares = self._rescaled(shares, c.rescale)
        if abs(sum(shares.values()) - 1) > 1e-6:
            quoted = ", ".join(f"{n}={s:g}" for n, s in shares.items())
            raise StageError(f"mixture.components: shares must sum to 1, got {sum(shares.values()):g} ({quoted})")
        self.shares = shares
        if not 0 <= c.eval_fraction < 1:
            raise StageError(f"mixture.eval_fraction={c.eval_fraction}: must be in [0, 1)")
        if c.tokenizer not in TOKEN_COUNTERS:
            raise StageError(f"mixture.tokenizer={c.tokenizer!r}: use one of {', '.join(TOKEN_COUNTERS)}")
        templates.check_template(c.template, "mixture.template")
        for name in self.components:
            comp = c.components[name]
            if comp.template is not None:
                templates.check_template(comp.template, f"mixture.components.{name}.template")
            if comp.source == DISTILLED:
                if self.root.get("distill") is None:
                    raise StageError(
                        f"mixture.components.{name}.source=distill needs a distill config (distill=local, ...)"
                    )
                continue
            if comp.source not in self.root.sources:
                known = ", ".join(sorted([*self.root.sources, DISTILLED])) or "none"
                raise StageError(f"mixture.components.{name}.source={comp.source!r}: no such source (known: {known})")
            source = self.root.sources[comp.source]
            if source.kind.value == "text" and source.template not in ("llama2_inst", "chatml"):
                raise StageError(
                    f"sources.{comp.source}.template={source.template!r}: text sources are parsed as llama2_inst or chatml"
                )

    def _rescaled(self, shares: dict[str, float], fixed: str) -> dict[str, float]:
        """Keep `fixed`'s share; scale the others in proportion so that all sum to 1 (the rule that
        lets a sweep move one component: 0.6 instructions leaves 0.2 + 0.2 of 0.25 + 0.25)."""
        if fixed not in shares:
            raise StageError(f"mixture.rescale={fixed!r}: not a component ({', '.join(shares)})")
        if shares[fixed] >= 1 and len(shares) > 1:
            raise StageError(f"mixture.components.{fixed}.share={shares[fixed]}: leaves nothing for the others")
        others = sum(v for k, v in shares.items() if k != fixed)
        scale = (1 - shares[fixed]) / others if others else 0.0
        return {k: v if k == fixed else v * scale for k, v in shares.items()}

    def upstream(self) -> tuple[str, ...]:
        uses_distill = any(self.config.components[n].source == DISTILLED for n in self.components)
        return ("distill",) if uses_distill else ()

    def _source(self, name: str) -> DictConfig:
        """A source's config; `distill` is the Distill artifact's conversations (set by `run`)."""
        return self._distilled if name == DISTILLED else self.root.sources[name]

    def semantic_config(self) -> dict[str, Any]:
        """The mixture node plus what each referenced source holds (file contents by sha256); the
        distilled conversations enter through the upstream fingerprint. Shares as applied."""
        semantic = super().semantic_config()
        for name in self.components:
            semantic["components"][name]["share"] = round(self.shares[name], 12)
        semantic.pop("rescale", None)
        used = sorted({self.config.components[n].source for n in self.components} - {DISTILLED})
        local = [name for name in used if not self.root.sources[name].hub_id]
        hash_files([f for name in local for f in source_files(name, self.root.sources[name])])
        semantic["sources"] = {name: source_identity(name, self.root.sources[name]) for name in used}
        return semantic

    def _targets(self, total: int) -> dict[str, int]:
        shares = [self.shares[n] for n in self.components]
        return dict(zip(self.components, largest_remainder(total, shares), strict=True))

    def plan(self, inputs: dict[str, Artifact | None]) -> str:
        c = self.config
        parts = [f"{n}={k} from {c.components[n].source}" for n, k in self._targets(c.total).items()]
        held_out = round(c.total * c.eval_fraction)
        return f"mix {c.total} {c.unit.value} ({', '.join(parts)}); eval {held_out} {c.unit.value}; format {c.format.value}"

    # ---- run ------------------------------------------------------------------------------
    def run(self, inputs: dict[str, Artifact], out_dir: Path) -> dict[str, Any]:
        if "distill" in inputs:
            conversations = inputs["distill"].path / inputs["distill"].manifest["file"]
            self._distilled = OmegaConf.structured(
                SourceConfig(kind=SourceKind.messages, data_files=[str(conversations)])
            )
        units = self._units(out_dir)
        chunked = [u for u in units if u.path is not None]
        workers = min(worker_count(self.config.workers), len(chunked))
        if workers > 1 and sum(u.end - u.start for u in chunked) >= POOL_MIN_BYTES:
            with worker_pool(workers) as pool:
                return self._run(units, out_dir, pool, workers)
        return self._run(units, out_dir, None, 1)

    def _run(self, units: list[_Unit], out_dir: Path, pool: Executor | None, workers: int) -> dict[str, Any]:
        c = self.config
        results = self._read_all(units, pool)
        arrays, strata, stats = self._merge(units, results)

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
            train, held = self._select(name, mine, arrays, strata[comp_id], train_targets[name], eval_targets[name])
            train_parts.append(train)
            eval_parts.append(held)
        shuffle = np.random.default_rng(np.random.SeedSequence([c.seed, zlib.crc32(b"\0shuffle")]))
        train_order = shuffle.permutation(np.concatenate(train_parts))
        eval_order = shuffle.permutation(np.concatenate(eval_parts))

        manifest: dict[str, Any] = {
            "total": c.total,
            "unit": c.unit.value,
            "seed": c.seed,
            "shares": {name: round(self.shares[name], 12) for name in self.components},
            "format": c.format.value,
            "template": c.template,
        }
        try:
            manifest.update(self._write(out_dir / MIXTURE_FILE, train_order, units, arrays, strata, pool, workers))
            if len(eval_order):
                manifest["eval"] = self._write(out_dir / EVAL_FILE, eval_order, units, arrays, strata, pool, workers)
            else:
                manifest["eval"] = None
        finally:
            for unit in units:
                Path(unit.spool).unlink(missing_ok=True)
        manifest["sources"] = stats
        return manifest

    def _units(self, out_dir: Path) -> list[_Unit]:
        """Split the reading into units: byte ranges of plain JSON Lines files (which can run in
        worker processes), or whole sources (hub, parquet, zstd, JSON lists) read here. Each unit
        writes its formatted lines to its own spool file."""
        c = self.config
        units = []
        for comp_id, name in enumerate(self.components):
            comp = c.components[name]
            source = self._source(comp.source)
            common = {
                "comp_id": comp_id,
                "component": name,
                "source": comp.source,
                "kind": source.kind.value,
                "text_template": source.template,
                "fmt": c.format.value,
                "template": comp.template or c.template,
                "tokenizer": c.tokenizer,
                "strata_key": comp.strata,
            }
            files = [] if source.hub_id else source_files(comp.source, source)
            if files and all(is_plain_jsonl(f) for f in files):
                for f in files:
                    for start, end in jsonl_chunks(f, CHUNK_BYTES):
                        spool = str(out_dir / f".spool-{len(units)}")
                        units.append(_Unit(**common, spool=spool, path=str(f), start=start, end=end))
            else:
                units.append(_Unit(**common, spool=str(out_dir / f".spool-{len(units)}")))
        return units

    def _read_all(self, units: list[_Unit], pool: Executor | None) -> list[dict[str, Any]]:
        """Read every unit (byte ranges on the pool when there is one); results in unit order."""
        progress = tqdm(desc="mix: read", unit=" rec", disable=not self.config.progress, mininterval=0.5)
        futures = {id(u): pool.submit(_read_unit, u) for u in units if u.path is not None} if pool else {}
        next_line: dict[str, int] = {}  # per file, the line number where the next unit starts
        results: list[dict[str, Any]] = []
        try:
            for unit in units:
                if unit.path is None:
                    source = self._source(unit.source)
                    result = _read_unit(unit, iter_raw(unit.source, source), progress)
                elif id(unit) in futures:
                    try:
                        result = futures[id(unit)].result()
                    except RecipeError:  # read it again here, to report the error's absolute line
                        first = count_lines_before(Path(unit.path), unit.start) + 1
                        _read_unit(unit, read_jsonl_range(Path(unit.path), unit.start, unit.end, first))
                        raise
                    progress.update(result["records"])
                else:
                    first = next_line.get(unit.path, 1)
                    result = _read_unit(unit, read_jsonl_range(Path(unit.path), unit.start, unit.end, first), progress)
                    next_line[unit.path] = first + result["records"]
                results.append(result)
        except BaseException:
            for future in futures.values():
                future.cancel()
            raise
        finally:
            progress.close()
        return results

    def _merge(
        self, units: list[_Unit], results: list[dict[str, Any]]
    ) -> tuple[dict[str, np.ndarray], list[dict[Any, int]], dict[str, dict[str, Any]]]:
        """Concatenate the units' per-record arrays; give each component one stratum numbering."""
        strata: list[dict[Any, int]] = [{} for _ in self.components]
        stats = {
            name: {"source": self.config.components[name].source, "records": 0, "skipped": 0}
            for name in self.components
        }
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("offset", "length", "tokens", "hash", "stratum")}
        parts["component"], parts["unit"] = [], []
        for unit_id, (unit, result) in enumerate(zip(units, results, strict=True)):
            ids = strata[unit.comp_id]
            remap = np.array([ids.setdefault(label, len(ids)) for label in result["labels"]], dtype=np.int32)
            n = len(result["offset"])
            for key in ("offset", "length", "tokens", "hash"):
                parts[key].append(result[key])
            parts["stratum"].append(remap[result["stratum"]] if n else np.zeros(0, np.int32))
            parts["component"].append(np.full(n, unit.comp_id, dtype=np.int32))
            parts["unit"].append(np.full(n, unit_id, dtype=np.int32))
            stats[unit.component]["records"] += result["records"]
            stats[unit.component]["skipped"] += result["skipped"]
        for name, s in stats.items():
            if s["records"] == 0:
                raise StageError(f"sources.{s['source']}: no records (mixture.components.{name})")
            if s["records"] == s["skipped"]:
                raise StageError(
                    f"sources.{s['source']}: none of its {s['records']} records holds an answered user turn"
                )
        return {k: np.concatenate(v) for k, v in parts.items()}, strata, stats

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
        self,
        path: Path,
        order: np.ndarray,
        units: list[_Unit],
        arrays: dict[str, np.ndarray],
        strata: list[dict[Any, int]],
        pool: Executor | None,
        workers: int,
    ) -> dict[str, Any]:
        """Write the chosen records in `order`. Blocks of lines are gathered from the spools and
        run through the Together file check on the pool, a few blocks ahead, while this process
        hashes and writes them in order."""
        fmt = self.config.format.value
        check = self.config.check
        spools = [u.spool for u in units]
        digest = hashlib.sha256()
        samples = size = 0
        pending: deque[Future[tuple[bytes, int, int]]] = deque()
        progress = tqdm(desc=f"mix: write {path.name}", total=len(order), unit=" rec", disable=not self.config.progress)

        def emit(block: bytes, lines: int, checked: int) -> None:
            nonlocal samples, size
            digest.update(block)
            out.write(block)
            samples += checked
            size += len(block)
            progress.update(lines)

        with open(path, "wb") as out:
            for first in range(0, len(order), BLOCK_LINES):
                rows = order[first : first + BLOCK_LINES]
                task = (
                    spools,
                    arrays["unit"][rows],
                    arrays["offset"][rows],
                    arrays["length"][rows],
                    (path, first + 1, fmt) if check else None,
                )
                if pool is None:
                    emit(*_build_block(*task))
                    continue
                pending.append(pool.submit(_build_block, *task))
                if len(pending) > 2 * workers:  # bounded read-ahead: memory stays a few blocks
                    emit(*pending.popleft().result())
            while pending:
                emit(*pending.popleft().result())
        progress.close()
        counts: dict[str, int] = {}
        tokens: dict[str, int] = {}
        by_stratum: dict[str, dict[str, int]] = {}
        for comp_id, name in enumerate(self.components):
            chosen = order[arrays["component"][order] == comp_id]
            counts[name] = len(chosen)
            tokens[name] = int(arrays["tokens"][chosen].sum())
            labels = {sid: label for label, sid in strata[comp_id].items()}
            if self.config.components[name].strata:
                ids, n = np.unique(arrays["stratum"][chosen], return_counts=True)
                by_stratum[name] = {str(labels[int(s)]): int(k) for s, k in zip(ids, n, strict=True)}
        return {
            "file": path.name,
            "check": check_report(path, fmt, samples, size) if check else None,
            "sha256": digest.hexdigest(),
            "examples": len(order),
            "tokens": int(sum(tokens.values())),
            "counts": counts,
            "tokens_by_component": tokens,
            "strata": by_stratum,
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


@dataclass(frozen=True)
class _Unit:
    """A piece of reading work: a byte range of a JSON Lines file (`path`) or a whole source,
    whose formatted lines go to its `spool` file."""

    comp_id: int
    component: str
    source: str
    kind: str
    text_template: str
    fmt: str
    template: str
    tokenizer: str
    strata_key: str | None
    spool: str
    path: str | None = None
    start: int = 0
    end: int = 0


def _read_unit(unit: _Unit, lines: Iterator[tuple[Any, str]] | None = None, progress: Any = None) -> dict[str, Any]:
    """Validate, format and spool every record of a unit; return per-record arrays (spool offset,
    length, tokens, stratum, hash).

    Runs in worker processes for byte ranges (`lines` None: line numbers there are relative to the
    range, so the caller re-reads a failing range itself to report the absolute line)."""
    if lines is None:
        assert unit.path is not None
        lines = read_jsonl_range(Path(unit.path), unit.start, unit.end, 1)
    count_tokens = TOKEN_COUNTERS[unit.tokenizer]
    kind, text_template, fmt, template, strata_key = (
        unit.kind,
        unit.text_template,
        unit.fmt,
        unit.template,
        unit.strata_key,
    )
    offset, length, tokens, stratum = array("q"), array("q"), array("q"), array("i")
    hashes = bytearray()
    labels: dict[Any, int] = {}
    position = records = skipped = 0
    with open(unit.spool, "wb", buffering=1 << 20) as spool:
        for raw, where in lines:
            record = parse_line(raw, where) if isinstance(raw, bytes) else raw
            records += 1
            if progress is not None and records % 1000 == 0:
                progress.update(1000)
            messages = to_messages(record, kind, where, text_template)
            if messages is None:
                skipped += 1
                continue
            example = format_example(messages, fmt, template)
            line = encode_line(example)
            if strata_key is None:
                label = None
            elif strata_key == "num_documents":
                prompt = messages[-2]["content"]
                label = prompt.count("\nDocument [") + prompt.startswith("Document [")
            elif strata_key == "num_turns":
                label = sum(m["role"] == "user" for m in messages)
            elif strata_key in record:
                label = record[strata_key]
                if not isinstance(label, (str, int, float, bool)):
                    raise StageError(
                        f"{where}: field {strata_key!r} (mixture.components.{unit.component}.strata) must be a scalar"
                    )
            else:
                raise StageError(
                    f"{where}: missing field {strata_key!r} named by mixture.components.{unit.component}.strata"
                )
            offset.append(position)
            length.append(len(line))
            position += len(line)
            tokens.append(count_tokens(example))
            stratum.append(labels.setdefault(label, len(labels)))
            hashes += hashlib.sha256(line).digest()[:8]  # for dedupe; sha256 is the fastest here (SHA-NI)
            spool.write(line)
    if progress is not None:
        progress.update(records % 1000)
    return {
        "records": records,
        "skipped": skipped,
        "labels": list(labels),
        "offset": np.frombuffer(offset, dtype=np.int64),
        "length": np.frombuffer(length, dtype=np.int64),
        "tokens": np.frombuffer(tokens, dtype=np.int64),
        "stratum": np.frombuffer(stratum, dtype=np.int32),
        "hash": np.frombuffer(bytes(hashes), dtype=np.int64),
    }


def _build_block(
    spools: list[str],
    unit_ids: np.ndarray,
    offsets: np.ndarray,
    lengths: np.ndarray,
    check: tuple[Path, int, str] | None,
) -> tuple[bytes, int, int]:
    """Gather these spooled lines, in this order, and run the file check on them (pread, not
    mmap: mapped spool pages would count as the process's memory). Returns (block, lines, samples)."""
    fds: dict[int, int] = {}
    lines = []
    try:
        for unit_id, offset, length in zip(unit_ids.tolist(), offsets.tolist(), lengths.tolist(), strict=True):
            fd = fds.get(unit_id)
            if fd is None:
                fd = fds[unit_id] = os.open(spools[unit_id], os.O_RDONLY)
            lines.append(os.pread(fd, length, offset))
    finally:
        for fd in fds.values():
            os.close(fd)
    block = b"".join(lines)
    return block, len(lines), (check_block(block, *check) if check else 0)
