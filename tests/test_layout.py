"""The shape of the code: stages talk through typed artifacts, providers sit below stages."""

from __future__ import annotations

from pathlib import Path

from .import_graph import PACKAGE, graph


def test_stages_never_import_each_other_or_the_runner() -> None:
    for module, targets in graph().items():
        if module.startswith("recipe.stages."):
            assert not {t for t in targets if t.startswith("recipe.stages.")}, f"{module} imports a stage: {targets}"
            assert "recipe.runner" not in targets and "recipe.cli" not in targets, module


def test_providers_and_artifacts_never_import_upward() -> None:
    for module, targets in graph().items():
        if module.startswith(("recipe.providers", "recipe.artifacts", "recipe.data", "recipe.test")):
            upward = {t for t in targets if t.startswith(("recipe.stages", "recipe.runner", "recipe.cli"))}
            assert not upward, f"{module} imports {upward}"


def test_stages_read_upstream_artifacts_only_through_their_types() -> None:
    """No stage digs in another stage's manifest by string key, or reads another stage's config."""
    for path in sorted((PACKAGE / "stages").glob("*.py")):
        text = path.read_text()
        for pattern in (".manifest[", ".manifest.get(", "root.train", "root.mix", "root.distill", "root.test"):
            assert pattern not in text, f"{path.name}: {pattern}"
    assert Path(PACKAGE / "artifacts.py").is_file()
