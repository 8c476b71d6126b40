"""The Together fine-tuning file check (the rules of the official SDK's `together files check`).

Mix runs it on its own output, and Train runs it before every upload, so a file Together would
reject is caught on this machine, with its line number and rule, before any request is sent.

Checked against the official SDK 1.x's `together files check` (`together/utils/files.py`, as of its
multimodal release), which holds the full client-side rules (2.x/3.x moved most of them to the server):
- the file's extension is `.jsonl` or `.parquet`; at most 50.1 GB; at least one sample;
- JSON Lines: valid UTF-8; every line one JSON object, parsed as Python's `json` parses it (so an
  escaped lone surrogate such as "\\ud800" is valid); a blank line fails; all lines in one format,
  `text` | `messages` | `prompt`+`completion` | preference (`input`, `preferred_output`,
  `non_preferred_output`), with no extra top-level keys;
- content (`text`, `prompt`, `completion`, a message's `content`): a string or a list of content
  parts, `{"type": "text", "text": str}` or `{"type": "image_url", "image_url": {"url": ...}}`;
  images only where the SDK reads the content as a user's (`text`, `prompt`, user messages; never
  `completion`, assistant or system messages, or a preference output), each a base64 data URL of a
  JPEG, PNG or WEBP (`data:image/jpeg;base64,...`) of at most 10 MB, at most 10 per content and 10 per
  example;
- messages: roles system/user/assistant, never two of the same role in a row, at least one assistant
  turn; one kind of content per conversation (all strings, or all part lists: never mixed); `weight`
  an integer 0 or 1 (JSON `true`/`false` pass, as Python's `isinstance(True, int)` lets them pass the
  SDK), and 0 on a message with images; other keys in a message (e.g. `name`) are allowed, as the
  SDK allows them;
- preference: `input.messages` checked as messages (no assistant turn needed), not ending with an
  assistant turn; each output exactly one assistant message with content, checked as assistant
  content; an output's `weight` (or any other key) is not read, as the SDK does not read it;
- Parquet (pre-tokenised): readable, an `input_ids` column, no columns but `input_ids`,
  `attention_mask` and `labels`, at least one row.

Where we differ on purpose: lines end at "\\n" only (the SDK reads in text mode, where a bare "\\r"
also ends a line; Together's loaders split on "\\n"), and we do not enforce the docs' "start with
system or user, then alternate user/assistant", which the SDK does not enforce either.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from recipe.data.jsonl import (
    CHUNK_BYTES,
    POOL_MIN_BYTES,
    LineError,
    count_lines_before,
    json_object,
    jsonl_chunks,
    read_jsonl_range,
    worker_pool,
)
from recipe.errors import RecipeError

MAX_FILE_BYTES = int(50.1 * 2**30)
MIN_SAMPLES = 1
FORMATS: dict[str, frozenset[str]] = {
    "text": frozenset({"text"}),
    "messages": frozenset({"messages"}),
    "prompt_completion": frozenset({"prompt", "completion"}),
    "preference": frozenset({"input", "preferred_output", "non_preferred_output"}),
}
ROLES = ("system", "user", "assistant")


class FileCheckError(RecipeError):
    def __init__(self, path: Path, line: int | None, rule: str, message: str) -> None:
        self.path, self.line, self.rule = path, line, rule
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {message} [Together file check: {rule}]")


IMAGE_PREFIXES = tuple(f"data:image/{fmt};base64," for fmt in ("jpeg", "png", "webp"))
MAX_IMAGE_BYTES = 10 * 2**20
MAX_IMAGE_URL = len("data:image/jpeg;base64,") + 4 * MAX_IMAGE_BYTES // 3  # a 10 MB image, base64-encoded
MAX_IMAGES = 10  # per content, and per example


def _check_content(content: Any, fail: Any, where: str, role: str) -> tuple[bool, int]:
    """A string, or a list of content parts: text, or (in user turns only) an image given as a base64
    data URL of a JPEG, PNG or WEBP of at most 10 MB. (is a part list, images in it)."""
    if isinstance(content, str):
        return False, 0
    if not isinstance(content, list):
        fail("text_field", f"{where} must be a string or a list of content parts")
    images = 0
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                fail("key_value", f"{where}[{j}]: a text part needs a string 'text'")
            continue
        if kind != "image_url":
            fail("key_value", f"{where}[{j}] must be {{'type': 'text', 'text': str}} or an image_url part")
        if role != "user":
            fail("key_value", f"{where}[{j}]: only user messages can hold images")
        url = (part.get("image_url") or {}).get("url") if isinstance(part.get("image_url"), dict) else None
        if not isinstance(url, str) or not url:
            fail("key_value", f"{where}[{j}]: an image_url part needs {{'image_url': {{'url': str}}}}")
        if not url.startswith(IMAGE_PREFIXES):
            fail("key_value", f"{where}[{j}]: an image must be a base64 data URL (data:image/jpeg|png|webp;base64,...)")
        if len(url) > MAX_IMAGE_URL:
            fail("key_value", f"{where}[{j}]: the image is over 10 MB (~{len(url) * 3 // 4} bytes)")
        images += 1
    if images > MAX_IMAGES:
        fail("key_value", f"{where}: {images} images; at most {MAX_IMAGES}")
    return True, images


def _check_messages(messages: Any, fail: Any, field: str = "messages") -> None:
    """Roles system/user/assistant, never two of one role in a row; every message's content in one
    kind (all strings, or all part lists); `weight` the integer 0 or 1, and 0 where there are images."""
    if not isinstance(messages, list) or not messages:
        fail("messages", f"'{field}' must be a non-empty list")
    previous, parts, images = None, None, 0
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            fail("messages", f"{field}[{i}] must be an object")
        for key in ("role", "content"):
            if key not in m:
                fail("messages", f"{field}[{i}] has no {key}")
        weight = m.get("weight")
        if "weight" in m and (not isinstance(weight, int) or weight not in (0, 1)):
            fail("key_value", f"{field}[{i}].weight={weight!r}: must be the integer 0 or 1")
        if m["role"] not in ROLES:
            fail("messages", f"{field}[{i}].role={m['role']!r} is not one of {', '.join(ROLES)}")
        if m["role"] == previous:
            fail("messages", f"{field}[{i}]: two '{previous}' messages in a row")
        previous = m["role"]
        is_parts, count = _check_content(m["content"], fail, f"{field}[{i}].content", m["role"])
        if count and weight:
            fail("key_value", f"{field}[{i}]: a message with images cannot have a non-zero weight")
        if parts is not None and is_parts != parts:
            fail("key_value", f"{field}[{i}]: content parts and plain strings mixed in one conversation")
        parts, images = is_parts, images + count
    if images > MAX_IMAGES:
        fail("key_value", f"'{field}': {images} images; at most {MAX_IMAGES} per example")


def _check_output(output: Any, fail: Any, key: str) -> None:
    """A preference output: exactly one assistant message with content (its weight is not read)."""
    if not isinstance(output, list) or len(output) != 1 or not isinstance(output[0], dict):
        fail("preference", f"'{key}' must hold exactly one assistant message")
    message = output[0]
    if message.get("role") != "assistant" or "content" not in message:
        fail("preference", f"'{key}' must hold exactly one assistant message, with content")
    _check_content(message["content"], fail, f"{key}[0].content", "assistant")


def _check_record(record: dict[str, Any], fmt: str, fail: Any) -> None:
    if fmt == "text":
        _check_content(record["text"], fail, "'text'", "user")
    elif fmt == "prompt_completion":
        _check_content(record["prompt"], fail, "'prompt'", "user")
        _check_content(record["completion"], fail, "'completion'", "assistant")
    elif fmt == "messages":
        _check_messages(record["messages"], fail)
        if not any(m["role"] == "assistant" for m in record["messages"]):
            fail("messages", "no 'assistant' message")
    else:
        if not isinstance(record["input"], dict):
            fail("preference", "'input' must be an object with 'messages'")
        _check_messages(record["input"].get("messages"), fail, "input.messages")
        if record["input"]["messages"][-1]["role"] == "assistant":
            fail("preference", "'input.messages' must not end with an assistant message")
        for key in ("preferred_output", "non_preferred_output"):
            _check_output(record[key], fail, key)


def check_lines(lines: Iterable[bytes], path: Path, first_line: int, fmt: str | None) -> tuple[str | None, int]:
    """Check lines numbered from `first_line`; all must be in `fmt` (None: the first line's)."""
    samples = 0
    lineno = first_line

    def fail(rule: str, message: str) -> None:  # the line being checked (rules run within its iteration)
        raise FileCheckError(path, lineno, rule, message)

    for lineno, raw in enumerate(lines, first_line):  # noqa: B007 (fail reads it)
        try:
            record = json_object(raw)
        except LineError as e:
            fail(e.rule, str(e))
        if fmt == "text" and len(record) == 1 and type(record.get("text")) is str:
            samples += 1  # the common case, without the generic rules: one key, a string
            continue
        keys = frozenset(record)
        line_fmt = next((name for name, required in FORMATS.items() if keys == required), None)
        if line_fmt is None:
            near = next((n for n, req in FORMATS.items() if req <= keys), None)
            if near:
                fail("key_value", f"unexpected keys {sorted(keys - FORMATS[near])} for the {near} format")
            fail("text_field", f"keys {sorted(keys)} match no format (text, messages, prompt+completion, preference)")
        if fmt is None:
            fmt = line_fmt
        elif line_fmt != fmt:
            fail("key_value", f"line is in the {line_fmt} format but earlier lines are {fmt}")
        _check_record(record, line_fmt, fail)
        samples += 1
    return fmt, samples


def _check_range(path: Path, start: int, end: int, first_line: int, fmt: str | None) -> tuple[str | None, int]:
    return check_lines((raw for raw, _ in read_jsonl_range(path, start, end, first_line)), path, first_line, fmt)


def check_block(block: bytes, path: Path, first_line: int, fmt: str) -> int:
    """Check a block of whole lines of `path` (its first line numbered `first_line`); return its samples."""
    return check_lines(io.BytesIO(block), path, first_line, fmt)[1]


def check_report(path: Path, fmt: str | None, samples: int, size: int) -> dict[str, Any]:
    """The whole-file rules, once every line has been checked."""
    if size > MAX_FILE_BYTES:
        raise FileCheckError(path, None, "file_size", f"{size} bytes is over the 50.1 GB limit")
    if samples < MIN_SAMPLES:
        raise FileCheckError(path, None, "min_samples", f"{samples} samples; at least {MIN_SAMPLES} needed")
    return {"is_check_passed": True, "format": fmt, "num_samples": samples, "file_size": size}


PARQUET_COLUMNS = ("input_ids", "attention_mask", "labels")


def _check_parquet(path: Path, size: int) -> dict[str, Any]:
    """A pre-tokenised Parquet file: readable, `input_ids`, no other columns than PARQUET_COLUMNS."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except (pa.ArrowInvalid, OSError) as e:
        raise FileCheckError(path, None, "load_parquet", f"not a readable Parquet file ({e})") from None
    columns = list(pq.read_schema(path).names)
    if "input_ids" not in columns:
        raise FileCheckError(path, None, "load_parquet", f"no 'input_ids' column (columns: {columns})")
    extra = [c for c in columns if c not in PARQUET_COLUMNS]
    if extra:
        raise FileCheckError(path, None, "load_parquet", f"unexpected columns {extra}; only {list(PARQUET_COLUMNS)}")
    return check_report(path, "parquet", meta.num_rows, size)


def check_file(path: str | Path, workers: int = 1) -> dict[str, Any]:
    """Check a JSONL file against Together's rules; return a report or raise FileCheckError.

    With `workers` > 1, a large file is checked in byte ranges by worker processes."""
    path = Path(path)
    if not path.is_file():
        raise FileCheckError(path, None, "found", "file not found")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:  # before reading 50 GB
        raise FileCheckError(path, None, "file_size", f"{size} bytes is over the 50.1 GB limit")
    if path.suffix not in (".jsonl", ".parquet"):
        raise FileCheckError(
            path, None, "filetype", f"extension {path.suffix!r}: only .jsonl and .parquet are accepted"
        )
    if path.suffix == ".parquet":
        return _check_parquet(path, size)
    ranges = jsonl_chunks(path, CHUNK_BYTES) if workers > 1 and size >= POOL_MIN_BYTES else [(0, size)]
    if len(ranges) == 1:
        fmt, samples = _check_range(path, 0, size, 1, None)
    else:
        fmt, _ = _check_range(path, 0, ranges[0][1], 1, None)  # the first range sets the format
        samples = 0
        with worker_pool(min(workers, len(ranges))) as pool:
            futures = [pool.submit(_check_range, path, start, end, 1, fmt) for start, end in ranges]
            for (start, end), future in zip(ranges, futures, strict=True):
                try:
                    samples += future.result()[1]
                except FileCheckError:  # check that range again here, to report its absolute line
                    pool.shutdown(cancel_futures=True)
                    _check_range(path, start, end, count_lines_before(path, start) + 1, fmt)
                    raise
    return check_report(path, fmt, samples, size)
