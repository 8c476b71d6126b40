"""The stage contract.

A stage is a class named by `_target_` in its config node (allow-listed to `recipe.*`). The runner
builds it with `Stage(config=<its node>, root=<the whole config>)`, asks it for its semantic config
(what its fingerprint hashes: its node minus the keys its `schema` marks execution-only) and the
upstream stages it needs, and calls `run(inputs, out_dir)`, which writes outputs into `out_dir` and
returns the manifest fields. Stages read upstream artifacts through `recipe.artifacts`; they never
import the runner or each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from omegaconf import DictConfig, OmegaConf

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

    def __init__(self, config: DictConfig, root: DictConfig) -> None:
        self.config = config
        self.root = root
        self.store: ArtifactStore | None = None  # set by the runner: for records of remote objects
        self.fingerprint: str | None = None  # set by the runner before `run`

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
