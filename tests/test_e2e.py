"""The README's quick-start, as a newcomer types it after `make run`: the offline recipe end to end
at its default sizes (the embedded teacher distils, Mix, a LoRA of the embedded model, Test base
against tuned, a local deployment), then serving it in the foreground while `recipe-chat` asks it,
a stage from the store, the composed config and a dry run. One fresh directory, in order."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from .conftest import COMMAND_SECONDS, users_environment
from .readme import Background, Planned, Ran, Rule, run_section, section

pytestmark = pytest.mark.slow
BIN = str(Path(sys.executable).parent)

RULES: list[Rule | Background] = [
    Rule(r"^make run$", "it installs, then runs `recipe experiment=longctx_offline`: `recipe` below runs the same"),
    Rule(r"^make test$", "it is this test suite"),
    Rule(r"^source \.venv/bin/activate$", "the test puts .venv/bin on PATH instead"),
    Background(r"deploy\.foreground=true", ready=r"serving at http://127\.0\.0\.1:\d+"),
]


def check_offline_run(root: Path, out: str) -> None:
    """What the offline recipe must have made: every stage, Test's figures, a deployment that answered."""
    runs = sorted((root / "outputs" / "runs").glob("*/*/run.json"))
    record = json.loads(runs[-1].read_text())
    assert list(record["stages"]) == ["distill", "mix", "train", "test", "deploy"]
    assert [s["status"] for s in record["stages"].values()] == ["ok"] * 5
    # Train: a LoRA of the embedded model on CPU in fp32, one epoch of one example a step (no packing
    # on a CPU); the adapter and the merged model.
    train_dir = Path(record["stages"]["train"]["artifact"])
    trained = json.loads((train_dir / "manifest.json").read_text())
    assert trained["device"] == "cpu" and trained["dtype"] == "float32" and trained["steps"] >= 6
    # One example a step from four components: the training loss per step jumps between them (the task's
    # falls near 0 in a few steps, BookSum's stays near 2), so what it learned is read on held-out
    # examples below, per component, paired with the base.
    assert trained["eval_loss"] is not None and trained["examples"] == trained["steps"], trained
    steps = [json.loads(line)["step"] for line in (train_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, trained["steps"] + 1))
    assert (train_dir / "adapter" / "adapter_config.json").is_file()
    assert (train_dir / "merged" / "model.safetensors").is_file() and (
        train_dir / "merged" / "chat_template.jinja"
    ).is_file()
    assert not list((root / "outputs" / "store" / "work").glob("train/*/checkpoint-*"))  # removed once complete
    test_dir = Path(record["stages"]["test"]["artifact"])
    metrics = json.loads((test_dir / "metrics.json").read_text())
    assert set(metrics["summary"]) == {"base", "tuned"}
    # Both generate in bfloat16 where the CPU computes it natively (test.dtype=auto), else in float32.
    from recipe.providers.local.server import native_bfloat16

    served = "bfloat16" if native_bfloat16("cpu") else "the weights' own"
    assert json.loads((test_dir / "manifest.json").read_text())["served_dtype"] == {"base": served, "tuned": served}
    # What the main job shows: the tuned model answers the long-context task better than its base,
    # by an interval that excludes 0 (the README's quick start says so, with its numbers).
    lift = metrics["differences"]["longctx.accuracy"]
    assert lift["verdict"] == "better" and lift["low"] > 0 and lift["n"] >= 100, lift
    assert metrics["summary"]["tuned"]["longctx.accuracy"] >= metrics["summary"]["base"]["longctx.accuracy"] + 0.2
    differences = metrics["differences"]
    assert differences["heldout.loss.longctx"]["verdict"] == "better"
    assert differences["heldout.loss.instructions"]["verdict"] != "worse"
    for which in ("base", "tuned"):
        figures = metrics["summary"][which]
        assert 0 < figures["heldout.loss"] < 10
        for component in ("instructions", "longctx", "booksum", "mqa"):  # the loss per component, with its interval
            loss = f"heldout.loss.{component}"
            assert figures[f"{loss}_low"] <= figures[loss] <= figures[f"{loss}_high"] < 10
    # The Lost in the Middle picture: two context lengths x three answer positions, each cell scored.
    cells = metrics["positions"]["longctx"]["cells"]
    assert {(c["documents"], c["gold"]) for c in cells} == {(d, g) for d in (3, 6) for g in ("first", "middle", "last")}
    # mix.components.<name>.eval: each component's own held-out count, every one measured
    held_out = metrics["models"]["tuned"]["heldout_components"]
    assert {c: len(v["per_prompt"]["loss"]) for c, v in held_out.items()} == {
        "instructions": 4,
        "longctx": 40,
        "booksum": 2,
        "mqa": 2,
    }
    assert metrics["models"]["tuned"]["name"].endswith("/merged")
    rows = [json.loads(line) for line in (test_dir / "generations.jsonl").read_text().splitlines()]
    assert len(rows) >= 100 and all(r["base"] is not None and r["tuned"] is not None for r in rows)
    # Scored on its first line, an answer ends there (the base model would copy the document's lines on).
    assert not [r for r in rows if "\n" in r["base"] + r["tuned"]]
    assert "Test (" in out and "heldout.loss" in out  # the summary table is printed
    assert f"open {test_dir / 'report.html'} in a browser" in out and "next: `recipe playground`" in out
    assert "longctx: tuned - base +" in out and "better" in out  # its headline
    assert "contamination longctx: 0 of " in out  # Mix checked the training data against the suite
    assert "held-out examples measured: booksum 2, instructions 4, longctx 40, mqa 2" in out
    assert (test_dir / "chart.png").read_bytes()[:4] == b"\x89PNG"
    deployed = json.loads((Path(record["stages"]["deploy"]["artifact"]) / "manifest.json").read_text())
    assert deployed["smoke"]["answer"] and deployed["smoke"]["answer"] in out
    # The snippets are printed for a server that has stopped: the run says so, and how to serve it.
    assert "the server stopped after the smoke query" in out and "deploy.foreground=true" in out


