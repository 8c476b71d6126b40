"""`recipe` console script: Hydra entry point -> runner.run(cfg).

recipe                         # the offline recipe, every configured stage
recipe stages=[mix]            # a subset, inputs from the store
recipe --cfg job               # print the composed config
recipe dry_run=true            # validate and print the plan
recipe -m mixture.seed=0,1,2   # a sweep
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from recipe.config import register_configs
from recipe.errors import RecipeError
from recipe.runner import run

# conf/ sits at the top of the repository (next to recipe/); the project is installed editable.
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")

register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
