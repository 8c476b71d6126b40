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
        if module.startswith(("recipe.providers", "recipe.artifacts", "recipe.data", "recipe.evaluation")):
            upward = {t for t in targets if t.startswith(("recipe.stages", "recipe.runner", "recipe.cli"))}
            assert not upward, f"{module} imports {upward}"


def test_stages_read_upstream_artifacts_only_through_their_types() -> None:
    """No stage digs in another stage's manifest by string key, or reads another stage's config."""
    for path in sorted((PACKAGE / "stages").glob("*.py")):
        text = path.read_text()
        for pattern in (".manifest[", ".manifest.get(", "root.train", "root.mix", "root.distill", "root.test"):
            assert pattern not in text, f"{path.name}: {pattern}"
    assert Path(PACKAGE / "artifacts.py").is_file()


def test_the_runner_hands_stages_values_and_never_sets_their_attributes() -> None:
    """run(inputs, workspace) -> Output and plan(...) -> Plan: the runner neither sets nor reads back
    a stage's attributes (store, fingerprint, planned figures)."""
    import re

    for name in ("runner.py", "sweep.py", "cli.py"):
        text = (PACKAGE / name).read_text()
        assert not re.search(r"\bstage\.\w+\s*=[^=]", text), f"{name} sets a stage attribute"
        assert not re.search(r"\bstage\.(store|fingerprint|planned\w*|skipped|upstream_plans)\b", text), name
    for path in sorted((PACKAGE / "stages").glob("*.py")):
        assert not re.search(r"self\.(store|fingerprint)\b", path.read_text()), f"{path.name} keeps run state on self"


# Where a stage may set its own attributes: its settings, made once when it is built.
SETTINGS_METHODS = ("__init__", "_validate")


def test_a_stage_keeps_no_run_state_on_itself() -> None:
    """A stage's attributes are its settings: nothing `run`, `plan` or their helpers set on `self`
    (or on an attribute of `self`, such as a collaborator's cache directory), so one stage object
    can plan and run twice, or in two threads, without one run reading the other's state. Run state
    is made in `run` and handed on (Distill's `Sent`, Test's `Asking`, `Decontamination.for_run`)."""
    import ast
    import importlib

    from recipe.stages import Stage

    kept = []
    for path in sorted((PACKAGE / "stages").glob("*.py")):
        tree = ast.parse(path.read_text())
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
            module = importlib.import_module("recipe.stages" + ("" if path.stem == "__init__" else f".{path.stem}"))
            obj = getattr(module, cls.name, None)
            if not (isinstance(obj, type) and issubclass(obj, Stage)):
                continue
            for fn in (n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name not in SETTINGS_METHODS):
                for node in ast.walk(fn):
                    targets = node.targets if isinstance(node, ast.Assign) else []
                    if isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                        targets = [node.target]
                    while any(isinstance(t, (ast.Tuple, ast.List)) for t in targets):  # a, self.b = ...
                        targets = [
                            e for t in targets for e in (t.elts if isinstance(t, (ast.Tuple, ast.List)) else [t])
                        ]
                    for target in targets:
                        owner = target  # self.x = , self.x.y = , self.x[k] =
                        while isinstance(owner, (ast.Attribute, ast.Subscript)):
                            owner = owner.value
                        if target is not owner and isinstance(owner, ast.Name) and owner.id == "self":
                            kept.append(f"{path.name}:{node.lineno} {cls.name}.{fn.name} sets {ast.unparse(target)}")
    assert not kept, "run state kept on a stage:\n" + "\n".join(kept)


# Schema keys read as a whole or by a computed name, not as `.key`: where each is read.
READ_AS_A_WHOLE = {
    "SamplingConfig.top_p": "distill sends distill.sampling as it is (recipe/stages/distill.py, _teacher)",
    "SamplingConfig.top_k": "distill sends distill.sampling as it is",
    "SamplingConfig.repetition_penalty": "distill sends distill.sampling as it is",
    "WandbConfig.project_name": "train_together sends every train.wandb field by name (body)",
    "RecipeConfig.deploy": "stages are found by name (recipe/stages/__init__.py CONFIG_KEY)",
    "SourceConfig.description": "for people: shown by `recipe --cfg job` and in the key reference",
    "SuiteConfig.description": "for people: shown by `recipe --cfg job` and in the key reference",
}


def test_every_schema_key_is_read_by_some_code() -> None:
    """A key no code reads is a promise the tool does not keep (a documented retry backoff that no
    client was built with): every field of every schema is read somewhere in recipe/ as `.key`,
    `["key"]` or `.get("key")`, or is listed above with where it is read."""
    import dataclasses
    import re

    import recipe.config as config

    code = "\n".join(p.read_text() for p in PACKAGE.rglob("*.py") if p.name != "config.py")
    unread, listed = [], set()
    for name, cls in vars(config).items():
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__module__ == config.__name__):
            continue
        for field in dataclasses.fields(cls):
            key = f"{name}.{field.name}"
            if field.name.startswith("_"):
                continue
            read = re.search(rf"(\.{field.name}\b|\[\"{field.name}\"\]|get\(\"{field.name}\")", code)
            if key in READ_AS_A_WHOLE:
                listed.add(key)
                assert not read, f"{key} is read as `.{field.name}` now: drop it from READ_AS_A_WHOLE"
            elif not read:
                unread.append(key)
    assert not unread, f"schema keys no code reads: {unread}"
    assert listed == set(READ_AS_A_WHOLE), f"not schema keys: {set(READ_AS_A_WHOLE) - listed}"
