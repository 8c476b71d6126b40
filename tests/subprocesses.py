"""Subprocesses of the suite: limits sized for a loaded CI machine, a timeout that says what
was running, and the processes this test worker started.

The limits below are several times what each command takes on an idle 2-core machine (CI runs the
suite next to other jobs); RECIPE_TEST_SLOWDOWN multiplies them on a machine slower still."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

SLOWDOWN = float(os.environ.get("RECIPE_TEST_SLOWDOWN", "1"))
STARTED = re.compile(r"\[recipe\.runner\]\[INFO\] - (\w+) [0-9a-f]+: running")
FINISHED = re.compile(r"^(\w+): ", re.MULTILINE)


# pytest-xdist names each worker in its environment, which every process it starts inherits: a test
# that looks for the servers it left behind must not see another worker's (one test runs at a time
# in each worker, so "started since" stays "started by this test").
WORKER = os.environ.get("PYTEST_XDIST_WORKER")


def processes(*needles: bytes) -> list[int]:
    """Processes whose command line holds every one of `needles`, started by this test worker."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            line = cmdline.read_bytes()
            if not all(n in line for n in needles):
                continue
            if WORKER and f"PYTEST_XDIST_WORKER={WORKER}\0".encode() not in (cmdline.parent / "environ").read_bytes():
                continue
        except OSError:
            continue
        pids.append(int(cmdline.parent.name))
    return pids


def limit(seconds: float) -> float:
    """A subprocess limit: `seconds` on CI, scaled by RECIPE_TEST_SLOWDOWN."""
    return seconds * SLOWDOWN


def _text(output: str | bytes | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else (output or "")


def what_was_running(output: str | bytes | None) -> str:
    """Which stage a `recipe` run was in, from its output (the runner logs each stage it starts)."""
    started = STARTED.findall(_text(output))
    if not started:
        return "no stage had started (composing the config, the pre-flight or a server's start)"
    return f"stage {started[-1]} was running ({len(started)} stage(s) started: {', '.join(started)})"


def timed_out(command: str, error: subprocess.TimeoutExpired) -> AssertionError:
    """The message for a command that ran past its limit: which stage, and its last output."""
    out, err = _text(error.stdout), _text(error.stderr)
    return AssertionError(
        f"`{command}` ran past {error.timeout:.0f} s; {what_was_running(out + err)}\n"
        f"--- its last output ---\n{out[-2000:]}\n{err[-2000:]}"
    )


def run_to_end(
    args: list[str], *, cwd: Path | str, timeout_s: float, check: bool = True, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """`subprocess.run` with output captured as text, a loaded-machine limit, and on a timeout an
    error that names the stage that was running; with `check`, a failure shows the output."""
    command = " ".join(str(a) for a in args)
    try:
        proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=limit(timeout_s), **kwargs)
    except subprocess.TimeoutExpired as error:
        raise timed_out(command, error) from None
    if check and proc.returncode != 0:
        raise AssertionError(f"`{command}` failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc
