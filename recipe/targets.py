"""What a config may name as code: objects the project registers, found by what they are, not by spelling.

A composed config names code in a few places: each stage's `_target_`, Hydra's callbacks, launcher and
sweeper (and the Optuna sampler inside it), and Python logging's `()` / `class` factories. Each name
is resolved to the object it denotes, as Hydra and `logging` resolve it, and allowed only when that
object is what the place takes (a Stage class, a Hydra Callback, Launcher or Sweeper, an Optuna
sampler or pruner, a local logging handler, formatter or filter) and is defined where such objects
live. A prefix proves nothing: `recipe.store.shutil.copyfile` is shutil's copyfile.

Names are resolved without importing any module outside the packages that may define allowed code,
so a refused name runs no module's import either. Everything is checked before Hydra configures its
logging or instantiates a callback (recipe/cli.py hooks both), in a dry run too. A plugin of your own
is allowed from the environment, never from a config: RECIPE_ALLOW_TARGETS=its.module.prefix.
"""

from __future__ import annotations

import inspect
import logging
import logging.handlers
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hydra._internal.utils import _locate
from omegaconf import DictConfig, ListConfig

from recipe.stages import CONFIG_KEY, STAGE_ORDER, Stage, StageError, check_keys

ALLOW_ENV = "RECIPE_ALLOW_TARGETS"  # module prefixes, comma-separated: a plugin of yours (not settable from a config)


def allowed_by_environment() -> tuple[str, ...]:
    return tuple(p.strip().rstrip(".") for p in os.environ.get(ALLOW_ENV, "").split(",") if p.strip())


def _within(module: str | None, prefixes: tuple[str, ...]) -> bool:
    return module is not None and any(module == p or module.startswith(p + ".") for p in prefixes)


@dataclass(frozen=True)
class Kind:
    """What one place in a config may name: `what` says it in messages, `homes` are the packages
    whose modules may define it, `admits` checks what the object is."""

    what: str
    homes: tuple[str, ...]
    admits: Callable[[Any], bool]

    def allows(self, obj: Any) -> bool:
        home = getattr(obj, "__module__", None)
        return _within(home, self.homes + allowed_by_environment()) and self.admits(obj)


def _subclass_of(base: Callable[[], type], *, but: tuple[type, ...] = ()) -> Callable[[Any], bool]:
    def admits(obj: Any) -> bool:
        return isinstance(obj, type) and issubclass(obj, base()) and obj not in but

    return admits


def _hydra_callback() -> type:
    from hydra.experimental.callback import Callback

    return Callback


def _launcher() -> type:
    from hydra.plugins.launcher import Launcher

    return Launcher


def _sweeper() -> type:
    from hydra.plugins.sweeper import Sweeper

    return Sweeper


def _optuna_part(obj: Any) -> bool:
    from optuna.pruners import BasePruner
    from optuna.samplers import BaseSampler

    return isinstance(obj, type) and issubclass(obj, BaseSampler | BasePruner)


# Logging may write to the terminal and to local `.log` files: nothing that sends records elsewhere
# (sockets, HTTP, mail, syslog) or hands them to other code (queues, memory buffers).
LOCAL_HANDLERS = (
    logging.StreamHandler,
    logging.FileHandler,
    logging.NullHandler,
    logging.handlers.RotatingFileHandler,
    logging.handlers.TimedRotatingFileHandler,
    logging.handlers.WatchedFileHandler,
)


def _logging_part(obj: Any) -> bool:
    if obj in LOCAL_HANDLERS:
        return True
    return isinstance(obj, type) and issubclass(obj, logging.Formatter | logging.Filter)


STAGE = Kind("a recipe Stage class (recipe.stages.*)", ("recipe.stages",), _subclass_of(lambda: Stage, but=(Stage,)))
CALLBACK = Kind("a Hydra Callback class of the recipe package", ("recipe",), _subclass_of(_hydra_callback))
LAUNCHER = Kind(
    "a Hydra Launcher class of Hydra or its plugins",
    ("hydra._internal.core_plugins", "hydra_plugins"),
    _subclass_of(_launcher),
)
SWEEPER = Kind(
    "a Hydra Sweeper class of Hydra or its plugins",
    ("hydra._internal.core_plugins", "hydra_plugins"),
    _subclass_of(_sweeper),
)
OPTUNA = Kind("an Optuna sampler or pruner class", ("optuna.samplers", "optuna.pruners"), _optuna_part)
LOGGING = Kind(
    "a local logging handler, or a logging formatter or filter class",
    ("logging", "colorlog"),  # colorlog: the formatter of Hydra's hydra/job_logging=colorlog plugin
    _logging_part,
)
# The packages a name may be looked up in at all: looking a name up imports its modules.
LOOKUP_ROOTS = ("recipe", "hydra", "hydra_plugins", "optuna", "logging", "colorlog")
LOGGING_STREAMS = ("ext://sys.stdout", "ext://sys.stderr")

