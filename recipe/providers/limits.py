"""Rate control per (base URL, key, model), shared by every sender on the machine that sends to the
same key and model (the threads of a stage, other stages, other processes): nobody sets a
concurrency.

What it reads, and where each meaning comes from:
- `Retry-After` / `retry-after-ms` on a 429 or 503 (RFC 9110 §10.2.3; `retry-after-ms` as the
  official Together and OpenAI SDKs read it): no request to that key and model before it passes.
- Together's `x-ratelimit-limit`, `x-ratelimit-remaining`, `x-ratelimit-reset` (Together's
  "Rate limits" article, shared/FACTS.md): requests permitted in the current window, left in it,
  and seconds until it resets.
- OpenAI's `x-ratelimit-limit-requests|tokens`, `x-ratelimit-remaining-requests|tokens`,
  `x-ratelimit-reset-requests|tokens` (OpenAI's "Rate limits" guide; resets written as `1s`,
  `6m0s`, `20ms`), read the same way, the token side priced with each request's token estimate.
Where a window is reported, the send rate is capped at 0.98 of its limit per minute (both
providers' limits are per minute; `reset` is the time until the window refills, so OpenAI's
example of 1 of 5,000 RPM used, reset `12ms`, caps at 81.7/s, not 5,000/s), and nothing is sent
while a window has nothing left, until it refills.

Where no header comes, the limit is found by feedback, as TCP finds a path's capacity: the send
rate starts low and doubles every round trip while answers come back clean (slow start,
Jacobson, "Congestion Avoidance and Control", 1988); a 429/503 sets it to 0.85 of the rate that
was refused, from where it climbs back half the gap per round trip and, past that rate, probes by
one more request per round trip (the shape of CUBIC: a provider's limit is a rate, not a queue,
and is found again within a few round trips).
Round trips that rise to twice their long-run mean count as congestion too (a server queueing
requests before it refuses them; a gradient of moving means, so answers of different lengths
average out). A ceiling (`requests_per_minute`, `tokens_per_minute`) stays for
people who want one.

Shared state: a small JSON file per key and model beside the request cache (`<cache dir>/limits/`),
read and written under `fcntl.flock`: the learned rate, the threshold, the earliest time the next
request may go (every process takes the next slot from it, so together they send at one rate),
and a pause until a Retry-After has passed. Nothing in it is a claim by a process: a process that
dies leaves times that pass by themselves. The file never holds the key (its name is a digest).
Every field is checked when read (a wrong type, NaN, a time further ahead than any wait we write:
its default), and a file that cannot be written leaves this process pacing itself, said once.

Waits are bounded and said: a Retry-After or a window's reset is honoured up to MAX_WAIT_S (60 s,
as the official SDKs cap it; a longer one is said, and the request asks again after 60 s), a
header value no provider sends (a reset beyond a day, NaN) is ignored and never stored, and a wait
longer than a few seconds is printed with its reason and end. A run that stops (Ctrl-C, SIGTERM)
sets `stop`: every sender waiting for its slot raises Stopped at once.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import sys
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from requests.structures import CaseInsensitiveDict

ADAPTIVE_IN_FLIGHT = 128  # requests a stage may have in flight when nobody set a concurrency (paced below)
START_RPS = 10.0  # the first guess (a free tier's 60 RPM is 1/s: its first 429s and headers correct it within a second)
MIN_RPS = 0.2
MAX_RPS = 1000.0
FLUSH_S = 0.05  # answers are folded into the shared state at most this often
SLOTS_S = 0.02  # slots reserved at once from the shared schedule: this long at the current rate
CATCH_UP_S = 0.05  # lateness of a waking sender that the next slots make up
MAX_WAIT_S = 60.0  # the longest wait honoured: a Retry-After, a window's reset, a pause in the state file
LIMIT_WINDOW_S = 60.0  # the window a reported limit counts over: per minute (OpenAI's RPM/TPM, Together's RPM)
MAX_SANE_RESET_S = 24 * 3600.0  # a reset further away than a day is not read
MAX_SANE_LIMIT = 1e9  # nor a limit beyond a billion a minute
SAY_WAIT_S = 3.0  # a wait longer than this is said on stderr: why and until when
BACKOFF = 0.85  # the share of the rate kept after a 429/503 or a queueing signal
HEADROOM = 0.98  # of a reported limit, sent at
PLATEAU = 0.97  # from here to the refused rate, growth slows to 0.5 % of it per round trip
LATENCY_CONGESTION = 2.0  # recent round trips this many times their long-run mean: the server is queueing
LATENCY_WARMUP = 30  # answers before round trips are judged


def _seconds(text: str | None) -> float | None:
    """`12`, `0.5`, `1s`, `6m0s`, `20ms`, `1h2m` as seconds; None when unreadable."""
    if text is None:
        return None
    text = str(text).strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)


def _number(text: str | None) -> float | None:
    """A finite number, or None (unreadable, NaN or infinite: never believed, never stored)."""
    try:
        value = None if text is None else float(text)
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


@dataclass(frozen=True)
class Window:
    """One limit a provider reported: its size, what is left, seconds until it resets."""

    limit: float
    remaining: float
    reset_s: float  # seconds until the window refills (not its length)


def _insensitive(headers: Mapping[str, str]) -> Mapping[str, str]:
    return headers if isinstance(headers, CaseInsensitiveDict) else CaseInsensitiveDict(headers)


def windows(headers: Mapping[str, str]) -> dict[str, Window]:
    """The request (`requests`) and token (`tokens`) windows the headers report."""
    h = _insensitive(headers)
    if not any(k in h for k in ("x-ratelimit-limit", "x-ratelimit-limit-requests", "x-ratelimit-limit-tokens")):
        return {}
    found = {}
    for kind, suffix in (("requests", "-requests"), ("requests", ""), ("tokens", "-tokens")):
        limit = _number(h.get(f"x-ratelimit-limit{suffix}"))
        remaining = _number(h.get(f"x-ratelimit-remaining{suffix}"))
        reset = _seconds(h.get(f"x-ratelimit-reset{suffix}"))
        if reset is not None and not 0 <= reset <= MAX_SANE_RESET_S:
            reset = None  # `1e9` seconds is no window anybody has: ignored, never stored
        sane = limit is not None and remaining is not None and 0 < limit <= MAX_SANE_LIMIT and 0 <= remaining <= limit
        if kind not in found and sane:
            found[kind] = Window(limit, remaining, reset if reset is not None else LIMIT_WINDOW_S)  # type: ignore[arg-type]
    return found


def asked_wait(headers: Mapping[str, str]) -> float | None:
    """The wait a 429/503 asks for, in seconds, as sent (`retry-after-ms`, else `Retry-After`)."""
    h = _insensitive(headers)
    ms = _number(h.get("retry-after-ms"))
    if ms is not None:
        return max(ms / 1000, 0.0)
    seconds = _number(h.get("retry-after"))
    return None if seconds is None else max(seconds, 0.0)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The wait honoured: as asked, at most MAX_WAIT_S (as the official SDKs cap it)."""
    asked = asked_wait(headers)
    return None if asked is None else min(asked, MAX_WAIT_S)


