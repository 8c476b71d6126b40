"""Decontamination: find training examples that contain a Test suite's prompts.

The rule, and where it comes from:
- Text is normalised as the GPT-3 paper's contamination study did (Brown et al. 2020, appendix C;
  the lm-evaluation-harness "janitor" implements it): lower case, punctuation removed, split on
  whitespace. So whitespace, case and punctuation changes do not hide a copy.
- A test prompt of at least `ngram` words (13, GPT-3's N) is found in a training example when the
  example holds at least `threshold` (0.5) of the prompt's distinct 13-grams: the share-of-the-
  benchmark-sample rule of Phi-1 and Cosmopedia's decontamination, which discards a sample when the
  matched part exceeds half the benchmark sample. A test prompt copied inside a longer turn scores 1;
  a turn that shares one sentence with a long prompt scores its small share.
- A shorter prompt (most multi-document QA questions: NQ questions average nine words) has no
  13-gram; like GPT-3, which shortened N for datasets of short examples, we take its whole word
  sequence as its one n-gram: found when it occurs contiguously inside a message. Prompts under
  `min_words` words would match too much by chance ("hi", "thank you"): they are found only when
  a whole message equals them (exact normalised match).

What a suite contributes (per record, all records of the suite, not only the first `max_examples`:
a test run that grows later is still clean): `judge` its instruction (and Alpaca `input`), `booksum`
its text and its reference summary, `mqa` its question (the documents are Wikipedia passages that
every QA training set shares; they are not the test), `synthetic` its question and its gold
document (made-up facts: the document is the test too).

How, fast: words are hashed from their 8-byte pieces (numpy gathers over the normalised UTF-8
bytes), and n-grams with a polynomial over the word hashes computed by prefix sums, so a batch of
examples costs a few vectorised passes. The test side (thousands of prompts) is one sorted array
of n-gram hashes with the prompts behind each, and a bitmap of the words that lead its n-grams: a
place in a training text whose first two words lead none is not hashed further. Hashes are stable
across processes (no Python `hash`). A built index is saved in the store's `indexes/` under what it
is built from (`Decontamination.index_key`) as plain arrays, and later runs read it back (the seed's
suites: 3-5 s to build, a fraction of a second to read).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import string
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from omegaconf import DictConfig, OmegaConf

from recipe.data.sources import iter_records, source_identity
from recipe.errors import RecipeError
from recipe.store import content_digest

log = logging.getLogger(__name__)

T = TypeVar("T")
_Q = np.uint64(0x9E3779B97F4A7C15)  # golden-ratio constant (odd): the word base
_EXACT = np.uint64(0xD6E8FEB86659FD93)  # tags a whole-message hash
_SPACE = 32
# ASCII punctuation and whitespace -> space; other bytes (letters, digits, UTF-8) stay.
_TABLE = bytes(_SPACE if chr(b) in string.punctuation or chr(b).isspace() else b for b in range(256))
_TABLE_NUL = bytes(_SPACE if b == 0 else t for b, t in enumerate(_TABLE))  # also NUL, the batch separator
# Non-ASCII punctuation and symbols -> space (ASCII is the table's: the same for any neighbours).
_UNICODE_PUNCT = re.compile(r"[^\w\s\x00-\x7f]")
BATCH_BYTES = 1 << 18  # text hashed per numpy pass: its arrays stay in cache (1.5x faster than 4 MB)


def _inverse(x: int) -> int:
    return pow(x, -1, 1 << 64)


def _powers(base: np.uint64, n: int) -> np.ndarray:
    out = np.empty(n, dtype=np.uint64)
    if n:
        out[0] = 1
        np.cumprod(np.full(n - 1, base, dtype=np.uint64), out=out[1:])
    return out


class _Powers:
    """base^i and base^-i mod 2^64 for i < n, grown on demand."""

    def __init__(self, base: np.uint64) -> None:
        self.base, self.inv = base, np.uint64(_inverse(int(base)))
        self.up = self.down = np.ones(0, dtype=np.uint64)

    def get(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self.up) < n:
            size = max(n, 2 * len(self.up), 1024)
            self.up, self.down = _powers(self.base, size), _powers(self.inv, size)
        return self.up[:n], self.down[:n]


_WORD_POWERS = _Powers(_Q)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every output bit depends on every input bit."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


_LOW_BYTES = np.array([(1 << (8 * i)) - 1 for i in range(8)] + [(1 << 64) - 1], dtype=np.uint64)


def _word_hashes(text: bytes, begin: np.ndarray, end: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each word text[begin:end], from the word's 8-byte little-endian pieces
    (unaligned loads, the bytes past the word masked off): the first piece, then each next piece
    xor-ed into the mixed state, then mixed. Normalised text holds no zero byte, so a piece with its
    length is one value (no two words of up to 8 bytes share a hash). About 5 ns a word, where
    prefix sums over every byte cost 9."""
    pieces = np.ndarray((len(text),), dtype="<u8", buffer=text + bytes(8), strides=(1,))
    length = end - begin
    hashes = pieces[begin] & _LOW_BYTES[np.minimum(length, 8)]
    longer = np.flatnonzero(length > 8)
    done = 8
    while len(longer):  # words of more than 8 bytes: one round per further piece, on those alone
        rest = length[longer] - done
        hashes[longer] = _mix(hashes[longer]) ^ (pieces[begin[longer] + done] & _LOW_BYTES[np.minimum(rest, 8)])
        longer = longer[rest > 8]
        done += 8
    return _mix(hashes)


