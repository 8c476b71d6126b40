"""`recipe init [DIR]`: a minimal repository of your own experiment configs, beside the shipped ones.

It writes an experiment, a source and a mixture (each opening with the command that uses it) and
a small data file, all of which run offline as written:

    DIR/conf/experiment/my_experiment.yaml
    DIR/conf/source/my_source.yaml
    DIR/conf/mix/my_mix.yaml
    DIR/data/my_data.jsonl

`recipe --config-dir conf ...` (run in DIR) puts DIR/conf in front of the shipped configs: its files
add options to the shipped groups, and a file with a shipped option's name replaces it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

EXPERIMENT = """\
# @package _global_
# recipe --config-dir conf experiment=my_experiment            (the offline recipe, your data in the mixture)
# recipe --config-dir conf experiment=my_experiment dry_run=true
# recipe --config-dir conf experiment=my_experiment 'stages=[mix]'
# Your experiment: the shipped offline recipe (embedded teacher and model, CPU) with your source
# as half of the mixture. Commit it; change a key here or on the command line (mix.total=32).
defaults:
  - /source@sources.my_source: my_source
  - override /mix: my_mix

notes:
  experiment: my_experiment
"""

SOURCE = """\
# recipe --config-dir conf experiment=my_experiment 'stages=[mix]'
# Your data: JSON Lines of {"prompt", "completion"} (paths relative to where you run recipe).
# Other kinds: messages ({"messages": [...]}), sharegpt, text (see the shipped conf/source/).
kind: prompt_completion
data_files:
  - data/my_data.jsonl
description: my instructions and answers
"""

MIX = """\
# recipe --config-dir conf experiment=my_experiment 'stages=[mix]' mix.seed=1
# Half your data, a quarter each of the shipped BookSum and multi-document QA samples.
total: 16
unit: examples
seed: 0
format: text
template: chatml
eval_fraction: 0.125
components:
  mine:
    source: my_source
    share: 0.5
  booksum:
    source: booksum_sample
    share: 0.25
  mqa:
    source: mqa_sample
    share: 0.25
    strata: num_documents
"""

FACTS = [
    ("Name a primary colour.", "Red, yellow and blue are the primary colours of paint."),
    ("What is the boiling point of water at sea level?", "100 degrees Celsius."),
    ("How many days are in a leap year?", "366 days."),
    ("What gas do plants take in for photosynthesis?", "Carbon dioxide."),
    ("Who wrote Pride and Prejudice?", "Jane Austen, in 1813."),
    ("What is the largest planet in the solar system?", "Jupiter."),
    ("Give a synonym for 'happy'.", "Cheerful."),
    ("What is 12 times 12?", "144."),
    ("Which organ pumps blood around the body?", "The heart."),
    ("What is the freezing point of water in Fahrenheit?", "32 degrees Fahrenheit."),
    ("Translate 'thank you' into German.", "Danke."),
    ("What is the chemical formula of water?", "H2O: two hydrogen atoms and one oxygen atom."),
    ("How many sides does a hexagon have?", "Six."),
    ("What is the capital of Japan?", "Tokyo."),
    ("Name the longest river in Africa.", "The Nile."),
    ("What does a thermometer measure?", "Temperature."),
    ("Spell the plural of 'mouse'.", "Mice."),
    ("Which metal is liquid at room temperature?", "Mercury."),
    ("What is the square root of 81?", "9."),
    ("How many minutes are in two hours?", "120 minutes."),
    ("What language is spoken in Brazil?", "Portuguese."),
    ("What is the opposite of 'ancient'?", "Modern."),
    ("Which animal is known as the ship of the desert?", "The camel."),
    ("What is the main ingredient of guacamole?", "Avocado."),
]

FILES = {
    Path("conf/experiment/my_experiment.yaml"): EXPERIMENT,
    Path("conf/source/my_source.yaml"): SOURCE,
    Path("conf/mix/my_mix.yaml"): MIX,
    Path("data/my_data.jsonl"): "".join(json.dumps({"prompt": q, "completion": a}) + "\n" for q, a in FACTS),
}


def init(directory: Path) -> list[Path]:
    """Write the files under `directory`; refuse (writing nothing) if any of them exists."""
    existing = [directory / f for f in FILES if (directory / f).exists()]
    if existing:
        raise FileExistsError(f"{existing[0]} exists: recipe init writes only into a new place (nothing written)")
    written = []
    for relative, text in FILES.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    if argv[:1] in (["--help"], ["-h"]):
        print("usage: recipe init [DIR]\n\n" + __doc__.split("\n\n", 1)[1].strip())
        return 0
    if len(argv) > 1 or (argv and argv[0].startswith("-")):
        print("usage: recipe init [DIR]   (writes DIR/conf/{experiment,source,mix}/ and DIR/data/)", file=sys.stderr)
        return 2
    directory = Path(argv[0]) if argv else Path.cwd()
    try:
        written = init(directory)
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(f"wrote {p}" for p in written))
    where = "" if not argv else f"cd {directory} && "
    print(
        f"\nnext:\n  {where}recipe --config-dir conf experiment=my_experiment dry_run=true\n"
        f"  {where}recipe --config-dir conf experiment=my_experiment 'stages=[mix]'\n"
        f"  {where}recipe --config-dir conf experiment=my_experiment          (the whole offline recipe)"
    )
    return 0
