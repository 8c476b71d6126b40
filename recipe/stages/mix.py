"""Mix: the stratified mixture that ends the recipe's Distill step (50% instructions / 25% BookSum /
25% multi-document QA in the seed).

What it supports:
- components, each a source with a `share` of the final file; shares sum to 1;
- `total` in `unit: examples | tokens`; per-component counts (or token budgets) by largest
  remainder, so they add up to `total` exactly;
- `strata` inside a component (a record field, or `num_documents` / `num_turns`), sampled
  proportionally to the strata's sizes;
- sampling without replacement (an error when a source is too small, unless `replace: true`); exact-
  duplicate removal within and across components; a deterministic shuffle from `seed`;
- decontamination (on by default, recipe/data/contamination.py): examples holding a Test prompt
  are dropped (the next record of the same random order replaces each), fail the stage, or counted;
- a held-out eval split drawn from records that are not in the mixture: `eval_fraction` of the total,
  split by the shares, or `eval_per_component` examples of every component drawn before the mixture
  (from each component's own random stream, so the same records in every job of a sweep: Test's held-out
  loss per component compares jobs on the same examples);
- two files of the same examples in the same order: `conversations.jsonl`, the canonical form that
  trainers and Test read (`messages` with the component, source and stratum of each), and
  `mixture.jsonl`, rendered as `format` asks (`text` through a template, `messages`,
  `prompt_completion`), with the Together file check on it; the eval split likewise.

How: one streaming pass (recipe/data/spool.py) reads every source record, normalises it to messages
and spools its two lines, keeping only a row of (offset, lengths, tokens, stratum, hash) per record
in memory. Selection (recipe/data/selection.py) works on those rows with numpy; the files are copied
from the spools in shuffled order. A few tens of bytes per record in memory whatever their size;
same config and seed, same files.
"""

from __future__ import annotations

from concurrent.futures import Executor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from recipe.artifacts import (
    CONVERSATIONS_FILE,
    EVAL_CONVERSATIONS_FILE,
    EVAL_FILE,
    MIXTURE_FILE,
    Conversations,
    Mixture,
    MixtureSplit,
    Planned,
)
from recipe.config import MixConfig, SourceConfig, SourceKind
from recipe.data import contamination, estimate, templates
from recipe.data.contamination import Decontamination
from recipe.data.filecheck import check_report
from recipe.data.jsonl import (
    CHUNK_BYTES,
    POOL_MIN_BYTES,
    jsonl_chunks,
    worker_count,
    worker_pool,
)
from recipe.data.selection import Draw, Records, composition, draw, first_occurrences, rescale_shares, seeded, targets
from recipe.data.sources import (
    check_source,
    hash_files,
    is_plain_jsonl,
    is_sliced,
    is_synthetic,
    iter_raw,
    source_files,
    source_identity,
)
from recipe.data.spool import ContentCheck, SpoolUnit, merge_units, read_all, write_spooled
from recipe.data.tokens import TOKEN_COUNTERS
from recipe.stages import Output, Plan, Stage, StageError, Workspace
from recipe.store import INDEXES, Artifact

DISTILLED = "distill"  # a component source naming the Distill stage's conversations


def distilled_source(artifact: Artifact) -> DictConfig:
    """The Distill artifact's conversations, read as a `messages` source."""
    path = str(Conversations.load(artifact).path)
    return OmegaConf.structured(SourceConfig(kind=SourceKind.messages, data_files=[path]))


