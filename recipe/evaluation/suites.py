"""The Test suites: records -> prompts, and generations -> scores.

- `mqa`: multi-document QA in the "Lost in the Middle" setup (arXiv 2307.03172). Each record holds a
  question, its gold answers and documents (`ctxs`, the gold one flagged `isgold` or else first); a
  prompt holds the gold document and the first `n - 1` others, the gold one placed first, in the
  middle or last. Scored by `best_subspan_em` per (number of documents, gold position).
- `booksum`: a long text and its reference summary; the prompt is the Long-Data-Collections one
  (`{text}\\n\\nQ: Can you write an appropriate summary of the above paragraphs?\\nA:`); ROUGE-1/2/L.
- `judge`: AlpacaEval-style pairwise judging of a model's answer against a reference model's
  answer, each pair asked in both orders; win rate with its standard error.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from recipe.data import mqa
from recipe.data.sources import DataError
from recipe.evaluation.metrics import ROUGE_KEYS, best_subspan_em, pair_score, parse_verdict, rouge_each, win_rate

MQA_INSTRUCTION = mqa.INSTRUCTION
BOOKSUM_QUESTION = "Q: Can you write an appropriate summary of the above paragraphs?\nA:"
JUDGE_SYSTEM = (
    "You are a careful, impartial judge of AI assistants. You compare two outputs for the same "
    "instruction and decide which one follows it better: more helpful, correct, relevant and clear. "
    "Do not let the order of the outputs or their length decide."
)


@dataclass(frozen=True)
class Item:
    """One prompt of a suite and what it is scored against."""

    suite: str
    id: str
    prompt: str
    group: tuple[tuple[str, Any], ...] = ()  # e.g. (("documents", 20), ("gold", "middle"))
    answers: tuple[str, ...] = ()  # mqa: gold answers; booksum: the reference summary; judge: reference answer
    instruction: str = ""  # judge: the instruction as the judge sees it


@dataclass
class Skipped:
    """Records a suite could not use, by reason (reported, never silent)."""

    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, reason: str) -> None:
        self.counts[reason] += 1


def _text(record: dict[str, Any], key: str, where: str, suite_key: str, option: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DataError(
            f"{where}: no text field {key!r} (set {suite_key}.{option} to the field holding it; "
            f"fields here: {', '.join(sorted(record))})"
        )
    return value


def mqa_items(
    name: str,
    records: Iterable[tuple[dict[str, Any], str]],
    num_documents: Sequence[int],
    positions: Sequence[str],
    suite_key: str,
) -> tuple[list[Item], Skipped]:
    """Every record asked in every setting (documents x gold position), as the paper does: the
    settings of one question share it (uncertainty.py resamples by question)."""
    items, skipped = [], Skipped()
    for index, (record, where) in enumerate(records):
        question, answers, ctxs, gold_at = _parts(record, where)
        for n in num_documents:
            if len(ctxs) < n:
                skipped.add(f"fewer than {n} documents")
                continue
            for position in positions:
                documents = mqa.placed(ctxs, gold_at, n, position)
                assert documents is not None
                items.append(
                    Item(
                        suite=name,
                        id=f"{name}/{index}@{n}docs/{position}",  # one unit: the question (uncertainty.py)
                        prompt=mqa.prompt(question, documents),
                        group=(("documents", n), ("gold", position)),
                        answers=tuple(answers),
                    )
                )
    return items, skipped


def synthetic_items(name: str, records: Iterable[tuple[dict[str, Any], str]]) -> list[Item]:
    """One prompt per made-up record, in the setting it was made for (recipe/data/synthetic.py)."""
    items = []
    for index, (record, where) in enumerate(records):
        question, answers, ctxs, _ = _parts(record, where)
        n, position = record["documents"], record["gold"]
        items.append(
            Item(
                suite=name,
                id=f"{name}/{index}@{n}docs/{position}",
                prompt=mqa.prompt(question, ctxs),
                group=(("documents", n), ("gold", position)),
                answers=tuple(answers),
            )
        )
    return items


def _parts(record: dict[str, Any], where: str) -> tuple[str, list[str], list[dict[str, Any]], int]:
    try:
        return mqa.parts(record, where)
    except mqa.RecordError as e:
        raise DataError(str(e)) from None


def _cut(text: str, max_chars: int | None) -> str:
    """At most max_chars, cut at the last paragraph (or line) break that fits."""
    if max_chars is None or len(text) <= max_chars:
        return text
    head = text[:max_chars]
    for mark in ("\n\n", "\n", ". "):
        at = head.rfind(mark)
        if at > max_chars // 2:
            return head[: at + (1 if mark == ". " else 0)]
    return head


def booksum_items(
    name: str,
    records: Iterable[tuple[dict[str, Any], str]],
    text_field: str,
    summary_field: str,
    max_chars: int | None,
    suite_key: str,
) -> list[Item]:
    items = []
    for index, (record, where) in enumerate(records):
        text = _text(record, text_field, where, suite_key, "text_field")
        summary = _text(record, summary_field, where, suite_key, "summary_field")
        items.append(
            Item(
                suite=name,
                id=f"{name}/{index}",
                prompt=f"{_cut(text.strip(), max_chars)}\n\n{BOOKSUM_QUESTION}",
                answers=(summary.strip(),),
            )
        )
    return items


def judge_items(
    name: str,
    records: Iterable[tuple[dict[str, Any], str]],
    instruction_field: str,
    reference_field: str,
    suite_key: str,
) -> list[Item]:
    items = []
    for index, (record, where) in enumerate(records):
        instruction = _text(record, instruction_field, where, suite_key, "instruction_field")
        extra = record.get("input")  # Alpaca-style records may carry an input beside the instruction
        if isinstance(extra, str) and extra.strip():
            instruction = f"{instruction}\n\n{extra.strip()}"
        reference = _text(record, reference_field, where, suite_key, "reference_field")
        items.append(
            Item(suite=name, id=f"{name}/{index}", prompt=instruction, answers=(reference,), instruction=instruction)
        )
    return items


def judge_messages(instruction: str, output_a: str, output_b: str) -> list[dict[str, str]]:
    """The judge's conversation for one ordered pair (AlpacaEval's "Output (a)/(b)" wording)."""
    user = (
        f"# Instruction\n{instruction}\n\n# Output (a)\n{output_a}\n\n# Output (b)\n{output_b}\n\n"
        "Which output is better? Reply with exactly one of: Output (a), Output (b)."
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


# Suites scored on their answers' first line (best_subspan_em): what follows it is never read.
FIRST_LINE_KINDS = ("mqa", "synthetic")


def score_mqa(items: Sequence[Item], answers: dict[str, str]) -> dict[str, Any]:
    """Accuracy per (documents, gold position), per number of documents, and overall."""
    cells: dict[tuple[int, str], list[float]] = defaultdict(list)
    per_prompt: dict[str, dict[str, float | None]] = defaultdict(dict)
    for item in items:
        g = dict(item.group)
        em = best_subspan_em(answers[item.id], item.answers)
        cells[(g["documents"], g["gold"])].append(em)
        per_prompt["accuracy"][item.id] = per_prompt[f"docs{g['documents']}"][item.id] = em
    by_docs: dict[int, list[float]] = defaultdict(list)
    for (n, _), values in cells.items():
        by_docs[n].extend(values)
    everything = [v for values in cells.values() for v in values]
    order = {"first": 0, "middle": 1, "last": 2}
    return {
        "accuracy": _mean(everything),
        "by_documents": {str(n): _mean(v) for n, v in sorted(by_docs.items())},
        "by_position": {
            f"{n}/{p}": _mean(v) for (n, p), v in sorted(cells.items(), key=lambda c: (c[0][0], order[c[0][1]]))
        },
        "prompts": len(everything),
        "per_prompt": dict(per_prompt),
    }


def score_booksum(items: Sequence[Item], answers: dict[str, str]) -> dict[str, Any]:
    each = rouge_each([answers[i.id] for i in items], [i.answers[0] for i in items])
    scores = {key: statistics.fmean(e[key] for e in each) if each else 0.0 for key in ROUGE_KEYS}
    per_prompt = {key: {i.id: e[key] for i, e in zip(items, each, strict=True)} for key in ROUGE_KEYS}
    return {**scores, "prompts": len(items), "per_prompt": per_prompt}


def score_judge(items: Sequence[Item], verdicts: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """Win rate of the model over the reference from the judge's two replies per prompt
    (model shown as (a), then as (b))."""
    scores = []
    for item in items:
        first, second = verdicts[item.id]
        scores.append(pair_score(parse_verdict(first), parse_verdict(second)))
    rate, stderr, counted = win_rate(scores)
    per_prompt = {"win_rate": {i.id: s for i, s in zip(items, scores, strict=True)}}
    if not counted:  # the judge never gave a readable verdict: no figure, rather than a false 0
        return {"win_rate": None, "stderr": None, "prompts": len(items), "judged": 0, "per_prompt": per_prompt}
    return {"win_rate": rate, "stderr": stderr, "prompts": len(items), "judged": counted, "per_prompt": per_prompt}


def score_judge_alpaca_eval(
    items: Sequence[Item], answers: dict[str, str], verdicts: dict[str, tuple[str, str]]
) -> dict[str, Any]:
    """AlpacaEval's win rate of the model over the reference, in %, from one seeded order per
    prompt (`verdicts[id] = (reply, "model_first" | "reference_first" | "identical")`)."""
    from recipe.evaluation import alpaca_eval

    scores = [
        alpaca_eval.score(answers[i.id], i.answers[0], verdicts[i.id][0], verdicts[i.id][1] == "model_first")
        for i in items
    ]
    rate, stderr, counted = alpaca_eval.win_rate_percent(scores)
    per_prompt = {"win_rate_pct": {i.id: None if s is None else 100 * s for i, s in zip(items, scores, strict=True)}}
    return {
        "win_rate": rate,
        "stderr": stderr,
        "unit": "%",
        "prompts": len(items),
        "judged": counted,
        "per_prompt": per_prompt,
    }


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0
