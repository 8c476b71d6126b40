"""The judge's requests and verdicts for `judge` suites, per protocol (`test.judge_protocol`).

- `both_orders` (the default): each answer is judged twice, the model as Output (a) and then as
  Output (b), with our short prompt (`suites.judge_messages`); a judge's position bias cancels out.
- `alpaca_eval`: AlpacaEval's protocol with its `chatgpt` annotator (`recipe/evaluation/alpaca_eval.py`):
  one seeded order per prompt, identical outputs a tie without asking, win rate in %.
"""

from __future__ import annotations

from recipe.evaluation import alpaca_eval, suites

Messages = list[dict[str, str]]


def protocol_name(protocol: str) -> str:
    if protocol == "alpaca_eval":
        return f"{alpaca_eval.annotator()['name']}, one seeded order per prompt"
    return "both orders per prompt (position bias cancels)"


def max_tokens(protocol: str, configured: int | None) -> int:
    """The judge's reply length: as configured, else what the protocol's prompt needs."""
    if configured is not None:
        return int(configured)
    return alpaca_eval.annotator()["max_tokens"] if protocol == "alpaca_eval" else 64


def requests(protocol: str, seed: int | None, which: str, item: suites.Item, mine: str) -> list[tuple[str, Messages]]:
    """(request id, judge conversation) for one answer; none under alpaca_eval when the answer is the
    reference itself (a tie, not asked)."""
    reference = item.answers[0]
    if protocol == "both_orders":
        return [
            (f"{which}|{item.id}|a", suites.judge_messages(item.instruction, mine, reference)),
            (f"{which}|{item.id}|b", suites.judge_messages(item.instruction, reference, mine)),
        ]
    if mine == reference:
        return []
    first = alpaca_eval.model_shown_first(seed, item.instruction)
    pair = (mine, reference) if first else (reference, mine)
    return [(f"{which}|{item.id}|x", alpaca_eval.messages(item.instruction, *pair))]


def verdict(
    protocol: str, seed: int | None, which: str, item: suites.Item, mine: str, replies: dict[str, str]
) -> tuple[str, str]:
    """What scoring needs for one answer (see `requests`)."""
    if protocol == "both_orders":
        return replies[f"{which}|{item.id}|a"], replies[f"{which}|{item.id}|b"]
    if mine == item.answers[0]:
        return "", "identical"
    first = alpaca_eval.model_shown_first(seed, item.instruction)
    return replies[f"{which}|{item.id}|x"], "model_first" if first else "reference_first"
