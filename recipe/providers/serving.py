"""One way to reach a trained model, for Test, Deploy and `recipe-chat`.

- a local model directory behind a managed OpenAI-compatible server on 127.0.0.1 (`transformers
  serve` on CPU, vLLM on a GPU when installed), started, waited for, and always stopped;
- a Together model through the serverless inference API;
- a Together dedicated endpoint (`DedicatedEndpoints`): created once with its id recorded in the
  store before anything waits on it (a re-run re-attaches and never pays twice), started, stopped,
  waited for, deleted; `temporary_endpoint` deletes it afterwards, on errors too.

`reach(trained, which, ...)` picks among them from a `TrainedModel` artifact: the tuned model, or
the base model it came from, prompted in the format it was trained in.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from recipe.artifacts import PromptFormat, TrainedModel
from recipe.errors import RecipeError
from recipe.providers.http import RECONCILE_WINDOW_S, SETTLE_POLL_S, APIError, Client, reconcile
from recipe.providers.local.server import ManagedServer, line_end_fields, model_server, serving_engine
from recipe.providers.model_client import ModelSpec, completion_request
from recipe.providers.together import cheapest_hardware, hardware_usd_per_hour, unless_gone, wait_endpoint_started
from recipe.store import ArtifactStore

log = logging.getLogger(__name__)


@dataclass
class ModelAccess:
    """How to ask one model: a client on its base URL and the model name requests carry."""

    which: str  # tuned | base (or the deployment's name)
    client: Client
    model: str
    provider: str  # part of request-cache keys: local-transformers, local-vllm, together
    weights: str | None  # which weights answer (part of request-cache keys), when the name may not say
    format: PromptFormat  # how prompts must be written for it
    local_dir: Path | None = None  # local models: the Hugging Face directory (held-out loss)
    concurrency: int | None = None  # the most requests worth having in flight; None = the caller's
    server: ManagedServer | None = None  # local models: the managed process (serve until it ends)
    dtype: str | None = None  # local models: the dtype it generates in, when not the weights' (request-cache keys)

    @property
    def spec(self) -> ModelSpec:
        """The model as request-cache keys name it, prompted in the format it was trained in."""
        template = self.format.template or "raw"
        return ModelSpec(self.provider, self.model, self.format.api, template, self.weights, self.dtype)

    @property
    def url(self) -> str:
        return self.client.base_url

    def line_end_fields(self) -> dict[str, Any]:
        """Request fields that end this model's answers at their first newline, for a suite scored on
        the first line. Only a local model's: a remote model's requests are left as they were, so the
        answers already cached for them (paid for) are still found."""
        if self.server is None or self.local_dir is None:
            return {}
        return line_end_fields(self.local_dir, self.provider.removeprefix("local-"))


@dataclass
class LocalServing:
    engine: str = "auto"  # auto | transformers | vllm
    device: str = "cpu"
    host: str = "127.0.0.1"
    port: int | None = None
    startup_timeout_s: float = 180.0
    timeout_s: float = 600.0
    # The caller sends only greedy chat requests with the same settings (Test at temperature 0): a
    # `transformers serve` may batch them (see local_model).
    greedy_batch: bool = False
    warmup_timeout_s: float = 60.0
    dtype: str | None = None  # what the server loads the weights in (served_dtype); None: theirs


# Requests in flight to `transformers serve --continuous-batching` (CPU, the embedded SmolLM2): 8 at
# once took 0.26x the time of one at a time once warm (tests/benchmarks/bench_local_batching.py).
BATCH_IN_FLIGHT = 8


def answers(server: ManagedServer, model: str, timeout_s: float) -> bool:
    """Whether the server answers one greedy chat request within `timeout_s` (its first request: a
    batching `transformers serve` also sets up its paged cache then)."""
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0}
    try:
        reply = requests.post(f"{server.base_url}/chat/completions", json=body, timeout=timeout_s)
    except requests.RequestException:
        return False
    return reply.status_code == 200


@contextlib.contextmanager
def local_model(
    model_dir: Path,
    serving: LocalServing,
    *,
    which: str,
    weights: str | None,
    fmt: PromptFormat,
    served_name: str | None = None,
) -> Iterator[ModelAccess]:
    """A managed server over a Hugging Face model directory (clients name it `served_name` when
    given, else its path); stopped when the block ends.

    `transformers serve` generates one request at a time, unless the caller's requests are all
    greedy chat requests alike (`serving.greedy_batch`): then it runs with --continuous-batching and
    BATCH_IN_FLIGHT requests at once. That batching takes its sampling settings from the first
    request for all of them and ignores each request's seed (transformers 5.24), so it is only used
    where neither matters; the greedy answers were identical to one-at-a-time ones. It hung on its
    first request on 2 of 5 starts in one session (0 of 18 in the next, with its cache sized in tokens:
    see batching_flags; the default cache took most of free memory): the first request is a
    warm-up with a deadline, and a server that misses it is replaced by one that does not batch."""
    engine = serving_engine(serving.engine)
    options = {
        "host": serving.host,
        "port": serving.port,
        "startup_timeout_s": serving.startup_timeout_s,
        "dtype": serving.dtype,
    }
    batching = serving.greedy_batch and engine == "transformers" and fmt.api == "chat"
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(model_server(model_dir, engine, serving.device, served_name, batching, **options))
        name = server.model  # type: ignore[attr-defined]
        if batching and not answers(server, name, serving.warmup_timeout_s):
            log.warning(
                "%s: transformers serve --continuous-batching gave no answer in %.0f s; serving it one request "
                "at a time instead",
                which,
                serving.warmup_timeout_s,
            )
            stack.close()
            batching = False
            server = stack.enter_context(model_server(model_dir, engine, serving.device, served_name, **options))
        client = Client(server.base_url, None, max_retries=2, timeout_s=serving.timeout_s)
        client.on_abandon.append(server.kill)
        try:
            yield ModelAccess(
                which=which,
                client=client,
                model=server.model,  # type: ignore[attr-defined]
                provider=f"local-{engine}",
                weights=weights,
                format=fmt,
                local_dir=model_dir,
                concurrency=(BATCH_IN_FLIGHT if batching else 1) if engine == "transformers" else None,
                server=server,
                dtype=serving.dtype,
            )
        finally:
            client.close()


def base_model_dir(trained: TrainedModel, store: ArtifactStore) -> tuple[Path, str]:
    """(directory, weights identity) of a locally trained model's base; the embedded GGUF is exported
    once to a Hugging Face directory in the store, so base and tuned run on the same engine."""
    if trained.base_model is not None:
        return Path(trained.base_model), f"model:{trained.base_model}"
    from recipe.providers.local import trainer

    return trainer.embedded_model(store.root)


class DedicatedEndpoints:
    """Together dedicated endpoints recorded under `records/<kind>/<key>` in the store."""

    def __init__(self, client: Client, store: ArtifactStore, kind: str, poll_s: float = 10.0, progress: bool = True):
        self.client, self.store, self.kind, self.poll_s, self.progress = client, store, kind, poll_s, progress

    def key(self, identity: dict[str, Any]) -> str:
        """A record key for what makes two endpoints the same (base URL included)."""
        return hashlib.sha256(
            json.dumps({**identity, "base_url": self.client.base_url}, sort_keys=True).encode()
        ).hexdigest()[:24]

    def recorded(self, key: str) -> dict[str, Any] | None:
        """The live record under `key` (None when none, or when it was deleted). A create that was
        sent but whose answer never came (a crash) is looked up by its display name and adopted."""
        record = self.store.record(self.kind, key)
        if record is None or record.get("deleted"):
            return None
        if not record.get("id"):  # intent only
            found = self._find(record["display_name"], record["model"])
            if not found:
                return None
            log.warning("found Together endpoint %s created before a crash: adopting it", found[0]["id"])
            record = {**record, "id": found[0]["id"], "name": found[0].get("name"), "adopted": True}
            record["reconcile_until"] = time.time() + RECONCILE_WINDOW_S
            self.store.put_record(self.kind, key, record)
        self.reconcile(key)
        return self.store.record(self.kind, key)

    def existing(self, key: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The endpoint recorded under `key` and Together's view of it: (None, None) when none is
        recorded; (record, None) when Together no longer has it (the record is marked deleted)."""
        record = self.recorded(key)
        return record, (self.alive(key, record) if record is not None else None)

    def alive(self, key: str, record: dict[str, Any]) -> dict[str, Any] | None:
        """The recorded endpoint as Together reports it; None (and the record marked deleted) when
        Together no longer has it (HTTP 404: deleted outside recipe)."""
        endpoint = unless_gone(lambda: self.get(record["id"]))
        if endpoint is not None:
            return endpoint
        log.warning("Together endpoint %s recorded for this config is gone (HTTP 404)", record["id"])
        self.store.put_record(self.kind, key, {**record, "deleted": True, "gone": True})
        return None

    def create(self, key: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create an endpoint (`hardware` null = the cheapest available): its intent recorded
        first, under a display name that carries the record key, so that after an ambiguous
        failure or a crash the endpoint is found and adopted instead of created twice."""
        hardware = body.get("hardware") or cheapest_hardware(self.client, body["model"])
        display_name = f"recipe-{key[:8]} {body['model'].split('/')[-1]}"[:64]
        body = {**body, "hardware": hardware, "display_name": display_name}
        intent = {"display_name": display_name, "model": body["model"], "hardware": hardware, "sent": time.time()}
        self.store.put_record(self.kind, key, intent)
        created = self.client.create(
            "endpoints",
            body,
            find=lambda: self._find(display_name, body["model"]),
            discard=self._discard,
            what="dedicated endpoint",
        )
        endpoint = created.value
        record = {**intent, "id": created.id, "name": endpoint.get("name"), "created": time.time()}
        if created.resent:  # an earlier attempt may still land: keep reconciling while it could
            record["reconcile_until"] = time.time() + RECONCILE_WINDOW_S
        self.store.put_record(self.kind, key, record)
        log.info("created Together endpoint %s on %s", created.id, hardware)
        return record

    def _find(self, display_name: str, model: str) -> list[dict[str, Any]]:
        """Endpoints made from one intent (its display name carries the record key), newest first."""
        listed = self.client.get_json("endpoints", type="dedicated", mine="true").get("data") or []
        found = []
        for item in listed:
            if item.get("model") == model:
                endpoint = unless_gone(lambda item=item: self.get(item["id"]))
                if endpoint is not None and endpoint.get("display_name") == display_name:
                    found.append(endpoint)
        return sorted(found, key=lambda e: str(e.get("created_at", "")), reverse=True)

    def _discard(self, endpoint: dict[str, Any]) -> None:
        unless_gone(lambda: self.client.request("DELETE", f"endpoints/{endpoint['id']}"))

    def reconcile(self, key: str) -> None:
        """While a re-sent create's earlier attempt may still land, delete every endpoint made from
        this record's intent but the recorded one (an endpoint costs by the minute: deleted at once)."""
        record = self.store.record(self.kind, key) or {}
        if not record.get("id") or record.get("deleted") or time.time() > record.get("reconcile_until", 0):
            return
        deleted = reconcile(
            lambda: self._find(record["display_name"], record["model"]),
            record["id"],
            self._discard,
            "dedicated endpoint",
        )
        if deleted:
            self.store.put_record(
                self.kind, key, {**record, "deleted_duplicates": [*record.get("deleted_duplicates", []), *deleted]}
            )

    def get(self, endpoint_id: str) -> dict[str, Any]:
        return self.client.get_json(f"endpoints/{endpoint_id}")

    def usd_per_hour(self, model: str, hardware: str) -> float | None:
        """Together's listed rate for the hardware an endpoint runs on (None: not listed)."""
        return hardware_usd_per_hour(self.client, model, hardware)

    def set_state(self, endpoint_id: str, state: str) -> dict[str, Any]:
        return self.client.request("PATCH", f"endpoints/{endpoint_id}", json={"state": state}).json()

    def wait_started(self, endpoint_id: str, key: str | None = None) -> dict[str, Any]:
        """Poll until STARTED; with the record's `key`, duplicates of a re-sent create are deleted as
        they land, and after a re-send the wait lasts at least as long as the first attempt was given
        to settle after the re-send (an endpoint left behind would bill by the minute; should one land
        later still, the next run's look-up deletes it, and its inactive_timeout stops it meanwhile)."""
        each = (lambda: self.reconcile(key)) if key is not None else None
        endpoint = wait_endpoint_started(self.client, endpoint_id, self.poll_s, self.progress, each)
        record = self.store.record(self.kind, key) if key is not None else None
        if record and record.get("reconcile_until"):  # a re-sent create: the first had this long, and gets it again
            created = record.get("created", 0)
            until = created + max(self.client.settle_s(), created - record.get("sent", created))
            while time.time() < until:
                time.sleep(min(SETTLE_POLL_S, max(0.0, until - time.time())))
                self.reconcile(key)  # type: ignore[arg-type]
        return endpoint

    def delete(self, key: str, record: dict[str, Any]) -> bool:
        """Delete the recorded endpoint; False when Together had no such endpoint any more."""
        deleted = unless_gone(lambda: self.client.request("DELETE", f"endpoints/{record['id']}")) is not None
        self.store.put_record(self.kind, key, {**record, "deleted": True})
        return deleted


@contextlib.contextmanager
def temporary_endpoint(endpoints: DedicatedEndpoints, model: str, hardware: str | None) -> Iterator[dict[str, Any]]:
    """A dedicated endpoint for `model` while the block runs: recorded before waiting (a re-run
    re-attaches), `inactive_timeout` in case we die, deleted afterwards, on errors too."""
    key = endpoints.key({"model": model, "hardware": hardware, "temporary": True})
    record, current = endpoints.existing(key)
    if record is None or current is None:
        body = {
            "model": model,
            "hardware": hardware,
            "autoscaling": {"min_replicas": 1, "max_replicas": 1},
            "state": "STARTED",
            "inactive_timeout": 15,  # if we are killed before deleting it, Together stops it
        }
        record = endpoints.create(key, body)
    try:
        yield endpoints.wait_started(record["id"], key)
    finally:
        try:
            endpoints.delete(key, record)
        except APIError as e:  # keep the first error; say what is left running
            log.error("could not delete Together endpoint %s (%s): delete it by hand", record["id"], e)


@contextlib.contextmanager
def reach(
    trained: TrainedModel,
    which: str,
    *,
    store: ArtifactStore,
    local: LocalServing,
    together: Callable[[], Client] | None,
    dedicated: bool = False,
    hardware: str | None = None,
    poll_s: float = 10.0,
    progress: bool = True,
) -> Iterator[ModelAccess]:
    """The `tuned` model of a Train artifact, or the `base` model it came from, ready to be asked
    (in `trained.format`). `together` makes the Together client (closed here); `dedicated` puts the
    tuned Together model on a temporary endpoint."""
    if which not in ("tuned", "base"):
        raise ValueError(which)
    if trained.provider == "local":
        if which == "tuned":
            model_dir, weights = trained.local_dir, trained.weights
        else:
            model_dir, weights = base_model_dir(trained, store)
        with local_model(model_dir, local, which=which, weights=weights, fmt=trained.format) as access:
            yield access
        return
    if trained.provider != "together":
        raise RecipeError(f"a {trained.provider!r} model cannot be reached (local or together)")
    if together is None:
        raise RecipeError("reaching a Together model needs a Together client")
    model = trained.model if which == "tuned" else trained.base_model
    if not model:
        raise RecipeError(f"the train artifact names no {which} model")
    client = together()
    try:
        if which == "tuned" and dedicated:
            endpoints = DedicatedEndpoints(client, store, "together-test-endpoints", poll_s, progress)
            with temporary_endpoint(endpoints, model, hardware) as endpoint:
                yield ModelAccess(which, client, endpoint["name"], "together", None, trained.format)
        else:
            yield ModelAccess(which, client, model, "together", None, trained.format)
    finally:
        client.close()


def smoke_query(client: Client, model: str, prompt: str, max_tokens: int, fmt: PromptFormat) -> dict[str, Any]:
    """One request in the model's trained format: the answer and how long it took."""
    started = time.monotonic()
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens}
    if fmt.kind == "chat_template":
        response = client.post_json("chat/completions", {**body, "messages": [{"role": "user", "content": prompt}]})
        answer = response["choices"][0]["message"]["content"] or ""
    else:
        assert fmt.template is not None
        response = client.post_json(
            "completions", {**body, **completion_request([{"role": "user", "content": prompt}], fmt.template)}
        )
        answer = response["choices"][0]["text"] or ""
    return {"prompt": prompt, "answer": answer.strip(), "latency_s": round(time.monotonic() - started, 3)}
