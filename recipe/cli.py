"""`recipe` console script: Hydra entry point -> runner.run(cfg).

recipe                         # the offline recipe, every configured stage
recipe stages=[mix]            # a subset, inputs from the store
recipe --cfg job               # print the composed config
recipe dry_run=true            # validate and print the plan
recipe -m mix.seed=0,1,2   # a sweep (summary.csv / .md / .png at the multirun root)
recipe -m ... sweep.preview=true   # each job's overrides and plan, nothing run
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from recipe.config import register_configs
from recipe.errors import RecipeError
from recipe.runner import run
from recipe.secrets import mask_printed_secrets

# conf/ sits at the top of the repository (next to recipe/); the project is installed editable.
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")

register_configs()


class Terminated(KeyboardInterrupt):
    """SIGTERM (timeout, systemd, docker stop, Slurm, CI runners): stopped like Ctrl-C, cleanly."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _main(cfg: DictConfig) -> None:
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    if multirun and cfg.sweep.preview:
        hydra_cfg = HydraConfig.get()
        print(f"\njob {hydra_cfg.job.num}: {' '.join(hydra_cfg.overrides.task) or '(no overrides)'}")
        cfg.dry_run = True
    try:
        run(cfg)
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        if multirun:
            raise  # Hydra marks the job failed; the sweep summary records it; other jobs still run
        sys.exit(2)
    except KeyboardInterrupt as e:  # managed servers and workers were stopped on the way out
        terminated = isinstance(e, Terminated)
        print(f"\n{'terminated (SIGTERM)' if terminated else 'interrupted (Ctrl-C)'}: stopped", file=sys.stderr)
        sys.exit(143 if terminated else 130)


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


def main() -> None:
    """The console script: SIGTERM handled like Ctrl-C; secrets masked in printed configs."""
    signal.signal(signal.SIGTERM, _terminate)
    check_arguments(sys.argv[1:])
    sys.argv[1:] = mask_printed_secrets(sys.argv[1:])
    _main()


if __name__ == "__main__":
    main()
