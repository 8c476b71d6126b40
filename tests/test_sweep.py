"""Sweeps: the summary at the multirun root, failed jobs, fail-fast, preview, launchers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

import recipe
from recipe import threads
from recipe.cli import CONF_DIR

from .browser import open_page
from .conftest import SHARE_SWEEP, TOGETHER_TRAIN_AND_TEST
from .fake_together import FakeTogether, default_answer

SAMPLES = ("stages=[mix]", "mix=samples", "~distill", "~train", "~test", "~deploy", "mix.progress=false")


def sweep_root(tmp_path: Path) -> Path:
    (root,) = (tmp_path / "outputs" / "multiruns").glob("*/*")
    return root


def summary_rows(root: Path) -> list[dict[str, str]]:
    with open(root / "summary.csv") as f:
        return list(csv.DictReader(f))


def test_a_failed_job_is_marked_and_the_others_still_run(run_cli, tmp_path: Path) -> None:
    proc = run_cli("-m", *SAMPLES, "mix.total=8,-3,12", check=False)
    assert proc.returncode != 0  # the sweep as a whole reports the failure
    assert "error: mix.total=-3: must be a positive number" in proc.stderr
    root = sweep_root(tmp_path)
    rows = summary_rows(root)
    assert [(r["job"], r["mix.total"], r["status"]) for r in rows] == [
        ("0", "8", "ok"),
        ("1", "-3", "failed"),
        ("2", "12", "ok"),
    ]
    assert "must be a positive number" in rows[1]["error"]
    assert "| 1 | -3 | **FAILED** |" in (root / "summary.md").read_text()


def test_fail_fast_stops_the_sweep_at_the_first_failure(run_cli, tmp_path: Path) -> None:
    proc = run_cli("-m", *SAMPLES, "mix.total=-3,8,12", "sweep.fail_fast=true", check=False)
    assert proc.returncode != 0 and "sweep.fail_fast: job 0 failed" in proc.stderr + proc.stdout
    root = sweep_root(tmp_path)
    assert [(r["job"], r["status"]) for r in summary_rows(root)] == [("0", "failed"), ("1", "skipped")]
    assert not (root / "1" / "run.json").exists() and not (root / "2").exists()


def test_preview_lists_every_job_and_runs_nothing(run_cli, tmp_path: Path) -> None:
    out = run_cli(
        "-m",
        *SAMPLES,
        "mix.rescale=instructions",
        "mix.components.instructions.share=0.4,0.6",
        "mix.seed=0,1",
        "sweep.preview=true",
    ).stdout
    jobs = [line for line in out.splitlines() if line.startswith("job ")]
    assert len(jobs) == 4 and "mix.components.instructions.share=0.6 mix.seed=1" in jobs[3]
    assert out.count("dry run: what each stage would do") == 4 and not (tmp_path / "store").exists()
    assert not list((tmp_path / "outputs").glob("store/mix/*"))
    assert {r["status"] for r in summary_rows(sweep_root(tmp_path))} == {"planned"}


@pytest.mark.parametrize(
    ("launcher", "target"),
    [
        ("parallel", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
        ("slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
        ("ray_cluster", "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"),
    ],
)
def test_every_launcher_config_composes(launcher: str, target: str) -> None:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == target
    if launcher == "parallel":
        assert cfg.hydra.launcher.n_jobs == 2
    if launcher == "slurm":
        assert cfg.hydra.launcher.gpus_per_node == 1 and cfg.hydra.launcher.timeout_min == 240


@pytest.mark.slow
def test_a_parallel_sweep_pays_distill_once_and_plots_test(run_cli, tmp_path: Path, browser) -> None:
    """Three mixtures through Distill, Mix, Train and Test with the joblib launcher (two jobs at a
    time), every stage on the fake Together API: one Distill, three fine-tunes, a summary with
    Test's figures and a plot. (Local training and serving inside a sweep: the mixture search
    below and tests/test_e2e.py's help examples.)"""

    def answer(body: dict) -> str:  # a judge with pure position bias; the default answer otherwise
        judging = "messages" in body and body["messages"][0]["role"] == "system"
        return "Output (a)" if judging else default_answer(body)

    with FakeTogether(answer=answer, api_key="k") as fake:
        ran = run_cli(
            "-m",
            "hydra/launcher=parallel",
            "stages=[distill,mix,train,test]",
            "test=offline",
            *SHARE_SWEEP,
            "train=together_lora",
            "train.poll_s=0.01",
            "train.progress=false",
            "test.heldout.loss=false",
            "test.poll_s=0.01",
            "test.judge.provider=together",
            "test.judge.model=judge",
            "test.suites.mqa.max_examples=1",
            "test.suites.mqa.num_documents=[3]",
            "test.suites.mqa.gold_positions=[first]",
            "test.suites.booksum.max_examples=1",
            "test.suites.alpaca_eval.max_examples=1",
            "test.suites.alpaca_eval.max_tokens=8",
            "test.suites.booksum.max_tokens=8",
            "test.progress=false",
            env={"TOGETHER_API_KEY": "k", "TOGETHER_BASE_URL": fake.base_url},
        )
        teacher = "togethercomputer/llama-2-70b-chat"  # Test asks its models on the same API
        distilled = sum(r.body["model"] == teacher for r in fake.posts("/v1/completions"))
    # Two jobs at once: each process gets its share of the cores (recipe/threads.py).
    assert f"threads: {max(1, threads.cores() // 2)} per process" in ran.stdout
    root = sweep_root(tmp_path)
    records = [json.loads((root / str(n) / "run.json").read_text()) for n in range(3)]
    # One job built Distill; its twins found it (cache hit, or built while they waited on the lock).
    assert sorted(r["stages"]["distill"]["cache_hit"] for r in records) == [False, True, True]
    assert len({r["stages"]["distill"]["fingerprint"] for r in records}) == 1
    assert len({r["stages"]["train"]["fingerprint"] for r in records}) == 3
    conversations = Path(records[0]["stages"]["distill"]["artifact"], "conversations.jsonl").read_text()
    assert distilled == sum(len(json.loads(line)["messages"]) // 2 for line in conversations.splitlines())
    rows = summary_rows(root)
    assert [r["mix.components.instructions.share"] for r in rows] == ["0.25", "0.5", "0.75"]
    assert all(r["status"] == "ok" for r in rows)
    assert {"mqa.accuracy", "booksum.rouge1", "alpaca_eval.win_rate"} <= set(rows[0])
    assert all(r["booksum.rouge1"] != "" for r in rows)
    assert all(r["alpaca_eval.win_rate"] == "0.5" for r in rows)  # both orders asked: the bias cancels
    # Compared with the baseline (job 0) on the same prompts, and ranked: one prompt per suite here,
    # so nothing can be told apart: one group, and "too few prompts to tell".
    assert [r["alpaca_eval.win_rate.diff"] for r in rows] == ["0.0", "0.0", "0.0"]
    assert {r["mqa.accuracy.verdict"] for r in rows} == {"too few prompts to tell"}
    assert {r["booksum.rouge1.rank"] for r in rows} == {"1"}
    assert all(int(r["mix.instructions.examples"]) > 0 and int(r["mix.mqa.tokens"]) > 0 for r in rows)
    assert int(rows[2]["mix.instructions.examples"]) > int(rows[0]["mix.instructions.examples"])
    assert "Baseline: job 0" in (root / "summary.md").read_text()
    assert (root / "summary.png").read_bytes()[:4] == b"\x89PNG"
    # The pages, in the browser: every figure of summary.csv on summary.html; a job's report.html.
    shown = open_page(browser, root / "summary.html", tmp_path / "summary.png")
    for row in rows:
        for figure in ("mqa.accuracy", "booksum.rouge1", "alpaca_eval.win_rate"):
            assert f"{float(row[figure]):.3f}" in shown
    report = Path(records[1]["stages"]["test"]["artifact"]) / "report.html"
    said = open_page(browser, report, tmp_path / "report.png")
    assert "tuned − base" in said and "too few prompts to tell" in said


def test_a_sweep_over_a_test_only_key_trains_once(run_cli, tmp_path: Path) -> None:
    """Mix reads the Test suites (decontamination), so a suite's data is in Mix's fingerprint; but
    Train is keyed on the mixture's content: a mixture rebuilt byte for byte is a cache hit below."""
    shipped = Path(recipe.__file__).parent / "data" / "samples" / "alpaca_eval.jsonl"
    more = tmp_path / "alpaca_eval_plus.jsonl"  # one more prompt that no training example holds
    extra = {"instruction": "Name three moons of Neptune and the year each was found.", "output": "Triton (1846)"}
    more.write_text(shipped.read_text() + json.dumps(extra) + "\n")
    with FakeTogether(api_key="k") as fake:
        run_cli(
            "-m",
            "stages=[mix,train]",
            "mix=samples",
            "~distill",
            "~deploy",
            "test=offline",
            "train=together_lora",
            "train.poll_s=0.01",
            "train.progress=false",
            "mix.progress=false",
            f"test.suites.alpaca_eval.data_files=[{shipped}],[{more}]",
            env={"TOGETHER_API_KEY": "k", "TOGETHER_BASE_URL": fake.base_url},
        )
        jobs = len(fake.jobs)
    root = sweep_root(tmp_path)
    records = [json.loads((root / str(n) / "run.json").read_text()) for n in range(2)]
    mix, train = ([r["stages"][s] for r in records] for s in ("mix", "train"))
    assert mix[0]["fingerprint"] != mix[1]["fingerprint"] and not mix[1]["cache_hit"]  # the suite changed: Mix ran
    uploads = [json.loads(Path(m["artifact"], "manifest.json").read_text())["sha256"] for m in mix]
    assert uploads[0] == uploads[1]  # ... and made the same mixture
    assert train[0]["fingerprint"] == train[1]["fingerprint"] and train[1]["cache_hit"]
    assert jobs == 1  # one fine-tune for the two jobs
    assert [r["status"] for r in summary_rows(root)] == ["ok", "ok"]


TOGETHER_TEST = (*TOGETHER_TRAIN_AND_TEST, "mix=samples", "~distill", "~deploy")


def test_a_run_returns_its_objective_for_search_sweepers(run_cli, tmp_path: Path) -> None:
    """`sweep.objective` names the tuned model's figure the task function returns to Hydra (what
    Optuna and the other search sweepers optimise); a name Test cannot make is refused before any work."""
    with FakeTogether(api_key="k") as fake:
        env = {"TOGETHER_API_KEY": "k", "TOGETHER_BASE_URL": fake.base_url}
        out = run_cli(*TOGETHER_TEST, "sweep.objective=booksum.rouge1", env=env).stdout
        (line,) = [line for line in out.splitlines() if line.startswith("objective: ")]
        run = json.loads(sorted((tmp_path / "outputs" / "runs").glob("*/*/run.json"))[-1].read_text())
        value = run["stages"]["test"]["metrics"]["booksum.rouge1"]
        assert line == f"objective: booksum.rouge1 = {value:.5g} (maximize)"
        sent = len(fake.requests)
        bad = run_cli(*TOGETHER_TEST, "sweep.objective=gsm8k.accuracy", env=env, check=False)
        assert bad.returncode == 2 and len(fake.requests) == sent
        assert "sweep.objective=gsm8k.accuracy: no Test suite 'gsm8k'" in bad.stderr
        unknown = run_cli(*TOGETHER_TEST, "sweep.objective=heldout.loss.gsm8k", env=env, check=False)
        assert unknown.returncode == 2 and len(fake.requests) == sent
        assert "heldout.loss.<component> of the mixture's components (booksum, instructions, mqa)" in unknown.stderr
        wrong = run_cli(*TOGETHER_TEST, "sweep.objective=booksum.bleu", env=env, check=False)
        assert wrong.returncode == 2 and "Test made no such figure (it made: mqa.accuracy" in wrong.stderr


def test_optuna_searches_the_shares_through_the_objective(run_cli, tmp_path: Path) -> None:
    """`hydra/sweeper=optuna` (the `sweep` extra) drives the instructions' share through
    `mix.rescale` (always a valid mixture) and optimises what each run returns (`sweep.objective`);
    a failed trial is recorded as failed and the study goes on."""
    with FakeTogether(api_key="k") as fake:
        proc = run_cli(
            "-m",
            "hydra/sweeper=optuna",
            "hydra.sweeper.n_trials=4",
            "hydra.sweeper.sampler.seed=0",
            "hydra.sweeper.direction=maximize",
            "hydra.sweeper.max_failure_rate=1.0",
            *TOGETHER_TEST,
            "mix.rescale=instructions",
            "mix.components.instructions.share=interval(0.2,0.8)",
            "mix.total=choice(16,-1)",  # -1: a job that fails, as a bad trial would
            "sweep.objective=booksum.rouge1",
            env={"TOGETHER_API_KEY": "k", "TOGETHER_BASE_URL": fake.base_url},
            check=False,
        )
    root = sweep_root(tmp_path)
    rows = summary_rows(root)
    assert len(rows) == 4, proc.stdout + proc.stderr  # every trial ran: a failure did not end the study
    failed = [r for r in rows if r["status"] == "failed"]
    assert failed and all(r["mix.total"] == "-1" for r in failed)
    done = [r for r in rows if r["status"] == "ok"]
    assert done and all(0.2 <= float(r["mix.instructions.share"]) <= 0.8 for r in done)
    for r in done:  # the others rescaled to fill the rest: every mixture is a valid one
        assert sum(float(r[f"mix.{c}.share"]) for c in ("instructions", "booksum", "mqa")) == pytest.approx(1.0)
    optimized = yaml.safe_load((root / "optimization_results.yaml").read_text())
    best = max(float(r["booksum.rouge1"]) for r in done)
    assert optimized["best_value"] == pytest.approx(best, abs=1e-5)  # what the runs returned


def test_a_search_that_completes_no_trial_ends_in_one_line_not_optunas_traceback(run_cli, tmp_path: Path) -> None:
    """A preview of an Optuna search plans its trials and runs none (exit 0); a study whose every
    trial failed says so (exit 2). Optuna's sweeper asks for the best trial either way."""
    search = ("-m", "experiment=mixture_search", "hydra.sweeper.n_trials=2", "hydra.sweeper.max_failure_rate=1.0")
    preview = run_cli(*search, "sweep.preview=true")
    jobs = [line for line in preview.stdout.splitlines() if line.startswith("job ")]
    assert len(jobs) == 2 and preview.stdout.count("dry run: what each stage would do") == 2
    assert "sweep.preview: the search's trials were planned, none run" in preview.stdout
    assert "Traceback" not in preview.stderr and "No trials are completed" not in preview.stderr
    assert not (tmp_path / "outputs" / "store").exists()
    failed = run_cli(*search, "mix.total=-1", check=False)
    assert failed.returncode == 2, failed.stderr
    assert failed.stderr.count("error: mix.total=-1: must be a positive number") == 2  # each trial's own error
    assert "error: no trial of the search completed: every one failed (summary: " in failed.stderr
    assert "Traceback" not in failed.stderr


@pytest.mark.slow
def test_the_committed_mixture_search_runs_offline_and_names_its_best_mixture(
    run_cli, tmp_path: Path, tiny_model_dir: Path
) -> None:
    """`recipe -m experiment=mixture_search`, shrunk (3 trials of 2 training steps of the tiny model;
    the shipped instruction sample instead of Distill's, so no teacher): Optuna draws weights for
    the three components, every trial is a valid mixture scored by held-out loss on the same
    held-out examples, and the end names the best trial's loss with its interval and its mixture as
    a command, the mixture Optuna's own best trial ran. (The embedded model's LoRA is what the main
    job trains: tests/test_e2e.py.)"""
    proc = run_cli(
        "-m",
        "experiment=mixture_search",
        "hydra.sweeper.n_trials=3",
        "~distill",
        "mix.components.instructions.source=llama_instruct_sample",
        "mix.progress=false",
        f"train.model={tiny_model_dir}",
        "train.max_steps=2",
        "train.progress=false",
    )
    root = sweep_root(tmp_path)
    rows = summary_rows(root)
    assert [r["status"] for r in rows] == ["ok"] * 3, proc.stdout + proc.stderr
    components = ("instructions", "booksum", "mqa")
    for r in rows:  # weights became shares that sum to 1
        assert sum(float(r[f"mix.{c}.share"]) for c in components) == pytest.approx(1.0)
    assert len({r["mix.instructions.share"] for r in rows}) == 3
    # Every trial scored on the same held-out examples of each component.
    held_out, base = [], []
    for job in range(3):
        run = json.loads((root / str(job) / "run.json").read_text())
        metrics = json.loads((Path(run["stages"]["test"]["artifact"]) / "metrics.json").read_text())
        per_component = metrics["models"]["tuned"]["heldout_components"]
        held_out.append({c: sorted(per_component[c]["per_prompt"]["loss"]) for c in components})
        base.append(metrics["models"]["base"]["heldout_loss"])
    assert held_out[0] == held_out[1] == held_out[2] and all(len(v) == 3 for v in held_out[0].values())
    # The base model's loss on those examples was computed by the first job and kept for the others.
    assert base[0] == base[1] == base[2]
    assert len(list((tmp_path / "outputs" / "store" / "records" / "heldout-loss").glob("*.json"))) == 1
    # The best trial: Optuna's, and what the end of the sweep prints.
    best = min(rows, key=lambda r: float(r["heldout.loss"]))
    optimized = yaml.safe_load((root / "optimization_results.yaml").read_text())
    assert optimized["best_value"] == pytest.approx(float(best["heldout.loss"]), abs=1e-5)
    out = proc.stdout
    assert f"**Best job** {best['job']}: heldout.loss = {float(best['heldout.loss']):.3f}" in out
    command = next(line.strip() for line in out.splitlines() if line.strip().startswith("recipe experiment="))
    shares = dict(o.removeprefix("mix.components.").split(".share=") for o in command.split() if ".share=" in o)
    assert {c: float(v) for c, v in shares.items()} == pytest.approx(
        {c: float(best[f"mix.{c}.share"]) for c in components}, abs=1e-3
    )
