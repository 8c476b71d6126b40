"""The one HTTP client: a `requests` session with urllib3 retries and client-side rate limits.

Retries follow the official Together SDK: timeouts, connection errors, 408/409/429/5xx, up to
`max_retries` times, honouring `retry-after-ms` / `Retry-After` (capped at 60 s), otherwise an
exponential backoff of ~0.5 * 2^n s with jitter, capped at 8 s. Every Together call also honours
TOGETHER_API_KEY / TOGETHER_BASE_URL; the key only ever lives in the session's headers.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from recipe.errors import RecipeError

log = logging.getLogger(__name__)
TOGETHER_BASE_URL = "https://api.together.xyz/v1"
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 60.0
MAX_SAME_ORIGIN_REDIRECTS = 3


SETTLE_MIN_S, SETTLE_MAX_S, SETTLE_POLL_S = 3.0, 60.0, 0.5
# How long after a re-sent create an earlier attempt may still land (the caller reconciles until then).
RECONCILE_WINDOW_S = 900.0


@dataclass(frozen=True)
class Created:
    """What a create ended with: the object kept, and whether the create was sent more than once."""

    value: dict[str, Any]
    resent: bool = False

    @property
    def id(self) -> str:
        return str(self.value.get("id"))


def reconcile(
    find: Callable[[], list[dict[str, Any]]], keep: str, discard: Callable[[dict[str, Any]], object], what: str
) -> list[str]:
    """Discard (cancel or delete) every object made from one intent but the one kept; say so; their ids."""
    extra = [o for o in find() if str(o.get("id")) != keep]
    for obj in extra:
        discard(obj)
        log.warning("discarded the duplicate %s %s (kept %s)", what, obj.get("id"), keep)
        print(f"a re-sent create made a second {what}, {obj.get('id')}: discarded it (kept {keep})")
    return [str(o.get("id")) for o in extra]


class APIError(RecipeError):
    """A request that failed for good (after retries), with the server's message when it gave one."""

    def __init__(self, message: str, status: int | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}  # the failing answer's (Retry-After, rate-limit windows)


class BadBody(APIError):
    """A success status whose body is not the answer asked for: worth sending again, never worth keeping."""


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, parts.hostname or "", parts.port


class _Retry(Retry):
    """urllib3 Retry that also reads `retry-after-ms`, caps waits, and counts its retries."""

    RETRY_AFTER_STATUS_CODES = RETRY_STATUSES
    counter: _Counter | None = None
    abandoned: threading.Event | None = None  # set: no retry is worth waiting for any more

    def is_exhausted(self) -> bool:
        return bool(self.abandoned is not None and self.abandoned.is_set()) or super().is_exhausted()

    def get_retry_after(self, response: Any) -> float | None:
        ms = response.headers.get("retry-after-ms")
        if ms is not None:
            try:
                return min(float(ms) / 1000, MAX_RETRY_AFTER_S)
            except ValueError:
                pass
        seconds = super().get_retry_after(response)
        return None if seconds is None else min(seconds, MAX_RETRY_AFTER_S)

    def increment(self, *args: Any, **kwargs: Any) -> Retry:
        new = super().increment(*args, **kwargs)
        if self.counter is not None:
            self.counter.add()
        return new

    def new(self, **kwargs: Any) -> Retry:
        retry = super().new(**kwargs)
        retry.counter = self.counter  # type: ignore[attr-defined]
        retry.abandoned = self.abandoned  # type: ignore[attr-defined]
        return retry


class _PacedRetry(_Retry):
    """The same policy, with 429 and 503 left to the caller's rate controller."""

    RETRY_AFTER_STATUS_CODES = RETRY_STATUSES - {429, 503}


class _Counter:
    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self.value += 1


