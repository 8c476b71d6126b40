"""The config key reference (docs/reference.md), generated from the schemas in `recipe/config.py`:
every key with its type, default, whether it enters the stage's fingerprint, and the comments
written beside it. A test fails when the committed file is stale.

    python -m recipe.reference > docs/reference.md      # or: make reference
"""

from __future__ import annotations

import ast
import dataclasses
import io
import tokenize
import typing
from enum import Enum
from typing import Any

from omegaconf import MISSING

from recipe import config

# The `train` and `deploy` nodes hold one of several registered schemas (`train=together_lora`
# extends `together_schema`, ...): each gets its own table under the node's key.
CHOICES: dict[str, list[tuple[str, type]]] = {
    "train": [("together_*", config.TogetherTrainConfig), ("local_*", config.LocalTrainConfig)],
    "deploy": [("together", config.TogetherDeployConfig), ("local", config.LocalDeployConfig)],
}
HEADER = """\
# Config key reference

Generated from the schemas in `recipe/config.py` by `python -m recipe.reference > docs/reference.md`
(`make reference`); `tests/test_configs.py` fails when this file is stale. Do not edit it by hand:
edit the schema's comments.

*Fingerprint*: **yes** when the key is part of the stage's fingerprint (changing it makes a new
artifact); *execution* keys change how a stage runs (speed, retries, money limits, progress), not
what it makes, and never cause a rebuild. A key's type `a | b` lists the values it accepts; `?`
means null is allowed. `<name>` stands for any entry of a map.
"""


def _comments() -> tuple[dict[int, str], list[str]]:
    """The comment on each line of config.py, and its lines (to tell comment-only lines apart)."""
    source = config.__loader__.get_source(config.__name__)  # type: ignore[union-attr]
    found = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            text = token.string.lstrip("#").strip()
            found[token.start[0]] = "" if text.startswith(("type:", "noqa")) else text
    return found, source.splitlines()


def _field_notes() -> dict[tuple[str, str], str]:
    """(class, attribute) -> the comment lines just above it and the comment beside it."""
    comments, lines = _comments()
    tree = ast.parse("\n".join(lines))
    notes: dict[tuple[str, str], str] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                name = item.target.id
            elif isinstance(item, ast.Assign) and isinstance(item.targets[0], ast.Name):
                name = item.targets[0].id
            else:
                continue
            above, line = [], item.lineno - 1
            while line >= 1 and lines[line - 1].strip().startswith("#"):
                above.insert(0, comments[line])
                line -= 1
            beside = [comments[n] for n in range(item.lineno, (item.end_lineno or item.lineno) + 1) if n in comments]
            notes[(node.name, name)] = " ".join(c for c in above + [c for c in beside if c not in above] if c)
    return notes


def _type(kind: Any) -> tuple[str, bool]:
    """A type as the reference writes it, and whether null is allowed."""
    if typing.get_origin(kind) is typing.Union:
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return _type(args[0])[0], True
    if typing.get_origin(kind) is list:
        return f"list of {_type(typing.get_args(kind)[0])[0]}", False
    if typing.get_origin(kind) is dict:
        return f"map of {_type(typing.get_args(kind)[1])[0]}", False
    if isinstance(kind, type) and issubclass(kind, Enum):
        return " \\| ".join(m.value for m in kind), False
    if dataclasses.is_dataclass(kind):
        return "node", False
    if kind is Any:
        return "any", False
    return getattr(kind, "__name__", str(kind)), False


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return ""
    if value is MISSING or value == "???":
        return "**required**"
    if dataclasses.is_dataclass(value):
        return "(below)"
    if isinstance(value, Enum):
        value = value.value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if value in ({}, []):
        return "{}" if value == {} else "[]"
    text = str(value)
    if text == "":
        return '`""`'
    return f"`{text}`".replace("|", "\\|")


def _values(kind: Any, notes: dict[tuple[str, str], str]) -> str:
    """An enum's values that carry a comment, as `value`: comment."""
    if typing.get_origin(kind) is typing.Union:
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if not (isinstance(kind, type) and issubclass(kind, Enum)):
        return ""
    said = [f"`{m.value}`: {notes[(kind.__name__, m.name)]}" for m in kind if notes.get((kind.__name__, m.name))]
    return ("; ".join(said)) if said else ""