class Stopped(Exception):
    """The run is stopping (a signal): a sender waiting for its slot gives up at once."""


def say(text: str) -> None:
    """One line on stderr about a wait (the progress bar's line is stdout's)."""
    print(f"rate limit: {text}", file=sys.stderr, flush=True)


@dataclass
class Stats:
    """What a stage's manifest records of its sending."""

    sent: int = 0
    throttled: int = 0  # answers 429 or 503
    wait_s: float = 0.0  # time requests spent waiting for their slot
    max_in_flight: int = 0
    max_rps: float = 0.0  # the highest send rate the controller allowed
    started: float = field(default_factory=time.monotonic)

    def record(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return {
            "requests": self.sent,
            "throttled_429_503": self.throttled,
            "wait_s": round(self.wait_s, 2),
            "concurrency_reached": self.max_in_flight,
            "rate_reached_rps": round(self.max_rps, 2),
            "mean_rps": round(self.sent / elapsed, 2),
        }


STATE_DEFAULTS: dict[str, float | None] = {
    "rps": START_RPS,
    "threshold": None,
    "next": 0.0,
    "paused_until": 0.0,
    "cap_rps": None,
    "last_decrease": 0.0,
    "last_max": 0.0,
    "clean": 0,  # answers served since the last decrease
}


def checked_state(raw: Any, now: float) -> dict[str, Any]:
    """The shared state as read, every field checked: a wrong type, NaN, a rate out of range or a
    time more than MAX_WAIT_S ahead (no wait we write is longer) is replaced by its default, so a
    damaged or forged file can neither crash a run nor stall it."""
    raw = raw if isinstance(raw, dict) else {}
    state: dict[str, Any] = {}
    for key, default in STATE_DEFAULTS.items():
        value = raw.get(key, default)
        ok = value is None or (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value))
        if ok and value is not None:
            if key in ("rps", "threshold", "cap_rps", "last_max"):
                ok = (key == "last_max" and value == 0) or MIN_RPS / 2 <= value <= MAX_RPS
            elif key in ("next", "paused_until"):
                ok = value <= now + MAX_WAIT_S + 1
            elif key == "clean":
                ok = value >= 0
            else:  # last_decrease
                ok = value <= now + 1
        if value is None and key in ("rps", "next", "paused_until", "last_decrease", "last_max", "clean"):
            ok = False
        state[key] = value if ok else default
    return state


