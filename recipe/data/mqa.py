"""Multi-document QA records and their one renderer, shared by training and Test.

A record is the "Lost in the Middle" shape (arXiv 2307.03172): `question`, `answers` (gold answers)
and `ctxs`, the documents (`title`, `text`; the gold one flagged `isgold`, or else the first). The
Test suite (`kind: mqa` or `synthetic`) and the sources of the same kinds render a record with
`prompt`, so the prompt a model is trained on is the prompt it is tested with, to the byte: the
paper's instruction, `Document [i](Title: ...) ...` lines, then `Question: ...` and `Answer:`. A
source's example is that prompt as the user's turn and, as the reply, the record's `reply` when it
has one (the synthetic task's supporting sentence) or else its first gold answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from recipe.errors import RecipeError

INSTRUCTION = (
    "Write a high-quality answer for the given question using only the provided search results "
    "(some of which might be irrelevant)."
)
POSITIONS = ("first", "middle", "last")


class RecordError(RecipeError):
    """A record that is not in the MQA shape; the message names where it is."""


def prompt(question: str, documents: Sequence[dict[str, Any]]) -> str:
    """The paper's prompt for a question over documents, in their order."""
    lines = [f"Document [{i}](Title: {d.get('title', '')}) {d.get('text', '')}" for i, d in enumerate(documents, 1)]
    return f"{INSTRUCTION}\n\n" + "\n".join(lines) + f"\n\nQuestion: {question}\nAnswer:"


def gold_index(n: int, position: str) -> int:
    """Where the gold document goes among n: first, middle ((n - 1) // 2, as in the paper's odd
    settings) or last."""
    return {"first": 0, "middle": (n - 1) // 2, "last": n - 1}[position]


def parts(record: dict[str, Any], where: str) -> tuple[str, list[str], list[dict[str, Any]], int]:
    """(question, gold answers, documents, the gold document's index) of a checked record."""
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise RecordError(f"{where}: no text field 'question' (an MQA record holds question, answers, ctxs)")
    answers = record.get("answers")
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
        raise RecordError(f"{where}: `answers` must be a non-empty list of strings")
    ctxs = record.get("ctxs")
    if not isinstance(ctxs, list) or not ctxs or not all(isinstance(c, dict) for c in ctxs):
        raise RecordError(f"{where}: `ctxs` must be a non-empty list of documents ({{title, text}})")
    gold_at = next((i for i, c in enumerate(ctxs) if c.get("isgold")), 0)
    return question, answers, ctxs, gold_at


def placed(ctxs: list[dict[str, Any]], gold_at: int, n: int, position: str) -> list[dict[str, Any]] | None:
    """The gold document and the first n - 1 others, the gold one at `position`; None when the
    record has fewer than n documents."""
    others = ctxs[:gold_at] + ctxs[gold_at + 1 :]
    if len(others) < n - 1:
        return None
    documents = list(others[: n - 1])
    documents.insert(gold_index(n, position), ctxs[gold_at])
    return documents


def example(record: dict[str, Any], where: str) -> list[dict[str, str]]:
    """A training example: the record's documents as they are ordered, asked as Test asks them, and
    its `reply` (else its first gold answer) as the reply."""
    question, answers, ctxs, _ = parts(record, where)
    reply = record.get("reply")
    if reply is not None and (not isinstance(reply, str) or not reply.strip()):
        raise RecordError(f"{where}: `reply` must be a non-empty string")
    return [{"role": "user", "content": prompt(question, ctxs)}, {"role": "assistant", "content": reply or answers[0]}]
