"""Shared fixtures: compose configs with Hydra's compose API, run the real `recipe` CLI."""

from __future__ import annotations

import contextlib
import json
import logging
import logging.config
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from recipe.cli import CONF_DIR
from recipe.config import register_configs

from .browser import browser  # noqa: F401  (the fixture, for every test module)
from .subprocesses import limit, run_to_end

register_configs()
RECIPE = str(Path(sys.executable).parent / "recipe")
TOGETHER_KEY = "sk-test-together-0123456789"


# Most tests exercise one stage: by default they compose the sample-only mixture, no Distill and
# no training; tests of other stages pass `base=` themselves.
SAMPLES_ONLY = ("mix=samples", "~distill", "~train", "~test", "~deploy")
NO_DISTILL = ("mix=samples", "~distill", "~test")
MIX_AND_TRAIN = ("mix=samples", "~distill", "~test", "~deploy")  # the samples' Mix, then Train
# Train on the fake Together API, then the model card's Test on the shipped samples (the hub data
# replaced by the samples; the rest of the model card's setup as it is).
TOGETHER_TRAIN_AND_TEST = (
    "stages=[mix,train,test]",
    "train=together_lora",
    "train.poll_s=0.01",
    "train.progress=false",
    "mix.progress=false",
    "test=model_card",
    "test/suite@test.suites.mqa=mqa_sample",
    "test/suite@test.suites.booksum=booksum_sample",
    "test/suite@test.suites.alpaca_eval=alpaca_eval_sample",
    "test.progress=false",
    "test.poll_s=0.01",
)
# Distill against the fake Together server (TOGETHER_BASE_URL), then a 3-job sweep of the instructions' share.
SHARE_SWEEP = (
    "mix=offline",
    "distill=together",
    "distill.source=sharegpt_sample",
    "distill.max_conversations=12",
    "distill.progress=false",
    "mix.progress=false",
    "mix.total=16",
    "mix.eval_fraction=0",
    "mix.eval_per_component=0",
    "mix.rescale=instructions",
    "mix.components.instructions.share=0.25,0.5,0.75",
)


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """compose(overrides) with the store (and teacher cache) in a temporary directory."""

    def _make(*overrides: str, base: tuple[str, ...] = SAMPLES_ONLY) -> DictConfig:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            store = f"store_dir={tmp_path / 'store'}"
            return compose(config_name="config", overrides=[store, *base, *overrides])

    return _make


@pytest.fixture
def run_cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the installed `recipe` console script in a temporary working directory."""

    def _run(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})}
        return run_to_end([RECIPE, *args], cwd=tmp_path, env=full_env, timeout_s=900, check=check)

    return _run


@contextlib.contextmanager
def logging_kept() -> Iterator[None]:
    """Every logger's level, handlers and switches as they are now, put back when the block ends
    (Hydra configures logging for the run it composes); handlers the block added are closed."""

    def loggers() -> list[logging.Logger]:
        named = logging.Logger.manager.loggerDict.values()
        return [logging.getLogger(), *(x for x in named if isinstance(x, logging.Logger))]

    saved = {id(x): (x.level, list(x.handlers), x.propagate, x.disabled) for x in loggers()}
    try:
        yield
    finally:
        for logger in loggers():
            kept = saved.get(id(logger))
            for handler in logger.handlers:
                if kept is None or handler not in kept[1]:
                    handler.close()
            if kept is None:
                logger.handlers, logger.disabled = [], False
                continue
            logger.level, handlers, logger.propagate, logger.disabled = kept
            logger.handlers = handlers


@pytest.fixture
def recipe_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """`recipe ARGS` in this process (recipe.cli.main, what the console script calls) in a temporary
    working directory: the quick way to check a refusal (one line, exit 2) without starting Python
    again. Hydra is cleared and logging put back after each call (as lightning-hydra-template's
    conftest clears Hydra). The console script itself (its signal handling, its imports) is tested
    by the tests that run it (`run_cli`), and so is every refusal that guards against foreign code."""
    from hydra.core.global_hydra import GlobalHydra

    from recipe import cli

    def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        with monkeypatch.context() as m, logging_kept():
            # Hydra's logging config (dictConfig) closes every handler alive, pytest's own among them:
            # it only forgets them here, and logging_kept puts them back.
            m.setattr(logging.config, "_clearExistingHandlers", logging._handlers.clear)  # type: ignore[attr-defined]
            m.chdir(tmp_path)
            m.setattr(sys, "argv", ["recipe", *args])
            for name, value in {"HYDRA_FULL_ERROR": "0", **(env or {})}.items():
                m.setenv(name, value)
            capsys.readouterr()
            try:
                cli.main()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            finally:
                GlobalHydra.instance().clear()
                cli.last_sweep.clear()
            out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["recipe", *args], code, out, err)

    return _run


def default_sigint() -> None:
    """preexec_fn: a child we signal must get SIGINT's default disposition, even when the test suite
    itself was started from a background shell (which starts it with SIGINT ignored, inherited)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen]]:
    """Popen with SIGINT deliverable; whatever is still running when the test ends, even on failure,
    is killed (its process group too, when it has one of its own)."""
    started: list[subprocess.Popen] = []

    def _spawn(args: list[str], **kwargs: object) -> subprocess.Popen:
        proc = subprocess.Popen(args, preexec_fn=default_sigint, **kwargs)  # type: ignore[call-overload]
        started.append(proc)
        return proc

    yield _spawn
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=limit(30))


