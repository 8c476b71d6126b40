"""Data sources: records from the Hugging Face hub (through `datasets`) or from local files.

Local JSON Lines (`.jsonl`, `.jsonl.zst`, `.json`) are streamed line by line by our own reader, so a
bad record is reported with its file and line number (pyarrow's JSON reader, behind `datasets`,
can name neither and silently skips blank lines); `.json` files holding one JSON list (ShareGPT raw)
are read whole; parquet files and hub datasets go through `datasets.load_dataset(streaming=True)`.

Every record is normalised into chat messages (`[{"role", "content"}]`, roles system/user/assistant,
alternating, ending with an assistant answer), whatever the source's kind.
"""

from __future__ import annotations

import functools
import glob
import gzip
import io
import itertools
import json
import re
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from recipe.data import mqa, synthetic, templates
from recipe.data.jsonl import LineError, json_object
from recipe.errors import RecipeError
from recipe.store import sha256_file

Message = dict[str, str]

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "assistant": "assistant",
    "system": "system",
}


class DataError(RecipeError):
    """Bad input data; the message names the source, file and line."""


def config_key(name: str) -> str:
    """Where a source lives in the config, for error messages: `sources.<name>`, or a full key
    (e.g. `test.suites.mqa`) for nodes elsewhere that name their records the same way."""
    return name if "." in name else f"sources.{name}"


def source_files(name: str, source: DictConfig) -> list[Path]:
    """The local files of a source (globs expanded, sorted); errors name `sources.<name>.data_files`."""
    if not source.data_files:
        raise DataError(f"{config_key(name)}: set hub_id or data_files (neither is set)")
    files: list[Path] = []
    for pattern in source.data_files:
        matched = sorted(glob.glob(str(Path(pattern).expanduser())))
        if not matched:
            raise DataError(f"{config_key(name)}.data_files: {pattern!r} matches no file")
        files.extend(Path(m) for m in matched)
    return files


@functools.lru_cache(maxsize=256)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))  # size and mtime are part of the cache key only


def file_sha256(path: Path) -> str:
    """sha256 of a file's contents, computed once per process while the file is unchanged."""
    st = path.stat()
    return _file_sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)


def hash_files(paths: list[Path]) -> None:
    """Hash files in threads (hashlib releases the GIL), so later `file_sha256` calls are instant."""
    with ThreadPoolExecutor(max_workers=min(4, len(paths) or 1)) as pool:
        list(pool.map(file_sha256, paths))


KIND_FIELDS = {
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
    "messages": ("messages",),
    "sharegpt": ("conversations", "id"),
    "mqa": ("question", "answers", "ctxs"),
    "synthetic": (),
}
_SPLIT = re.compile(r"^([\w.-]+)(?:\[(\d*):(\d*)\])?$")


def parse_split(split: str, key: str) -> tuple[str, int, int | None]:
    """`train`, `train[:1000]`, `test[500:1500]` -> (split, first record, end or None)."""
    match = _SPLIT.match(split.replace(" ", ""))
    if not match:
        raise DataError(
            f"{key}.split={split!r}: use a split name, optionally sliced by record: train, train[:1000], train[500:]"
        )
    start, stop = match.group(2), match.group(3)
    return match.group(1), int(start) if start else 0, int(stop) if stop else None


def check_source(name: str, source: DictConfig) -> None:
    """`split` parses; `columns` names only the source kind's fields; a text source's template is one
    we can parse."""
    parse_split(source.split, config_key(name))
    if source.kind.value == "text" and source.template not in ("llama2_inst", "chatml"):
        raise DataError(
            f"{config_key(name)}.template={source.template!r}: text sources are parsed as llama2_inst or chatml"
        )
    allowed = KIND_FIELDS.get(source.kind.value, ())
    for ours in source.get("columns") or {}:
        if ours not in allowed:
            raise DataError(
                f"{config_key(name)}.columns.{ours}: a {source.kind.value} record has {', '.join(allowed)}; "
                "map those to your columns"
            )


def rename_columns(record: dict[str, Any], columns: dict[str, str], where: str, key: str) -> dict[str, Any]:
    """The record with the kind's fields taken from the user's columns; a missing one is named."""
    if not columns:
        return record
    out = dict(record)
    for ours, theirs in columns.items():
        if theirs not in record:
            have = ", ".join(sorted(map(str, record)))[:200]
            raise DataError(f"{where}: no column {theirs!r} ({key}.columns.{ours}); this record has: {have}")
        out[ours] = record[theirs]
    return out


def is_synthetic(source: DictConfig) -> bool:
    """A source or suite whose records the synthetic task makes (no file, no hub)."""
    return source.kind.value == "synthetic"