def together_env(base_url: str) -> dict[str, str]:
    """A newcomer's shell after `make run` (.venv/bin on PATH), with Together pointed at the fake API."""
    from .conftest import TOGETHER_KEY

    return users_environment(
        PATH=f"{BIN}:{os.environ['PATH']}",
        HYDRA_FULL_ERROR="0",
        TOGETHER_API_KEY=TOGETHER_KEY,
        TOGETHER_BASE_URL=base_url,
    )


def records(root: Path) -> dict[Path, dict]:
    """Every run record, runs' and sweep jobs', by path."""
    paths = [
        *(root / "outputs" / "runs").glob("*/*/run.json"),
        *(root / "outputs" / "multiruns").glob("*/*/*/run.json"),
    ]
    return {p: json.loads(p.read_text()) for p in paths}


def plan_row(out: str, stage: str) -> list[str]:
    """A dry run's table row for `stage`: its cache column and plan, split on runs of spaces."""
    row = next(line for line in out.splitlines() if line.startswith(f"{stage} "))
    return row.split()


README_RULES: list[Rule | Background | Planned] = [
    Planned(r"train\.args\.n_epochs=2", "a second LoRA of the embedded model: about 4 minutes"),
    Planned(r"synthetic\.examples=216", "432 generations on a CPU: about 19 minutes"),
    Planned(r"experiment=longctx_share_sweep", "4 trainings and Tests: about an hour", suffix="sweep.preview=true"),
    Rule(r"\.\.\.", "a placeholder for any sweep's overrides"),
]


def readme_examples(tmp_path: Path) -> list[Ran]:
    """The README's examples after the quick start, each checked for what its sentence says it does
    (a command too costly to run here is checked on its plan): a smaller mixture is another artifact
    of 40 examples; the training overrides are not the main job's (a new training, the mixture
    reused); 216 examples double Test's prompts; the seed is planned and priced at every stage; a
    sweep's jobs each build their own mixture from one Distill."""
    from .conftest import TOGETHER_KEY
    from .fake_together import FakeTogether

    first = min(p for p in records(tmp_path) if "multiruns" not in p.parts)
    main = records(tmp_path)[first]["stages"]  # the quick start's `recipe`
    generated = len((Path(main["test"]["artifact"]) / "generations.jsonl").read_text().splitlines())
    seen = set(records(tmp_path))

    def after(ran: Ran) -> None:
        assert ran.returncode == 0 and "Traceback" not in ran.stderr, ran.stderr
        everything = records(tmp_path)
        new = [
            everything[p]
            for p in sorted(everything, key=lambda p: (p.parent.parent, p.parent.name.zfill(4)))
            if p not in seen
        ]
        seen.update(everything)
        command = ran.command
        if "mix.total=40" in command:  # "a smaller mixture, another draw"
            (mix,) = [r["stages"]["mix"] for r in new]
            assert mix["status"] == "ok" and mix["fingerprint"] != main["mix"]["fingerprint"]
            assert json.loads((Path(mix["artifact"]) / "manifest.json").read_text())["examples"] == 40
        elif "n_epochs=2" in command:  # other training arguments: a new training of the same mixture
            assert plan_row(ran.stdout, "mix")[1] == "hit" and plan_row(ran.stdout, "train")[1] == "-"
            assert "2 epochs" in ran.stdout and "lr 0.0002" in ran.stdout
        elif "examples=216" in command:  # "twice the task's prompts"
            # The main job asked base and tuned each prompt (a generations row each): twice the prompts.
            assert plan_row(ran.stdout, "test")[1] == "-" and f"{2 * 2 * generated} generations" in ran.stdout
        elif "llama2_7b_32k_instruct" in command:  # "every stage planned and priced"
            for stage in ("distill", "mix", "train", "test", "deploy"):
                assert plan_row(ran.stdout, stage)
            total = float(ran.stdout.split("estimated total: $")[1].split()[0].replace(",", ""))
            assert total > 0, ran.stdout
        elif "longctx_share_sweep" in command:  # "4 jobs, one Distill"
            assert len(new) == 4 and len({r["stages"]["distill"]["fingerprint"] for r in new}) == 1
            # Each job's mixture holds its own share of the task (its plan's counts: 2, 12, 22, 34 longctx).
            assert len({r["stages"]["mix"]["plan"].split(";")[0] for r in new}) == 4
        elif command.startswith("recipe -m"):  # a sweep: its jobs' mixtures differ, one Distill behind them
            assert "sweep summary (3 jobs)" in ran.stdout and len(new) == 3
            assert all(r["stages"]["mix"]["status"] == "ok" for r in new)
            assert len({r["stages"]["mix"]["fingerprint"] for r in new}) == 3
            assert len({r["stages"]["distill"]["fingerprint"] for r in new if "distill" in r["stages"]}) <= 1

    with FakeTogether(api_key=TOGETHER_KEY) as together:
        env = together_env(together.base_url)
        commands = section("The pipeline, stage by stage") + section("Sweeps")
        ran = run_section(commands, README_RULES, tmp_path, env, timeout_s=1500, after=after)
        assert together.requests == []  # the seed was planned, nothing sent
    assert len(ran) == len(commands) - 1
    return ran


