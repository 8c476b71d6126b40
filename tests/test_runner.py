"""The generic runner: stage selection, the _target_ allow-list, dry runs and run.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import open_dict

from recipe.runner import run
from recipe.stages import StageError


def test_target_outside_the_recipe_package_is_refused(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("mix._target_=os.system")
    with pytest.raises(
        StageError,
        match=r"mix._target_='os.system' is refused: a recipe Stage class \(recipe\.stages\.\*\) is expected",
    ):
        run(cfg, run_dir=tmp_path)


def test_target_that_is_not_a_stage_is_refused(make_cfg, tmp_path: Path) -> None:
    with pytest.raises(StageError, match=r"it is recipe.store.ArtifactStore \(a class\), and a recipe Stage class"):
        run(make_cfg("mix._target_=recipe.store.ArtifactStore"), run_dir=tmp_path)
    with pytest.raises(StageError, match="cannot be imported"):
        run(make_cfg("mix._target_=recipe.stages.nothing.Here"), run_dir=tmp_path)


def test_unknown_or_unconfigured_stage_is_an_error(make_cfg, tmp_path: Path) -> None:
    with pytest.raises(StageError, match=r"stages: unknown stage 'mixx'; the stages are distill, mix, train"):
        run(make_cfg("stages=[mixx]"), run_dir=tmp_path)
    with pytest.raises(StageError, match=r"stages: 'train' has no config"):
        run(make_cfg("stages=[train]"), run_dir=tmp_path)


def test_dry_run_plans_without_writing_the_store(make_cfg, tmp_path: Path, capsys) -> None:
    record = run(make_cfg("dry_run=true"), run_dir=tmp_path)
    mix = record["stages"]["mix"]
    assert record["status"] == "planned" and mix["status"] == "planned" and not mix["cache_hit"]
    assert mix["plan"].startswith("32 examples (booksum 8, instructions 16, mqa 8)")
    assert not (tmp_path / "store").exists()
    assert "dry run: what each stage would do and cost; nothing was run or sent" in capsys.readouterr().out
    # After a real run the plan says it would reuse the artifact.
    run(make_cfg("mix.progress=false"), run_dir=tmp_path)
    again = run(make_cfg("dry_run=true"), run_dir=tmp_path)["stages"]["mix"]
    assert again["cache_hit"] and again["plan"].startswith("reuse ")


def test_run_json_has_the_contract_fields(make_cfg, tmp_path: Path) -> None:
    run(make_cfg("mix.progress=false"), run_dir=tmp_path)
    record = json.loads((tmp_path / "run.json").read_text())
    mix = record["stages"]["mix"]
    assert record["status"] == "ok"
    assert set(mix) >= {"status", "fingerprint", "artifact", "cache_hit", "seconds"}
    assert Path(mix["artifact"], "manifest.json").is_file()


def test_fingerprint_ignores_execution_keys_and_sample_location(make_cfg, tmp_path: Path) -> None:
    base = run(make_cfg("mix.progress=false", "dry_run=true"), run_dir=tmp_path)["stages"]["mix"]["fingerprint"]
    progress = run(make_cfg("mix.progress=true", "dry_run=true"), run_dir=tmp_path)["stages"]["mix"]["fingerprint"]
    assert base == progress
    # The same bytes at another path fingerprint the same; other bytes do not.
    cfg = make_cfg("dry_run=true")
    copy = tmp_path / "booksum.jsonl"
    copy.write_bytes(Path(cfg.sources.booksum_sample.data_files[0]).read_bytes())
    with open_dict(cfg):
        cfg.sources.booksum_sample.data_files = [str(copy)]
    assert run(cfg, run_dir=tmp_path)["stages"]["mix"]["fingerprint"] == base
    copy.write_bytes(copy.read_bytes() + b'{"prompt": "new", "completion": "one"}\n')
    assert run(cfg, run_dir=tmp_path)["stages"]["mix"]["fingerprint"] != base


def test_a_crashed_build_leaves_no_complete_artifact(make_cfg, tmp_path: Path, monkeypatch) -> None:
    from recipe.stages import mix as mix_module

    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C halfway through writing

    monkeypatch.setattr(mix_module.Mix, "_write", boom)
    with pytest.raises(KeyboardInterrupt):
        run(make_cfg("mix.progress=false"), run_dir=tmp_path)
    assert list((tmp_path / "store" / "mix").iterdir()) == []
    assert json.loads((tmp_path / "run.json").read_text())["stages"]["mix"]["status"] == "failed"


def _build_slowly(root: str, log: str) -> tuple[str, bool]:
    """In a separate process: build one fingerprint; the build appends to `log` and takes 1 s."""
    import time

    from recipe.store import ArtifactStore

    def produce(out: Path) -> dict:
        with open(log, "a") as f:
            f.write("built\n")
        time.sleep(1)
        (out / "data.txt").write_text("x")
        return {}

    artifact = ArtifactStore(root).build("distill", "f" * 20, produce, {"stage": "distill"})
    return str(artifact.path), artifact.reused


def test_twin_builds_take_turns_and_the_second_reuses_the_first(tmp_path: Path) -> None:
    """Two processes building the same fingerprint (parallel sweep jobs sharing a Distill): the
    work is done once, the twin waits for it and reuses the artifact."""
    import multiprocessing

    log = tmp_path / "builds.log"
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.starmap(_build_slowly, [(str(tmp_path / "store"), str(log))] * 2)
    assert log.read_text() == "built\n"
    assert len({path for path, _ in results}) == 1 and sorted(reused for _, reused in results) == [False, True]
    assert sorted(p.name for p in (tmp_path / "store" / "distill").iterdir()) == ["f" * 20]
