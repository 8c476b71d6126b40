"""Counting tokens without a tokenizer: the one rule every estimate and Mix's token budgets use.

`approx` is the usual rule of thumb, about four characters a token (characters of the text, not its
UTF-8 bytes); `whitespace` counts words. Neither is a model's tokenizer: they size budgets and
price plans, and say so. (A budget's worst case is not an estimate: see model_client.prompt_ceiling.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def approx_tokens(text: str) -> int:
    """About four characters a token."""
    return approx_for_length(len(text))


def approx_for_length(characters: int) -> int:
    """`approx_tokens` of a text this long."""
    return (characters + 3) // 4


def trained_text(example: dict[str, Any]) -> list[str]:
    """The pieces of text a model trains on in one example of the upload formats."""
    if "messages" in example:
        return [m["content"] for m in example["messages"]]
    if "text" in example:
        return [example["text"]]
    return [example["prompt"], example["completion"]]


# `mix.token_counter`: how an example's tokens are counted.
TOKEN_COUNTERS: dict[str, Callable[[dict[str, Any]], int]] = {
    "approx": lambda example: approx_for_length(sum(map(len, trained_text(example)))),  # the pieces joined
    "whitespace": lambda example: sum(len(part.split()) for part in trained_text(example)),
}


def counter_for(name: str, fmt: str) -> Callable[[dict[str, Any]], int]:
    """TOKEN_COUNTERS[name] for examples of one upload format: `approx` of a `text` example is its
    text's length, without the generic lookup (Mix counts every record it reads)."""
    if name == "approx" and fmt == "text":
        return lambda example: approx_for_length(len(example["text"]))
    return TOKEN_COUNTERS[name]
