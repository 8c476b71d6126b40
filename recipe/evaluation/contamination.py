"""Test's view of contamination: per suite it asks, how many of its prompts the training mixture
holds, read from what Mix recorded (recipe/data/contamination.py builds the index and the rules)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from recipe.data.contamination import suite_identity


def suite_view(recorded: dict[str, Any] | None, suites: DictConfig, key_of: Callable[[str], str]) -> dict[str, Any]:
    """For Test: per suite it asks, how many of its prompts the training mixture holds, as Mix
    recorded it; a suite whose data Mix did not check (other files, or decontamination off) is
    `checked: false`, never a silent zero."""
    out: dict[str, Any] = {}
    for name, suite in suites.items():
        mine = ((recorded or {}).get("suites") or {}).get(name)
        if mine is None or mine["identity"] != suite_identity(suite, key_of(name)):
            out[name] = {"checked": False}
            continue
        asked = mine["records"] if suite.max_examples is None else min(suite.max_examples, mine["records"])
        out[name] = {
            "checked": True,
            "prompts": asked,
            "in_training": sum(r < asked for r in mine["found_in_training"]),
            "dropped": sum(r < asked for r in mine["found_and_dropped"]),
        }
    return out


def view_lines(view: dict[str, Any]) -> list[str]:
    """One contamination line per suite, for the Test table and report."""
    lines = []
    for name, v in view.items():
        if not v["checked"]:
            lines.append(f"contamination {name}: NOT CHECKED (the mixture was not decontaminated against this data)")
            continue
        line = f"contamination {name}: {v['in_training']} of {v['prompts']} prompts found in the training mixture"
        if v["dropped"]:
            line += f" ({v['dropped']} more found in the sources and dropped by Mix)"
        lines.append(line)
    return lines
