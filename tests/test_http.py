"""The HTTP client's retries, errors and redirects against the fake Together server."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from recipe.providers.http import APIError, Client

from .fake_together import FakeTogether
from .subprocesses import limit


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


class _Silent:
    """A server on 127.0.0.1 that accepts connections and never answers (a model still generating)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1"

    def _accept(self) -> None:
        while True:
            try:
                self.accepted.append(self.listener.accept()[0])
            except OSError:
                return

    def drop(self) -> None:
        """Close the connections it holds, as a killed server's do."""
        for conn in self.accepted:
            conn.close()

    def wait_for(self, n: int) -> None:
        deadline = time.monotonic() + limit(30)
        while len(self.accepted) < n:
            assert time.monotonic() < deadline, f"{len(self.accepted)} of {n} connections after {limit(30):.0f} s"
            time.sleep(0.01)

    def close(self) -> None:
        self.drop()
        self.listener.close()


def test_an_abandoned_client_ends_its_requests_in_flight_without_retrying() -> None:
    """A dropped connection is retried, until the client is abandoned (Ctrl-C with a local teacher):
    then the hook that ends what is in flight runs and the request fails at once, not retried."""
    server = _Silent()
    client = Client(server.base_url, max_retries=5, backoff_s=0.001, timeout_s=60)
    outcome: list[BaseException] = []

    def ask() -> None:
        try:
            client.post_json("chat/completions", {"model": "m", "messages": []})
        except BaseException as e:  # the test reads it
            outcome.append(e)

    asking = threading.Thread(target=ask)
    try:
        asking.start()
        server.wait_for(1)
        server.drop()  # not abandoned: the client sends again
        server.wait_for(2)
        client.on_abandon.append(server.drop)
        client.abandon()
        asking.join(timeout=limit(30))
        assert not asking.is_alive(), (
            f"the request was still in flight {limit(30):.0f} s after the client was abandoned"
        )
        assert len(outcome) == 1 and isinstance(outcome[0], APIError), outcome
        assert len(server.accepted) == 2  # no retry after abandon
        assert client.retries.value == 1
    finally:
        server.close()
        client.close()
        asking.join(timeout=limit(30))
