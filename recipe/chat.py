"""`recipe-chat`: talk to a deployed model, streaming tokens as they come.

    recipe-chat "What is the capital of Australia?"     # one prompt to the newest deployment
    recipe-chat                                         # an interactive chat (empty line or Ctrl-D ends)
    recipe-chat --url http://127.0.0.1:8000/v1 --model NAME "Hello"

Without --url it takes the newest deploy artifact in the store: a Together endpoint or model
(TOGETHER_API_KEY), or a local model, which it serves itself for the chat when no server of it is
running (the deploy stage's own server stops unless `deploy.foreground=true`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests
import sseclient

from recipe.artifacts import SERVING_RECORDS, Deployment, PromptFormat
from recipe.errors import RecipeError
from recipe.providers.http import Client, together_base_url
from recipe.providers.model_client import completion_request
from recipe.providers.serving import LocalServing, local_model
from recipe.store import ArtifactStore
from recipe.summary import printable


def serving_now(store: Path) -> Deployment | None:
    """The newest local deployment serving in the foreground right now (`deploy.foreground=true`):
    its process alive and its URL answering; None when there is none."""
    for record in reversed(ArtifactStore(store).records(SERVING_RECORDS)):
        try:
            os.kill(int(record["pid"]), 0)
        except (OSError, KeyError, ValueError):
            continue
        deployment = Deployment.from_record(record)
        if reachable(deployment.url):
            return deployment
    return None


def newest_deployment(store: Path) -> Deployment:
    manifests = sorted((store / "deploy").glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)
    if not manifests:
        raise RecipeError(f"no deployment in {store}: run `recipe stages=[deploy]` first, or pass --url and --model")
    return Deployment.from_manifest_file(manifests[-1])


def stream_chat(
    url: str,
    model: str,
    messages: list[dict[str, str]],
    key: str | None,
    max_tokens: int,
    fmt: PromptFormat | None = None,
    sampling: dict[str, Any] | None = None,
) -> Iterator[str]:
    """Yield the answer's text pieces from an OpenAI-compatible streaming completion, asked in the
    model's trained format: chat messages, or raw completions of the conversation in its template
    (`sampling`: more request fields, e.g. temperature, top_p, stop)."""
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "stream": True, **(sampling or {})}
    if fmt is None or fmt.kind == "chat_template":
        path, body["messages"] = "chat/completions", messages
    else:
        assert fmt.template is not None
        path = "completions"
        body.update(completion_request(messages, fmt.template))
    client = Client(url, key, timeout_s=600)
    finished = False  # a choice said why it stopped (finish_reason): some servers send no [DONE] after it
    try:
        with client.request("POST", path, json=body, stream=True) as response:
            try:
                # Server-sent events as the spec reads them (sseclient-py): multi-line data, comments,
                # named events, an event split over network chunks.
                for sse in sseclient.SSEClient(response.iter_content(chunk_size=None)).events():
                    data = sse.data.strip()
                    if data == "[DONE]":
                        return
                    try:
                        event = json.loads(data)
                    except ValueError:
                        raise Cut(f"the answer was cut: a broken event in the stream ({data[:60]!r})") from None
                    said = server_error(sse.event, event)
                    if said is not None:
                        raise ServerSaid(f"the server stopped the answer: {said}")
                    for choice in event.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content") if "delta" in choice else choice.get("text")
                        if piece:
                            yield piece
                        finished = finished or bool(choice.get("finish_reason"))
            except requests.RequestException as e:
                raise Cut(f"the answer was cut: the connection broke ({type(e).__name__})") from None
        if not finished:
            raise Cut("the answer was cut: the stream ended without [DONE] or a finish_reason")
    finally:
        client.close()


class Cut(RecipeError):
    """A streamed answer that did not arrive whole."""


class ServerSaid(RecipeError):
    """The server ended a streamed answer with an error event: its words."""


def server_error(kind: str, event: Any) -> str | None:
    """What an error event in the stream says, as OpenAI's SDK reads one: `event: error`, or data
    holding an `error` object (vLLM, Together and OpenAI send `{"error": {"message": ...}}`)."""
    error = event.get("error") if isinstance(event, dict) else None
    if kind != "error" and not error:
        return None
    detail = error or event
    return str(detail.get("message") or detail) if isinstance(detail, dict) else str(detail)


def reachable(url: str) -> bool:
    try:
        return requests.get(f"{url}/models", timeout=2).status_code < 500
    except requests.RequestException:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="recipe-chat", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("prompt", nargs="?", help="one prompt; without it, an interactive chat")
    parser.add_argument("--url", help="an OpenAI-compatible base URL (default: the newest deployment)")
    parser.add_argument("--model", help="the model name at that URL")
    parser.add_argument(
        "--key-env",
        help="an environment variable holding the key for --url (default: none, except TOGETHER_API_KEY "
        "for the Together base URL itself)",
    )
    parser.add_argument("--store", default="outputs/store", help="the artifact store (default: outputs/store)")
    parser.add_argument("--max-tokens", type=int, default=256)
    args = parser.parse_args(argv)
    try:
        with _endpoint(args) as (url, model, key, fmt):
            messages: list[dict[str, str]] = []
            prompts = [args.prompt] if args.prompt else _interactive()
            for prompt in prompts:
                messages.append({"role": "user", "content": prompt})
                answer = []
                try:
                    for piece in stream_chat(url, model, messages, key, args.max_tokens, fmt):
                        print(printable(piece), end="", flush=True)
                        answer.append(piece)
                finally:
                    print()
                messages.append({"role": "assistant", "content": "".join(answer)})
    except RecipeError as e:
        print(f"error: {printable(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print()
    return 0


def _interactive() -> Iterator[str]:
    while True:
        try:
            prompt = input("you> ").strip()
        except EOFError:
            return
        if not prompt:
            return
        yield prompt


def key_for(url: str, key_env: str | None) -> str | None:
    """The key a URL may be sent: the variable the user (or the deployment) paired with it, else the
    Together key for the Together base URL only; any other host gets none."""
    if key_env:
        key = os.environ.get(key_env)
        if not key:
            raise RecipeError(f"--key-env {key_env}: the variable is not set")
        return key
    if url.rstrip("/") == together_base_url(None).rstrip("/"):
        return os.environ.get("TOGETHER_API_KEY")
    return None


@contextlib.contextmanager
def _endpoint(args: argparse.Namespace) -> Iterator[tuple[str, str, str | None, PromptFormat]]:
    if args.url:
        if not args.model:
            raise RecipeError("--url needs --model")
        url = args.url.rstrip("/")
        yield url, args.model, key_for(url, args.key_env), PromptFormat("chat_template")
        return
    live = serving_now(Path(args.store))
    if live is not None:
        print(f"(asking {live.model}, served at {live.url})", file=sys.stderr)
        yield live.url, live.model, None, live.format
        return
    deployment = newest_deployment(Path(args.store))
    fmt = deployment.format
    if deployment.provider != "local":
        yield deployment.url, deployment.model, key_for(deployment.url, deployment.key_env), fmt
    elif reachable(deployment.url):
        yield deployment.url, deployment.model, None, fmt
    else:  # the deploy stage's server stopped: serve the same directory for this chat
        assert deployment.model_dir is not None
        model_dir, serving = Path(deployment.model_dir), LocalServing("transformers")
        with local_model(model_dir, serving, which="chat", weights=None, fmt=fmt, served_name=deployment.model) as m:
            yield m.url, m.model, None, fmt


if __name__ == "__main__":
    raise SystemExit(main())
