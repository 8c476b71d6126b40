"""`recipe` as a tool: the wheel (not the editable checkout) installed in a fresh venv, run from an
empty directory: its configs come with it, `recipe init` writes a config repository that runs,
`--help` helps."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv holding the built wheel (no -e); the heavy dependencies are the test venv's
    own, reached through a .pth line (a plain path: the checkout's editable finder is not loaded)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"  # built from a copy: an in-tree build would leave build/ in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("recipe", "conf"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "-w",
            str(dist),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = dist.glob("recipe-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (site / "test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--no-deps",
            "--quiet",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return venv


def recipe(venv: Path, cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    return subprocess.run(
        [str(venv / "bin" / "recipe"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        check=check,
        env=env,
    )


def test_the_wheel_carries_its_configs_and_runs_from_an_empty_directory(installed: Path, tmp_path: Path) -> None:
    where = subprocess.run(
        [
            str(installed / "bin" / "python"),
            "-c",
            "import recipe.cli as c, recipe; print(c.CONF_DIR); print(recipe.__file__)",
        ],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert all(p.startswith(str(installed)) for p in where), where  # the wheel's code and configs, not the checkout's
    assert Path(where[0], "config.yaml").is_file() and Path(where[0], "experiment", "smollm2_offline.yaml").is_file()

    out = recipe(installed, tmp_path, "init", "mine").stdout
    assert "wrote mine/conf/experiment/my_experiment.yaml" in out
    project = tmp_path / "mine"
    for path in ("conf/experiment/my_experiment.yaml", "conf/source/my_source.yaml", "conf/mix/my_mix.yaml"):
        assert (project / path).read_text().splitlines()[0].startswith(("# recipe", "# @package"))
    again = recipe(installed, tmp_path, "init", "mine", check=False)
    assert again.returncode == 2 and "exists" in again.stderr

    planned = recipe(installed, project, "dry_run=true").stdout  # the shipped default recipe, planned
    assert "distill  planned" in planned and "mix      planned" in planned

    recipe(installed, project, "--config-dir", "conf", "experiment=my_experiment", "stages=[mix]", "mix.progress=false")
    runs = sorted((project / "outputs" / "runs").glob("*/*/run.json"))
    record = json.loads(runs[-1].read_text())
    assert record["status"] == "ok"
    artifact = Path(record["stages"]["mix"]["artifact"])
    assert artifact.is_relative_to(project / "outputs" / "store")  # store and outputs relative to here
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["counts"] == {"booksum": 4, "mine": 8, "mqa": 4}
    assert manifest["sources"]["mine"]["source"] == "my_source"


def test_help_lists_stages_groups_and_commands_and_survives_a_closed_pipe(installed: Path, tmp_path: Path) -> None:
    out = recipe(installed, tmp_path, "--help").stdout
    lines = out.splitlines()
    assert len(lines) < 45
    assert "stages, in order (stages=[...] picks some): distill, mix, train, test, deploy" in out
    assert any(line.split()[:2] == ["experiment", "llama2_7b_32k_instruct,"] for line in lines)
    assert "schema" not in out and "recipe init" in out and "README.md" in out
    (tmp_path / "conf" / "mix").mkdir(parents=True)
    (tmp_path / "conf" / "mix" / "mine.yaml").write_text("# recipe --config-dir conf mix=mine\ntotal: 4\n")
    assert "mine" in recipe(installed, tmp_path, "--config-dir", "conf", "--help").stdout  # the user's options too
    piped = subprocess.run(
        f"{installed / 'bin' / 'recipe'} --help | head -2", shell=True, cwd=tmp_path, capture_output=True, text=True
    )
    assert piped.stdout.count("\n") == 2 and "Traceback" not in piped.stderr and "BrokenPipe" not in piped.stderr