def read_until(proc: subprocess.Popen, pattern: str, timeout_s: float) -> str:
    """A process's output (stdout, read raw: no line buffer that select cannot see) up to the first
    line matching `pattern`; fails, naming what it saw, past `timeout_s` or when the process ends."""
    assert proc.stdout is not None
    fd, seen = proc.stdout.fileno(), b""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if select.select([fd], [], [], 1.0)[0]:
            block = os.read(fd, 65536)
            if not block:
                break
            seen += block
            text = seen.decode(errors="replace")
            if re.search(pattern, text, re.MULTILINE):
                return text
        elif proc.poll() is not None:
            break
    said = seen.decode(errors="replace")[-3000:]
    raise AssertionError(f"never saw {pattern!r} within {timeout_s:.0f} s (rc {proc.poll()}):\n{said}")


def latest_run(root: Path) -> dict:
    """The newest run.json under root/outputs/runs."""
    runs = sorted((root / "outputs" / "runs").glob("*/*/run.json"))
    return json.loads(runs[-1].read_text())


def tiny_common(tiny_model_dir: Path) -> tuple[str, ...]:
    """Mix the shipped samples (8 examples) and train the tiny model on them, briefly."""
    return (
        "stages=[mix,train]",
        "mix=samples",
        "mix.total=8",
        "mix.eval_fraction=0",
        "mix.progress=false",
        f"train.model={tiny_model_dir}",
        "train.args.max_seq_length=128",
        "train.micro_batch_size=1",
        "train.progress=false",
    )


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def fake(monkeypatch):
    """The fake Together API, with TOGETHER_API_KEY and TOGETHER_BASE_URL pointing at it; every
    request must keep to the spec and no presigned PUT may carry the key."""
    from .fake_together import FakeTogether

    with FakeTogether(api_key=TOGETHER_KEY) as server:
        monkeypatch.setenv("TOGETHER_API_KEY", TOGETHER_KEY)
        monkeypatch.setenv("TOGETHER_BASE_URL", server.base_url)
        yield server
    assert server.invalid == [], "requests that break the spec"
    assert server.unauthorized_puts == 0, "the API key travelled to a presigned URL"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A small random Llama with the embedded model's tokenizer and chat template: trains and
    serves in seconds, so the serving path can be tested for real."""
    transformers = pytest.importorskip("transformers")
    from recipe.providers.local.server import embedded_gguf

    gguf = embedded_gguf()
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)  # the same random weights in every session: what a test sees does not vary by run
    model = transformers.LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# The `slow` marker kept honest: `make test-fast` runs the unmarked tests, so one that runs long
# without the marker is named at the end of every run (its set-up and call together).
UNMARKED_LIMIT_S = 20.0
_unmarked_s: dict[str, float] = {}


_file_s: dict[str, list[float]] = {}  # per test file: [seconds (set-up, call, teardown), tests]
# A test that runs commands one after another (the main job's) records each one's seconds under
# this user property; the run's last lines list them.
COMMAND_SECONDS = "command_seconds"
_commands: dict[str, list[tuple[str, float]]] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when in ("setup", "call") and "slow" not in report.keywords:
        _unmarked_s[report.nodeid] = _unmarked_s.get(report.nodeid, 0.0) + report.duration
    for name, value in report.user_properties:
        if name == COMMAND_SECONDS and report.when == "call":
            _commands[report.nodeid] = value
    spent = _file_s.setdefault(report.nodeid.split("::")[0], [0.0, 0])
    spent[0] += report.duration
    spent[1] += report.when == "call"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    long = sorted(((spent, nodeid) for nodeid, spent in _unmarked_s.items() if spent > UNMARKED_LIMIT_S), reverse=True)
    if long:
        terminalreporter.section("tests not marked slow that ran long")
        for spent, nodeid in long:
            terminalreporter.write_line(f"{spent:6.1f} s  {nodeid}  (mark it @pytest.mark.slow, or make it faster)")
    for nodeid, commands in _commands.items():
        terminalreporter.section(f"seconds per command: {nodeid}")
        for command, seconds in commands:
            terminalreporter.write_line(f"{seconds:8.1f} s  {command}")
    if _file_s:  # the table docs/development.md quotes: where the suite's time goes, by file
        terminalreporter.section("seconds per test file (set-up, call and teardown; summed over workers)")
        for name, (spent, tests) in sorted(_file_s.items(), key=lambda item: -item[1][0]):
            terminalreporter.write_line(f"{spent:8.1f} s  {tests:4d} tests  {name}")
        total = sum(spent for spent, _ in _file_s.values())
        terminalreporter.write_line(f"{total:8.1f} s  {sum(t for _, t in _file_s.values()):4d} tests  in all")


# Each pytest-xdist worker's share of the cores, as a parallel sweep gives each of its jobs
# (recipe/threads.py): left alone, every torch process and llama.cpp server of both workers takes
# every core, and on two cores two 2-thread processes side by side ran a forward ~4x slower than two
# 1-thread ones. Exported, so the servers, trainers and `recipe` processes a test starts inherit it;
# an OMP_NUM_THREADS already set is kept.
# The main job's test runs the README's commands as a user's shell would (every core), and so
# takes the larger part of the machine while the other worker's processes keep to one share.
_USERS_THREADS = os.environ.get("OMP_NUM_THREADS")


def pytest_configure(config: pytest.Config) -> None:
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and _USERS_THREADS is None:
        from recipe import threads

        threads.apply(max(1, threads.cores() // workers))


def users_environment(**changes: str) -> dict[str, str]:
    """This process's environment as the user started the suite (without the worker's thread
    share), with `changes`: what the README's commands run in."""
    env = {**os.environ, **changes}
    if _USERS_THREADS is None:
        env.pop("OMP_NUM_THREADS", None)
    return env


# Two workers (`make test` runs `-n 2 --dist worksteal`): the main job's test starts first and holds
# its worker for its whole run while the other takes the rest (stealing the first one's queue once
# its own is done); slow tests start before quick ones, so no long test begins last and holds the
# end of the run. (`--dist loadgroup` would keep groups of tests on one worker, but pytest-xdist
# 3.8 marks a group by rewriting `item._nodeid`, which pytest 9.2 no longer reads: its groups split.)
FIRST = ("tests/test_e2e.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def order(item: pytest.Item) -> int:
        if item.nodeid.split("::")[0] in FIRST:
            return 0
        return 1 if item.get_closest_marker("slow") else 2

    items.sort(key=order)  # stable: each module's own order is kept
