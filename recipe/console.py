"""The `recipe` console script's entry point, which imports nothing when its module loads.

Worker processes (Mix's readers and checkers, started by multiprocessing's forkserver) run the
console script again as `__mp_main__`, and so import whatever the script imports at its top. With
`recipe.cli` there (Hydra, the runner, every stage) each worker paid about 0.4 s for modules it
never uses; only the process that runs the command needs them.
"""

from __future__ import annotations


def main() -> None:
    from recipe.cli import main as run_command

    run_command()
