"""Metrics of the model card's evaluations.

- `best_subspan_em` (multi-document QA, "Lost in the Middle", arXiv 2307.03172, checked against the
  paper's `metrics.py` and `evaluate_qa_responses.py`): SQuAD normalisation (lower-case, drop
  punctuation, drop the articles a/an/the, collapse whitespace); 1 if any normalised gold answer is
  a substring of the normalised prediction, which is cut at its first newline, then stripped;
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
    """1.0 if a normalised gold answer occurs in the normalised prediction, cut at its first newline
    and then stripped, as the paper's evaluation script does (a reply that opens with a blank line
    scores on that empty first line). As in the reference, a gold answer that normalises to the
    empty string ("The", "a", "!!!") is found in any prediction: 1.0."""
    first_line = prediction.split("\n")[0].strip()
    normalized = normalize_answer(first_line)
    return float(any(normalize_answer(a) in normalized for a in answers))


ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")


def rouge_each(predictions: Sequence[str], references: Sequence[str]) -> list[dict[str, float]]:
    """ROUGE-1/2/L F-measure of each pair (rouge-score, with stemming)."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    scores = [scorer.score(ref, pred) for pred, ref in zip(predictions, references, strict=True)]
    return [{key: s[key].fmeasure for key in ROUGE_KEYS} for s in scores]


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure over the pairs."""
    each = rouge_each(predictions, references)
    return {key: statistics.fmean(e[key] for e in each) if each else 0.0 for key in ROUGE_KEYS}


# Reading a judge's verdict the way AlpacaEval's parsers do: the *first* verdict, found at the start
# of a line (its `(?:^|\n)Output \(a\)` patterns with `regex_parser`, which takes the first match), so
# a reply that names its verdict and then explains ("Output (a)\n\nOutput (a) is right because
# Output (b) ...") is read as its first line says. Lenient forms are kept only where they cannot be
# read two ways; anything else is unreadable (None), never a guess.
_LEAD = re.compile(r"^[\s#>*_`\"'\-]+")  # markdown, quotes and bullets before a verdict
# A hedge before a verdict ("I think Output (a) is slightly better"): the verdict is still the line's.
_HEDGE = re.compile(
    r"^(?:i\s+think|i\s+believe|i\s+would\s+say|i'd\s+say|in\s+my\s+(?:opinion|view)|overall|personally|"
    r"in\s+conclusion|therefore|thus|so)\s*,?\s*(?:that\s+)?",
    re.IGNORECASE,
)
# Where a verdict's own clause ends and its reasons begin.
_REASONS = re.compile(r"\s*(?:[;,]|\bbecause\b|\bsince\b|\bas\b|\bwhile\b|\bwhereas\b|\. )", re.IGNORECASE)
_SENTENCE_END = re.compile(r"^\s*(?:[.!](?:\s|$)|$)")
_LETTER = r"\(?\s*([ab])\s*\)?(?![a-z0-9])"
_VERDICT_LINE = [
    # "Output (a) ...", "Response B is better", "Assistant A", "Answer: B"
    re.compile(rf"^(?:(?:output|response|assistant)\s*[:=]?|answer\s*[:=])\s*{_LETTER}", re.IGNORECASE),
    # "Winner: A", "Final verdict: Output (b)", "Preferred output: (a)", "Better response: B"
    re.compile(
        r"^(?:(?:my|the)\s+)?(?:final\s+)?(?:verdict|winner|choice|preference|preferred(?:\s+(?:output|response))?|"
        rf"better(?:\s+(?:output|response|answer))?)\s*(?:is)?\s*[:=]?\s*\**\s*(?:output|response)?\s*{_LETTER}",
        re.IGNORECASE,
    ),
]
_BARE = re.compile(r"^\W*(?:output\s*)?\(?\s*([ab])\s*\)?\W*$", re.IGNORECASE)
_BRACKETS = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.IGNORECASE)  # MT-bench's "[[A]]"; [[C]] is its tie
_MENTION = re.compile(rf"\b(?:output|response|assistant)\s*{_LETTER}", re.IGNORECASE)
_PREFERENCE = [
    re.compile(rf"\b(?:prefer(?:red)?|choose|chose|select|pick)\s+(?:output|response|assistant)\s*{_LETTER}", re.I),
    re.compile(
        rf"\b(?:output|response|assistant)\s*{_LETTER}\s+is\s+(?:clearly\s+)?(?:better|preferred|superior)", re.I
    ),
]
# A verdict line that names both outputs is read only when it compares them one way: "Output (a) is
# better than Output (b)" is (a), "Output (a) is less accurate than Output (b)" is (b); a negation, words
# both ways, or no comparison at all ("Output (a) is wrong; Output (b) is right") leave it unreadable.
_UP = re.compile(
    r"\b(better|preferred|preferable|superior|wins?|beats?|outperforms?|stronger|more|higher|over)\b", re.IGNORECASE
)
_DOWN = re.compile(r"\b(worse|inferior|weaker|less|lower|poorer|loses?|fewer|lacks?|behind)\b", re.IGNORECASE)
_NOT = re.compile(r"\b(not|no|never|neither|nor|hardly)\b|n't\b", re.IGNORECASE)
_TIE = re.compile(r"\b(tie|equally good|both are equal|equally (?:helpful|good|bad))\b", re.IGNORECASE)


def _compared(line: str, first: str, others: set[str]) -> str | None:
    """A verdict line naming both outputs: the one it says is better, when it says so one way only."""
    if len(others) != 1 or _NOT.search(line):
        return None
    up, down = bool(_UP.search(line)), bool(_DOWN.search(line))
    if up == down:  # both ways, or no comparison
        return None
    return (first if up else others.pop()).upper()


def _one(letters: set[str]) -> str | None:
    return letters.pop().upper() if len(letters) == 1 else None


def parse_verdict(text: str) -> str | None:
    """ "A", "B" or "tie" from a judge's reply; None when it gives no verdict that reads one way only.

    In order: MT-bench brackets (`[[A]]`, one kind only); the first line that opens with a verdict
    ("Output (a) …", "Winner: B", after a hedge such as "I think"), as AlpacaEval reads it: a verdict
    that is a sentence of its own ("Output (a). It is concise, while Output (b) ...") as stated, one
    that compares the outputs by the words of its own clause (before "because", a comma, ...), one
    that says its output is worse or not better never as that output; a reply that is nothing but a verdict
    ("B", "(a)"); a reply that names only one output; a preference that names one output ("I prefer
    Output (a) over Output (b)"); an explicit tie."""
    brackets = {m.lower() for m in _BRACKETS.findall(text)}
    if brackets:
        kinds = {"c": "tie", "tie": "tie", "a": "A", "b": "B"}
        found = {kinds[m] for m in brackets}
        return found.pop() if len(found) == 1 else None
    for line in text.splitlines():
        line = _HEDGE.sub("", _LEAD.sub("", line))
        for pattern in _VERDICT_LINE:
            match = pattern.match(line)
            if match:
                if _TIE.search(line):
                    return "tie"
                letter = match.group(1).lower()
                if _SENTENCE_END.match(line[match.end() :]):  # "Output (a). It is concise, ...": stated first
                    return letter.upper()
                clause = _REASONS.split(line, maxsplit=1)[0]  # the verdict's own words, not its reasons
                others = {m.lower() for m in _MENTION.findall(line)} - {letter}
                if others:
                    return _compared(clause, letter, others)
                if _NOT.search(clause) or _DOWN.search(clause):  # "Output (a) is worse": never read as (a)
                    return None
                return letter.upper()
    bare = _BARE.match(text.strip())
    if bare:
        return bare.group(1).upper()
    mentioned = {m.lower() for m in _MENTION.findall(text)}
    if len(mentioned) == 1:
        return mentioned.pop().upper()
    preferred = {m.lower() for pattern in _PREFERENCE for m in pattern.findall(text)}
    if preferred:
        return _one(preferred)
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