_LIVE: weakref.WeakSet[Controller] = weakref.WeakSet()


def stop_all() -> None:
    """The run is stopping: every controller's waiting senders raise Stopped at once (a stage calls
    this when a signal or an error unwinds it, before it waits for its threads)."""
    for controller in list(_LIVE):
        controller.stop.set()


class Controller:
    """Paces requests to one key and model (see the module docstring). Thread-safe; shared with
    other processes through `state_dir`."""

    def __init__(
        self,
        state_dir: Path,
        identity: str,
        *,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
    ) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(identity.encode()).hexdigest()[:20]
        self.path = state_dir / f"{digest}.json"
        self.lock_path = state_dir / f"{digest}.lock"
        self.ceiling_rps = requests_per_minute / 60 if requests_per_minute else MAX_RPS
        self.tokens_per_s = tokens_per_minute / 60 if tokens_per_minute else None
        self.stats = Stats()
        self._lock = threading.Lock()
        self._waiting = threading.Lock()  # the one thread of this controller reserving slots
        self._slots: collections.deque[tuple[float, float]] = collections.deque()  # reserved: (time, rate)
        self._in_flight = 0
        self._short: float | None = None  # round trips: a short and a long moving mean
        self._long: float | None = None
        self._answers = 0
        self._pending: list[float] = []  # round trips of answers not yet folded into the shared rate
        self._pending_windows: dict[str, Window] | None = None
        self._flushed = 0.0
        self._tokens_mean = 500.0
        self._local: dict[str, Any] | None = None  # the state when the file cannot be shared
        self.stop = threading.Event()  # set when the run stops: waiting senders raise Stopped
        _LIVE.add(self)
        self._said_until = 0.0

    @contextlib.contextmanager
    def _shared(self) -> Iterator[dict[str, Any]]:
        """The shared state under the file lock, checked field by field; where the file cannot be
        read or written (a read-only cache, a directory in its place), this process's own state,
        said once."""
        if self._local is not None:
            yield self._local
            return
        try:
            with open(self.lock_path, "a+") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    raw = json.loads(self.path.read_text()) if self.path.is_file() else {}
                except (OSError, ValueError):
                    raw = {}  # torn or foreign: start over (the rate is relearned in a few round trips)
                state = checked_state(raw, time.time())
                yield state
                tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}")
                try:
                    tmp.write_text(json.dumps(state))
                    os.replace(tmp, self.path)
                except OSError as e:
                    tmp.unlink(missing_ok=True)
                    self._bypass(state, e)
        except OSError as e:  # the lock file cannot be opened: no sharing
            if self._local is None:
                self._bypass(checked_state({}, time.time()), e)
            yield self._local  # type: ignore[misc]

    def _bypass(self, state: dict[str, Any], error: OSError) -> None:
        self._local = state
        print(
            f"warning: rate limit state {self.path} cannot be shared ({error.strerror or error}); "
            "this process paces itself alone",
            file=sys.stderr,
            flush=True,
        )

    def _allowed_rps(self, state: dict[str, Any]) -> float:
        rps = min(state["rps"], self.ceiling_rps, state["cap_rps"] or MAX_RPS)
        if self.tokens_per_s:
            rps = min(rps, self.tokens_per_s / max(self._tokens_mean, 1.0))
        return max(rps, MIN_RPS)

    def acquire(self, tokens: int = 0) -> float:
        """Wait for this request's slot; returns when it went (monotonic), for `done`. Slots come
        from the shared schedule a few at a time (SLOTS_S worth at the current rate: one file
        write per few requests at hundreds a second), handed out in order; one thread of a
        controller reserves at a time, re-reading the rate every 0.1 s at most while it waits, so a
        rate that grows or a pause that begins takes effect at once."""
        asked = time.monotonic()
        with self._waiting:
            with self._lock:
                self._tokens_mean = 0.9 * self._tokens_mean + 0.1 * tokens if tokens else self._tokens_mean
            while True:
                if not self._slots:
                    self._reserve()
                try:
                    slot, rps = self._slots.popleft()
                    break
                except IndexError:  # a 429 (throttled, another thread) gave the slots back: reserve anew
                    continue
        wait = slot - time.time()
        if wait > 0 and self.stop.wait(wait):
            raise Stopped("the run is stopping")
        went = time.monotonic()
        with self._lock:
            self._in_flight += 1
            self.stats.sent += 1
            self.stats.wait_s += went - asked
            self.stats.max_in_flight = max(self.stats.max_in_flight, self._in_flight)
            self.stats.max_rps = max(self.stats.max_rps, rps)
        return went

    def _reserve(self) -> None:
        while True:
            with self._shared() as state:
                now = time.time()
                rps = self._allowed_rps(state)
                first = max(state["next"], state["paused_until"])
                if first <= now:
                    # Slots follow each other at 1/rps; a waiter that woke a little late does not
                    # push the rest back (up to CATCH_UP_S of lateness is made up), a long idle does.
                    base = first if first > now - CATCH_UP_S else now
                    k = max(1, min(int(rps * SLOTS_S), 32))
                    self._slots.extend((base + i / rps, rps) for i in range(k))
                    state["next"] = base + k / rps
                    return
                paused = state["paused_until"] > now
            self._say_wait(first, now, paused)
            if self.stop.wait(min(first - now, 0.1)):
                raise Stopped("the run is stopping")

    def _say_wait(self, until: float, now: float, paused: bool) -> None:
        """A wait longer than SAY_WAIT_S is said once: why, and until when."""
        if until - now < SAY_WAIT_S or until <= self._said_until:
            return
        self._said_until = until
        why = "the server asked for a pause (Retry-After or an exhausted window)" if paused else "pacing"
        say(f"waiting {until - now:.0f} s, until {time.strftime('%H:%M:%S', time.localtime(until))}: {why}")

    def done(self, sent_at: float, headers: Mapping[str, str] | None = None, ok: bool = True) -> None:
        """A request ended: its round trip and headers feed the rate (`ok` False: no answer).
        Answers are folded into the shared state every FLUSH_S at most (at hundreds of answers a
        second, one file write each would be the bottleneck), at once when something is urgent."""
        took = time.monotonic() - sent_at
        reported = windows(headers or {})
        with self._lock:
            self._in_flight -= 1
            queueing = ok and self._latency(took)
            if ok:
                self._pending.append(took)
            if reported:
                self._pending_windows = reported
            empty = any(w.remaining < 1 for w in reported.values())
            if not (queueing or empty or time.monotonic() - self._flushed >= FLUSH_S):
                return
            answers, self._pending = self._pending, []
            latest, self._pending_windows = self._pending_windows, None
            self._flushed = time.monotonic()
        with self._shared() as state:
            now = time.time()
            if latest:
                self._follow(state, latest, now)
            if queueing and now - state["last_decrease"] > took:
                self._decrease(state, now)  # the server is queueing: ease off before it refuses
                return
            for one in answers:
                self._grow(state, one)

    def _grow(self, state: dict[str, Any], took: float) -> None:
        """One clean answer's worth of growth (see the module docstring)."""
        state["clean"] += 1
        rtt = max(took, 0.05)
        per_trip = max(state["rps"] * rtt, 1.0)  # answers per round trip at this rate
        if state["threshold"] is None:
            state["rps"] += 1.0 / rtt  # slow start: one more in flight per answer, doubling per round trip
        elif state["rps"] < PLATEAU * state["last_max"]:
            # back towards the rate that was refused: half the gap per round trip
            state["rps"] += (state["last_max"] - state["rps"]) / 2 / per_trip
        elif state["rps"] < state["last_max"]:
            state["rps"] += 0.005 * state["last_max"] / per_trip  # near it: slowly (CUBIC's plateau)
        else:
            state["rps"] += 1.0 / rtt / per_trip  # beyond it, probe: one more request per round trip
        state["rps"] = min(state["rps"], state["cap_rps"] or MAX_RPS, self.ceiling_rps)  # no credit above a cap

    def throttled(self, headers: Mapping[str, str] | None = None) -> None:
        """A 429 or 503: step the rate down (once per round trip) and pause for its Retry-After."""
        with self._lock:
            self.stats.throttled += 1
        asked = asked_wait(headers or {})
        wait = retry_after(headers or {})
        if asked is not None and asked > MAX_WAIT_S:
            say(
                f"the server asked to wait {asked:.0f} s; waiting {MAX_WAIT_S:.0f} s at most (MAX_WAIT_S), then asking again"
            )
        reported = windows(headers or {})
        with self._shared() as state:
            now = time.time()
            if reported:
                self._follow(state, reported, now)
            if wait:
                state["paused_until"] = max(state["paused_until"], now + wait)
                self._slots.clear()  # reserved before the pause: given back (the schedule moves on)
            # One decrease per congestion episode: another needs an answer served since the last one
            # (TCP cuts once per window of data). A burst of refusals that lets nothing through (a
            # fault, an outage) is not a rate to learn: the pause it asked for handles it.
            fresh = state["threshold"] is None or state["clean"] > 0
            if fresh and now - state["last_decrease"] > (self._short or 0.5):
                self._decrease(state, now)

    def _latency(self, took: float) -> bool:
        """Round trips rising: the mean of the last ~10 answers over twice the mean of the last ~300
        (a gradient, as service-mesh limiters use; answers of different lengths average out, a
        server that queues shows as a short mean running away from the long one). Caller holds
        the lock."""
        self._answers += 1
        self._short = took if self._short is None else 0.9 * self._short + 0.1 * took
        self._long = took if self._long is None else 0.997 * self._long + 0.003 * took
        if self._answers < LATENCY_WARMUP or self._short <= LATENCY_CONGESTION * self._long:
            return False
        self._long = 0.5 * (self._long + self._short)  # react once, then judge against the new norm
        return True

    @staticmethod
    def _decrease(state: dict[str, Any], now: float) -> None:
        """Congestion: remember the rate that was too much, step below it (CUBIC's multiplicative
        decrease, Ha, Rhee and Xu 2008: a limit that is a rate, not a queue, is found again fast)."""
        state["last_max"] = state["rps"]
        state["rps"] = max(state["rps"] * BACKOFF, MIN_RPS)
        state["threshold"] = state["rps"]
        state["last_decrease"] = now
        state["clean"] = 0

    def _follow(self, state: dict[str, Any], reported: dict[str, Window], now: float) -> None:
        """A window's limit per minute caps the rate (HEADROOM under it); nothing left in a window:
        pause until it refills (at most MAX_WAIT_S)."""
        caps = []
        for kind, w in reported.items():
            per_request = 1.0 if kind == "requests" else max(self._tokens_mean, 1.0)
            # A limit per minute (reset is the time until it refills, not the window's length);
            # 2 % under it: our clock and the provider's windows are not aligned.
            caps.append(HEADROOM * w.limit / LIMIT_WINDOW_S / per_request)
            if w.remaining < per_request:
                state["paused_until"] = max(state["paused_until"], now + min(w.reset_s, MAX_WAIT_S))
        state["cap_rps"] = min(caps)
        if state["rps"] > state["cap_rps"]:
            state["rps"] = state["cap_rps"]  # no need to learn what the provider says
            state["threshold"] = state["cap_rps"]


def controller_for(state_dir: Path, base_url: str, key: str | None, model: str, **ceilings: float | None) -> Controller:
    """A controller for this key and model: its pacing shared with every other one on the same
    state (threads and processes alike, through the state file), its account (`stats`) and
    ceilings its own, so a stage's manifest counts that stage's requests only."""
    identity = json.dumps([base_url.rstrip("/"), hashlib.sha256((key or "").encode()).hexdigest(), model])
    return Controller(state_dir, identity, **ceilings)