def _summary(nested: list[tuple[str, type, str, bool]], key: str) -> str:
    """For a node key without a comment: its schema's first sentence, and where its keys are."""
    subs = [(k, sub) for k, sub, _, _ in nested if k == key or k == f"{key}.<name>"]
    if not subs:
        return ""
    k, sub = subs[-1]
    first = " ".join((sub.__doc__ or "").split()).split(". ")[0].rstrip(".")
    home = SHOWN.get(sub) or HOME.get(sub) or k
    where = f"keys: `{home}`" if home == k else f"keys as in `{home}`"
    if first and not first.startswith(sub.__name__ + "("):
        return f"{first} ({where})."
    return f"{where[0].upper()}{where[1:]}."


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# Root keys whose nodes stages read (and fingerprint); the others steer the run itself.
STAGE_NODES = {"sources", "distill", "mix", "train", "test", "deploy"}
SHOWN: dict[type, str] = {}  # schemas already given a table, and its key (during one `render`)
# Where a schema used in several places gets its table (the others point there).
HOME: dict[type, str] = {
    config.SuiteConfig: "test.suites.<name>",
    config.DecontaminateConfig: "mix.decontaminate",
    config.TrainArgs: "train.args",
}


def _table(
    schema: type, path: str, notes: dict[tuple[str, str], str], out: list[str], title: str = "", staged: bool = False
) -> None:
    """`schema`'s keys under `path`, then each nested node's own table (a schema met again, e.g.
    `train.args` under both trainers, points at its first table)."""
    hints = typing.get_type_hints(schema)
    nested: list[tuple[str, type, str, bool]] = []
    doc = (schema.__doc__ or "").strip()
    out += [f"## {title or f'`{path}`'}", ""]
    if doc and not doc.startswith(schema.__name__ + "("):
        out += [" ".join(doc.split()), ""]
    out += ["| key | type | default | fingerprint | what it is |", "|---|---|---|---|---|"]
    for f in dataclasses.fields(schema):
        if f.name == "_target_":
            continue
        kind = hints[f.name]
        shown, nullable = _type(kind)
        inner = next((a for a in typing.get_args(kind) if a is not type(None)), kind) if nullable else kind
        key = f"{path}.{f.name}" if path else f.name
        in_stage = staged or f.name in STAGE_NODES
        if not path and f.name in CHOICES:
            nested += [(key, sub, f"`{key}` ({key}={choice})", True) for choice, sub in CHOICES[f.name]]
        elif dataclasses.is_dataclass(inner):
            nested.append((key, inner, "", in_stage))  # type: ignore[arg-type]
        elif typing.get_origin(inner) is dict and dataclasses.is_dataclass(typing.get_args(inner)[1]):
            nested.append((f"{key}.<name>", typing.get_args(inner)[1], "", in_stage))
        if not in_stage:
            mark = "—"
        else:
            mark = "execution" if f.metadata.get("execution") else "yes"
        if not path and f.name in CHOICES:
            shown = "node"
        values = _values(kind, notes)
        said = notes.get((schema.__name__, f.name), "") or _summary(nested, key)
        what = " ".join(t for t in (said, f"Values: {values}." if values else "") if t)
        out.append(f"| `{f.name}` | {shown}{'?' if nullable else ''} | {_default(f)} | {mark} | {_cell(what)} |")
    out.append("")
    for key, sub, sub_title, sub_staged in nested:
        if not sub_title and (sub in SHOWN or HOME.get(sub, key) != key):
            continue  # its row above says where its keys are
        SHOWN[sub] = key
        _table(sub, key, notes, out, sub_title, sub_staged)


def render() -> str:
    """The whole reference, as docs/reference.md holds it."""
    notes = _field_notes()
    SHOWN.clear()
    out = [HEADER]
    _table(config.RecipeConfig, "", notes, out, title="The root (`conf/config.yaml`)")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