# Environment variables a config may not set through hydra.job.env_set: they load code into this
# process's children (interpreters, the dynamic linker, shells, CUDA, OpenSSL), loosen these checks,
# or move where requests, keys and data go. Set such variables in the shell that runs `recipe`.
FORBIDDEN_ENV = re.compile(
    r"(PYTHON\w*|LD_\w+|DYLD_\w+|PATH|BASH_ENV|ENV|PERL5\w*|PERLLIB|RUBYOPT|RUBYLIB|NODE_OPTIONS|NODE_PATH"
    r"|GCONV_PATH|OPENSSL_\w+|CUDA_INJECTION64_PATH|RECIPE_\w+|HYDRA_\w+|TOGETHER_\w+|OPENAI_\w+|HF_\w+"
    r"|WANDB_\w+|MLFLOW_\w+|\w*_PROXY|REQUESTS_CA_BUNDLE|CURL_CA_BUNDLE|SSL_CERT_\w+|HOST|PORT)",
    re.IGNORECASE,
)


class Refused(StageError):
    """A config names code (or an environment) it may not."""


def _how_to_allow(kind: Kind) -> str:
    if kind is STAGE or kind is CALLBACK:
        return f" (to allow a plugin of yours: export {ALLOW_ENV}=its.module.prefix)"
    return ""


def _describe(obj: Any) -> str:
    if inspect.ismodule(obj):
        return f"the module {obj.__name__}"
    what = "a class" if inspect.isclass(obj) else "a function" if callable(obj) else f"a {type(obj).__name__}"
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    module = getattr(obj, "__module__", None)
    return f"{module}.{name} ({what})" if module and name else what


def locate(key: str, name: Any, kind: Kind) -> Any:
    """The object `name` (a config's value at `key`) denotes, when `kind` allows it; StageError
    naming the key and what the name is otherwise. Only modules under LOOKUP_ROOTS (and the
    environment's prefixes) are imported to find out."""
    if not isinstance(name, str):
        raise Refused(f"{key}={name!r} is refused: a name of code is a written-out string{_how_to_allow(kind)}")
    if "${" in name:
        raise Refused(f"{key}={name!r} is refused: a name of code is written out, not built by an interpolation")
    parts = name.split(".")
    if not all(p.isidentifier() for p in parts):
        raise Refused(f"{key}={name!r} is refused: not a dotted Python name")
    roots = LOOKUP_ROOTS + tuple(p.split(".")[0] for p in allowed_by_environment())
    if parts[0] not in roots:
        raise Refused(f"{key}={name!r} is refused: {kind.what} is expected here{_how_to_allow(kind)}")
    try:
        obj = _locate(name)  # the lookup Hydra's instantiate makes (hydra.utils.get_object, without its log line)
    except Exception as e:  # Hydra wraps import errors in its own types
        cause = str(e.__cause__ or e).strip().splitlines()[0]
        raise StageError(f"{key}={name!r} cannot be imported: {cause}") from None
    if not kind.allows(obj):
        raise Refused(f"{key}={name!r} is refused: it is {_describe(obj)}, and {kind.what} is expected here")
    return obj


def _raw(node: Any) -> Any:
    """A node's value as written (an interpolation stays a string): nothing is resolved."""
    return node if isinstance(node, DictConfig | ListConfig) else node._value()


def _children(node: Any) -> list[tuple[str, Any]]:
    if isinstance(node, DictConfig | ListConfig) and (node._is_none() or node._is_missing()):
        return []
    if isinstance(node, DictConfig):
        return [(str(k), node._get_node(k)) for k in node.keys()]
    if isinstance(node, ListConfig):  # nodes, not values: iterating would resolve interpolations
        return [(str(i), node._get_node(i)) for i in range(len(node))]
    return []


def _check_targets(node: Any, path: str, place: Callable[[str], Kind | None]) -> None:
    """Every `_target_` under `node`: resolved and checked against the kind its place takes."""
    for key, child in _children(node):
        here = f"{path}{key}"
        if key == "_target_":
            kind = place(here)
            if kind is None:
                raise Refused(
                    f"{here}={_raw(child)!r} is refused: nothing at {path.rstrip('.')} is built from a "
                    "_target_ (a stage's node names its class: distill|mix|train|test|deploy._target_)"
                )
            locate(here, _raw(child), kind)
        _check_targets(child, f"{here}.", place)


def _check_logging(node: Any, path: str) -> None:
    """logging.config.dictConfig's ways to reach code: `()` and `class` factories and `ext://`
    values; its files are `.log` files."""
    for key, child in _children(node):
        here, value = f"{path}{key}", _raw(child)
        if key in ("()", "class", "_target_"):
            locate(here, value, LOGGING)
        elif isinstance(value, str) and value.startswith("ext://") and value not in LOGGING_STREAMS:
            raise Refused(f"{here}={value!r} is refused: a logging stream is {' or '.join(LOGGING_STREAMS)}")
        elif key == "filename" and not (isinstance(value, str) and value.endswith(".log")):
            raise Refused(f"{here}={value!r} is refused: a log file's name ends in .log")
        _check_logging(child, f"{here}.")


