"""The `recipe` console script end to end, and the secrets contract (nothing on disk)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from recipe.cli import CONF_DIR
from recipe.secrets import scrub_config, together_api_key

from .conftest import RECIPE, latest_run
from .subprocesses import run_to_end

PLANTED = "sk-PLANTEDtestkey0123456789abcdef"


def files_containing(root: Path, needle: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def test_mix_twice_reports_a_cache_hit_with_the_same_sha(run_cli, tmp_path: Path) -> None:
    first = run_cli("stages=[mix]", "mix=samples", "mix.progress=false")
    assert "mix      ok" in first.stdout
    record = latest_run(tmp_path)
    manifest = json.loads(Path(record["stages"]["mix"]["artifact"], "manifest.json").read_text())
    assert record["stages"]["mix"]["cache_hit"] is False
    run_cli("stages=[mix]", "mix=samples", "mix.progress=false")
    again = latest_run(tmp_path)
    assert again["stages"]["mix"]["cache_hit"] is True
    assert again["stages"]["mix"]["artifact"] == record["stages"]["mix"]["artifact"]
    assert (
        json.loads(Path(again["stages"]["mix"]["artifact"], "manifest.json").read_text())["sha256"]
        == manifest["sha256"]
    )
    # The store lives under the working directory's outputs/.
    assert Path(record["stages"]["mix"]["artifact"]).is_relative_to(tmp_path / "outputs" / "store")


def test_cfg_job_prints_the_composed_config(run_cli) -> None:
    out = run_cli("--cfg", "job", "mix.total=40").stdout
    cfg = OmegaConf.create(out)
    assert cfg.mix.total == 40 and cfg.mix.components.longctx.share == 0.7


CONFIG_MISTAKES = [
    (
        ("mix.totl=3",),
        "error: mix.totl: no schema declares this key (Key 'totl' not in 'MixConfig'); did you mean total?",
    ),
    (
        ("train=lora",),
        "error: train/lora: no such config (the options: local_full, local_lora, together_full, together_lora)",
    ),
    (("train=locl_lora",), "error: train/locl_lora: no such config; did you mean local_lora? (the options: "),
    (("mix.seed=0,1,2",), "error: Ambiguous value for argument 'mix.seed=0,1,2': to sweep over the values, add -m"),
    (("+mix.totl=3",), "error: mix.totl: no schema declares this key"),  # Hydra's own advice: refused too
    (("+train.n_epoch=3",), "error: train.n_epoch: no schema declares this key"),
    (("mix.total=lots",), "error: mix.total: Value 'lots' of type 'str' could not be converted to Integer"),
    (("mix.unit=lines",), "error: mix.unit: Invalid value 'lines', expected one of [examples, tokens]"),
    (
        ("test.dtype=half",),
        "error: test.dtype: Invalid value 'half', expected one of [auto, weights, float32, bfloat16]",
    ),
    (
        ("mix=nope",),
        "error: mix/nope: no such config (the options: llama2_7b_32k, longctx, longctx_32k, offline, samples)",
    ),
    (("experiment=nope",), "error: experiment/nope: no such config (the options: "),
    (("stages=[mix",), "error: an override does not parse: "),
    (("mix.total=${oc.env:RECIPE_TEST_UNSET}",), "error: mix.total: "),  # a missing interpolation: its own cause
    (("mix.seed=${nope.key}",), "error: mix.seed: Interpolation key 'nope.key' not found"),
    (("distill=openai_compatible",), "error: distill.teacher.base_url: required for provider openai_compatible"),
    (
        ("stages=[mix]", "mix=samples", "mix.components.booksum.share=0.5"),
        "error: mix.components: shares must sum to 1",
    ),
]


@pytest.mark.parametrize(("args", "said"), CONFIG_MISTAKES, ids=[" ".join(a) for a, _ in CONFIG_MISTAKES])
def test_config_mistakes_are_one_line_exit_2_naming_the_key(recipe_here, args: tuple[str, ...], said: str) -> None:
    proc = recipe_here(*args, "dry_run=true")
    assert proc.returncode == 2 and proc.stderr.strip().startswith(said), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1  # one line: no traceback, no Hydra advice
    if "RECIPE_TEST_UNSET" in args[0]:
        assert "RECIPE_TEST_UNSET' not found" in proc.stderr and "secrets" not in proc.stderr


def test_a_dry_run_refuses_what_the_run_would_refuse(recipe_here) -> None:
    """A locally trained model on a dedicated Together endpoint: both say so, before any work."""
    args = ("train=local_lora", "deploy=together_dedicated", "mix=samples", "~distill", "~test")
    for extra in (("dry_run=true",), ()):
        proc = recipe_here(*args, *extra, env={"TOGETHER_API_KEY": "sk-test-0123456789abcdef"})
        assert proc.returncode == 2 and "deploy=together_* needs a Together fine-tune" in proc.stderr, extra


def test_a_key_given_as_an_override_never_reaches_disk(run_cli, tmp_path: Path) -> None:
    run_cli("stages=[mix]", "mix=samples", "mix.progress=false", f"together.api_key={PLANTED}")
    outputs = tmp_path / "outputs"
    assert files_containing(outputs, PLANTED) == []
    assert files_containing(outputs, PLANTED[3:15]) == []
    run_dir = next((outputs / "runs").glob("*/*"))
    saved = (run_dir / ".hydra" / "config.yaml").read_text()
    assert "api_key: ${oc.env:RECIPE_SECRET_TOGETHER_API_KEY}" in saved
    assert "RECIPE_SECRET_TOGETHER_API_KEY" in (run_dir / ".hydra" / "overrides.yaml").read_text()


def test_a_key_in_a_sweep_never_reaches_disk(run_cli, tmp_path: Path) -> None:
    proc = run_cli(
        "-m",
        "stages=[mix]",
        "mix=samples",
        "mix.progress=false",
        "mix.seed=0,1",
        f"together.api_key='{PLANTED}'",
    )
    assert PLANTED not in proc.stdout + proc.stderr
    outputs = tmp_path / "outputs"
    jobs = list((outputs / "multiruns").glob("*/*/*/run.json"))
    assert len(jobs) == 2
    assert files_containing(outputs, PLANTED) == []


def test_a_key_from_the_environment_never_reaches_disk(run_cli, tmp_path: Path) -> None:
    run_cli("stages=[mix]", "mix=samples", "mix.progress=false", env={"TOGETHER_API_KEY": PLANTED})
    assert files_containing(tmp_path / "outputs", PLANTED) == []


def test_scrubbed_config_still_resolves_the_key_in_the_job(monkeypatch) -> None:
    monkeypatch.delenv("TOGETHER_API_KEY", raising=False)
    monkeypatch.delenv("RECIPE_SECRET_TOGETHER_API_KEY", raising=False)  # restored after the test
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"together.api_key={PLANTED}"], return_hydra_config=True)
    scrub_config(cfg)
    assert PLANTED not in OmegaConf.to_yaml(cfg)  # what Hydra would save
    assert together_api_key(cfg) == PLANTED  # what the job sees


@pytest.mark.parametrize("flag", [("--cfg", "job"), ("--cfg", "all"), ("--info", "config")])
def test_printing_the_config_masks_a_key_given_on_the_command_line(run_cli, flag) -> None:
    out = run_cli(*flag, f"together.api_key={PLANTED}", "train=together_lora")
    assert PLANTED not in out.stdout + out.stderr
    if flag[0] == "--cfg":
        assert "api_key: '***'" in out.stdout


@pytest.mark.parametrize(
    ("callback", "check"),
    [
        ({"_target_": "builtins.open", "file": "victim.txt", "mode": "w"}, "truncated"),
        ({"_target_": "os.makedirs", "name": "made-by-a-config"}, "made"),
    ],
    ids=["open", "makedirs"],
)
def test_a_config_never_runs_code_of_its_own_not_even_a_hydra_callback(
    run_cli, tmp_path: Path, callback: dict, check: str
) -> None:
    """An experiment under --config-dir naming a Hydra callback (or launcher, sweeper, logging
    factory) outside recipe.* and Hydra's plugins: refused before Hydra instantiates anything."""
    (tmp_path / "victim.txt").write_text("precious")
    experiment = tmp_path / "mine" / "experiment" / "evil.yaml"
    experiment.parent.mkdir(parents=True)
    body = "\n".join(f"      {k}: {v}" for k, v in callback.items())
    experiment.write_text(
        f"# @package _global_\n# recipe --config-dir mine experiment=evil\nhydra:\n  callbacks:\n    x:\n{body}\n"
    )
    for extra in (("dry_run=true",), ("stages=[mix]", "mix=samples")):
        proc = run_cli("--config-dir", "mine", "experiment=evil", *extra, check=False)
        assert proc.returncode == 2 and "hydra.callbacks.x._target_=" in proc.stderr and "is refused" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert (tmp_path / "victim.txt").read_text() == "precious" and not (tmp_path / "made-by-a-config").exists()
    assert not (tmp_path / "outputs" / "store").exists()
    # A plugin of your own is allowed by name, from the environment (never from a config).
    allowed = run_cli(
        "--config-dir",
        "mine",
        "experiment=evil",
        "dry_run=true",
        check=False,
        env={"RECIPE_ALLOW_TARGETS": "nothing.of.that.kind"},
    )
    assert allowed.returncode == 2


