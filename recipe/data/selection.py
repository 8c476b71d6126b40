"""Mix's selection arithmetic: how many of each component, which records, in what order.

Every record read for a mixture is a row of `Records` (its lines stay in the spool files, see
recipe/data/spool.py); selection is numpy over those rows:
- shares to counts (or token budgets) by largest remainder, so they add up to `total` exactly
  (`targets`); `rescale_shares` moves one component and keeps the others' proportions;
- exact duplicates removed, the first occurrence kept (`first_occurrences`);
- per component, a stratified random draw (`draw`): each stratum's quota in proportion to its size,
  records in a random order from the seed; the first records reaching the quota are chosen, the
  next ones form the held-out split; a `ContentCheck` may drop contaminated ones on the way;
- what was chosen, counted per component and stratum (`composition`).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import numpy as np

from recipe.artifacts import Composition
from recipe.errors import RecipeError


@dataclass(frozen=True)
class Records:
    """One row per record read, in read order (component by component)."""

    component: np.ndarray  # int32: index into the mix's sorted component names
    unit: np.ndarray  # int32: the spool unit holding its lines
    offset: np.ndarray  # int64: where its upload line starts in that spool (its canonical line follows)
    length: np.ndarray  # int64: the upload line's bytes
    canonical_length: np.ndarray  # int64: the canonical line's bytes
    tokens: np.ndarray  # int64: tokens as mix.token_counter counts them
    hash: np.ndarray  # int64: content hash of its messages (duplicates)
    stratum: np.ndarray  # int32: its stratum's id within its component (see `strata`)
    # Per component, stratum label -> id (the label is the record's strata field value).
    strata: tuple[dict[Any, int], ...] = field(default=())

    def __len__(self) -> int:
        return len(self.offset)

    def rows(self, chosen: np.ndarray) -> Records:
        """The records `chosen` (row numbers), e.g. to hand a batch to a worker process."""
        arrays = {f.name: getattr(self, f.name)[chosen] for f in fields(self) if f.name != "strata"}
        return Records(**arrays, strata=self.strata)

    @classmethod
    def concatenate(cls, parts: Sequence[dict[str, np.ndarray]], strata: tuple[dict[Any, int], ...]) -> Records:
        names = [f.name for f in fields(cls) if f.name != "strata"]
        return cls(**{n: np.concatenate([p[n] for p in parts]) for n in names}, strata=strata)


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


def targets(total: int, shares: dict[str, float]) -> dict[str, int]:
    """Each component's count (or token budget) of `total`, adding up to it exactly."""
    return dict(zip(shares, largest_remainder(total, list(shares.values())), strict=True))


def rescale_shares(shares: dict[str, float], fixed: str) -> dict[str, float]:
    """Keep `fixed`'s share; scale the others in proportion so that all sum to 1 (the rule that
    lets a sweep move one component: 0.6 instructions leaves 0.2 + 0.2 of 0.25 + 0.25)."""
    if fixed not in shares:
        raise RecipeError(f"mix.rescale={fixed!r}: not a component ({', '.join(shares)})")
    if shares[fixed] >= 1 and len(shares) > 1:
        raise RecipeError(f"mix.components.{fixed}.share={shares[fixed]}: leaves nothing for the others")
    others = sum(v for k, v in shares.items() if k != fixed)
    scale = (1 - shares[fixed]) / others if others else 0.0
    return {k: v if k == fixed else v * scale for k, v in shares.items()}


def take(size: np.ndarray, target: int) -> int | None:
    """How many leading records reach `target` (records, or tokens when sizes are token counts);
    None when all of them together fall short."""
    if target <= 0:
        return 0
    cumulative = np.cumsum(size)
    if len(cumulative) == 0 or cumulative[-1] < target:
        return None
    return int(np.searchsorted(cumulative, target, side="left")) + 1


def first_occurrences(records: Records) -> np.ndarray:
    """A mask of the records to keep: the first of each set of identical conversations."""
    keep = np.zeros(len(records), dtype=bool)
    keep[np.unique(records.hash, return_index=True)[1]] = True
    return keep


