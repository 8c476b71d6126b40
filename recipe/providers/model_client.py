"""A model client: one model behind a chat or raw-completions API, reached through the request cache
(Distill's teacher, the models Test compares, and Test's judge).

The same code talks to Together, any OpenAI-compatible server and the managed local llama.cpp
server: only the base URL, the key and the request shape (chat messages, or a prompt we template
ourselves, as the seed did with `[INST] ... [/INST]`) differ.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from requests.structures import CaseInsensitiveDict
from tqdm import tqdm

from recipe.artifacts import PromptFormat
from recipe.data import templates
from recipe.data.jsonl import encode_line
from recipe.data.tokens import approx_tokens
from recipe.errors import RecipeError
from recipe.providers.cache import RequestCache, Stored, request_key
from recipe.providers.http import RECONCILE_WINDOW_S, APIError, BadBody, Client, together_base_url
from recipe.providers.limits import Controller, controller_for
from recipe.providers.local.server import LlamaCppServer, embedded_gguf
from recipe.providers.together import BATCH_DONE, create_batch, download_file, get_batch, upload_batch_file
from recipe.secrets import together_api_key

log = logging.getLogger(__name__)
TEMPLATE_VERSION = "1"  # bump when templates.render_prompt changes what a prompt looks like
CLAIM_WAIT_S = 0.2  # how often a request another process is asking looks for its answer
Message = dict[str, str]


@dataclass(frozen=True)
class Answer:
    text: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool
    truncated: bool = False  # finish_reason "length": cut at max_tokens

    @classmethod
    def stored(cls, hit: Stored) -> Answer:
        return cls(hit.text, hit.prompt_tokens, hit.completion_tokens, cached=True, truncated=hit.finish == "length")


class NotAnAnswer(BadBody):
    """A 200 whose answer has no text (`content: null`): retried like a failed request, never cached."""


class BudgetReached(Exception):
    """No new request may be sent: the budget is spent."""


class Ledger:
    """Token usage and cost of the requests this run sends, and the budget they may not pass."""

    def __init__(self, input_per_mtok: float, output_per_mtok: float, max_usd: float | None, factor: float = 1.0):
        self.input_rate = input_per_mtok * factor / 1e6
        self.output_rate = output_per_mtok * factor / 1e6
        self.max_usd = max_usd
        self.prompt_tokens = self.completion_tokens = self.requests = self.cached_requests = 0
        self.cost_usd = 0.0
        self._reserved = 0.0
        self._lock = threading.Lock()
        self.stopped = False

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens * self.input_rate + completion_tokens * self.output_rate

    def reserve(self, prompt_tokens: int, max_tokens: int) -> float:
        """Book the worst case of one request before sending it, or raise BudgetReached."""
        worst = self.cost(prompt_tokens, max_tokens)
        with self._lock:
            if self.stopped or (self.max_usd is not None and self.cost_usd + self._reserved + worst > self.max_usd):
                self.stopped = True
                raise BudgetReached
            self._reserved += worst
        return worst

    def settle(self, reserved: float, answer: Answer | None) -> None:
        with self._lock:
            self._reserved -= reserved
            if answer is not None:
                self.requests += 1
                self.prompt_tokens += answer.prompt_tokens
                self.completion_tokens += answer.completion_tokens
                self.cost_usd += self.cost(answer.prompt_tokens, answer.completion_tokens)

    def record_cached(self) -> None:
        with self._lock:
            self.cached_requests += 1

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "requests": self.requests,
            "cached_requests": self.cached_requests,
        }


def prompt_ceiling(body: dict[str, Any]) -> int:
    """At most how many tokens a request's prompt can be billed as: its UTF-8 bytes (a byte-level
    tokenizer never makes more tokens than bytes) plus a template's special tokens per message. The
    budget books this worst case, so a budget holds at any concurrency."""
    content = body.get("messages") if "messages" in body else body.get("prompt", "")
    return len(json.dumps(content, ensure_ascii=False).encode()) + 8 * len(body.get("messages") or [None]) + 16


def completion_request(messages: list[Message], template: str) -> dict[str, Any]:
    """The raw-completions fields for a conversation ending with the user's turn, in a text template:
    the prompt, and the stop that keeps a model from writing the next turn itself."""
    request: dict[str, Any] = {"prompt": templates.render_prompt(messages, template)}
    if template in ("llama2_inst", "llama2_inst_seed"):
        request["stop"] = ["[INST]"]  # the seed's stop
    return request


def api_snippets(
    url: str,
    model: str,
    key_env: str | None,
    fmt: PromptFormat,
    messages: list[Message],
    fields: dict[str, Any] | None = None,
) -> list[str]:
    """How to ask this model from elsewhere: curl, Python requests and the openai client, each
    sending `messages` with the sampling `fields`, in the model's format (raw completions in its
    text template, else chat), its key read from `key_env` (never written out)."""
    auth = f' -H "Authorization: Bearer ${key_env}"' if key_env else ""
    key = f'os.environ["{key_env}"]' if key_env else '"none"'
    headers = f'{{"Authorization": f"Bearer {{os.environ[{key_env!r}]}}"}}' if key_env else "{}"
    if fmt.kind == "text":
        assert fmt.template is not None
        body = {"model": model, **completion_request(messages, fmt.template), **(fields or {})}
        path, read, call, last = "completions", '["choices"][0]["text"]', "completions.create", ".choices[0].text"
    else:
        body = {"model": model, "messages": messages, **(fields or {})}
        path, read, call = "chat/completions", '["choices"][0]["message"]["content"]', "chat.completions.create"
        last = ".choices[0].message.content"
    arguments = ", ".join(f"{k}={v!r}" for k, v in body.items() if k != "model")
    return [
        "# curl",
        f"curl -s {url}/{path} -H 'Content-Type: application/json'{auth} -d '{json.dumps(body)}'",
        "",
        "# Python: requests",
        "import os, requests",
        f"r = requests.post({url + '/' + path!r}, headers={headers}, json={body!r}, timeout=120)",
        f"print(r.json(){read})",
        "",
        "# Python: openai",
        "import os; from openai import OpenAI",
        f"client = OpenAI(base_url={url!r}, api_key={key})",
        f"print(client.{call}(model={model!r}, {arguments}){last})",
    ]


@dataclass(frozen=True)
class ModelSpec:
    """Which model answers and how its requests are written: all of it part of request-cache keys."""

    provider: str  # together | openai_compatible | local (local-transformers, local-vllm when we serve it)
    model: str
    api: str  # chat | completions
    template: str  # completions: the text template prompts are rendered in
    weights: str | None = None  # local models: which file answers, since the alias alone may not say
    dtype: str | None = None  # a local model served in a dtype not its weights' (its answers differ slightly)

    @classmethod
    def configured(cls, node: DictConfig) -> ModelSpec:
        """The model a config node names (a teacher: `distill.teacher`, `test.judge`)."""
        return cls(node.provider.value, node.model, node.api.value, node.template, local_weights(node))


MAX_THROTTLED = 30  # 429/503 answers one request may get before it fails (the controller pauses between)
REMOTE_PROVIDERS = ("together", "openai_compatible")


def paced(
    cache: RequestCache, client: Client, model: str, rpm: float | None = None, tpm: float | None = None
) -> Controller:
    """The rate controller for `model` at the client's base URL and key, its state beside the
    request cache (shared by the processes using that cache directory), with optional ceilings."""
    return controller_for(
        cache.path.parent / "limits",
        client.base_url,
        client.session.headers.get("Authorization"),
        model,
        requests_per_minute=rpm,
        tokens_per_minute=tpm,
    )


def transformers_sampling(sampling: dict[str, Any]) -> dict[str, Any]:
    """What `transformers serve` needs besides the OpenAI fields for a temperature above 0 to sample:
    it copies the model's generation config, where `do_sample` is false for our exported and merged
    models, and reads `temperature` without turning sampling on (every temperature and seed gave the
    same greedy answer). A `generation_config` in the body is the base it starts from instead; what
    it leaves unset (end-of-sequence and padding ids) still comes from the model's own. One the
    caller set already (a suite's end-of-sequence ids: serving.line_end_fields) is added to."""
    temperature = sampling.get("temperature")
    if not temperature:
        return {}
    wanted = {**json.loads(sampling.get("generation_config") or "{}"), "do_sample": True}
    wanted["temperature"] = float(temperature)
    for key in ("top_p", "top_k", "repetition_penalty"):
        if sampling.get(key) is not None:
            wanted[key] = sampling[key]
    return {"generation_config": json.dumps(wanted, sort_keys=True)}


class ModelClient:
    """Asks one model (`spec`) through the request cache, within the ledger's budget."""

    def __init__(
        self,
        client: Client,
        cache: RequestCache,
        spec: ModelSpec,
        *,
        sampling: dict[str, Any],
        ledger: Ledger,
        controller: Controller | None = None,
    ) -> None:
        self.client, self.cache, self.ledger, self.controller = client, cache, ledger, controller
        if controller is not None:
            client.pace_throttling()  # 429/503 come back here: the controller paces every sender
        self.weights, self.dtype = spec.weights, spec.dtype
        self.provider, self.model, self.api, self.template = spec.provider, spec.model, spec.api, spec.template
        self.sampling = {k: v for k, v in sampling.items() if v is not None and v != []}
        if spec.provider == "local-transformers":
            self.sampling.update(transformers_sampling(self.sampling))
        # The seed fed its teacher's answers back as they came: keep them unstripped for its template.
        self.raw_answers = spec.api == "completions" and spec.template == "llama2_inst_seed"
        self.asked: set[str] = set()  # cache keys of every request asked (crash accounting: cache.resent_count)

    def body(self, messages: list[Message]) -> dict[str, Any]:
        """The request body for the conversation so far (ending with the user's turn)."""
        if self.api == "chat":
            return {"model": self.model, "messages": messages, **self.sampling}
        return {"model": self.model, **completion_request(messages, self.template), **self.sampling}

    def key(self, body: dict[str, Any]) -> str:
        identity = {"provider": self.provider, "api": self.api, "body": body}
        if self.weights:
            identity["weights"] = self.weights
        if self.dtype:
            identity["dtype"] = self.dtype
        if self.api == "completions":
            identity["template"] = f"{self.template}/{TEMPLATE_VERSION}"
        return request_key(identity)

    def cached(self, messages: list[Message]) -> Answer | None:
        hit = self.cache.get(self.key(self.body(messages)))
        return None if hit is None else Answer.stored(hit)

    def ask(self, messages: list[Message]) -> Answer:
        """The model's answer to the conversation so far: from the cache; or claimed in the cache,
        sent, and cached; or, when another process (or thread) is asking the same, its answer once it
        lands (or the request taken over when that process dies). Nothing is paid twice."""
        body = self.body(messages)
        key = self.key(body)
        self.asked.add(key)
        while True:
            claim = self.cache.claim(key)
            if claim.answer is not None:
                self.ledger.record_cached()
                return Answer.stored(claim.answer)
            if claim.mine:
                break
            time.sleep(CLAIM_WAIT_S)
        max_tokens = int(self.sampling.get("max_tokens", 0))
        try:
            reserved = self.ledger.reserve(prompt_ceiling(body), max_tokens)
        except BudgetReached:
            self.cache.release(key)
            raise
        answer = None
        try:
            estimate = approx_tokens(str(body.get("messages") or body.get("prompt")))
            self.cache.mark_sent(key)
            answer = self._send(body, estimate, estimate + max_tokens)
            self.cache.put(
                key, answer.text, answer.prompt_tokens, answer.completion_tokens, "length" if answer.truncated else None
            )
        finally:
            if answer is None:
                self.cache.release(key)
            self.ledger.settle(reserved, answer)
        return answer

    def _send(self, body: dict[str, Any], estimate: int, tokens: int) -> Answer:
        """One request; a 200 that is no answer is sent again (the HTTP client retried the rest).
        With a controller, each attempt waits for its slot and a 429/503 is sent again once the
        controller's pause has passed."""
        path = "chat/completions" if self.api == "chat" else "completions"
        attempt = throttled = 0
        while True:
            try:
                return parse_response(self._post(path, body, tokens), self.api, estimate, self.raw_answers)
            except BadBody as e:
                attempt += 1
                self.client.retries.add()
                if attempt > self.client.max_retries:
                    raise NotAnAnswer(f"{e} (sent {attempt} times)") from None
                log.warning("%s; sending it again", e)
                time.sleep(self.client.backoff(attempt))
            except APIError as e:
                if self.controller is None or e.status not in (429, 503):
                    raise
                throttled += 1  # not the request's fault: sent again after the controller's pause
                self.client.retries.add()
                if throttled > MAX_THROTTLED:
                    raise

    def _post(self, path: str, body: dict[str, Any], tokens: int) -> Any:
        if self.controller is None:
            return self.client.post_json(path, body)
        headers: dict[str, str] = CaseInsensitiveDict()  # the answer's, as the controller reads them
        sent = self.controller.acquire(tokens)
        try:
            answer = self.client.post_json(path, body, headers)
        except APIError as e:
            if e.status in (429, 503):
                self.controller.throttled(e.headers)
            self.controller.done(sent, e.headers, ok=False)
            raise
        except BaseException:
            self.controller.done(sent, None, ok=False)
            raise
        self.controller.done(sent, headers)
        return answer


def parse_response(response: Any, api: str, prompt_estimate: int, raw: bool = False) -> Answer:
    """Text (stripped unless `raw`) and usage of a chat or completions response (usage estimated when
    the server gives none). A response with no text (`content: null`, no choices) is not an answer."""
    try:
        choice = response["choices"][0]
        text = choice["message"]["content"] if api == "chat" else choice["text"]
    except (KeyError, IndexError, TypeError):
        raise NotAnAnswer(f"not an answer: {str(response)[:300]}") from None
    if not isinstance(text, str):
        raise NotAnAnswer(f"an answer without text ({'content' if api == 'chat' else 'text'}: {text!r})")
    text = text if raw else text.strip()
    usage = response.get("usage") or {}
    return Answer(
        text,
        int(usage.get("prompt_tokens") or prompt_estimate),
        int(usage.get("completion_tokens") or approx_tokens(text)),
        cached=False,
        truncated=choice.get("finish_reason") == "length",
    )


def parse_batch_output(text: str, api: str) -> dict[str, Answer | str]:
    """A batch job's output file: custom_id -> its answer, or why that item failed."""
    answers: dict[str, Answer | str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        result = json.loads(line)
        response = result.get("response") or {}
        if response.get("status_code", 200) != 200 or "body" not in response:
            answers[result.get("custom_id", "")] = f"batch item failed: {str(result.get('error') or response)[:200]}"
            continue
        try:
            answers[result["custom_id"]] = parse_response(response["body"], api, 0)
        except NotAnAnswer as e:
            answers[result.get("custom_id", "")] = f"batch item failed: {e}"
    return answers


BATCH_PENDING = "pending:"  # a batch whose create was sent for this input file, its id not known yet


def ask_batch(
    teacher: ModelClient,
    client: Client,
    endpoint: str,
    label: str,
    requests: list[tuple[dict[str, Any], str]],
    work_dir: Path,
    poll_s: float,
    progress: bool,
) -> dict[str, Answer | str]:
    """Submit (or re-attach to) one Together batch of `requests` (body, cache key); wait; cache
    and return the answers (or why an item failed). The batch is recorded in the cache before
    anything waits on it: its input file first, then its id, so a re-run re-attaches."""
    batch_key = request_key({"batch": sorted(key for _, key in requests), "endpoint": endpoint})
    batch_id = teacher.cache.batch_id(batch_key)
    reconcile_later, until = None, time.monotonic() + RECONCILE_WINDOW_S
    creating = time.monotonic()
    if not batch_id or batch_id.startswith(BATCH_PENDING):
        file_id = batch_id.removeprefix(BATCH_PENDING) if batch_id else None
        if not file_id:
            with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
                requests_file = Path(tmp) / f"{label.replace(' ', '-')}.jsonl"
                with open(requests_file, "wb") as f:
                    for body, key in requests:
                        f.write(encode_line({"custom_id": key, "body": body}))
                file_id = upload_batch_file(client, requests_file)
            teacher.cache.put_batch(batch_key, BATCH_PENDING + file_id)
        created, reconcile_later = create_batch(client, file_id, endpoint)
        batch_id = str(created["id"])
        teacher.cache.put_batch(batch_key, batch_id)
    bar = tqdm(desc=f"distill: batch {label}", total=100, unit="%", disable=not progress)
    try:
        while True:
            job = get_batch(client, batch_id)
            if reconcile_later is not None and time.monotonic() < until:
                reconcile_later()  # an earlier attempt of a re-sent create may land while we wait
            bar.n = int(float(job.get("progress") or 0))
            bar.refresh()
            if job.get("status") in BATCH_DONE:
                break
            time.sleep(poll_s)
    finally:
        bar.close()
    # A re-sent create: the first attempt had this long to land, and gets as long again.
    settled = time.monotonic() + max(client.settle_s(), time.monotonic() - creating)
    while reconcile_later is not None and time.monotonic() < settled:
        time.sleep(1.0)
        reconcile_later()
    if job["status"] != "COMPLETED" or not job.get("output_file_id"):
        teacher.cache.put_batch(batch_key, "")  # finished for good: a re-run submits a new one
        raise RecipeError(
            f"Together batch {batch_id} ({label}) ended {job['status']}: {job.get('error') or 'no output'}; "
            "answers already cached are kept, a re-run submits the rest again"
        )
    answers = parse_batch_output(download_file(client, job["output_file_id"]), teacher.api)
    for key, answer in answers.items():
        if isinstance(answer, Answer):
            teacher.cache.put(
                key, answer.text, answer.prompt_tokens, answer.completion_tokens, "length" if answer.truncated else None
            )
    return answers


def _gguf(t: DictConfig) -> Path:
    return Path(t.gguf) if t.gguf else embedded_gguf()


def local_weights(t: DictConfig) -> str | None:
    """For a local model we start ourselves: which weights file answers (part of cache keys)."""
    if t.provider.value != "local" or t.base_url:
        return None
    gguf = _gguf(t)
    return f"{gguf.name}:{gguf.stat().st_size}"


@contextlib.contextmanager
def connected(t: DictConfig, root: DictConfig, stage: DictConfig, pool_size: int = 32) -> Iterator[Client]:
    """An HTTP client to the model a config node names (see `model_endpoint`), with the stage's
    `max_retries`, `timeout_s` and `retry_backoff_s`; closed (and a local server stopped) after.
    A local server this run started is killed when the client is abandoned (its answers cost nothing)."""
    with _endpoint(t, root) as (base_url, api_key, server):
        client = Client(
            base_url,
            api_key,
            max_retries=stage.max_retries,
            timeout_s=stage.timeout_s,
            backoff_s=stage.retry_backoff_s,
            pool_size=pool_size,
        )
        if server is not None:
            client.on_abandon.append(server.kill)
        try:
            yield client
        finally:
            client.close()


@contextlib.contextmanager
def model_endpoint(t: DictConfig, root: DictConfig) -> Iterator[tuple[str, str | None]]:
    """(base URL, key) of a teacher config node (`provider`, `model`, `base_url`, ...); a local
    teacher is started as a llama.cpp server on 127.0.0.1 and always stopped."""
    with _endpoint(t, root) as (base_url, api_key, _):
        yield base_url, api_key


@contextlib.contextmanager
def _endpoint(t: DictConfig, root: DictConfig) -> Iterator[tuple[str, str | None, LlamaCppServer | None]]:
    provider = t.provider.value
    if provider == "together":
        key = together_api_key(root)
        if not key:
            raise RecipeError(f"{t._get_full_key(None)}.provider=together needs TOGETHER_API_KEY in the environment")
        yield together_base_url(t.base_url or root.together.base_url), key, None
    elif provider == "openai_compatible":
        yield t.base_url, os.environ.get(t.api_key_env), None
    elif t.base_url:  # a local server someone already runs
        yield t.base_url, None, None
    else:
        with LlamaCppServer(_gguf(t), t.model, context_length=t.context_length) as server:
            yield server.base_url, None, server
