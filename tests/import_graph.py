"""The import graph of the `recipe` package: who imports whom, inside the package.

    .venv/bin/python -m tests.import_graph            # one line per module: its recipe.* imports
    .venv/bin/python -m tests.import_graph --layers   # imports between layers (stages, providers, ...)

Read from the source with `ast` (nothing is imported), including imports inside functions.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "recipe"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The recipe.* modules a file imports (`from recipe.x import y` counts y when it is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("recipe")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("recipe"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                exists = (PACKAGE.parent / Path(*sub.split("."))).with_suffix(".py").is_file()
                found.add(sub if exists or (PACKAGE.parent / Path(*sub.split("."))).is_dir() else node.module)
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def main() -> None:
    edges = graph()
    if "--layers" in sys.argv:
        layers: dict[str, set[str]] = defaultdict(set)
        for module, targets in edges.items():
            layers[layer(module)] |= {layer(t) for t in targets if layer(t) != layer(module)}
        for name in sorted(layers):
            print(f"{name:<24} -> {', '.join(sorted(layers[name])) or '-'}")
        return
    for module, targets in edges.items():
        print(f"{module:<40} -> {', '.join(sorted(targets)) or '-'}")


if __name__ == "__main__":
    main()
