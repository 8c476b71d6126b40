"""`recipe` console script: Hydra entry point -> runner.run(cfg); `recipe init`, `recipe store`, `--help`.

recipe                         # the offline recipe, every configured stage
recipe stages=[mix]            # a subset, inputs from the store
recipe --cfg job               # print the composed config
recipe dry_run=true            # validate and print the plan
recipe -m mix.seed=0,1,2   # a sweep (summary.csv / .md / .png at the multirun root)
recipe -m ... sweep.preview=true   # each job's overrides and plan, nothing run
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import platform
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import hydra
import hydra._internal.hydra as hydra_internals
import hydra.core.utils as hydra_core_utils
from hydra._internal.callbacks import Callbacks
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from recipe.config import register_configs, renamed
from recipe.console import interruption, stopped
from recipe.errors import RecipeError
from recipe.runner import run, select_stages
from recipe.secrets import mask_printed_secrets
from recipe.summary import printable
from recipe.sweep import JobFailed, check_objective, direction, last_sweep, objective
from recipe.targets import check_config, check_logging_node


def _conf_dir() -> str:
    """The shipped configs: the `recipe.conf` package, which is the wheel's copy when installed, or
    the top-level conf/ of the checkout an editable install points at."""
    try:
        import recipe.conf as shipped

        return str(Path(next(iter(shipped.__path__))).resolve())
    except ImportError:  # running from a source tree that was never installed
        return str(Path(__file__).resolve().parent.parent / "conf")


CONF_DIR = _conf_dir()

register_configs()


class CheckedCallbacks(Callbacks):
    """Hydra's callbacks, instantiated only once every name of code in the composed config (its
    `hydra` node included: callbacks, launcher, sweeper, logging, the job's environment) is checked
    (recipe/targets.py): a config runs no foreign code."""

    def __init__(self, config: DictConfig | None = None) -> None:
        if config is not None:
            check_config(config)
        super().__init__(config)


def _checked_logging(configure_log: Any, name: str) -> Any:
    """Hydra's configure_log, applying a logging config only once its factories are checked: Hydra
    applies hydra_logging while composing, before any callback exists, and job_logging per job."""

    def configure(log_config: DictConfig, *args: Any, **kwargs: Any) -> None:
        check_logging_node(log_config, name)
        configure_log(log_config, *args, **kwargs)

    return configure


hydra_internals.Callbacks = CheckedCallbacks  # type: ignore[misc]  # Hydra builds them from its composed config here
hydra_internals.configure_log = _checked_logging(hydra_internals.configure_log, "hydra_logging")
hydra_core_utils.configure_log = _checked_logging(hydra_core_utils.configure_log, "job_logging")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _main(cfg: DictConfig) -> JobFailed | float | None:
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    if multirun and cfg.sweep.preview:
        last_sweep["preview"] = True
        hydra_cfg = HydraConfig.get()
        print(f"\njob {hydra_cfg.job.num}: {' '.join(hydra_cfg.overrides.task) or '(no overrides)'}")
        cfg.dry_run = True
    try:
        check_objective(cfg, select_stages(cfg))
        record = run(cfg)
        if cfg.sweep.objective and record.get("status") == "ok" and not cfg.dry_run:
            value = objective(record, cfg.sweep.objective)
            print(f"objective: {cfg.sweep.objective} = {value:.5g} ({direction(cfg)})")
            return value  # what Hydra's search sweepers optimise
    except (RecipeError, OmegaConfBaseException) as e:  # bad input: one line, exit 2
        if (signal_ := interruption(e)) is not None:
            sys.exit(stopped(signal_))
        said = str(e) if isinstance(e, RecipeError) else config_error(e)
        print(f"error: {printable(said)}", file=sys.stderr)
        if multirun:  # the sweep goes on; the summary marks this job failed, with the error
            return JobFailed(said)
        sys.exit(2)
    except KeyboardInterrupt as e:  # managed servers and workers were stopped on the way out
        sys.exit(stopped(e))


def check_arguments(argv: list[str]) -> None:
    """Mistakes Hydra would report obscurely, said plainly (exit 2)."""
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+") == "stages" and value and not value.startswith(("[", "null")):
            stages = ",".join(v.strip() for v in value.split(","))
            print(
                f"error: {arg}: stages is a list: 'stages=[{stages}]' (quoted, so that zsh leaves the brackets alone)",
                file=sys.stderr,
            )
            sys.exit(2)


def config_error(e: BaseException) -> str:
    """A config mistake in one line that names the key (or override) at fault and the true cause,
    from Hydra's and OmegaConf's multi-line errors (the `+key` advice Hydra gives is left out: a
    key no schema declares is refused anyway)."""
    chain = [e]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)  # type: ignore[arg-type]
    if isinstance(e, MissingConfigException) and e.missing_cfg_file:
        shown = [o for o in e.options or [] if not o.endswith("_schema")]  # schemas are not options to pick
        options = f" (the options: {', '.join(shown)})" if shown else ""
        close = nearest(e.missing_cfg_file.rsplit("/", 1)[-1], shown)
        return f"{e.missing_cfg_file}: no such config{f'; did you mean {close}?' if close else ''}{options}"
    if "Ambiguous value for argument" in str(e):
        first = str(e).splitlines()[0]
        return (
            f"{first}: to sweep over the values, add -m (--multirun); for a list write key=[a,b]; for a string "
            "quote it: key='a,b'"
        )
    if isinstance(e, OverrideParseException):
        first = str(e).splitlines()[0]
        return (
            f"an override does not parse: {first} (Hydra's override grammar; quote values with brackets for your shell)"
        )
    inner = next((x for x in chain if isinstance(x, OmegaConfBaseException)), e)  # the outermost: formatted
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    message = next((line for line in lines if not line.startswith(("full_key", "reference_type", "object_type"))), "")
    key = getattr(inner, "full_key", None)
    if key and renamed(key):
        return f"{key} was renamed: use {renamed(key)}"
    if key and (isinstance(inner, ConfigKeyError | ConfigAttributeError) or re.match(r"Key '.*' not in '", message)):
        close = nearest(str(key).rsplit(".", 1)[-1], schema_keys(getattr(inner, "object_type", None)))
        fix = f"did you mean {close}?" if close else "check its spelling"
        return f"{key}: no schema declares this key ({message}); {fix} (`recipe --cfg job` shows every key)"
    if key:
        return f"{key}: {message}"
    return message or str(e).splitlines()[0]


def nearest(name: str, known: list[str]) -> str | None:
    """The closest of `known` to a mistyped name, if one is close."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return close[0] if close else None


