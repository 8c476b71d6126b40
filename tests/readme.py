"""The README's shell commands (and `recipe --help`'s), as written: run in order by bash, skipped visibly.

A section is a heading's text (`## The two commands`); its commands are the lines of its ```bash
blocks (continuation lines joined; bash reads the trailing comments). They run one by one in the
same directory (a leading `cd DIR &&` moves there for the rest of the section). A command that
cannot run on this machine is matched by a `Rule` of the test and not run: the test warns with the
reason, so the skip shows in pytest's summary. A command that serves until Ctrl-C is a
`Background` rule: started, waited for until its output says it is ready, stopped with SIGINT when
the section ends (and it must then exit 0).
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .subprocesses import run_to_end

README = Path(__file__).resolve().parents[1] / "README.md"


class NotRunHere(UserWarning):
    """A README command that this machine cannot run, with the reason."""


def section(heading: str, readme: Path = README) -> list[str]:
    """The commands of the ```bash blocks under `heading` (up to the next heading of its level or above)."""
    level = None
    commands: list[str] = []
    in_block = False
    for line in readme.read_text().splitlines():
        match = re.match(r"^(#+) (.*)$", line)
        if match and not in_block:
            if level is not None and len(match.group(1)) <= level:
                break
            if match.group(2).strip() == heading:
                level = len(match.group(1))
            continue
        if level is None:
            continue
        if line.strip().startswith("```"):
            in_block = line.strip() in ("```bash", "```sh") if not in_block else False
            continue
        if in_block and line.strip():
            if commands and commands[-1].endswith("\\"):
                commands[-1] = commands[-1][:-1].rstrip() + " " + line.strip()
            else:
                commands.append(line.rstrip())
    if level is None:
        raise AssertionError(f"README.md has no section {heading!r}")
    return commands


def command_text(line: str) -> str:
    """A line without its trailing comment (for matching rules and messages; bash runs it whole)."""
    out, quote = [], None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            break
        out.append(ch)
    return "".join(out).strip()


@dataclass
class Rule:
    """A command not run here: `pattern` (a regex searched in the command without its comment) and why."""

    pattern: str
    reason: str

    def matches(self, command: str) -> bool:
        return re.search(self.pattern, command_text(command)) is not None


@dataclass
class Background:
    """A command that serves until Ctrl-C: started, ready once its output matches `ready`."""

    pattern: str
    ready: str
    startup_s: float = 600.0

    def matches(self, command: str) -> bool:
        return re.search(self.pattern, command_text(command)) is not None


@dataclass
class Planned:
    """A command whose effect is read from its plan: run with `suffix` appended (a dry run, or a
    sweep's preview), because running it would cost `reason`; the test warns, as for a `Rule`."""

    pattern: str
    reason: str
    suffix: str = "dry_run=true"

    def matches(self, command: str) -> bool:
        return re.search(self.pattern, command_text(command)) is not None


@dataclass
class Ran:
    command: str
    returncode: int
    stdout: str
    stderr: str
    seconds: float = 0.0  # until it ended (a background command: until it was ready)


def _start(command: str, cwd: Path, env: dict[str, str], rule: Background) -> tuple[subprocess.Popen[str], str]:
    from .conftest import read_until

    proc = subprocess.Popen(
        ["bash", "-c", f"exec {command_text(command)}"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # deliverable from a background shell
    )
    try:
        return proc, read_until(proc, rule.ready, rule.startup_s)
    except AssertionError as e:
        proc.kill()
        proc.wait()
        raise AssertionError(f"README command never became ready: {command}\n{e}") from None


def run_section(
    commands: list[str],
    rules: list[Rule | Background | Planned],
    cwd: Path,
    env: dict[str, str],
    timeout_s: float,
    after: Callable[[Ran], None] | None = None,
) -> list[Ran]:
    """Run the section's commands in order (each `timeout_s` at most); fail on the first that fails,
    naming it; warn once per skipped command; `after` sees each result (assertions per command)."""
    ran: list[Ran] = []
    serving: list[tuple[str, subprocess.Popen[str], str]] = []
    try:
        for command in commands:
            rule = next((r for r in rules if r.matches(command)), None)
            if isinstance(rule, Rule):
                said = f"README command not run here: {command_text(command)}  ({rule.reason})"
                warnings.warn(NotRunHere(said), stacklevel=2)
                continue
            text = command_text(command)
            moved = re.match(r"^cd\s+(\S+)\s*&&\s*(.*)$", text)
            if moved:
                where = moved.group(1)
                if where.startswith("~"):  # the section's HOME (env), never this process's
                    where = env["HOME"] + where[1:]
                target = Path(where)
                cwd = target if target.is_absolute() else cwd / target
                cwd.mkdir(parents=True, exist_ok=True)
                command = moved.group(2)
            if isinstance(rule, Planned):
                said = f"README command planned, not run: {command_text(command)}  ({rule.reason})"
                warnings.warn(NotRunHere(said), stacklevel=2)
                command = f"{command_text(command)} {rule.suffix}"
            started = time.monotonic()
            if isinstance(rule, Background):
                proc, output = _start(command, cwd, env, rule)
                serving.append((command, proc, output))
                result = Ran(command, 0, output, "", time.monotonic() - started)
            else:
                done = run_to_end(["bash", "-c", command], cwd=cwd, env=env, timeout_s=timeout_s)
                result = Ran(command, done.returncode, done.stdout, done.stderr, time.monotonic() - started)
            ran.append(result)
            if after is not None:
                after(result)
    finally:
        for command, proc, _ in serving:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # Ctrl-C: the normal way to stop serving
                try:
                    rest, _ = proc.communicate(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    rest, _ = proc.communicate()
                    raise AssertionError(f"README command did not stop on Ctrl-C within 120 s: {command}") from None
                if proc.returncode != 0:
                    raise AssertionError(f"README command ended {proc.returncode} on Ctrl-C: {command}\n{rest[-2000:]}")
    return ran
