"""A loopback OpenAI-compatible server that enforces a rate limit the way a provider does: fixed
windows of `window_s` seconds holding `limit` requests; beyond them a 429 with Retry-After (and
`retry-after-ms`) until the window ends. With `headers`, every answer carries Together's
`x-ratelimit-limit`, `x-ratelimit-remaining` and `x-ratelimit-reset`, the first two per minute as
both providers state limits (a per-second window of 20 is a limit of 1,200), the reset as the time
until the window refills. Answers come after
`latency_s`. It counts what it served and refused, with times, for benchmarks and tests."""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class LimitedServer:
    def __init__(
        self,
        limit: float | None,
        *,
        window_s: float = 1.0,
        latency_s: float = 0.5,
        headers: bool = True,
        retry_after_s: float | None = None,
    ) -> None:
        self.limit, self.window_s, self.latency_s, self.headers = limit, window_s, latency_s, headers
        self.per_minute = 60.0 / window_s  # the reported limit's scale: per minute
        self.retry_after_s = retry_after_s  # a 429's Retry-After, when not the window's end (a storm's)
        self.served: list[float] = []  # when each answered request arrived
        self.refused: list[float] = []
        self._lock = threading.Lock()
        self._window, self._count = -1, 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                status, extra = server.admit()
                if status == 200:
                    time.sleep(server.latency_s)
                    text = "ok"
                    if self.path.endswith("/completions") and "chat" not in self.path:
                        choice: dict[str, Any] = {"text": text, "finish_reason": "stop", "index": 0}
                    else:
                        choice = {
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                            "index": 0,
                        }
                    payload = {
                        "id": "x",
                        "model": body.get("model"),
                        "choices": [choice],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
                    }
                else:
                    payload = {"error": {"message": "rate limit exceeded", "type": "rate_limit", "code": 429}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in extra.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.request_queue_size = 1024
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def admit(self) -> tuple[int, dict[str, str]]:
        now = time.time()
        with self._lock:
            if self.limit is None:
                self.served.append(now)
                return 200, {}
            window = math.floor(now / self.window_s)
            if window != self._window:
                self._window, self._count = window, 0
            reset = (window + 1) * self.window_s - now
            headers: dict[str, str] = {}
            if self._count >= self.limit:
                self.refused.append(now)
                wait = self.retry_after_s if self.retry_after_s is not None else reset
                headers = {"Retry-After": str(math.ceil(wait)), "retry-after-ms": str(math.ceil(wait * 1000))}
                if self.headers:
                    headers |= {
                        "x-ratelimit-limit": str(int(self.limit * self.per_minute)),
                        "x-ratelimit-remaining": "0",
                        "x-ratelimit-reset": f"{reset:.3f}",
                    }
                return 429, headers
            self._count += 1
            self.served.append(now)
            if self.headers:
                headers = {
                    "x-ratelimit-limit": str(int(self.limit * self.per_minute)),
                    "x-ratelimit-remaining": str(int((self.limit - self._count) * self.per_minute)),
                    "x-ratelimit-reset": f"{reset:.3f}",
                }
            return 200, headers

    def rate(self, since: float, until: float) -> float:
        """Requests served per second between two wall-clock times."""
        with self._lock:
            return sum(since <= t < until for t in self.served) / max(until - since, 1e-9)

    def refused_share(self, since: float, until: float) -> float:
        with self._lock:
            ok = sum(since <= t < until for t in self.served)
            no = sum(since <= t < until for t in self.refused)
        return no / max(ok + no, 1)

    def __enter__(self) -> LimitedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def asker(client: Any, cache: Any, controller: Any) -> Any:
    """A model client for the server's one model `m`, free, through `controller` (or none)."""
    from recipe.providers.model_client import Ledger, ModelClient, ModelSpec

    spec = ModelSpec("together", "m", "chat", "raw")
    return ModelClient(
        client, cache, spec, sampling={"max_tokens": 4}, ledger=Ledger(0, 0, None), controller=controller
    )