def seeded(seed: int, name: str) -> np.random.Generator:
    """The random stream of one named draw (a component, the final shuffle) under `seed`: one
    draw's records do not change when another component changes."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(name.encode())]))


class Checker(Protocol):
    """What `draw` needs of a content check (recipe.data.spool.ContentCheck)."""

    def __call__(self, rows: np.ndarray) -> np.ndarray: ...

    def first_clean(
        self, perm: np.ndarray, size: np.ndarray, target: int
    ) -> tuple[np.ndarray, np.ndarray, int | None]: ...


@dataclass(frozen=True)
class Draw:
    """One component's draw: how much it needs and how a shortfall is met."""

    name: str
    target: int  # records, or tokens when by_tokens
    eval_target: int
    by_tokens: bool
    seed: int
    replace: bool  # repeat records when the source is too small (else `too_small` raises)
    drop_bad: bool  # contaminated records are replaced by the next ones (else only found)


def draw(
    spec: Draw,
    records: Records,
    mine: np.ndarray,
    comp_id: int,
    check: Checker | None,
    too_small: Callable[[Any, bool, int, int], None],
    eval_short: Callable[[Any, bool, int, int], None],
) -> tuple[np.ndarray, np.ndarray]:
    """The component's training rows and held-out rows among `mine`, stratum by stratum.
    `too_small(label, stratified, need, have)` and `eval_short(...)` raise the stage's errors."""
    rng = seeded(spec.seed, spec.name)
    # Strata in a stable order (numbers numerically, then strings) so the draw is reproducible.
    ordered = sorted(
        records.strata[comp_id].items(), key=lambda kv: (isinstance(kv[0], str), kv[0] if kv[0] is not None else 0)
    )
    stratified = len(ordered) > 1
    groups = [mine[records.stratum[mine] == sid] for _, sid in ordered]
    weight = [float(records.tokens[g].sum()) if spec.by_tokens else float(len(g)) for g in groups]
    train_k = largest_remainder(spec.target, weight)
    eval_k = largest_remainder(spec.eval_target, weight)
    train, held = [], []
    for (label, _), group, k, e in zip(ordered, groups, train_k, eval_k, strict=True):
        perm = rng.permutation(group)
        size = records.tokens[perm] if spec.by_tokens else np.ones(len(perm), dtype=np.int64)
        if check is not None and spec.drop_bad:
            perm, size, n_train = check.first_clean(perm, size, k)
        else:
            n_train = take(size, k)
            if check is not None:
                check(perm[: len(perm) if n_train is None else n_train])
        if n_train is None:  # not enough records for the training share
            if not spec.replace:
                too_small(label, stratified, k, int(size.sum()))
            reps = -(-k // max(int(size.sum()), 1))
            tiled = np.tile(perm, reps)
            train.append(tiled[: take(np.tile(size, reps), k)])
            n_train = len(perm)
        else:
            train.append(perm[:n_train])
        rest, rest_size = perm[n_train:], size[n_train:]
        n_eval = take(rest_size, e)
        if n_eval is None:
            eval_short(label, stratified, e, int(rest_size.sum()))
            n_eval = len(rest)
        held.append(rest[:n_eval])
    return np.concatenate(train or [mine[:0]]), np.concatenate(held or [mine[:0]])


def composition(order: np.ndarray, records: Records, components: list[str], stratified: list[bool]) -> Composition:
    counts: dict[str, int] = {}
    tokens: dict[str, int] = {}
    by_stratum: dict[str, dict[str, int]] = {}
    for comp_id, name in enumerate(components):
        chosen = order[records.component[order] == comp_id]
        counts[name] = len(chosen)
        tokens[name] = int(records.tokens[chosen].sum())
        if stratified[comp_id]:
            labels = {sid: label for label, sid in records.strata[comp_id].items()}
            ids, n = np.unique(records.stratum[chosen], return_counts=True)
            by_stratum[name] = {str(labels[int(s)]): int(k) for s, k in zip(ids, n, strict=True)}
    return Composition(counts, tokens, by_stratum)
