"""A synthetic long-context task: made-up people's profiles as documents, one holding the answer.

The needle-in-a-haystack family (RULER, "Lost in the Middle"): a question about one person, asked
over `n` documents about `n` different made-up people, the gold one placed first, in the middle,
last, or anywhere. Every sentence of a document names its person and carries one fact (birthplace
and year, work, where they live now, a pet and its name, a trip), so the answer sits among facts of
the same kinds about other people: the model has to find the right person, not the right kind of
fact. Nothing is downloaded; one generator makes both sides of an experiment:

- a source (`kind: synthetic`): training examples, the gold document anywhere (`gold_positions:
  null`) or at given positions, rendered by recipe/data/mqa.py exactly as the Test suite renders
  its prompts, with the gold document's sentence that states the answer as the reply (`reply:
  sentence`, extractive answering: SmolLM2-135M learns it from ~60 examples, 0.92 exact match on
  36 held-out prompts where the bare answer taught it the format but not where to look) or the
  bare answer (`reply: answer`);
- a suite (`kind: synthetic`): Test prompts over the suite's `num_documents` x `gold_positions`
  settings, a fresh question for every prompt (each prompt its own unit), scored like the MQA
  suite, by exact match per setting.

Disjoint by construction: a person's name belongs to one of two halves of the name space (by a
stable hash of the name), `people: train` or `people: test`, and each side draws with its own seed, so
no training example names a tested person (and a source generated with a suite's people and seed is
caught by decontamination, which sees the suite's questions and gold documents). Length grows with
`num_documents` and `document_sentences`: with no extra sentence a document is ~55 tokens of SmolLM2's
tokenizer (which splits the made-up names finely: ~1.3 tokens per approx token), so 3 documents make a
~260-token prompt and 6 a ~490-token one; 200 documents of 6 extra sentences make the seed's ~32K.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from recipe.data import mqa

VERSION = "1"  # bump when the same settings would generate other records: fingerprints follow it

_ONSETS = "b c d f g h j k l m n p r s t v w z br dr st tr".split()
_VOWELS = "a e i o u a e i o u ai ou".split()
_CODAS = ["", "", "", "", "n", "r", "l", "s", "m", "nd"]
_TOWN_ENDS = ["ford", " Bay", "wick", " Hollow", "mere", " Falls", "stead", " Cross", "haven", " Ridge"]
PROFESSIONS = (
    "baker blacksmith botanist cartographer carpenter chemist clockmaker cobbler dentist engineer "
    "farmer geologist glassblower jeweller journalist librarian locksmith mason midwife miller "
    "navigator painter pharmacist photographer pilot potter printer sailor sculptor tailor teacher "
    "translator violinist weaver"
).split()
ANIMALS = "cat dog parrot tortoise goat rabbit hedgehog ferret pony canary".split()
RELATIVES = "brother sister cousin uncle aunt grandmother grandfather niece nephew".split()
HOBBIES = "chess fishing gardening rowing knitting archery pottery cycling birdwatching fencing".split()
WEEKDAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
# What a question asks, and the fact (a key of Person.facts) that answers it.
QUESTIONS = (
    ("Where was {name} born?", "birthplace"),
    ("In which year was {name} born?", "born"),
    ("What does {name} work as?", "work"),
    ("What is the name of the {animal} that {name} keeps?", "pet_name"),
    ("Where does {name} live now?", "home"),
)


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables)).title()


def _half(name: str) -> str:
    """Which half of the name space a name belongs to (stable across processes and machines)."""
    return "train" if zlib.crc32(name.encode()) % 2 == 0 else "test"


@dataclass(frozen=True)
class Person:
    name: str
    facts: dict[str, str]
    sentences: tuple[str, ...]
    stating: dict[str, str]  # fact -> the sentence that states it


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _person(rng: random.Random, people: str, extra_sentences: int, taken: set[str]) -> Person:
    while True:
        name = f"{_word(rng, 2)} {_word(rng, rng.choice((2, 3)))}"
        if _half(name) == people and name not in taken:
            taken.add(name)
            break
    town = lambda: _word(rng, 2) + rng.choice(_TOWN_ENDS)  # noqa: E731
    facts = {
        "birthplace": town(),
        "born": str(rng.randint(1850, 1999)),
        "work": rng.choice(PROFESSIONS),
        "home": town(),
        "animal": rng.choice(ANIMALS),
        "pet_name": _word(rng, 2),
    }
    f = facts
    stating = {
        "birthplace": f"{name} was born in {f['birthplace']} in {f['born']}.",
        "work": f"{name} works as {_article(f['work'])} {f['work']}.",
        "home": f"{name} lives in {f['home']} now.",
        "pet_name": f"{name} keeps {_article(f['animal'])} {f['animal']} called {f['pet_name']}.",
    }
    stating["born"] = stating["birthplace"]
    sentences = list(dict.fromkeys(stating.values()))
    for _ in range(extra_sentences):
        if rng.random() < 0.5:
            sentences.append(f"{name} plays {rng.choice(HOBBIES)} every {rng.choice(WEEKDAYS)}.")
        else:
            sentences.append(f"{name} once visited {town()} with a {rng.choice(RELATIVES)}.")
    rng.shuffle(sentences)
    return Person(name, facts, tuple(sentences), stating)


def _document(person: Person) -> dict[str, Any]:
    return {"title": person.name, "text": " ".join(person.sentences)}


def records(
    seed: int,
    people: str,
    examples: int,
    document_sentences: int,
    num_documents: Sequence[int],
    gold_positions: Sequence[str] | None,
    reply: str = "sentence",
) -> Iterator[dict[str, Any]]:
    """`examples` records in the MQA shape (question, answers, ctxs with the gold one flagged
    `isgold`), the documents in prompt order, plus where the gold one is (`documents`, `gold`) and
    what a training example replies (`reply`: the sentence stating the answer, or the answer).
    Record i has num_documents[i % len] documents and, with `gold_positions`, its gold one at
    gold_positions[(i // len(num_documents)) % len]: settings in turn, as even as `examples` allows;
    without, at a slot drawn uniformly. `document_sentences`: sentences beyond the four facts."""
    if people not in ("train", "test"):
        raise ValueError(f"people={people!r}: train or test")
    if reply not in ("sentence", "answer"):
        raise ValueError(f"reply={reply!r}: sentence or answer")
    rng = random.Random(f"recipe-synthetic/{VERSION}/{seed}/{people}")
    for i in range(examples):
        n = num_documents[i % len(num_documents)]
        taken: set[str] = set()
        profiles = [_person(rng, people, document_sentences, taken) for _ in range(n)]
        if gold_positions:
            position = gold_positions[(i // len(num_documents)) % len(gold_positions)]
            slot = mqa.gold_index(n, position)
        else:
            slot = rng.randrange(n)
            position = next((p for p in mqa.POSITIONS if mqa.gold_index(n, p) == slot), str(slot))
        template, fact = rng.choice(QUESTIONS)
        gold = profiles[slot]
        documents = [_document(p) for p in profiles]
        documents[slot]["isgold"] = True
        yield {
            "question": template.format(name=gold.name, animal=gold.facts["animal"]),
            "answers": [gold.facts[fact]],
            "reply": gold.stating[fact] if reply == "sentence" else gold.facts[fact],
            "ctxs": documents,
            "documents": n,
            "gold": position,
        }
