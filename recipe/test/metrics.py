"""Metrics of the model card's evaluations.

- `best_subspan_em` (multi-document QA, "Lost in the Middle", arXiv 2307.03172): SQuAD
  normalisation (lower-case, drop punctuation, drop the articles a/an/the, collapse whitespace);
  1 if any normalised gold answer is a substring of the normalised prediction, which is cut at its
  first newline;
- ROUGE-1/2/L F-measure (BookSum) through the `rouge-score` package;
- AlpacaEval-style pairwise judging: a judge's verdict parsed from messy output, each prompt judged
  in both orders, and a win rate with its standard error.
"""

from __future__ import annotations

import math
import re
import statistics
import string
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower-case, no punctuation, no articles, single spaces."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def best_subspan_em(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if a normalised gold answer occurs in the normalised first line of the prediction."""
    first_line = prediction.strip().split("\n", 1)[0]
    normalized = normalize_answer(first_line)
    return float(any(normalize_answer(a) and normalize_answer(a) in normalized for a in answers))


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure over the pairs (rouge-score, with stemming)."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores = [scorer.score(ref, pred) for pred, ref in zip(predictions, references, strict=True)]
    return {
        key: statistics.fmean(s[key].fmeasure for s in scores) if scores else 0.0
        for key in ("rouge1", "rouge2", "rougeL")
    }


# Verdict forms judges produce: "[[A]]", "Output (a)", "**Answer: B**", "Winner: A", "A is better", "tie".
_VERDICTS = [
    re.compile(r"\[\[\s*(A|B|tie)\s*\]\]", re.IGNORECASE),
    re.compile(r"output\s*\(\s*(a|b)\s*\)", re.IGNORECASE),
    re.compile(
        r"(?:answer|verdict|winner|better(?: response| answer)?|choice)\s*(?:is)?\s*[:=]?\s*\**\s*\(?(A|B)\)?\b",
        re.IGNORECASE,
    ),
    re.compile(r"\b(?:response|assistant|answer)\s*\(?(A|B)\)?\s+is\s+(?:better|preferred)", re.IGNORECASE),
    re.compile(r"^\W*(A|B)\W*$", re.IGNORECASE | re.MULTILINE),
]
_TIE = re.compile(r"\b(tie|equally good|both are equal|neither)\b", re.IGNORECASE)


def parse_verdict(text: str) -> str | None:
    """ "A", "B" or "tie" from a judge's reply; None when it gives no readable verdict."""
    for pattern in _VERDICTS:
        found = pattern.findall(text)
        if found:
            verdict = found[-1].upper()  # the last one: judges often reason first, then decide
            return "tie" if verdict == "TIE" else verdict
    return "tie" if _TIE.search(text) else None


def pair_score(tuned_first: str | None, tuned_second: str | None) -> float | None:
    """One prompt judged in both orders: tuned shown as A, then as B. 1 = tuned wins both, 0.5 =
    split or tie, 0 = loses both; None when neither order gave a verdict."""
    points = []
    if tuned_first is not None:
        points.append({"A": 1.0, "B": 0.0, "tie": 0.5}[tuned_first])
    if tuned_second is not None:
        points.append({"A": 0.0, "B": 1.0, "tie": 0.5}[tuned_second])
    return statistics.fmean(points) if points else None


def win_rate(scores: Sequence[float | None]) -> tuple[float, float, int]:
    """(win rate, its standard error, prompts counted) over per-prompt scores, unreadable ones skipped."""
    values = [s for s in scores if s is not None]
    if not values:
        return 0.0, 0.0, 0
    rate = statistics.fmean(values)
    stderr = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return rate, stderr, len(values)
