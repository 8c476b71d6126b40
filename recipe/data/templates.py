"""Chat templates: messages <-> text.

A conversation renders as prompt + completion, where the completion is the last assistant answer
and the prompt is everything before it plus the template's generation prefix, so that
`render(messages) == render_prompt(messages[:-1]) + render_completion(messages[-1])` always holds.

- `llama2_inst`: the seed's format, `[INST] {user} [/INST] {answer} [INST] {user} [/INST] {answer}`
  (a system message goes inside the first [INST] as `<<SYS>>\\n...\\n<</SYS>>\\n\\n`);
- `llama2_inst_seed`: the seed's Distill script's exact spacing, `  [INST]  {user}  [/INST]  {answer}`
  repeated, answers as the teacher sent them (for byte-identical prompts to the seed's teacher);
- `chatml`: `<|im_start|>{role}\\n{content}<|im_end|>\\n` (SmolLM2, Qwen, ...);
- `raw`: contents concatenated as they are (Long-Data-Collections' `text` = prompt + completion);
- any other string is a custom per-message format using `{role}` and `{content}`.
"""

from __future__ import annotations

import re

from recipe.errors import RecipeError

Message = dict[str, str]
NAMED = ("llama2_inst", "llama2_inst_seed", "chatml", "raw")
# The seed's own Distill prompts (its scripts/distill.py, as FACTS.md describes it): each human turn
# adds two spaces, [INST], two spaces, the turn, two spaces, [/INST], two spaces; the teacher's raw
# answer follows as it came (not stripped). Used to send byte-identical prompts; no system turn.
SEED_TURN = "  [INST]  {content}  [/INST]  "

_SYS = re.compile(r"^\s*<<SYS>>\n?(.*?)\n?<</SYS>>\s*", re.DOTALL)
_CHATML_TURN = re.compile(r"<\|im_start\|>(\w+)\n(.*?)<\|im_end\|>\n?", re.DOTALL)


def check_template(template: str, key: str) -> None:
    """Raise if `template` is neither a named template nor a custom string with {content}."""
    if template not in NAMED and "{content}" not in template:
        raise RecipeError(
            f"{key}={template!r}: not a template; use one of {', '.join(NAMED)} "
            "or a custom per-message string containing {content} (and optionally {role})"
        )


def _piece(template: str, message: Message, first: bool) -> str:
    role, content = message["role"], message["content"]
    if template == "llama2_inst_seed":
        if role == "system":
            raise RecipeError("llama2_inst_seed has no system turn (the seed's prompts had none)")
        return SEED_TURN.format(content=content) if role == "user" else content
    if template == "chatml":
        return f"<|im_start|>{role}\n{content}<|im_end|>\n"
    if template == "raw":
        return content
    if template == "llama2_inst":
        if role == "system":
            return f"[INST] <<SYS>>\n{content}\n<</SYS>>\n\n"
        if role == "user":
            return ("" if first else " ") + f"[INST] {content} [/INST]"
        return f" {content}"
    return template.replace("{role}", role).replace("{content}", content)


def _generation_prefix(template: str) -> str:
    if template == "chatml":
        return "<|im_start|>assistant\n"
    if template in ("raw", "llama2_inst", "llama2_inst_seed"):
        return ""
    return template.split("{content}", 1)[0].replace("{role}", "assistant")


def render_prompt(history: list[Message], template: str) -> str:
    """Everything before the answer: the history, then the template's generation prefix."""
    if template == "llama2_inst":  # no generation prefix
        return _render_inst(history)
    return "".join(_piece(template, m, i == 0) for i, m in enumerate(history)) + _generation_prefix(template)


def render_completion(answer: Message, template: str) -> str:
    piece = _piece(template, answer, first=False)
    return piece[len(_generation_prefix(template)) :]


def render(messages: list[Message], template: str) -> str:
    if template == "llama2_inst" and messages and messages[-1]["role"] == "assistant":
        return _render_inst(messages)
    return render_prompt(messages[:-1], template) + render_completion(messages[-1], template)