def synthetic_records(source: DictConfig) -> Iterator[dict[str, Any]]:
    """The records a synthetic source or suite makes (recipe/data/synthetic.py)."""
    s = source.synthetic
    positions = [p.value for p in source.gold_positions] if source.gold_positions else None
    return synthetic.records(
        s.seed, s.people.value, s.examples, s.document_sentences, list(source.num_documents), positions, s.reply.value
    )


def source_identity(name: str, source: DictConfig) -> dict[str, Any]:
    """What a source holds, for fingerprints: its settings and, for local files, their contents'
    sha256 (not their paths, so the same data fingerprints the same on every machine); for a
    synthetic source, the generator's version and settings."""
    identity: dict[str, Any] = {"kind": source.kind.value, "split": source.split}
    if is_synthetic(source):
        if source.hub_id or source.data_files:
            raise DataError(f"{config_key(name)}: a synthetic task makes its records; it reads no hub_id or data_files")
        positions = [p.value for p in source.gold_positions] if source.gold_positions else None
        identity["synthetic"] = {
            "version": synthetic.VERSION,
            "seed": source.synthetic.seed,
            "people": source.synthetic.people.value,
            "examples": source.synthetic.examples,
            "document_sentences": source.synthetic.document_sentences,
            "reply": source.synthetic.reply.value,
            "num_documents": list(source.num_documents),
            "gold_positions": positions,
        }
        return identity
    if source.get("columns"):
        identity["columns"] = dict(source.columns)
    if source.get("name"):
        identity["name"] = source.name
    if source.kind.value == "text":
        identity["template"] = source.template
    if source.hub_id:
        identity.update(hub_id=source.hub_id, revision=source.revision, data_files=list(source.data_files))
        return identity
    identity["files"] = [{"name": p.name, "sha256": file_sha256(p)} for p in source_files(name, source)]
    return identity


def _open_binary(path: Path) -> io.BufferedReader:
    if path.name.endswith(".zst"):
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))  # type: ignore[arg-type]
    if path.name.endswith(".gz"):
        return io.BufferedReader(gzip.open(path, "rb"))  # type: ignore[arg-type]
    return open(path, "rb")


def read_json_records(path: Path) -> Iterator[tuple[bytes | dict[str, Any], str]]:
    """Yield (raw JSON line bytes, "file:line") for JSON Lines, or (dict, "file item N") for a
    file holding one JSON list. Lines are validated by `parse_line`, not here."""
    with _open_binary(path) as f:
        head = f.peek(64).lstrip()[:1]
        if head == b"[":
            try:
                items = json.load(io.TextIOWrapper(f, encoding="utf-8", errors="strict"))
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{e.lineno}: malformed JSON: {e.msg} (column {e.colno})") from None
            for i, item in enumerate(items, 1):
                if not isinstance(item, dict):
                    raise DataError(f"{path} item {i}: expected a JSON object, got {type(item).__name__}")
                yield item, f"{path} item {i}"
            return
        for lineno, raw in enumerate(f, 1):
            yield raw, f"{path}:{lineno}"


def is_plain_jsonl(path: Path) -> bool:
    """An uncompressed JSON Lines file (not a JSON list): it can be split into byte ranges."""
    if not path.name.endswith(".jsonl"):
        return False
    with open(path, "rb") as f:
        return f.read(64).lstrip()[:1] != b"["


def parse_line(raw: bytes, where: str) -> dict[str, Any]:
    """One JSON Lines line -> dict, with errors that name the file and line."""
    try:
        return json_object(raw)
    except LineError as e:
        raise DataError(f"{where}: {e}") from None


def iter_raw(name: str, source: DictConfig) -> Iterator[tuple[bytes | dict[str, Any], str]]:
    """Every record of a source as (raw line bytes or dict, location), `split`'s slice of them."""
    _, start, stop = parse_split(source.split, config_key(name))
    records = _iter_all(name, source)
    yield from itertools.islice(records, start, stop) if start or stop is not None else records


def is_sliced(source: DictConfig) -> bool:
    return "[" in source.split


def _iter_all(name: str, source: DictConfig) -> Iterator[tuple[bytes | dict[str, Any], str]]:
    if is_synthetic(source):
        for i, record in enumerate(synthetic_records(source), 1):
            yield record, f"{config_key(name)}: synthetic record {i}"
        return
    if source.hub_id:
        where = f"{config_key(name)}: hub dataset {source.hub_id!r}"
        yield from _stream_dataset(where, f"{source.hub_id} record", source)
        return
    for path in source_files(name, source):
        if path.suffix == ".parquet":
            yield from _stream_dataset(f"{config_key(name)}: {path}", f"{path} row", None, [str(path)])
        elif path.name.endswith((".jsonl", ".json", ".jsonl.zst", ".json.zst", ".jsonl.gz", ".json.gz")):
            yield from read_json_records(path)
        else:
            raise DataError(
                f"{config_key(name)}.data_files: {path} is not .jsonl, .json, .jsonl.zst, .jsonl.gz or .parquet"
            )


