"""One declaration of what is semantic: every key of every stage schema, changed one at a time.

Execution-only keys (marked once, in recipe/config.py) must leave the stage's fingerprint as it is;
every other key must change it. The walk covers nested nodes (lora, sampling, teacher, judge, ...)
and the entries of dict nodes (mix components, test suites) as the default configs compose them.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import typing
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig, OmegaConf

from recipe.config import SAMPLES_DIR, execution_paths
from recipe.data.contamination import identity_fields
from recipe.errors import RecipeError
from recipe.store import fingerprint
from recipe.targets import build_stage

# Stage configs to walk: (stage, overrides that pick the option).
OPTIONS = [
    ("distill", ()),
    ("mix", ()),
    ("train", ()),
    ("train", ("train=together_lora",)),
    ("test", ()),
    ("deploy", ()),
    ("deploy", ("deploy=together_dedicated",)),
]
# Keys whose names say they are about how a stage runs: they must be marked execution-only.
EXECUTION_NAMES = re.compile(
    r"(^|_)(budget|prices|concurrency|timeout_s|poll_s|progress|max_retries|retry_backoff_s|cache_path|workers)$"
)
# A suite's data keys (with its kind's text fields) decide what decontamination checks.
SUITE_DATA = {"kind", "hub_id", "revision", "data_files", "split"}
# Shares enter Mix's fingerprint as applied (after `rescale` or `normalize`), not as written:
# covered in test_mix.py (normalized weights reuse the artifact of the same shares written out).
SHARES = {"share", "rescale", "normalize"}


def _compose(make_cfg, overrides: tuple[str, ...]) -> DictConfig:
    return make_cfg(*overrides, base=())


def _leaves(schema: type, node: Any, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """(path, type) of every leaf key of `schema`, with dict nodes walked through their entries."""
    out = []
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        if f.name == "_target_":
            continue
        path, kind = (*prefix, f.name), hints[f.name]
        if typing.get_origin(kind) is typing.Union:
            args = [a for a in typing.get_args(kind) if a is not type(None)]
            kind = args[0]
        value = node.get(f.name) if node is not None else None
        if dataclasses.is_dataclass(kind):
            out.extend(_leaves(kind, value, path))  # type: ignore[arg-type]
        elif typing.get_origin(kind) is dict and dataclasses.is_dataclass(typing.get_args(kind)[1]):
            for key in value or {}:
                out.extend(_leaves(typing.get_args(kind)[1], value[key], (*path, key)))
        else:
            out.append((path, kind))
    return out


def _other(kind: Any, value: Any) -> Any:
    """A different valid value of the key's type."""
    if isinstance(kind, type) and issubclass(kind, Enum):
        members = [m for m in kind if m.name != (value.name if isinstance(value, Enum) else value)]
        return members[-1].name
    if typing.get_origin(kind) is list:
        return [*(value or []), _other(typing.get_args(kind)[0], None)]
    if kind is bool:
        return not value
    if kind is int:
        return (value or 0) + 1
    if kind is float:
        return (value or 0.0) + 0.25
    if kind is str or kind is Any:
        return f"{value or ''}x"
    raise AssertionError(f"no mutation for {kind}")


# What a synthetic suite's prompts are made from (recipe/data/sources.py, source_identity).
SYNTHETIC_SETTINGS = {"seed", "people", "examples", "document_sentences", "reply", "num_documents", "gold_positions"}


def _matches(path: tuple[str, ...], marked: tuple[str, ...]) -> bool:
    """`path` lies under an execution-only path (whose "*" stands for any entry of a dict of nodes)."""
    return len(path) >= len(marked) and all(m in ("*", k) for m, k in zip(marked, path, strict=False))


def _fp(stage) -> str:
    return fingerprint(stage.name, stage.version, stage.semantic_config(), {})


def _cases() -> list[tuple[str, tuple[str, ...]]]:
    return OPTIONS


