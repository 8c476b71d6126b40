"""The `recipe` console script's entry point, which imports nothing when its module loads.

Worker processes (Mix's readers and checkers, started by multiprocessing's forkserver) run the
console script again as `__mp_main__`, and so import whatever the script imports at its top. With
`recipe.cli` there (Hydra, the runner, every stage) each worker paid about 0.4 s for modules it
never uses; only the process that runs the command needs them.

It also owns how a run ends on a signal, from its first instruction: importing the command's
modules takes a second, and Ctrl-C or SIGTERM then must end in the same one line as later.
"""

from __future__ import annotations

import atexit
import os
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


def _ignore_late_signals() -> None:
    """Python's last steps (destroying modules, after every atexit callback has run) go back to the
    default action for SIGINT and SIGTERM: a signal there killed a run that had finished and said so,
    with no word and exit -2. Ignored, it leaves the run's own exit code; nothing waits after this."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _exit_with(code: int) -> None:
    """After the command ended, a signal while Python waits for threads or runs atexit callbacks
    ends the process at once with the command's own exit code (its work is done, its words said)."""

    def handler(signum: int, frame: object) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, RuntimeError):
                pass
        os._exit(code)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _code(e: SystemExit) -> int:
    return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    atexit.register(_ignore_late_signals)  # registered first, so it runs last
    try:
        from recipe.cli import main as run_command

        run_command()
    except KeyboardInterrupt as e:  # while importing, composing the config, or in Hydra's own steps
        _exit_with(code := stopped(e))
        sys.exit(code)
    except SystemExit as e:
        _exit_with(_code(e))
        raise
    _exit_with(0)
