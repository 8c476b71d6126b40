"""The Together file check: each rule fails with its line number."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recipe.data.filecheck import FileCheckError, check_file

GOOD = {
    "text": [{"text": "hello"}],
    "messages": [
        {
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "u"},
                {"role": "assistant", "content": "a"},
            ]
        }
    ],
    "prompt_completion": [{"prompt": "p", "completion": "c"}],
    "preference": [
        {
            "input": {"messages": [{"role": "user", "content": "u"}]},
            "preferred_output": [{"role": "assistant", "content": "good"}],
            "non_preferred_output": [{"role": "assistant", "content": "bad"}],
        }
    ],
}


IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


def user_with(parts: list, weight: int | None = None) -> dict:
    """A conversation whose user turn holds `parts` (the assistant's answer as parts too)."""
    user = {"role": "user", "content": parts, **({"weight": weight} if weight is not None else {})}
    return {"messages": [user, {"role": "assistant", "content": [{"type": "text", "text": "a"}]}]}


def write(tmp_path: Path, lines: list) -> Path:
    path = tmp_path / "f.jsonl"
    path.write_bytes(
        b"".join(line if isinstance(line, bytes) else (json.dumps(line) + "\n").encode() for line in lines)
    )
    return path


@pytest.mark.parametrize("fmt", GOOD)
def test_each_format_passes(tmp_path: Path, fmt: str) -> None:
    report = check_file(write(tmp_path, GOOD[fmt] * 3))
    assert report["is_check_passed"] and report["format"] == fmt and report["num_samples"] == 3


@pytest.mark.parametrize(
    ("lines", "line", "rule"),
    [
        ([{"text": "a"}, b"\n"], 2, "line_type"),
        ([{"text": "a"}, b'{"text": "\xff"}\n'], 2, "utf8"),
        ([{"text": "a"}, b'{"text": \n'], 2, "load_json"),
        ([{"text": "a"}, [1]], 2, "line_type"),
        ([{"text": "a", "extra": 1}], 1, "key_value"),
        ([{"text": "a"}, {"prompt": "p", "completion": "c"}], 2, "key_value"),
        ([{"words": "a"}], 1, "text_field"),
        ([{"text": 3}], 1, "text_field"),
        ([{"messages": [{"role": "user", "content": "u"}]}], 1, "messages"),
        (
            [
                {
                    "messages": [
                        {"role": "user", "content": "u"},
                        {"role": "user", "content": "v"},
                        {"role": "assistant", "content": "a"},
                    ]
                }
            ],
            1,
            "messages",
        ),
        ([{"messages": [{"role": "robot", "content": "u"}]}], 1, "messages"),
        # Rules of the SDK 1.x check (together/utils/files.py):
        (
            [{"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a", "weight": 1.0}]}],
            1,
            "key_value",
        ),
        (
            [{"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a", "weight": 2}]}],
            1,
            "key_value",
        ),
        (
            [
                {
                    "input": {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "x"}]},
                    "preferred_output": [{"role": "assistant", "content": "good"}],
                    "non_preferred_output": [{"role": "assistant", "content": "bad"}],
                }
            ],
            1,
            "preference",
        ),
        ([{"text": [{"type": "text", "text": "a"}, {"type": "audio"}]}], 1, "key_value"),
        ([{"prompt": "p", "completion": 3}], 1, "text_field"),
        (
            [
                {
                    "messages": [
                        {"role": "user", "content": [{"type": "text", "text": "u"}]},
                        {"role": "assistant", "content": [IMAGE]},
                    ]
                }
            ],
            1,
            "key_value",
        ),
        # images: base64 data URLs of JPEG, PNG or WEBP only, in user content only, never weighted
        ([user_with([{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}])], 1, "key_value"),
        ([user_with([{"type": "image_url", "image_url": {"url": "data:image/gif;base64,R0lG"}}])], 1, "key_value"),
        ([user_with([IMAGE] * 11)], 1, "key_value"),
        ([user_with([IMAGE], weight=1)], 1, "key_value"),
        ([{"prompt": "p", "completion": [IMAGE]}], 1, "key_value"),
        ([{**GOOD["preference"][0], "preferred_output": [{"role": "assistant", "content": [IMAGE]}]}], 1, "key_value"),
        # content parts and plain strings never mixed in one conversation
        (
            [
                {
                    "messages": [
                        {"role": "user", "content": [{"type": "text", "text": "u"}]},
                        {"role": "assistant", "content": "a"},
                    ]
                }
            ],
            1,
            "key_value",
        ),
    ],
)
def test_each_rule_fails_with_its_line(tmp_path: Path, lines: list, line: int, rule: str) -> None:
    with pytest.raises(FileCheckError) as err:
        check_file(write(tmp_path, lines))
    assert (err.value.line, err.value.rule) == (line, rule)
    assert f"f.jsonl:{line}:" in str(err.value)


