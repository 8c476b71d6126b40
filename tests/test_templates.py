"""Templates render and parse conversations consistently."""

from __future__ import annotations

import pytest

from recipe.data import templates
from recipe.data.sources import to_messages

CONV = [
    {"role": "user", "content": "q1"},
    {"role": "assistant", "content": "a1"},
    {"role": "user", "content": "q2"},
    {"role": "assistant", "content": "a2"},
]


@pytest.mark.parametrize("template", ["llama2_inst", "chatml", "raw", "<{role}>{content}</{role}>"])
@pytest.mark.parametrize("conv", [CONV, [{"role": "system", "content": "be brief"}, *CONV]])
def test_prompt_plus_completion_is_the_whole_text(template: str, conv: list) -> None:
    whole = templates.render(conv, template)
    assert whole == templates.render_prompt(conv[:-1], template) + templates.render_completion(conv[-1], template)


def test_llama2_matches_the_seed_format_and_round_trips() -> None:
    text = templates.render(CONV, "llama2_inst")
    assert text == "[INST] q1 [/INST] a1 [INST] q2 [/INST] a2"
    assert templates.parse(text, "llama2_inst") == CONV
    with_system = [{"role": "system", "content": "be brief"}, *CONV]
    assert templates.parse(templates.render(with_system, "llama2_inst"), "llama2_inst") == with_system


def test_chatml_round_trips_and_ends_prompts_with_the_assistant_header() -> None:
    assert templates.parse(templates.render(CONV, "chatml"), "chatml") == CONV
    assert templates.render_prompt(CONV[:1], "chatml").endswith("<|im_start|>assistant\n")


def test_text_that_is_not_in_the_template_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"\[INST\]"):
        templates.parse("just words", "llama2_inst")
    for text in ("[INST] q", "lead [INST] q [/INST] a", "[/INST] a [INST] q [/INST] b"):
        with pytest.raises(ValueError, match="does not start with an"):
            templates.parse(text, "llama2_inst")
    for text in ("[INST] q [INST] q2 [/INST] a", "[INST] q [/INST] a [/INST] b", "[INST] q [/INST] a [INST] b [INST]"):
        with pytest.raises(ValueError, match="do not alternate"):
            templates.parse(text, "llama2_inst")


def test_a_trailing_unanswered_turn_is_left_out() -> None:
    assert templates.parse("[INST] q1 [/INST] a1 [INST] q2", "llama2_inst") == CONV[:2]
    assert templates.parse("[INST] q1 [/INST] a1 [INST]", "llama2_inst") == CONV[:2]


def test_sharegpt_turns_are_tidied() -> None:
    record = {
        "conversations": [
            {"from": "gpt", "value": "greeting first"},
            {"from": "human", "value": "a"},
            {"from": "human", "value": "b"},
            {"from": "gpt", "value": ""},
            {"from": "gpt", "value": "answer"},
            {"from": "human", "value": "unanswered"},
        ]
    }
    assert to_messages(record, "sharegpt", "x:1", "llama2_inst") == [
        {"role": "user", "content": "a\n\nb"},
        {"role": "assistant", "content": "answer"},
    ]
    assert to_messages({"conversations": [{"from": "human", "value": "a"}]}, "sharegpt", "x:1", "llama2_inst") is None
