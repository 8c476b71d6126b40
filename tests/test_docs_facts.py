"""Facts the README and the Makefile state by hand, checked against what they describe: the core
install's packages, each extra's plugins, the main job and its sizes. Prose that drifts from the
project fails here, not in a newcomer's first hour."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def name(requirement: str) -> str:
    return re.split(r"[<>=!\[ ;]", requirement, maxsplit=1)[0].lower()


def sentence(text: str, opening: str) -> str:
    """The text from `opening` to the end of its sentence, on one line."""
    flat = " ".join(text.split())
    start = flat.index(opening)
    end = flat.index(". ", start)
    return flat[start:end]


def test_the_readme_lists_the_core_install_as_pyproject_declares_it() -> None:
    said = sentence(README, "the core install is `pip install -e .`")
    listed = {item.split()[0] for item in said.split("(", 1)[1].rstrip(")").split(", ")}
    assert listed == {name(r) for r in PYPROJECT["project"]["dependencies"]}


def test_the_readme_names_every_plugin_of_the_sweep_extra() -> None:
    said = sentence(README, "The `sweep` extra").lower()
    for requirement in PYPROJECT["project"]["optional-dependencies"]["sweep"]:
        plugin = name(requirement).removeprefix("hydra-").removesuffix("-launcher").removesuffix("-sweeper")
        assert plugin in said, (plugin, said)


def test_make_run_is_the_main_job_the_readme_describes() -> None:
    makefile = (ROOT / "Makefile").read_text()
    run = re.search(r"^run: .*\n\t(.+)$", makefile, re.M)
    assert run is not None
    experiment = re.search(r"experiment=(\w+)", run.group(1))
    assert experiment is not None
    assert f"The main job (`experiment={experiment.group(1)}`" in " ".join(README.split())


def test_the_main_jobs_sizes_are_the_readmes(make_cfg) -> None:
    """The README's account of the main job: how many conversations its teacher distils, the size
    of its mixture."""
    cfg = make_cfg("experiment=longctx_offline", base=())
    said = re.search(r"The embedded teacher distils (\d+) ShareGPT conversations", " ".join(README.split()))
    assert said is not None and int(said.group(1)) == cfg.distill.max_conversations
    mixture = re.search(r"mix\.total=(\d+) .*# a (smaller|bigger) mixture \(the main job's is (\d+)\)", README)
    assert mixture is not None and int(mixture.group(3)) == cfg.mix.total
    assert (int(mixture.group(1)) < cfg.mix.total) == (mixture.group(2) == "smaller")