# The packaged `datasets` builder that reads a file, by its name's ending (compressed forms included).
_BUILDERS = {"json": (".json", ".jsonl"), "parquet": (".parquet",), "csv": (".csv",), "text": (".txt",)}
_COMPRESSIONS = ("", ".gz", ".zst", ".bz2", ".xz")


def builder_for(files: list[str]) -> str | None:
    """The one packaged builder that reads every file of `files` (None: not one builder for all)."""
    builders = set()
    for f in files:
        name = f.lower()
        name = next((name[: -len(c)] for c in _COMPRESSIONS if c and name.endswith(c)), name)
        builder = next((b for b, endings in _BUILDERS.items() if name.endswith(endings)), None)
        if builder is None:
            return None
        builders.add(builder)
    return builders.pop() if len(builders) == 1 else None


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_repo_id(hub_id: str) -> bool:
    """A Hub repository (`namespace/name`), not a packaged builder (`json`) or a local directory."""
    return bool(_REPO_ID.match(hub_id)) and not Path(hub_id).exists()


def hub_load_arguments(source: DictConfig) -> tuple[str, dict[str, Any]]:
    """`load_dataset`'s path and options for a hub source.

    A repository with named `data_files` is read file by file through the Hub's filesystem
    (`hf://datasets/<repo>@<revision>/<file>`) with the packaged builder for their format, exactly as
    named: the repository's own loading script, if it has one, is never looked at (datasets 4+
    refuses any repository holding one, e.g. tatsu-lab/alpaca_eval), nor a README configuration
    that would read other files. Without `data_files` (or with a configuration `name`), the
    repository is loaded as a whole and its splits come from its layout. A packaged builder as
    `hub_id` (`json`, `parquet`, `csv`) reads its `data_files` as given: local paths or http(s) URLs."""
    split = parse_split(source.split, "")[0]
    files = [str(f) for f in source.data_files]
    builder = builder_for(files) if files else None
    if files and builder and is_repo_id(source.hub_id) and not source.get("name"):
        revision = urllib.parse.quote(source.revision or "main", safe="")
        paths = [f"hf://datasets/{source.hub_id}@{revision}/{f.lstrip('/')}" for f in files]
        return builder, {"data_files": {split: paths}, "split": split}
    options: dict[str, Any] = {"split": split, "revision": source.revision}
    if files:
        options["data_files"] = files if is_repo_id(source.hub_id) or Path(source.hub_id).is_dir() else {split: files}
    if source.get("name"):
        options["name"] = source.name
    return source.hub_id, options


def _stream_dataset(
    what: str, label: str, source: DictConfig | None, local_files: list[str] | None = None
) -> Iterator[tuple[dict[str, Any], str]]:
    """Records through `datasets.load_dataset(streaming=True)`; loading failures name the source."""
    import datasets

    # We stream the repository's own files: the dataset viewer's exported metadata (a request to
    # another host, datasets-server.<HF_ENDPOINT>) adds nothing to that.
    datasets.config.USE_PARQUET_EXPORT = False
    if source is None:
        path, options = "parquet", {"data_files": local_files, "split": "train"}
    else:
        path, options = hub_load_arguments(source)
    try:
        records = iter(datasets.load_dataset(path, streaming=True, **options))
        first = next(records, None)
    except Exception as e:  # network, missing files, bad parquet: datasets raises many types
        raise DataError(f"{what} cannot be read ({type(e).__name__}: {_first_line(e)}){_hint(e)}") from None
    if first is None:
        return
    yield first, f"{label} 1"
    for i, record in enumerate(records, 2):
        yield record, f"{label} {i}"


def _first_line(e: Exception) -> str:
    text = " ".join(str(e).split("\n\n")[:2]).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _hint(e: Exception) -> str:
    text = str(e)
    if "aiohttp" in text:
        return "; http(s) data files need aiohttp (part of the core install: pip install -e .)"
    if isinstance(e, ImportError):
        return f"; a package is missing: {e}"
    return (
        "; check the hub id, revision and data_files, or work offline with local data_files "
        "(e.g. the shipped *_sample sources)"
    )


def iter_records(name: str, source: DictConfig) -> Iterator[tuple[dict[str, Any], str]]:
    """Every record of a source as (dict, location); errors name file and line."""
    columns = dict(source.get("columns") or {})
    for raw, where in iter_raw(name, source):
        record = parse_line(raw, where) if isinstance(raw, bytes) else raw
        yield (rename_columns(record, columns, where, config_key(name)) if columns else record), where


