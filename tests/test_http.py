"""The HTTP client's retries, errors and redirects against the fake Together server."""

from __future__ import annotations

import pytest

from recipe.providers.http import APIError, Client

from .fake_together import FakeTogether


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
