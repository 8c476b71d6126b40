"""The `recipe` console script end to end, and the secrets contract (nothing on disk)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from recipe.cli import CONF_DIR
from recipe.secrets import scrub_config, together_api_key

from .conftest import latest_run

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
    assert cfg.mix.total == 40 and cfg.mix.components.instructions.share == 0.5


def test_config_errors_exit_non_zero_naming_the_key(run_cli) -> None:
    proc = run_cli("mix.totl=3", check=False)
    assert proc.returncode != 0 and "totl" in proc.stderr
    proc = run_cli("stages=[mix]", "mix=samples", "mix.components.booksum.share=0.5", check=False)
    assert proc.returncode == 2
    assert "error: mix.components: shares must sum to 1, got 1.25" in proc.stderr
    assert "Traceback" not in proc.stderr


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


def test_an_unknown_experiment_is_an_error_listing_the_known_ones(run_cli) -> None:
    proc = run_cli("experiment=llama2_7b_32k_instrcut", "dry_run=true", check=False)
    assert proc.returncode != 0 and "Could not find 'experiment/llama2_7b_32k_instrcut'" in proc.stderr
    assert "llama2_7b_32k_instruct" in proc.stderr and "smollm2_offline" in proc.stderr


def test_stages_without_brackets_gets_a_hint(run_cli) -> None:
    proc = run_cli("stages=mix", check=False)
    assert proc.returncode == 2 and "'stages=[mix]'" in proc.stderr and "Traceback" not in proc.stderr