def _field(record: dict[str, Any], key: str, where: str, kind: str) -> str:
    if key not in record:
        raise DataError(f"{where}: missing field {key!r} (a {kind} record needs it)")
    value = record[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return value


def _is_tidy(messages: list[Message]) -> bool:
    """The common case, checked cheaply: alternating, non-empty, user (or system) first, answer last."""
    if len(messages) < 2 or messages[-1]["role"] != "assistant" or messages[0]["role"] == "assistant":
        return False
    previous = None
    for m in messages:
        content = m["content"]
        if m["role"] == previous or not content or content.isspace():  # strip() would copy it
            return False
        previous = m["role"]
    return any(m["role"] == "user" for m in messages)


def _tidy(messages: list[Message]) -> list[Message] | None:
    """Merge consecutive turns of one role, drop empty turns, trim to user-first / assistant-last."""
    if _is_tidy(messages):
        return messages
    out: list[Message] = []
    for m in messages:
        if not m["content"].strip():
            continue
        if out and out[-1]["role"] == m["role"]:
            out[-1] = {"role": m["role"], "content": out[-1]["content"] + "\n\n" + m["content"]}
        else:
            out.append(dict(m))
    while out and out[0]["role"] == "assistant":
        out.pop(0)
    while out and out[-1]["role"] != "assistant":
        out.pop()
    return out if any(m["role"] == "user" for m in out) else None


def sharegpt_turns(record: dict[str, Any], where: str) -> list[tuple[str, str]]:
    """A ShareGPT record's turns as (speaker lower-cased, text), checked for shape."""
    turns = record.get("conversations")
    if not isinstance(turns, list):
        raise DataError(f"{where}: missing field 'conversations' (a list of {{from, value}} turns)")
    checked = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str) or "from" not in turn:
            raise DataError(f"{where}: conversations[{i}] needs string fields 'from' and 'value'")
        checked.append((str(turn["from"]).lower(), turn["value"]))
    return checked


def to_messages(record: dict[str, Any], kind: str, where: str, text_template: str) -> list[Message] | None:
    """Normalise one record to chat messages; None when it holds no answered user turn."""
    if kind == "prompt_completion":
        prompt = _field(record, "prompt", where, kind)
        completion = _field(record, "completion", where, kind)
        if not prompt or prompt.isspace() or not completion or completion.isspace():  # strip() would copy them
            return None
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    if kind in ("mqa", "synthetic"):
        try:
            return mqa.example(record, where)
        except mqa.RecordError as e:
            raise DataError(str(e)) from None
    if kind == "text":
        text = _field(record, "text", where, kind)
        try:
            return _tidy(templates.parse(text, text_template))
        except ValueError as e:
            raise DataError(f"{where}: {e} (source template {text_template})") from None
    if kind == "messages":
        messages = record.get("messages")
        if not isinstance(messages, list):
            raise DataError(f"{where}: missing field 'messages' (a list of {{role, content}})")
        for i, m in enumerate(messages):
            if (
                not isinstance(m, dict)
                or m.get("role") not in ("system", "user", "assistant")
                or not isinstance(m.get("content"), str)
            ):
                raise DataError(f"{where}: messages[{i}] needs a role (system, user, assistant) and string content")
        return _tidy([{"role": m["role"], "content": m["content"]} for m in messages])
    if kind == "sharegpt":
        messages = []
        for i, (speaker, value) in enumerate(sharegpt_turns(record, where)):
            role = SHAREGPT_ROLES.get(speaker)
            if role is None:
                raise DataError(f"{where}: conversations[{i}].from={speaker!r} is not one of {sorted(SHAREGPT_ROLES)}")
            messages.append({"role": role, "content": value})
        return _tidy(messages)
    raise DataError(f"{where}: unknown source kind {kind!r}")


# ShareGPT scrapes start some turns with the web UI's page counter ("1 / 1", "2 / 2-"). The seed cut
# exactly that from its output: both numbers equal, 0 to 19, one space each side of the slash, an
# optional "-", at the very start of the turn. A turn that merely starts with a fraction ("10 / 5 = ?",
# "3 / 4 of 12") is left as it is.
PAGE_COUNTER = re.compile(r"^(1?[0-9]) / \1(?![0-9])-?")


def cut_page_counter(turn: str) -> tuple[str, bool]:
    """The turn without its page counter, and whether it had one."""
    cut = PAGE_COUNTER.sub("", turn, count=1)
    return cut, cut != turn


def seed_output(messages: list[Message]) -> list[Message]:
    """A conversation distilled with the seed's verbatim prompts, as the seed's output kept it: page
    counters cut from human turns, every turn stripped."""
    return [
        {
            "role": m["role"],
            "content": (cut_page_counter(m["content"])[0] if m["role"] == "user" else m["content"]).strip(),
        }
        for m in messages
    ]
