"""The HTTP client's limits and retries, on a simulated clock (no timing assertions)."""

from __future__ import annotations

import pytest

from recipe.providers import http
from recipe.providers.http import APIError, Client, RateLimiter

from .fake_together import FakeTogether


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(http.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(http.time, "sleep", clock.sleep)
    return clock


def test_requests_per_minute_blocks_the_next_request_until_a_minute_has_passed(clock: Clock) -> None:
    limiter = RateLimiter(requests_per_minute=3, tokens_per_minute=None)
    for _ in range(3):
        limiter.wait(10)
    assert clock.now == 1000.0
    limiter.wait(10)
    assert clock.now >= 1060.0


def test_tokens_per_minute_counts_the_tokens_booked(clock: Clock) -> None:
    limiter = RateLimiter(requests_per_minute=None, tokens_per_minute=1000)
    limiter.wait(600)
    limiter.wait(300)
    assert clock.now == 1000.0
    limiter.wait(300)  # 1200 > 1000: waits for the first booking to leave the window
    assert clock.now >= 1060.0


def test_no_limits_never_wait(clock: Clock) -> None:
    limiter = RateLimiter(None, None)
    for _ in range(1000):
        limiter.wait(10**6)
    assert clock.now == 1000.0


def test_retries_are_counted_and_errors_carry_the_servers_message() -> None:
    with FakeTogether() as fake:
        client = Client(fake.base_url, "k", max_retries=2, backoff_s=0.001)
        fake.fail(429, 2, retry_after_ms=1)
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        assert client.post_json("chat/completions", body)["choices"][0]["message"]["content"]
        assert client.retries.value == 2
        fake.fail(503, 5)
        with pytest.raises(APIError, match="HTTP 503: injected fault") as err:
            client.post_json("chat/completions", body)
        assert err.value.status == 503
        fake.clear_faults()
        with pytest.raises(APIError, match="HTTP 400"):  # not retried: the spec says messages is required
            client.post_json("chat/completions", {"model": "m"})
        assert fake.invalid and "messages" in fake.invalid[0]