def schema_keys(schema: object) -> list[str]:
    """The keys a structured config's schema (a dataclass) declares."""
    return [f.name for f in dataclasses.fields(schema)] if dataclasses.is_dataclass(schema) else []


def warn_other_checkout(cwd: Path) -> None:
    """In another checkout of this project, say that its code and configs are not the ones running."""
    here = cwd.resolve()
    if (here / "conf" / "config.yaml").is_file() and (here / "recipe" / "cli.py").is_file():
        if (here / "conf").resolve() != Path(CONF_DIR):
            print(
                f"note: this `recipe` runs the code and configs installed from {Path(CONF_DIR).parent}, not this "
                f"checkout's ({here}); install this one (pip install -e .) or use its .venv to run its edits",
                file=sys.stderr,
            )


COMMANDS = (
    ("recipe", "the main job, offline: every stage; a long-context task, base against tuned"),
    ("recipe dry_run=true", "validate; fingerprints and each stage's plan; nothing run"),
    ("recipe 'stages=[mix]' mix=samples mix.total=40", "some stages, the others' artifacts from the store"),
    ("recipe --cfg job", "the composed config"),
    ("recipe experiment=llama2_7b_32k_instruct dry_run=true", "the seed recipe on Together, planned"),
    ("recipe experiment=llama2_7b_32k_local dry_run=true", "the seed's training on your GPUs, memory estimate"),
    (
        "recipe -m 'stages=[distill,mix]' mix=offline mix.rescale=instructions mix.components.instructions.share=0.4,0.5,0.6",
        "a sweep of one share (the others rescaled; Distill runs once); summary.csv/.md/.png",
    ),
    ("recipe train=local_full train.device=cuda", "a full fine-tune on a GPU"),
    (
        "recipe test=offline test.judge.provider=together dry_run=true",
        "the model card's suites with a Together judge, planned",
    ),
    ("recipe init my_recipes", "your own config repository, then: recipe --config-dir conf ..."),
    ("recipe store list", "what the store holds: stage, fingerprint, size, dates, runs"),
    ("recipe sweep fit", "the newest sweep's figures fitted to its shares; a proposed mixture"),
    ("recipe playground", "base and tuned side by side in a browser (127.0.0.1:7860), with the <> API snippets"),
    ("recipe store prune --unused-for 14 --dry-run", "what clearing the unused would remove"),
)
HELP_COLUMN = 60  # commands longer than this get their description on the next line
# Groups composed under a key other than their name (see conf/config.yaml).
PLACED = {"source": "sources.<name>", "test/suite": "test.suites.<name>"}


def groups(conf_dirs: list[Path]) -> dict[str, list[str]]:
    """Config group -> its options, from the shipped configs and any --config-dir."""
    found: dict[str, set[str]] = {}
    for root in conf_dirs:
        for path in root.rglob("*.yaml"):
            group = path.parent.relative_to(root).as_posix()
            if group != "." and not group.startswith("hydra/help"):
                found.setdefault(group, set()).add(path.stem)
    return {g: sorted(found[g]) for g in sorted(found, key=lambda g: (g.startswith("hydra"), g))}


