"""Sizes a dry run can state before a stage has run: the mean tokens of a source's examples.

A local source is measured: its first records are read, normalised and rendered exactly as Mix
renders them, and counted with Mix's token counter. A hub source is not read by a dry run (no
network): its `estimate_tokens` (a stated assumption in its config) stands in, or nothing.
"""

from __future__ import annotations

from itertools import islice

from omegaconf import DictConfig

from recipe.artifacts import Planned
from recipe.data import templates
from recipe.data.sources import iter_records, to_messages
from recipe.data.tokens import TOKEN_COUNTERS

SAMPLE_RECORDS = 1000  # enough for a mean within a few percent on the shipped samples; milliseconds


def mean_tokens(name: str, source: DictConfig, fmt: str, template: str, token_counter: str) -> tuple[float | None, str]:
    """(mean tokens per example, how it was found) for a source as Mix would render it; None when
    the source is on the hub and states no `estimate_tokens`, or holds no usable record."""
    key = f"sources.{name}"
    if source.hub_id:
        stated = source.get("estimate_tokens")
        if stated is None:
            return None, f"{key} is on the hub (set {key}.estimate_tokens to price it offline)"
        return float(stated), f"{key}.estimate_tokens={stated}"
    count = TOKEN_COUNTERS[token_counter]
    sizes = []
    for record, where in islice(iter_records(name, source), SAMPLE_RECORDS):
        messages = to_messages(record, source.kind.value, where, source.template)
        if messages is not None:
            sizes.append(count(templates.example(messages, fmt, template)))
    if not sizes:
        return None, f"{key}: no usable record"
    return sum(sizes) / len(sizes), f"{key} measured on its first {len(sizes)} examples"


def planned_mixture(
    targets: dict[str, int], eval_targets: dict[str, int], means: dict[str, tuple[float | None, str]], unit: str
) -> Planned:
    """The mixture a dry run expects (examples and tokens, train and eval split) from each
    component's target (examples, or tokens when `unit` is tokens) and mean tokens per example; its
    `basis` says how the tokens were found."""
    known = all(mean is not None for mean, _ in means.values())

    def size(wanted: dict[str, int]) -> tuple[int | None, int | None]:
        if unit == "tokens":
            examples = sum(round(k / m) for n, k in wanted.items() if (m := means[n][0])) if known else None
            return examples, sum(wanted.values())
        tokens = round(sum(k * (means[n][0] or 0) for n, k in wanted.items())) if known else None
        return sum(wanted.values()), tokens

    (examples, tokens), (eval_examples, eval_tokens) = size(targets), size(eval_targets)
    basis = "; ".join(
        f"{n} ~{mean:,.0f} tokens/example ({how})" if mean is not None else f"{n}: {how}"
        for n, (mean, how) in means.items()
    )
    return Planned(examples, tokens, eval_examples or 0, eval_tokens, basis)