def _hydra_place(path: str) -> Kind | None:
    parts = path.split(".")
    if len(parts) == 4 and parts[1] == "callbacks":
        return CALLBACK
    if parts[1:] == ["launcher", "_target_"]:
        return LAUNCHER
    if parts[1:] == ["sweeper", "_target_"]:
        return SWEEPER
    if parts[1] == "sweeper":
        return OPTUNA  # the search sweeper's sampler (and a sampler's own independent_sampler)
    return None


# Launcher settings that run shell or install packages on the machines the jobs run on.
LAUNCHER_COMMANDS = {
    "setup": "Submitit's shell lines before each job",
    "ray.init.runtime_env": "Ray's per-job environment (packages, hooks)",
    "ray.remote.runtime_env": "Ray's per-job environment (packages, hooks)",
}
SRUN_HOOKS = re.compile(r"--(task-)?(prolog|epilog)\b")


def _check_launcher(launcher: Any) -> None:
    if not isinstance(launcher, DictConfig):
        return
    for key, what in LAUNCHER_COMMANDS.items():
        value = launcher
        for part in key.split("."):
            value = _raw(value._get_node(part)) if isinstance(value, DictConfig) and part in value else None
        if value not in (None, [], {}) and not (isinstance(value, DictConfig | ListConfig) and len(value) == 0):
            raise Refused(
                f"hydra.launcher.{key} is refused: {what} would run from a config; run such steps in the shell or "
                "batch script that starts `recipe -m` (its jobs inherit the environment)"
            )
    for i, arg in _children(launcher._get_node("srun_args")) if "srun_args" in launcher else []:
        if isinstance(_raw(arg), str) and SRUN_HOOKS.search(_raw(arg)):
            raise Refused(f"hydra.launcher.srun_args.{i}={_raw(arg)!r} is refused: srun's prolog/epilog runs a program")


def _check_env(job: Any) -> None:
    env = job._get_node("env_set") if isinstance(job, DictConfig) and "env_set" in job else None
    for name, _ in _children(env):
        if FORBIDDEN_ENV.fullmatch(name):
            raise Refused(
                f"hydra.job.env_set.{name} is refused: a config may not set {name} (it loads code, loosens these "
                "checks or moves where requests and keys go); export it in the shell that runs recipe"
            )


def check_hydra(hydra: Any) -> None:
    """The `hydra` node: callbacks, launcher, sweeper, logging, the job's environment."""
    if not isinstance(hydra, DictConfig) or hydra._is_none():
        return
    for part, node in _children(hydra):
        if part in ("job_logging", "hydra_logging"):
            _check_logging(node, f"hydra.{part}.")
        else:
            _check_targets(node, f"hydra.{part}.", _hydra_place)
    _check_launcher(hydra._get_node("launcher") if "launcher" in hydra else None)
    _check_env(hydra._get_node("job") if "job" in hydra else None)


def check_logging_node(node: Any, name: str) -> None:
    """One logging config (hydra.job_logging or hydra.hydra_logging), as Hydra is about to apply it."""
    _check_logging(node, f"hydra.{name}.")


def _stage_place(path: str) -> Kind | None:
    key = path.split(".")[0]
    return STAGE if path == f"{key}._target_" and key in CONFIG_KEY.values() else None


def stage_class(name: str, cfg: DictConfig) -> type[Stage]:
    """The Stage class a stage's node names with `_target_`."""
    key = CONFIG_KEY[name]
    node = cfg.get(key)
    if node is None:
        raise StageError(f"stage {name!r} needs config `{key}`; choose one with {key}=<option>")
    return locate(f"{key}._target_", _raw(node._get_node("_target_")) if "_target_" in node else None, STAGE)


def build_stage(name: str, cfg: DictConfig) -> Stage:
    """Instantiate a stage from its node's `_target_` (see stage_class)."""
    return stage_class(name, cfg)(config=cfg[CONFIG_KEY[name]], root=cfg)


def check_targets(cfg: DictConfig) -> dict[str, type[Stage]]:
    """Refuse, before any work, every name of code the config holds that is not allowed where it
    stands (the `hydra` node included, when the config carries it); return the stage classes."""
    if "hydra" in cfg:
        check_hydra(cfg._get_node("hydra"))
    for key, node in _children(cfg):
        if key != "hydra":
            _check_targets(node, f"{key}.", _stage_place)
    return {name: stage_class(name, cfg) for name in STAGE_ORDER if cfg.get(CONFIG_KEY[name]) is not None}


def check_config(cfg: DictConfig) -> None:
    """Everything a run checks before any work: the names of code (check_targets) and the keys."""
    check_keys(cfg, check_targets(cfg))