def _lowered(text: str) -> bytes:
    """Lower case, non-ASCII punctuation as spaces, in UTF-8 (ASCII punctuation is left to _TABLE)."""
    text = text.lower()
    if not text.isascii():
        text = _UNICODE_PUNCT.sub(" ", text)
    return text.encode("utf-8", "replace")


def normalise(text: str) -> bytes:
    """Lower case, punctuation and whitespace as single spaces' worth of separators (UTF-8)."""
    return _lowered(text).translate(_TABLE)


def normalise_all(messages: Sequence[str]) -> tuple[bytes, np.ndarray]:
    """`normalise` of every message, joined by one space and ending with one, and the offset just
    past each message's space. One pass of each step over the whole batch (NUL between messages
    marks their ends), not one per message; a batch whose text holds NUL itself goes message by
    message."""
    raw = _lowered("\0".join(messages) + "\0")
    ends = np.flatnonzero(np.frombuffer(raw, dtype=np.uint8) == 0) + 1
    if len(ends) == len(messages):
        return raw.translate(_TABLE_NUL), ends
    normalised = [normalise(m) for m in messages]
    return b" ".join(normalised) + b" ", np.cumsum([len(m) + 1 for m in normalised], dtype=np.int64)


@dataclass
class Words:
    """The word hashes of a batch of messages: `hashes[i]` belongs to message `segment[i]`;
    message m's words are hashes[starts[m]:starts[m + 1]]."""

    hashes: np.ndarray
    segment: np.ndarray
    starts: np.ndarray
    prefix: np.ndarray = field(repr=False)  # cumulative word sums for n-gram hashing

    @classmethod
    def of(cls, messages: Sequence[str]) -> Words:
        joined, ends = normalise_all(messages)
        data = np.frombuffer(joined, dtype=np.uint8)
        is_word = data != _SPACE
        edges = np.flatnonzero(is_word[1:] != is_word[:-1]) + 1  # the text ends with a space: pairs
        if is_word[0]:
            edges = np.concatenate(([0], edges))
        begin, end = edges[0::2], edges[1::2]  # each word's byte range
        hashes = _word_hashes(joined, begin, end)
        # Which message each word is in: message m's words are those that begin before its end.
        starts = np.concatenate(([0], np.searchsorted(begin, ends)))
        segment = np.repeat(np.arange(len(messages), dtype=np.int64), np.diff(starts))
        _, wdown = _WORD_POWERS.get(len(hashes) + 1)
        prefix = np.concatenate(([np.uint64(0)], np.cumsum(hashes * wdown[: len(hashes)])))
        return cls(hashes, segment, starts, prefix)

    def grams(self, k: int, leads: Leads | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Hashes of every k-word run inside one message, and the word index each starts at; with
        `leads`, only of the runs whose first words lead some n-gram there (when those are few)."""
        n = len(self.hashes) - k + 1
        if n <= 0:
            return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
        if leads is not None and leads.sparse:
            first = np.flatnonzero(leads.maybe(self.hashes, n, k))
            if 4 * len(first) < n:  # few candidates: a gather each beats hashing every run
                first = first[self.segment[first] == self.segment[first + k - 1]]
                return self.gram_at(first, k), first
        first = np.flatnonzero(self.segment[:n] == self.segment[k - 1 :])  # runs that stay in one message
        # gram_at for one k, on slices rather than gathers: every run's hash, then the ones kept.
        up, _ = _WORD_POWERS.get(len(self.hashes) + 1)
        h = (self.prefix[k : k + n] - self.prefix[:n]) * up[k - 1 : k - 1 + n]
        return _mix(h[first] ^ np.uint64(k)), first

    def gram_at(self, first: np.ndarray, k: np.ndarray | int) -> np.ndarray:
        """The hash of the k[j]-word run starting at word first[j] (caller keeps it inside a message)."""
        up, _ = _WORD_POWERS.get(len(self.hashes) + 1)
        h = (self.prefix[first + k] - self.prefix[first]) * up[first + k - 1]
        return _mix(h ^ np.asarray(k).astype(np.uint64))

    def whole(self) -> tuple[np.ndarray, np.ndarray]:
        """One hash per non-empty message: its whole word sequence (for exact matches)."""
        lo, hi = self.starts[:-1], self.starts[1:]
        keep = np.flatnonzero(hi > lo)
        lo, hi = lo[keep], hi[keep]
        up, _ = _WORD_POWERS.get(len(self.hashes) + 1)
        h = (self.prefix[hi] - self.prefix[lo]) * up[hi - 1]
        return _mix(h ^ (hi - lo).astype(np.uint64) ^ _EXACT), keep


def suite_texts(suite: DictConfig, key: str) -> Iterator[tuple[int, list[str]]]:
    """(record index, the texts that must not be trained on) for every record of a Test suite."""
    kind = suite.kind.value
    for index, (record, _) in enumerate(iter_records(key, suite)):
        if kind == "judge":
            texts = [record.get(suite.instruction_field), record.get("input")]
        elif kind == "booksum":
            texts = [record.get(suite.text_field), record.get(suite.summary_field)]
        elif kind == "synthetic":  # made-up facts: the gold document is the test as much as the question
            gold = next((c for c in record["ctxs"] if c.get("isgold")), {})
            texts = [record.get("question"), gold.get("text")]
        else:
            texts = [record.get("question")]
        yield index, [t for t in texts if isinstance(t, str) and t.strip()]


def identity_fields(kind: str) -> list[str]:
    """The suite keys (beyond its data: kind, hub_id, revision, data_files, split) that decide
    which texts are checked; max_tokens, max_examples and the like do not."""
    return {"judge": ["instruction_field"], "booksum": ["text_field", "summary_field"]}.get(kind, [])


def suite_identity(suite: DictConfig, key: str) -> dict[str, Any]:
    """What a suite's prompts are made of, for fingerprints (data by content, and the fields read)."""
    identity = source_identity(key, suite)
    identity["fields"] = [suite[f] for f in identity_fields(suite.kind.value)]
    return identity


def suites_key(config: DictConfig, key: str) -> str:
    """Where the checked suites are configured, for error messages: `test.suites` by default."""
    return "test.suites" if OmegaConf.is_interpolation(config, "against") else f"{key}.against"


def identity(config: DictConfig | None, key: str) -> dict[str, Any] | None:
    """A stage's decontamination settings and every checked suite's data identity, for its
    fingerprint (None when off). Names not among the suites are the stage's error to report."""
    if config is None or not config.enabled:
        return None
    names = list(config.against) if config.suites is None else list(config.suites)
    return {
        "action": config.action.value,
        "ngram": config.ngram,
        "threshold": config.threshold,
        "min_words": config.min_words,
        "suites": {
            n: suite_identity(config.against[n], f"{suites_key(config, key)}.{n}") if n in config.against else None
            for n in names
        },
    }


def _lead(hashes: np.ndarray, n: int, k: int) -> np.ndarray:
    """A hash of the first two words (one when k is 1) of the k-word runs starting at words 0..n-1."""
    return hashes[:n] if k == 1 else hashes[:n] * _Q + hashes[1 : n + 1]


def _lead_at(hashes: np.ndarray, first: np.ndarray, k: int) -> np.ndarray:
    """`_lead` of the k-word runs starting at words `first`."""
    return hashes[first] if k == 1 else hashes[first] * _Q + hashes[first + 1]


class Leads:
    """Which first words (two, or one for 1-grams) start a table's n-grams, as a bitmap on their
    hash's top bits: no false negatives, about 1/64 false positives. A training text whose two
    words at a place lead no n-gram of the test side needs no n-gram hash there: with a few
    hundred test prompts, that skips nearly every place."""

    MAX_BITS = 22  # 4 MB at most: a larger test side fills it, and grams() then hashes every run

    def __init__(self, bitmap: np.ndarray) -> None:
        self.bitmap = bitmap
        self.shift = np.uint64(64 - (len(bitmap).bit_length() - 1))
        self.sparse = np.count_nonzero(bitmap) * 8 < len(bitmap)  # else it would rule out little

    @classmethod
    def of(cls, leads: np.ndarray) -> Leads:
        """The bitmap of these lead hashes."""
        bits = min(cls.MAX_BITS, max(12, (64 * len(leads)).bit_length()))
        bitmap = np.zeros(1 << bits, dtype=bool)
        bitmap[(leads >> np.uint64(64 - bits)).astype(np.intp)] = True
        return cls(bitmap)

    def maybe(self, hashes: np.ndarray, n: int, k: int) -> np.ndarray:
        """For each of the n k-word runs of `hashes`: may it be one of the n-grams?"""
        return self.bitmap[(_lead(hashes, n, k) >> self.shift).astype(np.intp)]


class Table:
    """Sorted hashes -> the test parts behind each, with two direct-mapped presence filters (low
    and high hash bits, 8-16 slots per key): two memory accesses rule out nearly every training
    n-gram before the binary search (~20 cache misses)."""

    def __init__(self, keys: np.ndarray, offsets: np.ndarray, owners: np.ndarray) -> None:
        """`keys` sorted and distinct; key i's parts are owners[offsets[i]:offsets[i + 1]]."""
        self.keys, self.offsets, self.owners = keys, offsets, owners
        size = 1 << max(10, int(8 * len(self.keys)).bit_length())
        self.mask = np.uint64(size - 1)
        self.filters = (np.zeros(size, dtype=bool), np.zeros(size, dtype=bool))
        for table, slot in zip(self.filters, self._slots(self.keys), strict=True):
            table[slot] = True

    @classmethod
    def of(cls, hashes: np.ndarray, owners: np.ndarray) -> Table:
        """The table of these (hash, part) pairs, in any order, repeats included."""
        order = np.lexsort((owners, hashes))
        hashes, owners = hashes[order], owners[order]
        once = np.ones(len(hashes), dtype=bool)  # each (hash, part) once: a prompt may repeat an n-gram
        once[1:] = (hashes[1:] != hashes[:-1]) | (owners[1:] != owners[:-1])
        hashes, owners = hashes[once], owners[once]
        # Sorted already: each key's first place is where the hash changes (np.unique would sort again).
        first = np.flatnonzero(np.concatenate(([True], hashes[1:] != hashes[:-1]))) if len(hashes) else np.zeros(0, int)
        return cls(hashes[first], np.append(first, len(hashes)).astype(np.int64), owners)

    def _slots(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (hashes & self.mask).astype(np.int64), ((hashes >> np.uint64(32)) & self.mask).astype(np.int64)

    def lookup(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(index into `hashes`, part) for every part behind every hash found."""
        if not len(self.keys) or not len(hashes):
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        low, high = self._slots(hashes)
        maybe = self.filters[0][low]
        maybe[maybe] = self.filters[1][high[maybe]]
        where = np.flatnonzero(maybe)
        pos = np.searchsorted(self.keys, hashes[where])
        pos[pos == len(self.keys)] = 0
        hit = self.keys[pos] == hashes[where]
        where, pos = where[hit], pos[hit]
        lo, counts = self.offsets[pos], self.offsets[pos + 1] - self.offsets[pos]
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return np.repeat(where, counts), self.owners[np.repeat(lo, counts) + within]


BUILD_BYTES = 1 << 22  # test text hashed per numpy pass while building the index


class _BuildParts:
    """Index.build's arrays, batch by batch: per table the n-gram hashes and the part behind each,
    and per part whether it is long, its short length and whole hash, in part order."""

    def __init__(self) -> None:
        self.arrays: dict[str, list[np.ndarray]] = {}

    def _put(self, key: str, value: np.ndarray) -> None:
        self.arrays.setdefault(key, []).append(value)

    def joined(self, key: str, dtype: type) -> np.ndarray:
        pieces = self.arrays.get(key)
        return np.concatenate(pieces).astype(dtype) if pieces else np.zeros(0, dtype=dtype)

    def table(self, kind: str) -> Table:
        return Table.of(self.joined(f"{kind}_keys", np.uint64), self.joined(f"{kind}_owners", np.int64))

    def add(
        self, words: Words, owners: list[tuple[str, int]], parts: list[tuple[str, int]], ngram: int, min_words: int
    ) -> None:
        """One batch of texts (`owners`: the suite record of each): every non-empty one becomes a
        part (numbered on from len(parts)), long (>= ngram words), short (>= min_words) or tiny."""
        n = np.diff(words.starts)  # words of each text
        texts = np.flatnonzero(n > 0)
        part_of = np.full(len(n), -1, dtype=np.int64)
        part_of[texts] = len(parts) + np.arange(len(texts))
        parts.extend(owners[t] for t in texts.tolist())
        long, short, tiny = (n >= ngram), (n >= min_words) & (n < ngram), (n > 0) & (n < min_words)
        # Long: every n-gram (each run of `ngram` words inside one text is in a long one); the
        # table keeps each (n-gram, part) once, and counts them per part.
        hashes, first = words.grams(ngram)
        self._put("long_keys", hashes)
        self._put("long_owners", part_of[words.segment[first]])
        self._put("long_leads", _lead_at(words.hashes, first, ngram))
        self._put("is_long", long[texts])
        # Short: the first `min_words` words (looked up), and the whole text (checked at a hit).
        lead = words.starts[:-1][short]
        self._put("short_keys", words.gram_at(lead, min_words))
        self._put("short_owners", part_of[short])
        self._put("short_leads", _lead_at(words.hashes, lead, min_words))
        self._put("short_length", np.where(short, n, 0)[texts])
        whole = np.zeros(len(n), dtype=np.uint64)
        whole[short] = words.gram_at(lead, n[short])
        self._put("short_hash", whole[texts])
        # Tiny: the whole text, found as a whole message.
        whole_hashes, nonempty = words.whole()
        keep = tiny[nonempty]
        self._put("tiny_keys", whole_hashes[keep])
        self._put("tiny_owners", part_of[nonempty[keep]])


@dataclass
class Index:
    """The test side, in three tables: the distinct n-grams of long prompts (found by the share of
    them an example holds), the first `min_words` words of short prompts (a hit is then checked
    against the whole prompt at that place), and the whole text of tiny prompts (found as a whole
    message)."""

    ngram: int
    threshold: float
    min_words: int
    parts: list[tuple[str, int]]  # part -> (suite, record index)
    part_grams: np.ndarray  # long parts: distinct n-grams; others 1
    long: Table
    short: Table
    short_length: np.ndarray  # short part -> its words
    short_hash: np.ndarray  # short part -> the hash of all its words
    tiny: Table
    records: dict[str, int]  # suite -> records
    long_leads: Leads  # the first words of the long and short tables' n-grams
    short_leads: Leads

    @classmethod
    def build(
        cls, suites: dict[str, Iterable[tuple[int, list[str]]]], ngram: int, threshold: float, min_words: int
    ) -> Index:
        """Each non-empty text of each suite record is one part. Texts are hashed in batches of
        about BUILD_BYTES (the seed's suites: 1,431 BookSum chapters, 7.7M distinct 13-grams)."""
        parts: list[tuple[str, int]] = []
        acc = _BuildParts()
        records: dict[str, int] = {}
        for name, texts in suites.items():
            records[name] = 0
            batch: list[str] = []
            owners: list[tuple[str, int]] = []
            size = 0
            for index, part_texts in texts:
                records[name] = index + 1
                for text in part_texts:
                    batch.append(text)
                    owners.append((name, index))
                    size += len(text)
                if size >= BUILD_BYTES:
                    acc.add(Words.of(batch), owners, parts, ngram, min_words)
                    batch, owners, size = [], [], 0
            if batch:
                acc.add(Words.of(batch), owners, parts, ngram, min_words)
        long = acc.table("long")
        grams = np.ones(len(parts), dtype=np.int64)  # per part: distinct n-grams (long), else 1
        is_long = acc.joined("is_long", np.bool_)
        grams[is_long] = np.bincount(long.owners, minlength=len(parts))[is_long]
        return cls(
            ngram,
            threshold,
            min_words,
            parts,
            grams,
            long,
            acc.table("short"),
            acc.joined("short_length", np.int64),
            acc.joined("short_hash", np.uint64),
            acc.table("tiny"),
            records,
            Leads.of(acc.joined("long_leads", np.uint64)),
            Leads.of(acc.joined("short_leads", np.uint64)),
        )

    def save(self, path: Path, key: str | None = None) -> None:
        """Write the index to `path` as one uncompressed .npz of plain arrays (no pickles: a file
        read back is data, never code), atomically: a temporary file beside it, then renamed.
        `key`: what it was built from (Decontaminator.index_key), checked when it is read back."""
        meta = {
            "format": INDEX_FORMAT,
            "key": key,
            "ngram": self.ngram,
            "threshold": self.threshold,
            "min_words": self.min_words,
            "parts": self.parts,
            "records": self.records,
        }
        arrays = {
            "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            "probe": _probe(),
            "part_grams": self.part_grams,
            "short_length": self.short_length,
            "short_hash": self.short_hash,
            "long_leads": self.long_leads.bitmap,
            "short_leads": self.short_leads.bitmap,
        }
        for name, table in (("long", self.long), ("short", self.short), ("tiny", self.tiny)):
            arrays.update(
                {f"{name}_keys": table.keys, f"{name}_offsets": table.offsets, f"{name}_owners": table.owners}
            )
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)  # type: ignore[arg-type]
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path, key: str | None = None) -> Index:
        """An index written by `save`. Raises IndexFileError when the file is not one this code
        wrote: damaged, with an array header that claims more than the file holds (checked before
        anything is allocated), of another format, hashed differently (its probe: word and n-gram
        hashes of a fixed text, as the code that wrote it computed them), or (`key`) built from
        other suites or settings than the ones asked for."""
        try:
            _check_headers(path)
            with np.load(path, allow_pickle=False) as f:
                arrays = {key: f[key] for key in f.files}
            meta = json.loads(arrays.pop("meta").tobytes())
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
            raise IndexFileError(f"{path}: not a readable index ({type(e).__name__}: {e})") from None
        if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
            raise IndexFileError(f"{path}: written in another format")
        if key is not None and meta.get("key") != key:
            raise IndexFileError(f"{path}: built from other suites or settings than its name says ({meta.get('key')})")
        if not np.array_equal(arrays.pop("probe"), _probe()):  # other shapes are unequal too
            raise IndexFileError(f"{path}: hashed by other code than this (its probe differs)")
        try:
            tables = {
                name: Table(arrays[f"{name}_keys"], arrays[f"{name}_offsets"], arrays[f"{name}_owners"])
                for name in ("long", "short", "tiny")
            }
            return cls(
                meta["ngram"],
                meta["threshold"],
                meta["min_words"],
                [(suite, index) for suite, index in meta["parts"]],
                arrays["part_grams"],
                tables["long"],
                tables["short"],
                arrays["short_length"],
                arrays["short_hash"],
                tables["tiny"],
                meta["records"],
                Leads(arrays["long_leads"]),
                Leads(arrays["short_leads"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise IndexFileError(f"{path}: an incomplete index ({type(e).__name__}: {e})") from None

    def scan(self, examples: Sequence[Sequence[str]]) -> list[list[tuple[str, int]]]:
        """For each example (its messages' texts), the test records (suite, index) it contains."""
        found: list[list[tuple[str, int]]] = [[] for _ in examples]
        messages = list(chain.from_iterable(examples))
        if not self.parts or not messages:
            return found
        # Batches of about BATCH_BYTES of whole examples, cut with numpy rather than a loop per example.
        owner = np.repeat(np.arange(len(examples)), np.fromiter(map(len, examples), np.int64, len(examples)))
        ends = np.cumsum(np.fromiter(map(len, messages), np.int64, len(messages)))  # text before each message's end
        last = np.flatnonzero(np.append(owner[1:] != owner[:-1], True))  # each example's last message
        cuts = np.unique(np.searchsorted(ends[last], np.arange(BATCH_BYTES, int(ends[-1]) + 1, BATCH_BYTES)))
        start = 0
        for cut in [*(last[cuts[cuts < len(last)]] + 1).tolist(), len(messages)]:
            if cut > start:
                self._scan_batch(messages[start:cut], owner[start:cut], found)
                start = cut
        return found

    def _scan_batch(
        self, messages: list[str], example_of_message: np.ndarray, found: list[list[tuple[str, int]]]
    ) -> None:
        words = Words.of(messages)
        example_of_word = example_of_message[words.segment]
        hits: list[tuple[np.ndarray, np.ndarray]] = []  # (example, part) of every part found
        # Long prompts: distinct (example, n-gram) hits per part against the part's n-grams.
        hashes, first = words.grams(self.ngram, self.long_leads)
        at, part = self.long.lookup(hashes)
        if len(at):
            example = example_of_word[first[at]]
            pairs = np.unique(np.stack([example, hashes[at].view(np.int64), part], axis=1), axis=0)
            pair, matched = np.unique(pairs[:, 0] * len(self.parts) + pairs[:, 2], return_counts=True)
            pair_part = pair % len(self.parts)
            dirty = matched >= self.threshold * self.part_grams[pair_part]
            hits.append((pair[dirty] // len(self.parts), pair_part[dirty]))
        # Short prompts: where their first words occur, the whole prompt, inside one message.
        hashes, first = words.grams(self.min_words, self.short_leads)
        at, part = self.short.lookup(hashes)
        if len(at):
            start, k = first[at], self.short_length[part]
            inside = start + k <= len(words.hashes)
            start, k, part = start[inside], k[inside], part[inside]
            inside = words.segment[start] == words.segment[start + k - 1]
            start, k, part = start[inside], k[inside], part[inside]
            same = words.gram_at(start, k) == self.short_hash[part]
            hits.append((example_of_word[start[same]], part[same]))
        # Tiny prompts: a whole message.
        hashes, message = words.whole()
        at, part = self.tiny.lookup(hashes)
        if len(at):
            hits.append((example_of_message[message[at]], part))
        for example, part in hits:
            for e, p in zip(example.tolist(), part.tolist(), strict=True):
                record = self.parts[p]
                if record not in found[e]:
                    found[e].append(record)


INDEX_FORMAT = 1  # what Index.save writes; a change in how text is hashed shows in the probe instead
_PROBE_TEXTS = [
    "Index files are read back only when this text hashes as it did when they were written: \u00e9t\u00e9!",
    "a b",
]


def _probe() -> np.ndarray:
    """Word, n-gram and whole-message hashes of a fixed text, saved with an index: an index
    hashed by other code (a changed hash function) is rebuilt, never scanned with wrong hashes."""
    words = Words.of(_PROBE_TEXTS)
    return np.concatenate([words.hashes, words.grams(2)[0], words.grams(13)[0], words.whole()[0]])


class IndexFileError(RecipeError):
    """A saved index that cannot be used: it is built again."""


def _check_headers(path: Path) -> None:
    """Every array of an .npz holds the bytes its header claims (shape x item size), read from the
    headers alone: a file claiming 10^11 elements is refused before numpy allocates them."""
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(member)
                claimed = math.prod(shape) * dtype.itemsize
                held = info.file_size - member.tell()
                if claimed != held:
                    raise ValueError(f"{info.filename} claims {claimed} bytes and holds {held}")


SHOWN = 5  # example ids kept per suite in manifests and errors


class ContaminationError(RecipeError):
    """Bad decontamination settings, or contamination found with `action: fail`."""


class Decontamination:
    """One stage's decontamination settings (`mix.decontaminate`, `distill.decontaminate`): which
    suites, their identity for fingerprints, the index, and what was found."""

    def __init__(self, config: DictConfig, key: str, cache_dir: Path | None = None) -> None:
        self.config, self.key = config, key
        self.action = config.action.value
        against = config.against
        names = list(against) if config.suites is None else list(config.suites)
        unknown = [n for n in names if n not in against]
        if unknown:
            raise ContaminationError(
                f"{key}.suites: {', '.join(unknown)} not among the Test suites ({', '.join(against) or 'none'})"
            )
        if config.ngram < 1 or config.min_words < 1:
            raise ContaminationError(f"{key}.ngram and {key}.min_words must be at least 1")
        if not 0 < config.threshold <= 1:
            raise ContaminationError(f"{key}.threshold={config.threshold}: must be in (0, 1]")
        self.names = names
        self._index: Index | None = None
        # Where built indexes are kept (the store's indexes/, given by the stage that runs): one build
        # serves every later run and every job of a sweep that checks against the same suites.
        self.cache_dir = cache_dir
        self._cached: Path | None = None  # the cache file the index was read from or saved to
        # suite -> test record -> example ids (training side), by what happened to the example
        self.found: dict[str, dict[str, set[int]]] = {n: {"kept": set(), "dropped": set()} for n in names}
        self.examples: dict[str, dict[str, list[str]]] = {n: {"kept": [], "dropped": []} for n in names}
        self.checked = 0

    def for_run(self, cache_dir: Path) -> Decontamination:
        """This one's settings with nothing found yet and its index kept under `cache_dir`: what a
        stage's run checks with (the stage itself keeps only the settings)."""
        return Decontamination(self.config, self.key, cache_dir)

    def _suite_key(self, name: str) -> str:
        return f"{suites_key(self.config, self.key)}.{name}"

    def describe(self) -> str:
        if not self.names:
            return "no Test suite to decontaminate against"
        suites = ", ".join(f"{n} ({self.config.against[n].kind.value})" for n in self.names)
        c = self.config
        return f"decontaminate against {suites}: {c.ngram}-grams, threshold {c.threshold:g}, action {self.action}"

    @property
    def index(self) -> Index:
        if self._index is None:
            self._index = self._build() if self.cache_dir is None else self._from_cache(self.cache_dir)
        return self._index

    def _build(self) -> Index:
        texts = {n: suite_texts(self.config.against[n], self._suite_key(n)) for n in self.names}
        c = self.config
        return Index.build(texts, c.ngram, c.threshold, c.min_words)

    def index_key(self) -> str:
        """What the index is built from: the settings it uses and each checked suite's data identity
        (local files by content; a hub suite by id, revision and files, as fingerprints take it)."""
        c = self.config
        suites = {n: suite_identity(c.against[n], self._suite_key(n)) for n in self.names}
        return content_digest(
            {"ngram": c.ngram, "threshold": c.threshold, "min_words": c.min_words, "suites": suites}, 32
        )

    def _from_cache(self, directory: Path) -> Index:
        """The index saved under its key, or built and saved there. A file that cannot be used
        (damaged, another format, other hashing) is built again and replaced; a cache that cannot be
        written costs the next run a build, nothing else."""
        key = self.index_key()
        path = directory / f"{key}.npz"
        if path.is_file():
            try:
                index = Index.load(path, key)
                self._cached = path
                log.info("%s: decontamination index read from %s", self.key, path)
                return index
            except IndexFileError as e:
                log.warning("%s: %s; building it again", self.key, e)
        started = time.monotonic()
        index = self._build()
        try:
            directory.mkdir(parents=True, exist_ok=True)
            index.save(path, key)
            self._cached = path
            log.info(
                "%s: decontamination index built in %.1f s, saved to %s", self.key, time.monotonic() - started, path
            )
        except OSError as e:
            log.warning(
                "%s: the decontamination index could not be saved to %s (%s); the next run builds it again",
                self.key,
                path,
                e,
            )
        return index

    def write_index(self, path: Path) -> None:
        """The index as a file at `path` for worker processes (`Index.load`): a hard link to the
        cached file when there is one (it stays readable if the cache is cleared meanwhile), else saved."""
        index = self.index
        if self._cached is not None:
            try:
                os.link(self._cached, path)
                return
            except OSError:
                pass  # another filesystem, or the cache file went: save a copy
        index.save(path)

    def scan(self, examples: Sequence[Sequence[str]]) -> list[list[tuple[str, int]]]:
        self.checked += len(examples)
        return self.index.scan(examples) if self.names else [[] for _ in examples]

    def note(self, example_id: str, records: list[tuple[str, int]], dropped: bool) -> None:
        """Record one contaminated example and what was done with it."""
        fate = "dropped" if dropped else "kept"
        for suite in {s for s, _ in records}:
            self.examples[suite][fate].append(example_id)
        for suite, record in records:
            self.found[suite][fate].add(record)

    def record(
        self, found: dict[int, list[tuple[str, int]]], name: Callable[[int], str], kept: set[int]
    ) -> dict[str, Any]:
        """Note `found` (example -> test records), examples outside `kept` as dropped; raise for
        `fail`; the manifest."""
        for example in sorted(found):
            self.note(name(example), found[example], dropped=example not in kept)
        self.fail_if_found()
        return self.manifest()

    def fail_if_found(self) -> None:
        if self.action != "fail":
            return
        hits = {n: ex["kept"] for n, ex in self.examples.items() if ex["kept"]}
        if hits:
            detail = "; ".join(
                f"suite {n!r}: {len(ids)} example(s), e.g. {', '.join(ids[:SHOWN])}" for n, ids in hits.items()
            )
            raise ContaminationError(
                f"{self.key}.action=fail: training examples contain Test prompts: {detail} (set {self.key}.action="
                "drop to leave them out, or report to keep them and only count)"
            )

    def manifest(self) -> dict[str, Any]:
        """Per suite: test records and training examples found, and what was done (for the manifest,
        the Test report and run.json)."""
        settings = identity(self.config, self.key) or {"suites": {}}
        suites = {}
        for n in self.names:
            kept, dropped = self.found[n]["kept"], self.found[n]["dropped"]
            suites[n] = {
                "records": self.index.records.get(n, 0) if self.names else 0,
                "found_in_training": sorted(kept),  # test record indices still in the training data
                "found_and_dropped": sorted(dropped - kept),
                "examples_kept": len(self.examples[n]["kept"]),
                "examples_dropped": len(self.examples[n]["dropped"]),
                "example_ids": (self.examples[n]["kept"] + self.examples[n]["dropped"])[:SHOWN],
                "identity": settings["suites"][n],
            }
        return {**settings, "checked_examples": self.checked, "suites": suites}

    def filter(self, items: list[T], texts: Callable[[T], list[str]], name: Callable[[T], str]) -> list[T]:
        """Check `items` (each one example); note what is found; `drop` returns the clean ones,
        `report` all of them, `fail` raises when any is contaminated."""
        found = self.scan([texts(item) for item in items])
        kept = []
        for item, records in zip(items, found, strict=True):
            dropped = bool(records) and self.action == "drop"
            if records:
                self.note(name(item), records, dropped)
            if not dropped:
                kept.append(item)
        self.fail_if_found()
        return kept

    def counts(self) -> dict[str, dict[str, int]]:
        """Per suite: contaminated examples left in the training data and dropped (for run.json)."""
        return {
            n: {"examples_in_training": len(ex["kept"]), "examples_dropped": len(ex["dropped"])}
            for n, ex in self.examples.items()
        }