def test_an_unselected_stage_with_a_foreign_target_is_refused_before_any_work(run_cli, tmp_path: Path) -> None:
    proc = run_cli("train._target_=os.system", "stages=[mix]", "mix=samples", check=False)
    assert proc.returncode == 2 and "train._target_='os.system' is refused" in proc.stderr
    assert not (tmp_path / "outputs" / "store").exists()
    proc = run_cli("+notes.x._target_=subprocess.run", "stages=[mix]", "mix=samples", check=False)
    assert proc.returncode == 2 and "notes.x._target_='subprocess.run' is refused" in proc.stderr


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 64 KiB tmpfs (needs root, as CI and these machines are); always unmounted."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)]).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(run_cli, tiny_disk: Path) -> None:
    proc = run_cli("stages=[mix]", "mix=samples", "mix.progress=false", f"store_dir={tiny_disk}", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"no space left on the device while writing the mix artifact in {tiny_disk}/mix" in proc.stderr
    assert list((tiny_disk / "mix").iterdir()) == []


def test_an_unknown_experiment_is_an_error_listing_the_known_ones(recipe_here) -> None:
    proc = recipe_here("experiment=llama2_7b_32k_instrcut", "dry_run=true")
    assert proc.returncode == 2 and "experiment/llama2_7b_32k_instrcut: no such config" in proc.stderr
    assert "llama2_7b_32k_instruct" in proc.stderr and "smollm2_offline" in proc.stderr


def test_stages_without_brackets_gets_a_hint(recipe_here) -> None:
    proc = recipe_here("stages=mix")
    assert proc.returncode == 2 and "'stages=[mix]'" in proc.stderr and "Traceback" not in proc.stderr


WORKER_MODULES = """
{top}
from recipe.data.jsonl import worker_pool

if __name__ == "__main__":
    with worker_pool(1) as pool:
        ask = "sorted(m for m in __import__('sys').modules if m.split('.')[0] in ('hydra', 'recipe'))"
        print(pool.submit(eval, ask).result())
"""


def test_worker_processes_never_import_the_cli(tmp_path: Path) -> None:
    """multiprocessing runs the main script again in every worker: the console script imports only
    `recipe.console`, so Mix's workers load the reading code, not Hydra and every stage (~0.4 s each)."""
    script = Path(RECIPE).read_text()
    assert "from recipe.console import main" in script
    for name, top in (("console", "from recipe.console import main"), ("cli", "from recipe.cli import main")):
        path = tmp_path / f"{name}.py"
        path.write_text(WORKER_MODULES.format(top=top))
        out = run_to_end([sys.executable, str(path)], cwd=tmp_path, timeout_s=300).stdout
        modules = eval(out.strip().splitlines()[-1])
        assert "recipe.data.spool" in modules  # what the forkserver preloads for the workers
        if name == "console":
            assert "recipe.cli" not in modules and not any(m.startswith("hydra") for m in modules), modules
        else:  # what a script that imports the CLI at its top costs every worker
            assert "recipe.cli" in modules and "hydra" in modules


def test_the_version_and_every_subcommands_help_answer(run_cli) -> None:
    """`recipe --version` names the project's version (not Hydra's alone); each subcommand has --help."""
    from importlib import metadata

    version = run_cli("--version")
    assert version.stdout.startswith(f"recipe {metadata.version('recipe')} (Hydra ")
    for sub in (["init"], ["store"], ["sweep", "fit"], ["playground"]):
        helped = run_cli(*sub, "--help", check=False)
        assert helped.returncode == 0 and "usage: recipe " in helped.stdout, (sub, helped.stderr)


def test_an_unreachable_teacher_is_one_line_not_a_warning_per_retry(run_cli) -> None:
    """Each retry was a urllib3 warning (190 before the error); the error line alone says it now."""
    proc = run_cli(
        "distill=openai_compatible",
        "stages=[distill]",
        "distill.teacher.base_url=http://127.0.0.1:9/v1",
        "distill.teacher.model=m",
        "distill.max_conversations=2",
        "distill.retry_backoff_s=0.01",
        "distill.progress=false",
        check=False,
    )
    assert proc.returncode == 2 and "Retrying" not in proc.stdout + proc.stderr
    (said,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "2 of 2 conversations failed" in said and "Connection refused" in said


def test_a_cuda_training_on_a_machine_without_one_is_refused_in_the_pre_flight(recipe_here, tmp_path: Path) -> None:
    """Found before Mix runs (it was found at Train, after the stages before it), in one line."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    proc = recipe_here("train.device=cuda", "stages=[mix,train]", "mix=samples", "mix.progress=false")
    assert proc.returncode == 2 and "train.device=cuda but this machine has no CUDA device" in proc.stderr
    assert "nothing was run" in proc.stderr and not list((tmp_path / "outputs" / "store").glob("mix/*"))


def test_a_refusal_checked_in_process_leaves_the_process_as_it_was(recipe_here, tmp_path: Path) -> None:
    """recipe_here (tests/conftest.py) runs the CLI in the test's own process: after a refusal found
    inside the run (Hydra had set up the job's logging and its directory), logging, the environment,
    the working directory and Hydra are as they were, for the next test in this worker."""
    from hydra.core.global_hydra import GlobalHydra

    root = logging.getLogger()
    state = lambda: (list(root.handlers), root.level, os.environ.get("HYDRA_FULL_ERROR"), os.getcwd())  # noqa: E731
    before = state()
    mine = logging.FileHandler(tmp_path / "mine.log")  # a handler open before (as pytest's own are)
    logging.getLogger("mine").addHandler(mine)
    try:
        args = ("train=local_lora", "deploy=together_dedicated", "mix=samples", "~distill", "~test")
        proc = recipe_here(*args, env={"TOGETHER_API_KEY": "sk-test-0123456789abcdef"})
        assert proc.returncode == 2 and proc.stderr.startswith("error: ")
        assert state() == before and not GlobalHydra.instance().is_initialized()
        assert mine.stream is not None and not mine.stream.closed  # Hydra's dictConfig closed every handler
    finally:
        logging.getLogger("mine").removeHandler(mine)
        mine.close()
