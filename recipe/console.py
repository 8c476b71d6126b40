"""The `recipe` console script's entry point, which imports nothing when its module loads.

Worker processes (Mix's readers and checkers, started by multiprocessing's forkserver) run the
console script again as `__mp_main__`, and so import whatever the script imports at its top. With
`recipe.cli` there (Hydra, the runner, every stage) each worker paid about 0.4 s for modules it
never uses; only the process that runs the command needs them.

It also owns how a run ends on a signal, from its first instruction: importing the command's
modules takes a second, and Ctrl-C or SIGTERM then must end in the same one line as later.
"""

from __future__ import annotations

import signal
import sys


class Terminated(KeyboardInterrupt):
    """SIGTERM (timeout, systemd, docker stop, Slurm, CI runners): stopped like Ctrl-C, cleanly."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def stopped(e: KeyboardInterrupt) -> int:
    """Say in one line that the run was stopped by a signal; its exit code (130 Ctrl-C, 143 SIGTERM)."""
    terminated = isinstance(e, Terminated)
    print(f"\n{'terminated (SIGTERM)' if terminated else 'interrupted (Ctrl-C)'}: stopped", file=sys.stderr)
    return 143 if terminated else 130


def interruption(e: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM behind an error: a library's cleanup that failed because the signal cut
    its work short raises its own error from it (OmegaConf's, while composing a config)."""
    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        from recipe.cli import main as run_command

        run_command()
    except KeyboardInterrupt as e:  # while importing, composing the config, or in Hydra's own steps
        sys.exit(stopped(e))