def test_the_quick_start_then_the_help_examples_run_as_written(tmp_path: Path, record_property) -> None:
    """One fresh directory, as a newcomer has: the README's quick start, then `recipe --help`'s
    examples, which reuse what it made, then the README's other examples, each checked for the
    effect its sentence claims. (One test, not three: a second test could run on the other
    pytest-xdist worker, in a directory of its own, and pay for the main job again.)"""
    ran: list[Ran] = []
    try:
        for phase in (quick_start, help_examples, readme_examples):
            ran += phase(tmp_path)
    finally:  # where its time went, command by command: the suite's last lines (tests/conftest.py)
        record_property(COMMAND_SECONDS, [(r.command, round(r.seconds, 1)) for r in ran])


def quick_start(tmp_path: Path) -> list[Ran]:
    commands = section("The two commands")
    assert "recipe" in commands[3] and commands[3].split()[0] == "recipe"
    env = users_environment(PATH=f"{BIN}:{os.environ['PATH']}", HYDRA_FULL_ERROR="0")
    served: list[str] = []

    def after(ran: Ran) -> None:
        first = ran.command.split()[0]
        if ran.command.split("#")[0].strip() == "recipe":
            check_offline_run(tmp_path, ran.stdout)
            for bar in ("Converting and de-quantizing", "Loading weights", "Writing model shards"):
                assert bar not in ran.stderr  # other libraries' progress bars: ours only
        elif "deploy.foreground=true" in ran.command:
            served.append(ran.stdout.split("serving at ")[1].split()[0])
        elif first == "recipe-chat":  # it asked the deployment serving in the foreground, not a copy of its own
            assert ran.stdout.strip() and f"served at {served[0]}" in ran.stderr, ran.stderr
        elif "'stages=[mix]'" in ran.command:
            assert "(reused)" in ran.stdout
        elif "--cfg job" in ran.command:
            assert "distill:" in ran.stdout and "_target_: recipe.stages.mix.Mix" in ran.stdout
        elif "dry_run=true" in ran.command:
            assert "dry run: what each stage would do" in ran.stdout and "hit" in ran.stdout

    ran = run_section(commands, RULES, tmp_path, env, timeout_s=3600, after=after)
    assert [r.command.split()[0] for r in ran] == ["recipe", "recipe", "recipe-chat", "recipe", "recipe", "recipe"]
    return ran


HELP_RULES: list[Rule | Background] = [
    Rule(r"train\.device=cuda", "needs a CUDA GPU: tests/test_train_scale.py runs the trainer's sharded paths on CPU"),
    Rule(r"^recipe playground$", "serves until Ctrl-C: tests/test_playground.py drives it in a browser"),
]


def help_examples(tmp_path: Path) -> list[Ran]:
    """`recipe --help`'s commands in order, where the quick-start ran: the offline recipe (its
    artifacts reused), the Together judge planned against the fake Together API (nothing sent)."""
    from recipe.cli import COMMANDS, help_text

    from .conftest import TOGETHER_KEY
    from .fake_together import FakeTogether

    shown = help_text([])
    commands = [command for command, _ in COMMANDS]
    assert all(command in shown for command in commands)
    with FakeTogether(api_key=TOGETHER_KEY) as together:
        env = together_env(together.base_url)

        def after(ran: Ran) -> None:
            assert "Traceback" not in ran.stderr, ran.stderr
            if ran.command.startswith("recipe -m"):
                assert "sweep summary (3 jobs)" in ran.stdout
            if "test.judge.provider=together" in ran.command:  # planned: the judge's calls counted, none sent
                assert "judge calls" in ran.stdout and together.requests == []

        ran = run_section(commands, HELP_RULES, tmp_path, env, timeout_s=1500, after=after)
    assert len(ran) == len(commands) - 2
    return ran
