"""The AlpacaEval-compatible judging protocol (`test.judge_protocol=alpaca_eval`).

Follows AlpacaEval (tatsu-lab/alpaca_eval) with its `chatgpt` annotator, whose files are read from
the installed `alpaca-eval` package (`evaluators_configs/chatgpt/`: `basic_prompt.txt`, a ChatML
system + user prompt with one worked example, and `configs.yaml`: the verdict regexes, `max_tokens`
50, temperature 0) — nothing of it is copied here:
- one order per instruction: the model's output and the reference are shown as Output (a) / (b) in
  an order drawn from a hash of the seed and the instruction (reproducible, about half each way);
- identical outputs are a tie (0.5) without asking the judge;
- the verdict is what the annotator's `outputs_to_match` regexes find as its `regex_parser` reads
  them (first match, then onwards after it); a reply with no match, or with more than one, is
  dropped, as AlpacaEval drops an annotation count that is not the batch size (1);
- the win rate is the mean preference for the model in %, with its standard error in %.
"""

from __future__ import annotations

import hashlib
import math
import re
import statistics
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from recipe.errors import RecipeError

PACKAGE = "alpaca-eval"
ANNOTATOR = "chatgpt"
_CHATML = re.compile(r"<\|im_start\|>(\w+)\n(.*?)\n?<\|im_end\|>", re.DOTALL)


@cache
def annotator() -> dict[str, Any]:
    """The annotator's prompt template, verdict regexes and max_tokens, from the installed package."""
    try:
        dist = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        raise RecipeError(
            f"test.judge_protocol=alpaca_eval reads AlpacaEval's {ANNOTATOR!r} annotator from the alpaca-eval "
            "package: pip install --no-deps alpaca-eval==0.6.6 (make run / make test install it)"
        ) from None
    folder = Path(str(dist.locate_file(f"alpaca_eval/evaluators_configs/{ANNOTATOR}")))
    config = OmegaConf.to_container(OmegaConf.load(folder / "configs.yaml"))[ANNOTATOR]  # type: ignore[index]
    template = (folder / Path(config["prompt_template"]).name).read_text()
    matches = config["completion_parser_kwargs"]["outputs_to_match"]
    return {
        "name": f"AlpacaEval {ANNOTATOR} annotator (alpaca-eval {dist.version})",
        "template": template,
        "regexes": {1: re.compile(matches[1]), 2: re.compile(matches[2])},
        "max_tokens": int(config["completions_kwargs"]["max_tokens"]),
    }


def messages(instruction: str, output_1: str, output_2: str) -> list[dict[str, str]]:
    """The annotator's prompt for one pair, as chat messages (its ChatML turns)."""
    template = annotator()["template"]
    filled = (
        template.replace("{instruction}", instruction).replace("{output_1}", output_1).replace("{output_2}", output_2)
    )
    turns = [{"role": role, "content": content} for role, content in _CHATML.findall(filled)]
    if not turns:
        raise RecipeError(f"the {ANNOTATOR} annotator's prompt has no ChatML turns")
    return turns


def model_shown_first(seed: int | None, instruction: str) -> bool:
    """The output order for one instruction: the model as Output (a) or as Output (b)."""
    return hashlib.sha256(f"{seed}\0{instruction}".encode()).digest()[0] % 2 == 1


def preference(reply: str) -> int | None:
    """1 (Output (a)) or 2 (Output (b)), read as AlpacaEval's `regex_parser` reads a reply: the first
    match of the annotator's regexes, then the search goes on after it, again and again; a reply that
    yields other than exactly one verdict (none, or "Output (a)\nOutput (a) is better ...") is
    dropped (None), as the annotator drops a batch of one whose count of annotations is not one."""
    regexes = annotator()["regexes"]
    found: list[int] = []
    rest = reply
    while rest:
        matches = [(m.start(), m.end(), key) for key, regex in regexes.items() if (m := regex.search(rest))]
        if not matches:
            break
        _, end, key = min(matches)
        found.append(key)
        rest = rest[end:]
    return found[0] if len(found) == 1 else None


def score(model_output: str, reference: str, reply: str | None, model_first: bool) -> float | None:
    """The model's preference for one instruction: 1 won, 0 lost, 0.5 identical outputs; None dropped."""
    if model_output == reference:
        return 0.5
    chosen = preference(reply or "")
    if chosen is None:
        return None
    return 1.0 if (chosen == 1) == model_first else 0.0


def win_rate_percent(scores: list[float | None]) -> tuple[float | None, float | None, int]:
    """(win rate %, its standard error %, annotations counted); unparseable ones dropped."""
    values = [s for s in scores if s is not None]
    if not values:
        return None, None, 0
    stderr = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return 100 * statistics.fmean(values), 100 * stderr, len(values)
