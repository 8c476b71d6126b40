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
        (
            [{"messages": [{"role": "user", "content": "u", "name": "x"}, {"role": "assistant", "content": "a"}]}],
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


def test_empty_and_missing_files_fail(tmp_path: Path) -> None:
    with pytest.raises(FileCheckError, match="min_samples"):
        check_file(write(tmp_path, []))
    with pytest.raises(FileCheckError, match="found"):
        check_file(tmp_path / "nope.jsonl")
