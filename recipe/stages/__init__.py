"""The stage contract.

A stage is a class named by `_target_` in its config node (allow-listed to `recipe.*`). The runner
builds it with `Stage(config=<its node>, root=<the whole config>)`, asks it for its semantic config
(what its fingerprint hashes: its node minus the keys its `schema` marks execution-only) and the
upstream stages it needs, and calls `run(inputs, out_dir)`, which writes outputs into `out_dir` and
returns the manifest fields. Stages read upstream artifacts through `recipe.artifacts`; they never
import the runner or each other. A dry run calls `plan(inputs)` instead: the stage says what it
would do, sets `planned_usd` when it can price it and `planned` (the size of what it would make),
which the runner hands to the stages downstream as `upstream_plans` when the artifact is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig, OmegaConf

from recipe.artifacts import Planned
from recipe.config import semantic_view
from recipe.errors import RecipeError
from recipe.providers.http import Client, together_base_url
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


class Stage:
    name: ClassVar[str]
    # Bump when a change in code changes what the stage produces: old artifacts stop matching.
    version: ClassVar[str]
    # The structured config of the stage's node; its execution-only fields (recipe.config.execution)
    # are left out of the fingerprint.
    schema: ClassVar[type]
    # False for stages whose effect is not a file (a server answering now): run every time.
    reusable: ClassVar[bool] = True
    # What a dry run expects the stage to cost in USD, set by `plan` when it can say (None: unknown).
    planned_usd: float | None = None
    # What a dry run expects the artifact to hold, set by `plan` when it can say; the runner hands it
    # to downstream stages' `plan` as `upstream_plans` (only for artifacts not built yet).
    planned: Planned | None = None

    def uses_together(self) -> bool:
        """Whether running this stage needs the Together key (a dry run flags a missing one)."""
        return False

    def __init__(self, config: DictConfig, root: DictConfig) -> None:
        self.config = config
        self.root = root
        self.store: ArtifactStore | None = None  # set by the runner: for records of remote objects
        self.fingerprint: str | None = None  # set by the runner before `run`
        self.upstream_plans: dict[str, Planned] = {}  # set by the runner before `plan`

    def upstream(self) -> tuple[str, ...]:
        """Names of stages whose artifacts this one needs."""
        return ()

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
        return Client(base_url, key, max_retries=c.max_retries, timeout_s=c.timeout_s, backoff_s=c.retry_backoff_s)

    def semantic_config(self) -> dict[str, Any]:
        """What the fingerprint hashes: the resolved node minus execution-only keys and secrets."""
        node = OmegaConf.to_container(self.config, resolve=True, enum_to_str=True)
        assert isinstance(node, dict)
        return strip_secrets(semantic_view(self.schema, node))

    def plan(self, inputs: dict[str, Artifact | None]) -> str:
        """One or two lines saying what `run` would do (for dry_run); must not do slow or paid work."""
        return ""

    def run(self, inputs: dict[str, Artifact], out_dir: Path) -> dict[str, Any]:
        """Produce the artifact's files in `out_dir`; return the manifest's fields."""
        raise NotImplementedError


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


def check_targets(cfg: DictConfig) -> None:
    """Refuse, before any work, a `_target_` anywhere in the config that is outside recipe.*, and a
    stage node (selected or not) that names no recipe Stage class."""
    for name in STAGE_ORDER:
        if cfg.get(CONFIG_KEY[name]) is not None:
            stage_class(name, cfg)

    def walk(node: Any, path: str) -> None:
        if isinstance(node, DictConfig | ListConfig) and (node._is_none() or node._is_missing()):
            return
        if isinstance(node, DictConfig):
            for key in node.keys():
                value = node._get_node(key)
                if key == "_target_" and not str(node.get(key)).startswith("recipe."):
                    raise StageError(f"{path}{key}={node.get(key)!r} is refused: targets must be in recipe.*")
                walk(value, f"{path}{key}.")
        elif isinstance(node, ListConfig):
            for i, item in enumerate(node):
                walk(item, f"{path}{i}.")

    walk(cfg, "")