class Client:
    """JSON over HTTP to one base URL, shared by threads (requests sessions are thread-safe for
    this use: one connection pool per host, `pool_maxsize` connections)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        max_retries: int = 5,
        timeout_s: float = 120.0,
        backoff_s: float = 0.5,
        pool_size: int = 32,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.max_retries, self.backoff_s = max_retries, backoff_s
        self.retries = _Counter()
        self.abandoned = threading.Event()
        # Called by `abandon`: whatever makes answers in flight end now (a server of ours, killed).
        self.on_abandon: list[Callable[[], None]] = []
        self._once_session: requests.Session | None = None
        retry = _Retry(
            total=max_retries,
            connect=max_retries,
            read=max_retries,
            status=max_retries,
            other=0,
            allowed_methods=None,  # POSTs too: completions are safe to repeat (creates go through `create`)
            status_forcelist=RETRY_STATUSES,
            backoff_factor=backoff_s,
            backoff_max=8.0,
            backoff_jitter=backoff_s / 2,
            respect_retry_after_header=True,
            raise_on_status=False,
        )
        retry.counter = self.retries
        retry.abandoned = self.abandoned
        self.session = requests.Session()
        adapter = HTTPAdapter(max_retries=retry, pool_connections=4, pool_maxsize=pool_size)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def request(self, method: str, path: str, *, expect_redirect: bool = False, **kwargs: Any) -> requests.Response:
        """One call (retried by the session's policy). GETs follow redirects (requests drops our key on
        another host). Other methods never send their body on to another origin: a same-origin 307/308
        is followed, any other redirect is an error saying where it pointed, unless the caller
        `expect_redirect`s one (the upload's 302 to its presigned URL) and reads it itself."""
        url = path if path.startswith("http") else f"{self.base_url}/{path.lstrip('/')}"
        kwargs.setdefault("timeout", self.timeout_s)
        for _ in range(MAX_SAME_ORIGIN_REDIRECTS + 1):
            try:
                response = self.session.request(method, url, allow_redirects=method == "GET", **kwargs)
            except requests.RequestException as e:
                raise APIError(f"{method} {url}: {type(e).__name__}: {e}") from None
            if not response.is_redirect or expect_redirect:
                break
            target = urllib.parse.urljoin(url, response.headers.get("Location", ""))
            if response.status_code not in (307, 308) or _origin(target) != _origin(url):
                raise APIError(f"{method} {url}: {_redirected(response)}", response.status_code)
            url = target
        else:
            raise APIError(f"{method} {url}: more than {MAX_SAME_ORIGIN_REDIRECTS} redirects")
        if response.status_code >= 400:
            raise APIError(
                f"{method} {url}: HTTP {response.status_code}: {_error_message(response)}",
                response.status_code,
                response.headers,  # case-insensitive, as headers are
            )
        return response

    def pace_throttling(self) -> None:
        """Leave 429 and 503 to the caller (a rate controller that pauses every sender for the
        Retry-After and slows down) instead of retrying them here, thread by thread."""
        for adapter in self.session.adapters.values():
            paced = adapter.max_retries.new(status_forcelist=RETRY_STATUSES - {429, 503})  # type: ignore[attr-defined]
            paced.__class__ = _PacedRetry  # its retries (`new`) stay paced: urllib3 copies by type(self)
            adapter.max_retries = paced  # type: ignore[attr-defined]

    def post_json(self, path: str, body: dict[str, Any], headers_out: dict[str, str] | None = None) -> dict[str, Any]:
        """POST a JSON body; the JSON answer (its headers into `headers_out`). A 200 that is not JSON
        (an HTML error page from a proxy, an event stream where a plain answer was asked) is a
        `BadBody`, for the caller to retry."""
        response = self.request("POST", path, json=body)
        if headers_out is not None:
            headers_out.update(response.headers)
        kind = response.headers.get("Content-Type", "")
        if "text/event-stream" in kind or response.content.lstrip().startswith(b"data:"):
            raise BadBody(f"POST {response.url}: HTTP {response.status_code} sent an event stream, not one answer")
        try:
            return response.json()
        except ValueError:
            raise BadBody(
                f"POST {response.url}: HTTP {response.status_code} but the body is not JSON: {response.text[:120]!r}"
            ) from None

    def settle_s(self, took_s: float | None = None) -> float:
        """How long an ambiguous create is given to land before it is sent again: twice as long as
        the failed attempt took (a create the server was still working on when our timeout fired
        shows up within about its own processing time), 3 to 60 s; without `took_s`, twice the timeout."""
        return min(max(2 * (self.timeout_s if took_s is None else took_s), SETTLE_MIN_S), SETTLE_MAX_S)

    def create(
        self,
        path: str,
        body: dict[str, Any],
        *,
        find: Callable[[], list[dict[str, Any]]],
        discard: Callable[[dict[str, Any]], object],
        what: str,
    ) -> Created:
        """POST the create of a paid or stateful object (a fine-tune job, an endpoint, a batch), never
        retried blindly; Together documents no idempotency key, so the client makes the outcome one
        object itself. `find()` lists the objects on the server made from this create's intent (none
        known before it), newest first; `discard(obj)` cancels or deletes one.

        A 429 is waited out and sent again (refused before any work). A clear 4xx raises at once. After
        an ambiguous failure (a timeout, a dropped connection, a 5xx: the server may be creating it,
        or have created it) the create is given `settle_s` to land, looked up every few seconds; the
        one found is adopted (and said). Only when none lands is it sent again, at most `max_retries`
        times; and after any re-send the objects are reconciled: the one kept is the one answered,
        every other is discarded at once and said (`resent`: the caller keeps reconciling for a
        while, since an earlier attempt may land later still)."""
        url = f"{self.base_url}/{path.lstrip('/')}"
        attempt, resent = 0, False
        while True:
            refused, wait = False, None
            sent = time.monotonic()
            try:
                response = self._once().request("POST", url, json=body, timeout=self.timeout_s, allow_redirects=False)
            except requests.RequestException as e:
                failure = f"{type(e).__name__}: {e}"
            else:
                status = response.status_code
                if 300 <= status < 400:
                    raise APIError(f"POST {url}: {_redirected(response)}", status)
                if status < 400:
                    created = response.json()
                    break
                failure = f"HTTP {status}: {_error_message(response)}"
                if status == 429:
                    refused, wait = True, _Retry(total=1).get_retry_after(response)
                elif status < 500 and status != 408:
                    raise APIError(f"POST {url}: {failure}", status)
            if not refused:  # ambiguous: it may exist now, or soon
                found = self._settle(find, self.settle_s(time.monotonic() - sent))
                if found:
                    created, resent = found[0], resent or len(found) > 1
                    log.warning(
                        "POST %s failed ambiguously (%s) but the %s exists: adopting %s",
                        url,
                        failure,
                        what,
                        created.get("id"),
                    )
                    print(
                        f"the {what} create failed ambiguously ({failure}); it was made: adopting {created.get('id')}"
                    )
                    break
            attempt += 1
            self.retries.add()
            if attempt > self.max_retries:
                raise APIError(f"POST {url}: {failure} (no {what} was created; tried {attempt} times)")
            resent = resent or not refused
            log.warning("POST %s failed (%s); no %s was created: sending it again", url, failure, what)
            time.sleep(wait if wait is not None else self.backoff(attempt))
        keep = Created(created, resent)
        if resent:
            reconcile(find, keep.id, discard, what)
        return keep

    def _settle(self, find: Callable[[], list[dict[str, Any]]], settle_s: float) -> list[dict[str, Any]]:
        """`find()` until it finds something or `settle_s` has passed."""
        deadline = time.monotonic() + settle_s
        while True:
            try:
                found = find()
            except APIError as e:  # the look-up itself may fail for a while
                log.warning("looking the object up failed (%s); trying again", e)
                found = []
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(min(SETTLE_POLL_S, max(0.0, deadline - time.monotonic())))

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (1, 2, ...) of a request retried by hand."""
        return min(self.backoff_s * 2 ** (attempt - 1), 8.0)

    def _once(self) -> requests.Session:
        """A session with this client's headers that never retries by itself (for creates)."""
        if self._once_session is None:
            self._once_session = requests.Session()
            self._once_session.mount("http://", HTTPAdapter(max_retries=0))
            self._once_session.mount("https://", HTTPAdapter(max_retries=0))
            self._once_session.headers.update(self.session.headers)
        return self._once_session

    def get_json(self, path: str, **params: Any) -> dict[str, Any]:
        return self.request("GET", path, params=params or None).json()

    def abandon(self) -> None:
        """Give up on the answers in flight: a request that fails from now on is not retried, and
        what `on_abandon` holds (a local server this run started, killed) ends those in flight."""
        self.abandoned.set()
        for hook in self.on_abandon:
            hook()

    def close(self) -> None:
        self.session.close()
        if self._once_session is not None:
            self._once_session.close()


def _redirected(response: requests.Response) -> str:
    """A redirect an API call does not follow: a create or a prompt is never sent on to another
    host (the body would go with it), and the key never goes anywhere but the base URL."""
    location = response.headers.get("Location", "(no Location)")
    return (
        f"HTTP {response.status_code} redirected to {location}: not followed (an API call never follows a "
        "redirect; check the base URL, e.g. TOGETHER_BASE_URL)"
    )


def _error_message(response: requests.Response) -> str:
    try:
        error = response.json().get("error")
    except ValueError:
        return response.text[:300]
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error or response.text[:300])


def together_base_url(configured: str | None) -> str:
    return configured or os.environ.get("TOGETHER_BASE_URL") or TOGETHER_BASE_URL
