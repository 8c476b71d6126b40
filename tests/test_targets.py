"""No config runs code of its own: every name of code is allowed by the object it denotes, where it
stands (recipe/targets.py), never by how it is spelled."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from recipe.cli import CONF_DIR
from recipe.stages import StageError
from recipe.targets import check_config


@pytest.fixture(scope="module")
def composed() -> DictConfig:
    """The default config with its `hydra` node, as Hydra hands it to the callbacks."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", return_hydra_config=True)


def with_(cfg: DictConfig, extra: dict) -> DictConfig:
    plain = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))  # any key may be planted
    merged = OmegaConf.merge(plain, OmegaConf.create(extra))
    assert isinstance(merged, DictConfig)
    return merged


def callback(target: str, **kwargs: object) -> dict:
    return {"hydra": {"callbacks": {"x": {"_target_": target, **kwargs}}}}


# (what is planted, the words of its refusal): attribute chains through allowed modules, re-exports,
# Hydra plugins' helpers, interpolations that build a name, logging factories, the job's environment.
BYPASSES = {
    "chain through a recipe module": (callback("recipe.store.shutil.copyfile"), "it is shutil.copyfile"),
    "os through the cli module": (callback("recipe.cli.os.system"), "it is posix.system"),
    "a recipe function as a callback": (callback("recipe.store.write_json_atomic"), "a Hydra Callback class"),
    "a recipe class that is no callback": (callback("recipe.store.ArtifactStore"), "a Hydra Callback class"),
    "a plugin module's os": (
        {"hydra": {"launcher": {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.os.system"}}},
        "a Hydra Launcher class",
    ),
    "a sweeper where the launcher goes": (
        {"hydra": {"launcher": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"}}},
        "a Hydra Launcher class",
    ),
    "a sampler module's import": (
        {"hydra": {"sweeper": {"sampler": {"_target_": "optuna.samplers._base.abc.abstractmethod"}}}},
        "an Optuna sampler or pruner",
    ),
    "a name built by an interpolation": (callback("recipe.${oc.env:HOME}"), "not built by an interpolation"),
    "a name that is a node": ({"hydra": {"callbacks": {"x": {"_target_": {"a": 1}}}}}, "a written-out string"),
    "a stage node through a module's os": (
        {"mix": {"_target_": "recipe.stages.deploy.os.system"}},
        "it is posix.system",
    ),
    "the Stage base class": ({"mix": {"_target_": "recipe.stages.Stage"}}, "a recipe Stage class"),
    "a target outside any stage": ({"sources": {"x": {"_target_": "recipe.stages.mix.Mix"}}}, "nothing at sources.x"),
    "a nested target in a callback": (
        callback("recipe.secrets.ScrubSecrets", inner={"_target_": "recipe.secrets.ScrubSecrets"}),
        "nothing at hydra.callbacks.x.inner",
    ),
    "a logging factory through logging's os": (
        {"hydra": {"job_logging": {"formatters": {"f": {"()": "logging.os.popen", "cmd": "true"}}}}},
        "it is os.popen",
    ),
    "a logging handler class that sends records away": (
        {"hydra": {"hydra_logging": {"handlers": {"h": {"class": "logging.handlers.SocketHandler"}}}}},
        "a local logging handler",
    ),
    "a logging stream from any module": (
        {"hydra": {"job_logging": {"handlers": {"h": {"stream": "ext://antigravity.webbrowser"}}}}},
        "a logging stream is ext://sys.stdout",
    ),
    "a log file that Python runs": (
        {"hydra": {"job_logging": {"handlers": {"h": {"filename": "/venv/site-packages/x.pth"}}}}},
        "a log file's name ends in .log",
    ),
    "PYTHONPATH for every child": ({"hydra": {"job": {"env_set": {"PYTHONPATH": "/tmp/evil"}}}}, "PYTHONPATH"),
    "the allow-list itself": ({"hydra": {"job": {"env_set": {"RECIPE_ALLOW_TARGETS": "os"}}}}, "RECIPE_ALLOW_TARGETS"),
    "a preloaded library": ({"hydra": {"job": {"env_set": {"LD_PRELOAD": "/tmp/x.so"}}}}, "LD_PRELOAD"),
    "Submitit's setup lines": ({"hydra": {"launcher": {"setup": ["curl x | sh"]}}}, "hydra.launcher.setup"),
    "srun's prolog": ({"hydra": {"launcher": {"srun_args": ["--prolog=/tmp/x"]}}}, "srun's prolog"),
}


@pytest.mark.parametrize("planted", list(BYPASSES), ids=list(BYPASSES))
def test_every_known_way_to_name_code_is_refused(composed: DictConfig, planted: str) -> None:
    extra, words = BYPASSES[planted]
    cfg = with_(composed, extra)
    with pytest.raises(StageError, match=r"is refused|cannot be imported") as refused:
        check_config(cfg)
    assert words in str(refused.value), str(refused.value)
    assert len(str(refused.value).splitlines()) == 1


ALLOWED = {
    "the shipped config": {},
    "Hydra's joblib launcher": {
        "hydra": {"launcher": {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"}}
    },
    "the Optuna sweeper and a sampler": {
        "hydra": {
            "sweeper": {
                "_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
                "sampler": {"_target_": "optuna.samplers.TPESampler", "seed": 1},
            }
        }
    },
    "a stage re-exported elsewhere (the same object)": {"mix": {"_target_": "recipe.stages.mix.Mix"}},
    "Hydra's default file logging": {
        "hydra": {
            "job_logging": {
                "handlers": {
                    "file": {"class": "logging.FileHandler", "filename": "${hydra.runtime.output_dir}/job.log"},
                    "console": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout"},
                }
            }
        }
    },
    "a harmless variable for the job": {"hydra": {"job": {"env_set": {"OMP_NUM_THREADS": "1"}}}},
}


@pytest.mark.parametrize("what", list(ALLOWED), ids=list(ALLOWED))
def test_what_the_project_registers_is_allowed(composed: DictConfig, what: str) -> None:
    check_config(with_(composed, ALLOWED[what]))


def test_a_plugin_of_yours_is_allowed_from_the_environment_only(composed: DictConfig, monkeypatch) -> None:
    cfg = with_(composed, callback("tests.test_targets.MyCallback"))
    with pytest.raises(StageError, match="is refused"):
        check_config(cfg)
    monkeypatch.setenv("RECIPE_ALLOW_TARGETS", "tests.test_targets")
    check_config(cfg)
    # Still by what it is: allowed code of the wrong kind for the place is refused.
    with pytest.raises(StageError, match="a Hydra Callback class"):
        check_config(with_(composed, callback("tests.test_targets.with_")))


def _callback_base() -> type:
    from hydra.experimental.callback import Callback

    return Callback


class MyCallback(_callback_base()):  # type: ignore[misc]
    """A user's own Hydra callback (allowed through RECIPE_ALLOW_TARGETS)."""


def _experiment(tmp_path: Path, name: str, body: str) -> None:
    path = tmp_path / "mine" / "experiment" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# @package _global_\n# recipe --config-dir mine experiment={name}\n{body}")


def test_a_config_copying_a_pth_into_site_packages_runs_nothing(run_cli, tmp_path: Path) -> None:
    """The chain that ran code: a callback named through a recipe module copies a `.pth` into a
    virtualenv's site-packages, and the next Python start there runs it. Refused in a dry run and in
    a run, before Hydra instantiates anything, and the copy never happens."""
    site = tmp_path / "venv" / "site-packages"
    site.mkdir(parents=True)
    (tmp_path / "evil.pth").write_text(f"import os; os.makedirs({str(tmp_path / 'ran')!r})\n")
    _experiment(
        tmp_path,
        "evil",
        f"hydra:\n  callbacks:\n    x:\n      _target_: recipe.store.shutil.copyfile\n"
        f"      src: {tmp_path / 'evil.pth'}\n      dst: {site / 'evil.pth'}\n",
    )
    for extra in (("dry_run=true",), ("stages=[mix]", "mix=samples")):
        proc = run_cli("--config-dir", "mine", "experiment=evil", *extra, check=False)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines() == [
            "error: hydra.callbacks.x._target_='recipe.store.shutil.copyfile' is refused: it is shutil.copyfile "
            "(a function), and a Hydra Callback class of the recipe package is expected here"
        ]
    assert not (site / "evil.pth").exists() and not (tmp_path / "outputs" / "store").exists()


def test_hydra_logging_is_checked_before_hydra_applies_it(run_cli, tmp_path: Path) -> None:
    """Hydra applies hydra_logging while composing, before any callback exists: a factory there
    (through the logging module's own imports) is refused before it is called."""
    _experiment(
        tmp_path,
        "evil",
        "hydra:\n  hydra_logging:\n    version: 1\n    formatters:\n      f:\n"
        f"        (): logging.os.makedirs\n        name: {tmp_path / 'made'}\n",
    )
    proc = run_cli("--config-dir", "mine", "experiment=evil", "dry_run=true", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "hydra.hydra_logging.formatters.f.()='logging.os.makedirs' is refused" in proc.stderr
    assert not (tmp_path / "made").exists()


def test_a_sweep_cannot_hand_its_jobs_an_environment_that_loads_code(run_cli, tmp_path: Path) -> None:
    """A multirun is checked once, before its sweeper or any job starts (Hydra itself refuses to
    sweep over its own node, so no job's hydra node differs from the one checked)."""
    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / "sitecustomize.py").write_text(f"import os\nos.makedirs({str(tmp_path / 'ran')!r})\n")
    proc = run_cli(
        "-m",
        "stages=[mix]",
        "mix=samples",
        "mix.progress=false",
        f"+hydra.job.env_set.PYTHONPATH={tmp_path / 'evil'}",
        "mix.seed=1,2",
        check=False,
        env={"PYTHONPATH": os.environ.get("PYTHONPATH", "")},
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "hydra.job.env_set.PYTHONPATH is refused" in proc.stderr
    assert not (tmp_path / "ran").exists() and not (tmp_path / "outputs" / "store").exists()