class Mix(Stage):
    """Build `mixture.jsonl` (+ `eval.jsonl`) and a manifest of counts, tokens and sha256."""

    name = "mix"
    version = "1"
    schema = MixConfig

    def __init__(self, config: DictConfig, root: DictConfig) -> None:
        super().__init__(config, root)
        self.components = sorted(config.components)  # sorted: overrides may reorder keys
        self._validate()
        d = config.decontaminate
        self.decon = Decontamination(d, "mix.decontaminate") if d.enabled else None

    # ---- config ---------------------------------------------------------------------------
    def _validate(self) -> None:
        c = self.config
        if c.total <= 0:
            raise StageError(f"mix.total={c.total}: must be a positive number of {c.unit.value}")
        if not self.components:
            raise StageError("mix.components is empty: add at least one component with a source and a share")
        shares = {name: c.components[name].share for name in self.components}
        for name, share in shares.items():
            if not (0 < share <= 1 or (c.normalize and share > 0)):
                raise StageError(f"mix.components.{name}.share={share}: must be in (0, 1]")
        if c.rescale is not None and c.normalize:
            raise StageError(f"mix.rescale={c.rescale} and mix.normalize=true: choose one way to make shares sum to 1")
        if c.rescale is not None:
            shares = rescale_shares(shares, c.rescale)
        if c.normalize:  # weights: each divided by their sum
            total = sum(shares.values())
            shares = {name: share / total for name, share in shares.items()}
        if abs(sum(shares.values()) - 1) > 1e-6:
            quoted = ", ".join(f"{n}={s:g}" for n, s in shares.items())
            raise StageError(f"mix.components: shares must sum to 1, got {sum(shares.values()):g} ({quoted})")
        self.shares = shares
        if not 0 <= c.eval_fraction < 1:
            raise StageError(f"mix.eval_fraction={c.eval_fraction}: must be in [0, 1)")
        if c.eval_per_component < 0:
            raise StageError(f"mix.eval_per_component={c.eval_per_component}: must be 0 (off) or a number of examples")
        for name in self.components:
            if (c.components[name].eval or 0) < 0:
                raise StageError(f"mix.components.{name}.eval={c.components[name].eval}: must be 0 or more examples")
        self.held_out = {
            n: c.eval_per_component if c.components[n].eval is None else c.components[n].eval for n in self.components
        }
        self.per_component = any(self.held_out.values())  # held out per component, before the mixture
        if self.per_component and c.eval_fraction:
            said = f"mix.eval_per_component={c.eval_per_component}" if c.eval_per_component else "mix.components.*.eval"
            raise StageError(
                f"{said} and mix.eval_fraction={c.eval_fraction}: choose one held-out split (set the other to 0)"
            )
        if c.token_counter not in TOKEN_COUNTERS:
            raise StageError(f"mix.token_counter={c.token_counter!r}: use one of {', '.join(TOKEN_COUNTERS)}")
        templates.check_template(c.template, "mix.template")
        for name in self.components:
            comp = c.components[name]
            if comp.template is not None:
                templates.check_template(comp.template, f"mix.components.{name}.template")
            if comp.source == DISTILLED:  # the Distill artifact: the runner checks that distill is configured
                continue
            if comp.source not in self.root.sources:
                known = ", ".join(sorted([*self.root.sources, DISTILLED])) or "none"
                raise StageError(f"mix.components.{name}.source={comp.source!r}: no such source (known: {known})")
            source = self.root.sources[comp.source]
            check_source(comp.source, source)

    def upstream(self) -> tuple[str, ...]:
        uses_distill = any(self.config.components[n].source == DISTILLED for n in self.components)
        return ("distill",) if uses_distill else ()

    def _sources(self, inputs: dict[str, Artifact]) -> dict[str, DictConfig]:
        """Each component's source config by source name; `distill` is the Distill artifact's conversations."""
        used = {self.config.components[n].source for n in self.components}
        return {
            name: distilled_source(inputs[DISTILLED]) if name == DISTILLED else self.root.sources[name] for name in used
        }

    def semantic_config(self) -> dict[str, Any]:
        """The mixture node plus what each referenced source holds (file contents by sha256); the
        distilled conversations enter through the upstream fingerprint. Shares as applied."""
        semantic = super().semantic_config()
        for name in self.components:
            semantic["components"][name]["share"] = round(self.shares[name], 12)
        semantic.pop("rescale", None)  # shares as applied say it all
        semantic.pop("normalize", None)
        used = sorted({self.config.components[n].source for n in self.components} - {DISTILLED})
        local = [name for name in used if not (self.root.sources[name].hub_id or is_synthetic(self.root.sources[name]))]
        hash_files([f for name in local for f in source_files(name, self.root.sources[name])])
        semantic["sources"] = {name: source_identity(name, self.root.sources[name]) for name in used}
        # The suites' data by content and the settings, not the suites' whole config (max_tokens...).
        semantic["decontaminate"] = contamination.identity(self.config.decontaminate, "mix.decontaminate")
        return semantic

    def _targets(self, total: int) -> dict[str, int]:
        return targets(total, {n: self.shares[n] for n in self.components})

    def _eval_targets(self) -> dict[str, int]:
        """Held-out examples per component: `eval_per_component` each, or `eval_fraction` of the
        total split by the shares."""
        c = self.config
        if self.per_component:
            return dict(self.held_out)
        return self._targets(round(c.total * c.eval_fraction))

    def plan(self, inputs: dict[str, Artifact | None], upstream: dict[str, Planned]) -> Plan:
        c = self.config
        targets, held_out = self._targets(c.total), self._eval_targets()
        means = {n: self._mean_tokens(n, inputs, upstream) for n in self.components}
        held_out_in_unit = held_out
        if self.per_component and c.unit.value == "tokens":  # counted in examples: the plan wants tokens
            held_out_in_unit = {n: round(k * (means[n][0] or 0)) for n, k in held_out.items()}
        size = estimate.planned_mixture(targets, held_out_in_unit, means, c.unit.value)
        parts = ", ".join(f"{n} {k:,}" for n, k in targets.items())
        tokens = f"~{size.tokens:,} tokens" if size.tokens is not None else "tokens unknown"
        decon = self.decon.describe() if self.decon else "no decontamination"
        return Plan(
            f"{c.total:,} {c.unit.value} ({parts}), {tokens}",
            f"sources: {', '.join(f'{n} from {c.components[n].source}' for n in self.components)}; "
            f"{size.basis}; eval {self._eval_described(held_out)}; format {c.format.value}; {decon}",
            usd=0.0,
            size=size,
        )

    def _eval_described(self, held_out: dict[str, int]) -> str:
        c = self.config
        if self.per_component:
            each = ", ".join(f"{n} {k}" for n, k in held_out.items())
            return f"{sum(held_out.values()):,} examples ({each}; drawn first)"
        return f"{sum(held_out.values()):,} {c.unit.value}"

    def _mean_tokens(
        self, name: str, inputs: dict[str, Artifact | None], upstream: dict[str, Planned]
    ) -> tuple[float | None, str]:
        comp, c = self.config.components[name], self.config
        source = self.root.sources.get(comp.source)
        if comp.source == DISTILLED:
            distilled, planned = inputs.get(DISTILLED), upstream.get(DISTILLED)
            if distilled is None:  # not distilled yet: Distill's plan says how large
                mean = planned.tokens_per_example if planned else None
                return mean, f"Distill's plan: {planned.basis}" if planned else "Distill's size unknown"
            source = distilled_source(distilled)
        return estimate.mean_tokens(comp.source, source, c.format.value, comp.template or c.template, c.token_counter)

    # ---- run ------------------------------------------------------------------------------
    def run(self, inputs: dict[str, Artifact], workspace: Workspace) -> Output:
        decon = self.decon.for_run(workspace.store.root / INDEXES) if self.decon else None
        sources = self._sources(inputs)
        units = self._units(workspace.out_dir, sources)
        chunked = [u for u in units if u.path is not None]
        workers = min(worker_count(self.config.workers), len(chunked))
        if workers > 1 and sum(u.end - u.start for u in chunked) >= POOL_MIN_BYTES:
            with worker_pool(workers) as pool:
                return self._run(units, sources, workspace.out_dir, pool, workers, decon)
        return self._run(units, sources, workspace.out_dir, None, 1, decon)

    def _run(
        self,
        units: list[SpoolUnit],
        sources: dict[str, DictConfig],
        out_dir: Path,
        pool: Executor | None,
        workers: int,
        decon: Decontamination | None,
    ) -> Output:
        c = self.config
        results = self._read_all(units, sources, pool)
        records, stats = self._merge(units, results)

        keep = first_occurrences(records) if c.dedupe else np.ones(len(records), dtype=bool)
        train_targets = self._targets(c.total)
        eval_targets = self._targets(round(c.total * c.eval_fraction))  # {n: 0} with eval_per_component
        check = ContentCheck([u.spool for u in units], records, decon, pool) if decon else None
        train_parts, eval_parts = [], []
        try:  # the check's index file goes also when the selection fails
            for comp_id, name in enumerate(self.components):
                mine = np.flatnonzero((records.component == comp_id) & keep)
                stats[name]["duplicates_removed"] = int(np.count_nonzero(records.component == comp_id)) - len(mine)
                if self.per_component:
                    held, mine = self._held_out_first(name, mine)
                    eval_parts.append(held)
                spec = Draw(
                    name=name,
                    target=train_targets[name],
                    eval_target=eval_targets[name],
                    by_tokens=c.unit.value == "tokens",
                    seed=c.seed,
                    replace=c.components[name].replace,
                    drop_bad=decon is not None and decon.action == "drop",
                )
                too_small = partial(self._too_small, name, records=len(mine))
                train, held = draw(spec, records, mine, comp_id, check, too_small, partial(self._eval_short, name))
                train_parts.append(train)
                if not self.per_component:
                    eval_parts.append(held)
        finally:
            if check:
                check.close()
        contamination = self._contamination(check, decon, records, np.concatenate(train_parts)) if check else None
        shuffle = seeded(c.seed, "\0shuffle")
        train_order = shuffle.permutation(np.concatenate(train_parts))
        if self.per_component:  # an order of its own too: the same file whatever the mixture's size
            shuffle = seeded(c.seed, "\0heldout-shuffle")
        eval_order = shuffle.permutation(np.concatenate(eval_parts))
        checks: dict[str, Any] = {}
        try:
            write = lambda paths, order, split: self._write(paths, order, units, records, pool, workers, checks, split)  # noqa: E731
            train = write((out_dir / MIXTURE_FILE, out_dir / CONVERSATIONS_FILE), train_order, "train")
            held_out = (
                write((out_dir / EVAL_FILE, out_dir / EVAL_CONVERSATIONS_FILE), eval_order, "eval")
                if len(eval_order)
                else None
            )
        finally:
            for unit in units:
                Path(unit.spool).unlink(missing_ok=True)
        mixture = Mixture(
            dir=out_dir,
            format=c.format.value,
            template=c.template,
            component_templates={n: c.components[n].template for n in self.components if c.components[n].template},
            train=train,
            eval=held_out,
            contamination=contamination,
        )
        record = {
            "total": c.total,
            "unit": c.unit.value,
            "seed": c.seed,
            "shares": {name: round(self.shares[name], 12) for name in self.components},
            "check": checks.get("train"),  # the Together file check of mixture.jsonl (eval.jsonl: eval_check)
            "eval_check": checks.get("eval"),
            "sources": stats,
            "contamination_counts": decon.counts() if decon else None,
        }
        return Output(mixture, record)

    def _held_out_first(self, name: str, mine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The component's held-out count of its records (`eval`, else `eval_per_component`), drawn
        before the mixture from a stream of their own (seed and component name only: not the
        shares, the total or the other components), and the records left for the mixture."""
        k = self.held_out[name]
        if k and len(mine) <= k:
            key = (
                f"mix.components.{name}.eval"
                if self.config.components[name].eval is not None
                else "mix.eval_per_component"
            )
            raise StageError(
                f"{key}={k}: component {name!r} has {len(mine)} distinct records and needs more than that "
                f"(some for the mixture); lower {key}"
            )
        held = seeded(self.config.seed, f"{name}\0heldout").permutation(mine)[:k]
        return np.sort(held), np.setdiff1d(mine, held, assume_unique=True)

    def _contamination(
        self, check: ContentCheck, decon: Decontamination | None, records: Records, chosen: np.ndarray
    ) -> dict[str, Any]:
        """What the check found, in the mixture or dropped; `fail` stops here. Examples are named
        `<component>#<n>`: the n-th record read for that component."""
        assert decon is not None
        first = np.searchsorted(records.component, np.arange(len(self.components)))
        comp = records.component
        name = lambda row: f"{self.components[comp[row]]}#{row - int(first[comp[row]]) + 1}"  # noqa: E731
        return decon.record(check.found, name, set(chosen.tolist()))

    def _units(self, out_dir: Path, sources: dict[str, DictConfig]) -> list[SpoolUnit]:
        """Split the reading into units: byte ranges of plain JSON Lines files (which can run in
        worker processes), or whole sources (hub, parquet, zstd, JSON lists) read here. Each unit
        writes its formatted lines to its own spool file."""
        c = self.config
        units = []
        for comp_id, name in enumerate(self.components):
            comp = c.components[name]
            source = sources[comp.source]
            common = {
                "comp_id": comp_id,
                "component": name,
                "source": comp.source,
                "kind": source.kind.value,
                "text_template": source.template,
                "fmt": c.format.value,
                "template": comp.template or c.template,
                "token_counter": c.token_counter,
                "strata_key": comp.strata,
                "columns": tuple(sorted((source.get("columns") or {}).items())),
            }
            files = [] if source.hub_id or is_synthetic(source) else source_files(comp.source, source)
            if files and all(is_plain_jsonl(f) for f in files) and not is_sliced(source):
                for f in files:
                    for start, end in jsonl_chunks(f, CHUNK_BYTES):
                        spool = str(out_dir / f".spool-{len(units)}")
                        units.append(SpoolUnit(**common, spool=spool, path=str(f), start=start, end=end))
            else:
                units.append(SpoolUnit(**common, spool=str(out_dir / f".spool-{len(units)}")))
        return units

    def _read_all(
        self, units: list[SpoolUnit], sources: dict[str, DictConfig], pool: Executor | None
    ) -> list[dict[str, Any]]:
        whole = lambda unit: iter_raw(unit.source, sources[unit.source])  # noqa: E731
        return read_all(units, pool, whole, self.config.progress)

    def _merge(
        self, units: list[SpoolUnit], results: list[dict[str, Any]]
    ) -> tuple[Records, dict[str, dict[str, Any]]]:
        sources = [self.config.components[name].source for name in self.components]
        records, stats = merge_units(units, results, self.components, sources)
        for name, s in stats.items():
            if s["records"] == 0:
                raise StageError(f"sources.{s['source']}: no records (mix.components.{name})")
            if s["records"] == s["skipped"]:
                raise StageError(
                    f"sources.{s['source']}: none of its {s['records']} records holds an answered user turn"
                )
        return records, stats

    def _too_small(self, name: str, label: Any, stratified: bool, need: int, have: int, records: int) -> None:
        unit = self.config.unit.value
        where = f" in stratum {label!r}" if stratified else ""
        raise StageError(
            f"mix.components.{name}: needs {need} {unit}{where} but source "
            f"{self.config.components[name].source!r} has {have} ({records} distinct records); lower "
            f"mix.total or this share, or set mix.components.{name}.replace=true"
        )

    def _eval_short(self, name: str, label: Any, stratified: bool, need: int, have: int) -> None:
        raise StageError(
            f"mix.eval_fraction={self.config.eval_fraction}: component {name!r}"
            f"{f' stratum {label!r}' if stratified else ''} needs {need} held-out "
            f"{self.config.unit.value} but only {have} are left outside the mixture"
        )

    def _write(
        self,
        paths: tuple[Path, Path],
        order: np.ndarray,
        units: list[SpoolUnit],
        records: Records,
        pool: Executor | None,
        workers: int,
        checks: dict[str, Any],
        split: str,
    ) -> MixtureSplit:
        """Write the chosen records in `order`: their upload lines to `paths[0]` (Together-checked,
        the check's report into `checks[split]`) and their canonical conversation lines to
        `paths[1]`, in one pass over the spools."""
        fmt = self.config.format.value
        check = self.config.check
        digest, canonical_digest, samples, size = write_spooled(
            paths, order, [u.spool for u in units], records, fmt if check else None, pool, workers, self.config.progress
        )
        if check:
            checks[split] = check_report(paths[0], fmt, samples, size)
        stratified = [bool(self.config.components[name].strata) for name in self.components]
        return MixtureSplit(
            upload_file=paths[0].name,
            upload_sha256=digest,
            conversations_file=paths[1].name,
            conversations_sha256=canonical_digest,
            examples=len(order),
            composition=composition(order, records, self.components, stratified),
        )