def help_text(argv: list[str]) -> str:
    dirs = [Path(CONF_DIR)]
    for i, arg in enumerate(argv):
        if arg.startswith("--config-dir"):
            value = arg.partition("=")[2] or (argv[i + 1] if i + 1 < len(argv) else "")
            if value and Path(value).is_dir():
                dirs.insert(0, Path(value))
    lines = [
        "recipe: the Llama-2-7B-32K-Instruct recipe (Distill, Mix, Train, Test, Deploy) as committed configs.",
        "",
        "usage: recipe [group=option ...] [key=value ...]  |  recipe -m key=a,b (a sweep)  |  recipe init|store ...",
        "",
        "stages, in order (stages=[...] picks some): distill, mix, train, test, deploy",
        "",
        "config groups (group=option):",
    ]
    for group, options in groups(dirs).items():
        where = f"  (+{group}@{PLACED[group]}=option)" if group in PLACED else ""
        lines.append(f"  {group:<16} {', '.join(options)}{where}")
    lines += ["", "commands:"]
    width = max(len(c) for c, _ in COMMANDS if len(c) <= HELP_COLUMN)
    for command, what in COMMANDS:  # a long command gets its description on the next line
        lines += (
            [f"  {command}", f"  {'':<{width}}  {what}"] if len(command) > width else [f"  {command:<{width}}  {what}"]
        )
    lines += [
        "",
        "outputs: outputs/runs/<date>/<time>/run.json (each run), outputs/store/<stage>/<fingerprint>/ (artifacts,",
        "  reused whenever the fingerprint matches; store_dir=...), outputs/multiruns/ (sweeps); relative to here.",
        "keys: every key is typed and documented in recipe/config.py; `recipe --cfg job` prints them all.",
        "more: README.md, then docs/ (configs.md: the config tree and overrides; reference.md: every key);",
        "  Hydra's own flags: recipe --hydra-help",
    ]
    return "\n".join(lines)


def print_help(argv: list[str]) -> None:
    """Print the help; a closed pipe (recipe --help | head) ends it quietly."""
    try:
        print(help_text(argv), flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


PREVIEW = re.compile(r"^\+*sweep\.preview=(true|True|TRUE|yes|on|1)$")


def search_without_results(argv: list[str]) -> int:
    """The end of a search sweep (Optuna) in which no trial returned a figure: a preview, which
    plans each trial and runs none (exit 0), or a study whose every trial failed (exit 2)."""
    summary = f" (summary: {Path(last_sweep['root']) / 'summary.md'})" if "root" in last_sweep else ""
    if last_sweep.get("preview") or any(PREVIEW.match(arg) for arg in argv):
        print(
            "sweep.preview: the search's trials were planned, none run. A search draws each trial from the "
            f"results of the ones before, so the parameters shown are only the sampler's first draws{summary}"
        )
        return 0
    print(f"error: no trial of the search completed: every one failed{summary}", file=sys.stderr)
    return 2


def main() -> None:
    """The console script: `init`, `--help`; SIGTERM handled like Ctrl-C; secrets masked in printed configs."""
    argv = sys.argv[1:]
    if argv[:1] == ["init"]:
        from recipe import scaffold

        sys.exit(scaffold.main(argv[1:]))
    if argv[:1] == ["playground"]:
        from recipe.playground import main as playground

        sys.exit(playground(argv[1:]))
    if argv[:2] == ["sweep", "fit"]:
        from recipe.sweep import fit_main

        sys.exit(fit_main(argv[2:]))
    if argv[:1] == ["store"]:
        from recipe import store_admin

        sys.exit(store_admin.main(argv[1:]))
    if "--help" in argv or "-h" in argv:
        print_help(argv)
        return
    if argv[:1] in (["--version"], ["-V"]):
        print(
            f"recipe {metadata.version('recipe')} (Hydra {metadata.version('hydra-core')}, Python {platform.python_version()})"
        )
        return
    warn_other_checkout(Path.cwd())
    check_arguments(sys.argv[1:])
    sys.argv[1:] = mask_printed_secrets(sys.argv[1:])
    traceback_wanted = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra hands its errors to us, and we word them in one line
    try:
        try:
            _main()
        except Exception as e:  # an error that a Ctrl-C or SIGTERM caused says so, as that signal
            if (signal_ := interruption(e)) is not None:
                sys.exit(stopped(signal_))
            raise
    except RecipeError as e:
        if traceback_wanted:
            raise
        print(f"error: {printable(str(e))}", file=sys.stderr)
        sys.exit(2)
    except (HydraException, OmegaConfBaseException) as e:
        if traceback_wanted:
            raise
        print(f"error: {printable(config_error(e))}", file=sys.stderr)
        sys.exit(2)
    except ValueError as e:  # Optuna's sweeper asks for the best trial when none completed
        if traceback_wanted or "No trials are completed yet" not in str(e):
            raise
        sys.exit(search_without_results(argv))
    failed = last_sweep.get("failed")
    if failed:  # a sweep ran to its end with failed jobs: say so in the exit code too
        print(f"error: {failed} of {last_sweep['jobs']} sweep jobs failed: {last_sweep['summary']}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