@pytest.mark.parametrize(("stage_name", "overrides"), _cases(), ids=lambda v: v if isinstance(v, str) else "+".join(v))
def test_every_key_is_semantic_unless_marked_execution_only(make_cfg, stage_name: str, overrides) -> None:
    cfg = _compose(make_cfg, overrides)
    stage = build_stage(stage_name, cfg)
    schema = stage.schema
    marked = execution_paths(schema)
    base = _fp(stage)
    checked = 0
    for path, kind in _leaves(schema, cfg[stage_name]):
        if path[-1] in SHARES:
            continue
        key = ".".join(path)
        current = OmegaConf.select(cfg[stage_name], key)
        mutated = cfg.copy()
        if path[-1] == "source":  # a reference: another source of the same kind
            kinds = {n: s.kind for n, s in cfg.sources.items()}
            new = next(n for n in sorted(kinds) if n != current and kinds[n] == kinds.get(current, kinds[n]))
        elif path[-1] == "data_files" and current:  # files are identified by content: another shipped file
            new = [str(next(p for p in sorted(SAMPLES_DIR.glob("*.jsonl")) if str(p) not in current))]
        else:
            new = _other(kind, current)
        OmegaConf.update(mutated, f"{stage_name}.{key}", new, merge=False)
        try:
            changed = build_stage(stage_name, mutated)
        except RecipeError:  # the new value fails the stage's checks: compare the nodes as they are
            changed = build_stage(stage_name, cfg)
            changed.config = mutated[stage_name]
        is_execution = any(_matches(path, p) for p in marked)
        if "against" in path:  # a Test suite seen by decontamination: only what decides the texts checked
            suite = OmegaConf.select(cfg[stage_name], ".".join(path[: path.index("against") + 2]))
            data = SUITE_DATA if suite.hub_id else SUITE_DATA - {"revision"}  # a revision of local files: unused
            if suite.kind.value == "synthetic":  # made, not read: the generator's settings are its data
                data = {"kind", "split", *SYNTHETIC_SETTINGS}
            is_execution = path[-1] not in {*data, *identity_fields(suite.kind.value)}
        try:
            now = _fp(changed)
        except RecipeError:  # the new value is no suite at all (a synthetic suite made `mqa`): nothing to compare
            continue
        if is_execution:
            assert now == base, f"{stage_name}.{key} is execution-only but changes the fingerprint"
        else:
            assert now != base, f"{stage_name}.{key} changes the artifact but not the fingerprint"
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize(("stage_name", "overrides"), _cases(), ids=lambda v: v if isinstance(v, str) else "+".join(v))
def test_keys_about_how_a_stage_runs_are_marked_execution_only(make_cfg, stage_name: str, overrides) -> None:
    stage = build_stage(stage_name, _compose(make_cfg, overrides))
    marked = execution_paths(stage.schema)
    for path, _ in _leaves(stage.schema, None):
        if any(EXECUTION_NAMES.search(part) for part in path):
            assert any(path[: len(p)] == p for p in marked), f"{stage_name}.{'.'.join(path)} should be execution-only"
    # devices changes the global batch when train.args.global_batch_size is null (micro_batch_size x devices): semantic.
    if stage_name == "train" and not overrides:
        assert ("devices",) not in marked


def test_test_suites_are_identified_by_their_data_not_its_path(make_cfg, tmp_path: Path) -> None:
    """The same suite file in another checkout (another directory) is the same test; other data is not."""
    cfg = _compose(make_cfg, ("test=offline",))  # the model card's suites on shipped files
    name, suite = next((n, s) for n, s in cfg.test.suites.items() if not s.hub_id and s.data_files)
    base = _fp(build_stage("test", cfg))
    moved = cfg.copy()
    copies = []
    for i, f in enumerate(suite.data_files):  # the same names, in another directory
        (tmp_path / str(i)).mkdir()
        copies.append(str(tmp_path / str(i) / Path(f).name))
        shutil.copy(f, copies[-1])
    OmegaConf.update(moved, f"test.suites.{name}.data_files", copies, merge=False)
    assert _fp(build_stage("test", moved)) == base
    Path(copies[0]).write_text(Path(copies[0]).read_text().replace("a", "b", 1))
    assert _fp(build_stage("test", moved)) != base