def _render_inst(messages: list[Message]) -> str:
    """Messages in llama2_inst, in order: a prompt's history, or a whole conversation that ends with
    an answer (then the same text as render_prompt + render_completion, in one loop: Mix renders
    every record it reads)."""
    if len(messages) == 2 and messages[0]["role"] == "user" and messages[1]["role"] == "assistant":
        return f"[INST] {messages[0]['content']} [/INST] {messages[1]['content']}"  # most records: one turn
    out = []
    previous = None
    for m in messages:
        role, content = m["role"], m["content"]
        if role == "user":
            if previous == "system":  # the system block opened this [INST]
                out.append(f"{content} [/INST]")
            else:
                out.append(f"[INST] {content} [/INST]" if previous is None else f" [INST] {content} [/INST]")
        elif role == "system":
            out.append(f"[INST] <<SYS>>\n{content}\n<</SYS>>\n\n")
        else:
            out.append(f" {content}")
        previous = role
    return "".join(out)


def example(messages: list[Message], fmt: str, template: str) -> dict[str, object]:
    """One training-file record of a conversation: `text` (rendered with `template`), `messages`,
    or `prompt_completion` (everything before the last answer, and the answer)."""
    if fmt == "messages":
        return {"messages": messages}
    if fmt == "prompt_completion":
        return {
            "prompt": render_prompt(messages[:-1], template),
            "completion": render_completion(messages[-1], template),
        }
    return {"text": render(messages, template)}


# Hosted base models whose prompt format is known, for rendering a fine-tune's upload file. The seed's
# base model (LLaMA-2-7B-32K) has no chat template: it was trained, and its Instruct model is tested,
# in [INST] text. Pattern -> (text template, whether the model has a chat template of its own).
KNOWN_MODELS: tuple[tuple[re.Pattern[str], str, bool], ...] = (
    (re.compile(r"llama-2-7b-32k", re.IGNORECASE), "llama2_inst", False),
    (re.compile(r"llama-2-\d+b-chat", re.IGNORECASE), "llama2_inst", True),
)


def known_format(model: str) -> tuple[str, bool] | None:
    """(text template, has a chat template) of a known hosted model, or None."""
    for pattern, template, chat in KNOWN_MODELS:
        if pattern.search(model):
            return template, chat
    return None


def parse(text: str, template: str) -> list[Message]:
    """Split a templated conversation back into messages (for `text` sources).

    Raises ValueError if the text has no turns in that template."""
    if template == "llama2_inst":
        # [lead, turn, turn, ...] split at "[INST]" (which "[/INST]" does not contain; str.split, not a
        # regular expression: Mix parses every record of a text source): the lead must be blank and
        # each turn is "user [/INST] answer"; the last may be an unanswered "user", which is dropped.
        turns = text.split("[INST]")
        if len(turns) < 2 or turns[0].strip() or (len(turns) == 2 and "[/INST]" not in turns[1]):
            raise ValueError("text does not start with an [INST] ... [/INST] turn")
        messages: list[Message] = []
        for i, turn in enumerate(turns[1:], 1):
            pair = turn.split("[/INST]")
            if len(pair) != 2:
                if len(pair) == 1 and i == len(turns) - 1:
                    break
                raise ValueError("[INST] and [/INST] markers do not alternate")
            user, answer = pair
            if i == 1 and "<<SYS>>" in user and (sys_match := _SYS.match(user)):
                messages.append({"role": "system", "content": sys_match.group(1).strip()})
                user = user[sys_match.end() :]
            messages.append({"role": "user", "content": user.strip()})
            messages.append({"role": "assistant", "content": answer.strip()})
        return messages
    if template == "chatml":
        matches = list(_CHATML_TURN.finditer(text))
        if not matches:
            raise ValueError("text has no <|im_start|>role ... <|im_end|> turns")
        return [{"role": m.group(1), "content": m.group(2)} for m in matches]
    raise ValueError(f"cannot parse text written in template {template!r}; use llama2_inst or chatml")
