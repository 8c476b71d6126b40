"""Keep API keys off disk.

Hydra writes `.hydra/config.yaml`, `hydra.yaml` and `overrides.yaml` (and `multirun.yaml`) before
our task function runs, so redacting later is too late. `ScrubSecrets` is a Hydra callback that
runs on run/multirun start, before anything is saved: every secret-named key given a literal value
(e.g. `together.api_key=sk-...` on the command line) is moved into this process's environment and
replaced in the config and in the recorded overrides by `${oc.env:RECIPE_SECRET_...}`, so the
saved files hold only the variable's name while the running job still resolves the key. Any other
string that contains the secret (e.g. `hydra.job.override_dirname`) has it replaced by `***`.
Sweep jobs are composed from the rewritten overrides, so they never see the literal either.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write

_SECRET_NAME = re.compile(r"(api_?key|token|secret|password)$", re.IGNORECASE)
REDACTED = "***"


def is_secret_key(name: str) -> bool:
    """True for config keys whose values are credentials (api_key, wandb_api_key, token, ...)."""
    return bool(_SECRET_NAME.search(str(name)))


def env_var_for(key_path: str) -> str:
    return "RECIPE_SECRET_" + re.sub(r"[^A-Za-z0-9]", "_", key_path).upper()


def strip_secrets(value: Any) -> Any:
    """A copy of a plain container without secret-named keys (for fingerprints and manifests)."""
    if isinstance(value, dict):
        return {k: strip_secrets(v) for k, v in value.items() if not is_secret_key(k)}
    if isinstance(value, list):
        return [strip_secrets(v) for v in value]
    return value


PRINTING_FLAGS = frozenset({"--cfg", "-c", "--info", "-i"})


def mask_printed_secrets(argv: list[str]) -> list[str]:
    """When the command only prints the config (`--cfg`, `--info`), secret overrides given on the
    command line are replaced by `***` before Hydra composes (and prints) anything: nothing runs, so
    nothing needs the key, and CI logs keep stdout. Runs are scrubbed by ScrubSecrets instead."""
    if not PRINTING_FLAGS.intersection(argv):
        return argv
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and not arg.startswith("-") and is_secret_key(key.rsplit(".", 1)[-1]) and value:
            arg = f"{key}={REDACTED}"
        out.append(arg)
    return out


def together_api_key(cfg: DictConfig) -> str | None:
    """The Together key: `together.api_key` if set, else $TOGETHER_API_KEY."""
    return cfg.together.api_key or os.environ.get("TOGETHER_API_KEY") or None


def _scrub_overrides(lines: ListConfig, found: dict[str, str]) -> None:
    parser = OverridesParser.create()
    raw = [lines._get_node(i)._value() for i in range(len(lines))]  # as typed: iterating would resolve them
    for i, line in enumerate(raw):
        override = parser.parse_override(line)
        key = override.key_or_group
        if not is_secret_key(key.rsplit(".", 1)[-1]) or override.value_type is None:
            continue
        if override.is_sweep_override():
            raise ValueError(f"override {key!r}: a secret cannot be swept; set it once or use an env var")
        value = override.value()
        if not isinstance(value, str) or not value or "${" in value:
            continue
        var = env_var_for(key)
        os.environ[var] = value
        found[value] = var
        lhs = line.split("=", 1)[0]
        lines[i] = f"{lhs}=${{oc.env:{var}}}"


def _scrub_node(node: DictConfig | ListConfig, path: str, found: dict[str, str]) -> None:
    keys = list(node.keys()) if isinstance(node, DictConfig) else list(range(len(node)))  # nothing resolved
    for key in keys:
        child_path = f"{path}.{key}" if path else str(key)
        if OmegaConf.is_interpolation(node, key):
            continue
        child = node._get_node(key)
        if isinstance(child, (DictConfig, ListConfig)):
            if not (child._is_none() or child._is_missing()):
                _scrub_node(child, child_path, found)
            continue
        value = child._value()
        if not isinstance(value, str) or not value or value == "???":
            continue
        if isinstance(node, DictConfig) and is_secret_key(key):
            var = found.get(value) or env_var_for(child_path)
            os.environ[var] = value
            found[value] = var
            node[key] = f"${{oc.env:{var}}}"
        else:
            for secret in found:
                if secret in value:
                    node[key] = value.replace(secret, REDACTED)
                    value = node[key]


def scrub_config(cfg: DictConfig) -> None:
    """Move literal secrets out of `cfg` (config and recorded overrides) into the environment."""
    found: dict[str, str] = {}
    with read_write(cfg), open_dict(cfg):
        if "hydra" in cfg:
            for group in ("task", "hydra"):
                _scrub_overrides(cfg.hydra.overrides[group], found)
        _scrub_node(cfg, "", found)
        if found:  # a second pass catches derived strings seen before their secret was found
            _scrub_node(cfg, "", found)


def _scrub_or_exit(cfg: DictConfig) -> None:
    # Hydra turns a callback's exception into a warning and carries on, which would let a key
    # reach .hydra/; fail closed instead (SystemExit is not an Exception).
    try:
        scrub_config(cfg)
    except Exception as e:
        print(f"error: refusing to run, secrets could not be kept off disk: {e}", file=sys.stderr)
        raise SystemExit(2) from None


class ScrubSecrets(Callback):
    """Hydra callback (see conf/config.yaml): scrub before Hydra saves anything."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _scrub_or_exit(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _scrub_or_exit(config)
