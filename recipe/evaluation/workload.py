"""Test's workload: what a Test run would ask, and at most what it would cost (for its Plan).

A suite whose records are local is read (it is small and on disk) and its prompts are built exactly
as the run builds them, so its requests and prompt tokens are counted, not guessed. A suite on the
hub or behind a URL is not read by a dry run: its size is `max_examples`, else `records` (the
published size, stated in its config), and its prompt tokens come from `estimate_tokens` (per record;
per document for mqa). Answers are counted at `max_tokens` each, so the cost is an upper bound.
Tokens are the ~4 characters per token rule used for every estimate here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from recipe.data.tokens import approx_tokens
from recipe.evaluation import suites

QUESTION_TOKENS = 20  # an NQ-Open question and the prompt's "Question: ... Answer:" frame


@dataclass
class Requests:
    """Requests of one Test run for ONE evaluated model, and the judge's requests per order."""

    prompts: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0  # at most: max_tokens per prompt
    judge_calls: int = 0
    judge_prompt_tokens: int = 0
    judge_output_tokens: int = 0
    read: list[str] = field(default_factory=list)  # suites counted from their records
    assumed: list[str] = field(default_factory=list)  # suites sized from stated assumptions
    unknown: list[str] = field(default_factory=list)  # suites that cannot be sized offline

    def cost(self, ledger: Any, models: int, orders: int, heldout_tokens: int) -> tuple[float, str]:
        """(USD at most, what the plan says of it) for the run: every model's prompts and held-out
        samples, and the judge's calls in every order for every model."""
        tokens_in = models * (self.prompt_tokens + orders * self.judge_prompt_tokens)
        tokens_out = models * (self.output_tokens + heldout_tokens + orders * self.judge_output_tokens)
        usd = round(ledger.cost(tokens_in, tokens_out), 2)
        return usd, f"; ~{tokens_in:,} prompt tokens, at most ${usd:,.2f} at test.prices"

    def describe(self, models: int, orders: int, heldout: int) -> str:
        return (
            f"{(self.prompts + heldout) * models:,} generations and {self.judge_calls * orders * models:,} judge calls"
        )

    def assumptions(self) -> str:
        """What the counts rest on: suites sized from stated assumptions, and suites not sized at all."""
        said = []
        if self.assumed:
            said.append(f"assumed: {'; '.join(self.assumed)}")
        if self.unknown:
            said.append(f"not sized offline: {', '.join(self.unknown)}")
        return "; ".join(said)

    def add_judged(
        self, calls: int, instruction_tokens: int, reference_tokens: int, answer_tokens: int, out: int
    ) -> None:
        """Each judged prompt: the judge reads its instruction, the reference and the model's answer."""
        self.judge_calls += calls
        self.judge_prompt_tokens += calls * approx_tokens(suites.JUDGE_SYSTEM) + instruction_tokens + reference_tokens
        self.judge_prompt_tokens += calls * answer_tokens
        self.judge_output_tokens += calls * out


def count(config: Any, built: dict[str, list[suites.Item]], judge_out: int) -> Requests:
    """The requests of every suite of a Test config: counted from `built` prompts, else sized from
    assumptions. A tuned model on a temporary dedicated endpoint is billed by the minute, which a
    dry run cannot price: the plan then has no figure rather than a token price that is not the bill."""
    work = Requests()
    if config.endpoint.value == "dedicated" and any(m.value == "tuned" for m in config.models):
        work.unknown.append("the tuned model's temporary dedicated endpoint (billed per minute)")
    for name, suite in config.suites.items():
        if name in built:
            add_read(work, name, suite, built[name], judge_out)
        else:
            add_unread(work, name, suite, judge_out)
    return work


def add_read(work: Requests, name: str, suite: Any, items: Sequence[suites.Item], judge_out: int) -> None:
    """A suite whose prompts were built from its records."""
    work.read.append(name)
    work.prompts += len(items)
    work.prompt_tokens += sum(approx_tokens(i.prompt) for i in items)
    work.output_tokens += len(items) * suite.max_tokens
    if suite.kind.value == "judge":
        instruction = sum(approx_tokens(i.instruction) for i in items)
        reference = sum(approx_tokens(i.answers[0]) for i in items)
        work.add_judged(len(items), instruction, reference, suite.max_tokens, judge_out)


def add_unread(work: Requests, name: str, suite: Any, judge_out: int) -> None:
    """A suite not read by a dry run, sized from `max_examples` / `records` and `estimate_tokens`."""
    sizes = [n for n in (suite.max_examples, suite.get("records")) if n is not None]
    per = suite.get("estimate_tokens")
    if not sizes or per is None:
        need = [k for k, v in (("records", sizes), ("estimate_tokens", per)) if v in (None, [])]
        work.unknown.append(f"{name} (set test.suites.{name}.{' and '.join(need)})")
        return
    n = min(sizes)
    work.assumed.append(
        f"{name}: {n:,} records x ~{per:,} tokens{' per document' if suite.kind.value == 'mqa' else ''}"
    )
    kind = suite.kind.value
    if kind == "mqa":
        settings = len(suite.gold_positions)
        work.prompts += n * settings * len(suite.num_documents)
        frame = approx_tokens(suites.MQA_INSTRUCTION) + QUESTION_TOKENS
        work.prompt_tokens += n * settings * sum(d * per + frame for d in suite.num_documents)
        work.output_tokens += n * settings * len(suite.num_documents) * suite.max_tokens
        return
    work.prompts += n
    work.prompt_tokens += n * (per + (approx_tokens(suites.BOOKSUM_QUESTION) if kind == "booksum" else 0))
    work.output_tokens += n * suite.max_tokens
    if kind == "judge":  # the reference answer counted as long as the model's longest
        work.add_judged(n, n * per, n * suite.max_tokens, suite.max_tokens, judge_out)


def suite_line(name: str, suite: Any) -> str:
    """A suite as the plan names it: kind, how many records, settings."""
    kind = suite.kind.value
    size = f"≤{suite.max_examples}" if suite.max_examples else "all"
    detail = (
        f", {len(suite.num_documents)}×{len(suite.gold_positions)} settings" if kind in ("mqa", "synthetic") else ""
    )
    if kind == "synthetic":
        size = f"{suite.synthetic.examples} made"
    return f"{name} ({kind}, {size} records{detail}{', judged both orders' if kind == 'judge' else ''})"