VALID_FOR_THE_SDK = [
    # extra keys inside a message (the SDK checks the keys it needs, not the others)
    {"messages": [{"role": "user", "content": "u", "name": "x"}, {"role": "assistant", "content": "a"}]},
    # content as OpenAI-style content parts, in every message of a conversation, in `text`, in `prompt`
    {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "u"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "a"}]},
        ]
    },
    {"text": [{"type": "text", "text": "hello"}]},
    {"prompt": [{"type": "text", "text": "p"}], "completion": "c"},
    # integer weights 0 and 1 (and JSON true, which Python's isinstance(True, int) lets through)
    {"messages": [{"role": "user", "content": "u", "weight": 0}, {"role": "assistant", "content": "a", "weight": 1}]},
    {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a", "weight": True}]},
    # images in user content (a message, `text`, `prompt`) as base64 data URLs, weight 0 or none
    user_with([{"type": "text", "text": "what is this?"}, IMAGE]),
    user_with([IMAGE] * 10, weight=0),
    {"text": [IMAGE, {"type": "text", "text": "a cat"}]},
    {"prompt": [IMAGE], "completion": [{"type": "text", "text": "c"}]},
    # a preference output's weight (or any other key of it) is not read by the SDK
    {**GOOD["preference"][0], "preferred_output": [{"role": "assistant", "content": "good", "weight": 2}]},
]


@pytest.mark.parametrize("record", VALID_FOR_THE_SDK, ids=range(len(VALID_FOR_THE_SDK)))
def test_what_the_sdk_accepts_passes(tmp_path: Path, record: dict) -> None:
    assert check_file(write(tmp_path, [record]))["is_check_passed"]


def test_an_escaped_lone_surrogate_is_valid_json_as_the_sdk_reads_it(tmp_path: Path) -> None:
    path = write(tmp_path, [b'{"text": "half a pair: \\ud800"}\n'])
    assert check_file(path)["num_samples"] == 1


def test_only_jsonl_and_parquet_files_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text('{"text": "a"}\n')
    with pytest.raises(
        FileCheckError, match=r"'\.json': only \.jsonl and \.parquet are accepted \[Together file check: filetype\]"
    ):
        check_file(path)


def test_parquet_is_checked_as_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = tmp_path / "tokens.parquet"
    pq.write_table(pa.table({"input_ids": [[1, 2, 3]], "attention_mask": [[1, 1, 1]], "labels": [[-100, 2, 3]]}), good)
    assert check_file(good) == {
        "is_check_passed": True,
        "format": "parquet",
        "num_samples": 1,
        "file_size": good.stat().st_size,
    }
    extra = tmp_path / "extra.parquet"
    pq.write_table(pa.table({"input_ids": [[1]], "text": ["a"]}), extra)
    with pytest.raises(FileCheckError, match=r"unexpected columns \['text'\]"):
        check_file(extra)
    missing = tmp_path / "missing.parquet"
    pq.write_table(pa.table({"labels": [[1]]}), missing)
    with pytest.raises(FileCheckError, match="no 'input_ids' column"):
        check_file(missing)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(FileCheckError, match="load_parquet"):
        check_file(broken)


def test_empty_and_missing_files_fail(tmp_path: Path) -> None:
    with pytest.raises(FileCheckError, match="min_samples"):
        check_file(write(tmp_path, []))
    with pytest.raises(FileCheckError, match="found"):
        check_file(tmp_path / "nope.jsonl")
