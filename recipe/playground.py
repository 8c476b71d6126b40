"""`recipe playground`: the seed's step III and IV as it did them in Together's Playground: one
prompt to the base and the tuned model, both answers streaming side by side, and the `<>` snippets
that query the model as deployed.

    recipe playground                          # the newest trained model in outputs/store
    recipe playground --train outputs/store/train/<fingerprint>
    recipe playground --add distill.teacher              # a third pane: the experiment's teacher
    recipe playground --host 0.0.0.0 --auth me:secret     # another machine may connect: credentials

What it does:
- reaches base and tuned the way Test does (recipe/providers/serving.py): a locally trained model
  and its base each behind `transformers serve` on 127.0.0.1, started with the playground and
  stopped with it; a Together fine-tune and its base through Together's serverless API
  (TOGETHER_API_KEY, read here: the key never reaches the browser);
- prompts each model in the format its train artifact records (`PromptFormat`: chat messages, or
  raw completions rendered in the trained text template), and shows the exact prompt text sent;
- sampling controls default to the experiment's Test settings (`test.temperature`), with top_p,
  top_k, max tokens, repetition penalty, stop and a system prompt;
- "Keep" appends the exchange to a JSON Lines file (`outputs/playground/kept.jsonl`): the
  conversation as `messages` (the project's conversation format, ending with the prompt), both
  answers, the preference if one was clicked, the settings and the models;
- safe by default: binds 127.0.0.1, no public share link unless `--share`, a share link or a
  non-loopback bind only with `--auth` (or RECIPE_PLAYGROUND_AUTH=user:password, neither part
  empty); answers are rendered as sanitised Markdown (Gradio's chatbot strips raw HTML), never as
  HTML, with images from the playground only (a Content-Security-Policy); on loopback, requests
  must name a loopback host (DNS rebinding).

Gradio (the `playground` extra) is the ML ecosystem's usual demo toolkit: streaming generators,
a chatbot component that sanitises, auth and a loopback bind are built in.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import json
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from recipe.artifacts import PromptFormat, TrainedModel
from recipe.errors import RecipeError
from recipe.providers.http import Client, together_base_url
from recipe.providers.model_client import api_snippets, completion_request, transformers_sampling
from recipe.providers.serving import LocalServing, ModelAccess, reach
from recipe.store import ArtifactStore
from recipe.summary import printable

LOOPBACK = ("127.0.0.1", "localhost", "::1")
MODELS = ("base", "tuned")
# The sampling controls: request field, decimals shown (0: a whole number; None: any).
NUMBERS = (("temperature", None), ("top_p", None), ("top_k", 0), ("max_tokens", 0), ("repetition_penalty", None))


@dataclass
class Pane:
    """One model the playground asks: where, by which name, in which format."""

    which: str
    url: str
    model: str
    fmt: PromptFormat
    provider: str  # local-transformers | local-vllm | together
    key_env: str | None  # the environment variable holding its key (never the key itself)
    local_dir: Path | None = None
    _tokenizer: Any = None

    def request_fields(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Sampling fields as this engine needs them (transformers serve: sampling switched on)."""
        fields = {k: v for k, v in settings.items() if v not in (None, "", [])}
        if self.provider == "local-transformers":
            fields.update(transformers_sampling(fields))
            fields.pop("top_k", None), fields.pop("repetition_penalty", None)  # in its generation_config
        return fields

    def prompt_text(self, messages: list[dict[str, str]]) -> str:
        """The exact text the model reads: the trained text template's rendering, or the model's own
        chat template (a local model's tokenizer; a hosted model's is applied by its server)."""
        if self.fmt.kind == "text":
            assert self.fmt.template is not None
            return completion_request(messages, self.fmt.template)["prompt"]
        if self.local_dir is not None:
            if self._tokenizer is None:
                from transformers import AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(self.local_dir)
            return self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "(the server applies the model's chat template to these messages)\n" + json.dumps(messages, indent=2)

    def snippets(self, settings: dict[str, Any] | None = None, system: str = "") -> str:
        """`<>`: curl, Python requests and the openai client for this model, asking what the page
        asks: its system prompt and sampling settings (`settings`), its model name, in its format."""
        fields = self.request_fields({"max_tokens": 256, **(settings or {})})
        served = []
        if self.provider.startswith("local"):  # a server of the playground's own: it stops with it
            served = [
                "# This server stops with the playground; to serve the model on its own:",
                "#   recipe 'stages=[deploy]' deploy.foreground=true",
            ]
        hello = conversation(system, [], "Hello!")
        return "\n".join(
            [
                f"# {self.which}: {self.model} ({self.fmt.describe()})",
                *served,
                *api_snippets(self.url, self.model, self.key_env, self.fmt, hello, fields),
            ]
        )


def short_name(model: str) -> str:
    """A model's name as a pane header shows it: a path's last parts (a store's
    `train/<fingerprint>/merged` as `<fingerprint 8>/merged`), a hub id as it is."""
    parts = Path(model).parts
    if not model.startswith("/") or len(parts) < 2:
        return model
    return f"{parts[-2][:8]}/{parts[-1]}" if len(parts[-2]) > 12 else "/".join(parts[-2:])


def newest_trained(store: Path) -> Path:
    manifests = sorted((store / "train").glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)
    if not manifests:
        raise RecipeError(f"no trained model in {store}: run `recipe stages=[mix,train]` first (or pass --train)")
    return manifests[-1].parent


def load_trained(store: Path, named: str | None) -> tuple[TrainedModel, str]:
    """The train artifact `named` (its directory, or its fingerprint in the store), else the newest."""
    if named is None:
        path = newest_trained(store)
    elif Path(named).is_dir():
        path = Path(named)
    else:
        path = store / "train" / named
        if not path.is_dir():
            raise RecipeError(f"--train {named}: no such train artifact (a directory, or a fingerprint in {store})")
    artifact = ArtifactStore(path.parent.parent).get("train", path.name)
    if artifact is None:
        raise RecipeError(f"--train {path}: not a complete train artifact")
    return TrainedModel.load(artifact), path.name


def together_client() -> Client:
    key = os.environ.get("TOGETHER_API_KEY")
    if not key:
        raise RecipeError("a Together fine-tune: the playground needs TOGETHER_API_KEY in the environment")
    return Client(together_base_url(None), key)


def pane(access: ModelAccess) -> Pane:
    together = access.provider == "together"
    return Pane(
        access.which,
        access.url,
        access.model,
        access.format,
        access.provider,
        "TOGETHER_API_KEY" if together else None,
        access.local_dir,
    )


@contextlib.contextmanager
def reach_both(trained: TrainedModel, store: Path, serving: LocalServing) -> Iterator[dict[str, Pane]]:
    """Base and tuned, ready to be asked for as long as the block runs (local servers stop after)."""
    with contextlib.ExitStack() as stack:
        panes = {}
        for which in MODELS:
            access = stack.enter_context(
                reach(trained, which, store=ArtifactStore(store), local=serving, together=together_client)
            )
            panes[which] = pane(access)
        yield panes


def stream_both(
    panes: dict[str, Pane], histories: dict[str, list[dict[str, str]]], settings: dict[str, Any]
) -> Iterator[tuple[str, str | None, str | None]]:
    """Ask every pane at once; yield (which, piece, error) as pieces arrive, from any of them."""
    from recipe.chat import stream_chat

    pieces: queue.Queue[tuple[str, str | None, str | None, bool]] = queue.Queue()
    max_tokens = int(settings.get("max_tokens") or 256)
    fields = {k: v for k, v in settings.items() if k != "max_tokens"}

    def ask(which: str) -> None:
        p = panes[which]
        key = os.environ.get(p.key_env) if p.key_env else None
        try:
            for piece in stream_chat(
                p.url, p.model, histories[which], key, max_tokens, p.fmt, p.request_fields(fields)
            ):
                pieces.put((which, piece, None, False))
        except RecipeError as e:
            pieces.put((which, None, str(e), False))
        except Exception as e:  # a server gone mid-answer: said in the pane, not a traceback
            pieces.put((which, None, f"{type(e).__name__}: {e}", False))
        finally:
            pieces.put((which, None, None, True))

    threads = [threading.Thread(target=ask, args=(w,), daemon=True) for w in panes]
    for t in threads:
        t.start()
    running = len(threads)
    while running:
        which, piece, error, done = pieces.get()
        if done:
            running -= 1
        else:
            yield which, piece, error


def text_of(content: Any) -> str:
    """A chat message's text, as Gradio hands it: a string (Gradio 5), or a list of content parts,
    `{"type": "text", "text": ...}` beside files and components (Gradio 6), whose texts are joined."""
    if isinstance(content, str):
        return content
    parts = [content] if isinstance(content, dict) else list(content or [])
    texts = [p if isinstance(p, str) else p.get("text") for p in parts if isinstance(p, (str, dict))]
    return "\n".join(t for t in texts if isinstance(t, str))


ERROR_TITLE = "error (not part of the conversation: never sent to the model)"


def error_note(error: str) -> dict[str, Any]:
    """A failed answer's error, as a pane shows it: a titled box under the answer (Gradio's
    message metadata), which `from_chatbot` leaves out of the conversation."""
    return {"role": "assistant", "content": error, "metadata": {"title": ERROR_TITLE}}


def from_chatbot(history: Any) -> list[dict[str, str]]:
    """A Chatbot's history as the project's conversation: role and text only (Gradio's metadata and
    options dropped); the one place the page's format becomes ours, so every prompt is rendered from
    text and `kept.jsonl` holds conversations any source reads. An error shown in the pane is not
    the model's words: it is left out, and so is the exchange it ended when no answer came (two user
    turns in a row would break a text template's alternation)."""
    out: list[dict[str, str]] = []
    for message in history or []:
        if not isinstance(message, dict):
            continue
        if (message.get("metadata") or {}).get("title") == ERROR_TITLE:
            if len(out) >= 2 and out[-1]["role"] == "assistant" and not out[-1]["content"].strip():
                del out[-2:]
            continue
        if message.get("role") in ("user", "assistant", "system"):
            out.append({"role": message["role"], "content": text_of(message.get("content"))})
    return out


def conversation(system: str, history: list[dict[str, str]], prompt: str) -> list[dict[str, str]]:
    system_turn = [{"role": "system", "content": system}] if system.strip() else []
    return [*system_turn, *[m for m in history if m["role"] != "system"], {"role": "user", "content": prompt}]


def keep_line(
    path: Path,
    panes: dict[str, Pane],
    asked: dict[str, list[dict[str, str]]],
    answers: dict[str, str],
    preferred: str | None,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """Append one exchange: `messages` (the tuned pane's conversation, ending with the prompt),
    each model's conversation and answer, the preference, the settings, the models."""
    line = {
        "messages": asked["tuned"],
        "answers": answers,
        "conversations": asked,
        "preferred": preferred,
        "settings": settings,
        "models": {w: {"model": p.model, "format": p.fmt.describe(), "provider": p.provider} for w, p in panes.items()},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(line, ensure_ascii=False) + "\n")
    return line


def build(panes: dict[str, Pane], defaults: dict[str, Any], kept: Path) -> Any:
    import gradio as gr

    with gr.Blocks(title="recipe playground") as page:
        gr.Markdown(
            "## recipe playground\n"
            + " · ".join(
                f'**{w}**: <span title="{html.escape(p.model)}">`{short_name(p.model)}`</span> ({p.fmt.describe()})'
                for w, p in panes.items()
            ),
            elem_id="models",
        )
        with gr.Row():
            boxes = {
                w: gr.Chatbot(label=w, elem_id=f"pane-{w}", sanitize_html=True, render_markdown=True, height=380)
                for w in panes
            }
        prompt = gr.Textbox(label="Prompt (sent to both)", elem_id="prompt", lines=2)
        with gr.Row():
            send = gr.Button("Send", variant="primary", elem_id="send")
            stop_button = gr.Button("Stop", elem_id="stop")
            regenerate = gr.Button("Regenerate", elem_id="regenerate")
            clear = gr.Button("Clear", elem_id="clear")
        with gr.Row():
            keep = gr.Button("Keep this exchange", elem_id="keep")
            prefer = {w: gr.Button(f"Prefer {w}", elem_id=f"prefer-{w}") for w in panes}
            votes = {v: gr.Button(v.capitalize(), elem_id=v.replace(" ", "-")) for v in ("tie", "both bad")}
        status = gr.Markdown("", elem_id="status")
        with gr.Accordion("Settings", open=False, elem_id="settings"):
            system = gr.Textbox(label="System prompt", value="", elem_id="system")
            with gr.Row():
                numbers = [
                    gr.Number(label=name.replace("_", " "), value=defaults[name], elem_id=name, precision=digits)
                    for name, digits in NUMBERS
                ]
                stop = gr.Textbox(label="stop (comma-separated)", value="")
        show_prompt = gr.Checkbox(label="Show the prompt text sent", value=False, elem_id="show-prompt")
        prompts = {w: gr.Code(label=f"prompt sent to {w}", visible=False, elem_id=f"prompt-{w}") for w in panes}
        first = {name: defaults[name] for name, _ in NUMBERS if defaults.get(name)}  # what the page sends first
        with gr.Accordion("<> API", open=False, elem_id="api"):
            snippets = [
                gr.Code(value=p.snippets(first), label=f"{w}", language="shell", elem_id=f"snippet-{w}")
                for w, p in panes.items()
            ]
        last = gr.State({})  # the last exchange: what each model was asked and answered, the settings

        controls = [system, *numbers, stop]

        def settings_of(*values: Any) -> dict[str, Any]:
            *chosen, stops = values
            out = {name: value for (name, _), value in zip(NUMBERS, chosen, strict=True)}
            out["max_tokens"] = out["max_tokens"] or 256
            out["stop"] = [s for s in (x.strip() for x in (stops or "").split(",")) if s] or None
            return out

        def send_to_both(text: str, sys_prompt: str, *rest: Any) -> Iterator[list[Any]]:
            chosen, hist = rest[: len(NUMBERS) + 1], rest[len(NUMBERS) + 1 :]
            histories = {w: from_chatbot(h) for w, h in zip(panes, hist, strict=True)}
            if not text.strip():
                yield [*histories.values(), gr.update(), {}, "Type a prompt first."]
                return
            settings = settings_of(*chosen)
            asked = {w: conversation(sys_prompt, histories[w], text) for w in panes}
            for w in panes:
                histories[w] = [*histories[w], {"role": "user", "content": text}, {"role": "assistant", "content": ""}]
            errors: dict[str, str] = {}
            replies = {w: histories[w][-1] for w in panes}
            yield [*histories.values(), "", {}, "Answering…"]
            for which, piece, error in stream_both(panes, asked, settings):
                if error:
                    errors[which] = error
                    print(f"playground: {which}: {error}", file=sys.stderr)
                    histories[which].append(error_note(error))  # shown in the pane, never sent back
                elif piece:
                    replies[which]["content"] += piece
                yield [*histories.values(), "", {}, "Answering…"]
            answers = {w: replies[w]["content"] for w in panes}
            said = "; ".join(f"{w}: {e}" for w, e in errors.items())
            exchange = {"asked": asked, "answers": answers, "settings": {"system": sys_prompt, **settings}}
            yield [*histories.values(), "", exchange, f"error — {said}" if said else "Done."]

        send_event = send.click(
            send_to_both,
            [prompt, *controls, *boxes.values()],
            [*boxes.values(), prompt, last, status],
        )
        submit_event = prompt.submit(
            send_to_both, [prompt, *controls, *boxes.values()], [*boxes.values(), prompt, last, status]
        )

        def send_again(exchange: dict[str, Any], sys_prompt: str, *rest: Any) -> Iterator[list[Any]]:
            """The last prompt again, in place of its answers."""
            chosen, hist = rest[: len(NUMBERS) + 1], rest[len(NUMBERS) + 1 :]
            if not exchange:
                yield [*(from_chatbot(h) for h in hist), gr.update(), {}, "Nothing to regenerate yet."]
                return
            text = exchange["asked"][next(iter(panes))][-1]["content"]
            # Each pane's conversation before that prompt, as it was sent (an exchange that failed
            # is not in the pane's history: cutting the history's last two turns would lose one).
            before = [[m for m in exchange["asked"][w][:-1] if m["role"] != "system"] for w in panes]
            yield from send_to_both(text, sys_prompt, *chosen, *before)

        regenerate_event = regenerate.click(
            send_again, [last, *controls, *boxes.values()], [*boxes.values(), prompt, last, status]
        )
        stop_button.click(lambda: "Stopped.", None, [status], cancels=[send_event, submit_event, regenerate_event])

        def show_snippets(sys_prompt: str, *values: Any) -> list[str]:
            chosen = {k: v for k, v in settings_of(*values).items() if v is not None}
            return [p.snippets(chosen, sys_prompt) for p in panes.values()]

        for control in controls:
            control.change(show_snippets, controls, snippets)

        def show(on: bool, exchange: dict[str, Any], text: str, sys_prompt: str, *hist: Any) -> list[Any]:
            out = []
            for w, h in zip(panes, hist, strict=True):
                asked = (exchange.get("asked") or {}).get(w)
                if asked is None:  # nothing sent yet: what the next prompt would look like
                    asked = conversation(sys_prompt, from_chatbot(h), text or "…")
                out.append(gr.update(visible=on, value=panes[w].prompt_text(asked)))
            return out

        show_prompt.change(show, [show_prompt, last, prompt, system, *boxes.values()], list(prompts.values()))
        send_event.then(show, [show_prompt, last, prompt, system, *boxes.values()], list(prompts.values()))

        def keeper(preferred: str | None):
            def keep_it(exchange: dict[str, Any]) -> str:
                if not exchange:
                    return "Nothing to keep yet: send a prompt first."
                keep_line(kept, panes, exchange["asked"], exchange["answers"], preferred, exchange["settings"])
                return f"Kept in `{kept}`" + (f" (preferred: {preferred})" if preferred else "") + "."

            return keep_it

        keep.click(keeper(None), [last], [status])
        for w, button in prefer.items():
            button.click(keeper(w), [last], [status])
        for vote, button in votes.items():  # neither preferred: as good, or both bad
            button.click(keeper(vote), [last], [status])
        clear.click(lambda: [*([[]] * len(panes)), {}, ""], None, [*boxes.values(), last, status])
    return page


def theme() -> Any:
    """Gradio's default look with the system's fonts: its own theme fetches Google Fonts, and a
    playground on a machine without a network should not make a request it cannot answer."""
    import gradio as gr

    system = ["ui-sans-serif", "system-ui", "sans-serif"]
    return gr.themes.Default(font=system, font_mono=["ui-monospace", "monospace"])


def composed(overrides: list[str]) -> DictConfig | None:
    """The experiment's config (the playground's defaults and `--add`'s models), or None with a
    line saying why when it does not compose."""
    from hydra import compose, initialize_config_dir

    from recipe.cli import CONF_DIR

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=overrides)
    except Exception as e:
        print(f"playground: the experiment's config did not compose ({e}); using defaults", file=sys.stderr)
        return None


def defaults_from_config(cfg: DictConfig | None) -> dict[str, Any]:
    """The experiment's Test sampling settings (the playground answers as Test asked)."""
    temperature = float(cfg.test.temperature) if cfg is not None and cfg.get("test") else 0.0
    return dict(zip([name for name, _ in NUMBERS], (temperature, 1.0, 50, 256, 1.0), strict=True))


@contextlib.contextmanager
def added(cfg: DictConfig | None, key: str) -> Iterator[Pane]:
    """A third model by its config key (`distill.teacher`, `test.judge`): reached as Distill
    reaches a teacher (the embedded one started behind llama.cpp on 127.0.0.1)."""
    from recipe.providers.model_client import model_endpoint

    node = OmegaConf.select(cfg, key) if cfg is not None else None
    if node is None or "provider" not in node or "model" not in node:
        raise RecipeError(f"--add {key}: not a model in the experiment's config (e.g. distill.teacher, test.judge)")
    provider = node.provider.value
    fmt = PromptFormat("chat_template") if node.api.value == "chat" else PromptFormat("text", node.template)
    key_env = {"together": "TOGETHER_API_KEY", "openai_compatible": node.get("api_key_env")}.get(provider)
    with model_endpoint(node, cfg) as (url, _):
        yield Pane(key.split(".")[-1], url, node.model, fmt, provider, key_env)


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


IMAGES_FROM_HERE = "img-src 'self' data: blob:; media-src 'self' data: blob:"


class ImagesFromHere:
    """Every page may show images and media from the playground itself only (a Content-Security-
    Policy): a model's Markdown image `![](http://elsewhere/?q=...)` is not fetched, so an answer
    cannot send the conversation out in a URL's query string."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_policy(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (b"content-security-policy", IMAGES_FROM_HERE.encode()),
                ]
            await send(message)

        await self.app(scope, receive, with_policy)


def guards(host: str) -> dict[str, Any]:
    """The app's own middleware: images from the playground only (ImagesFromHere) and, on loopback,
    requests that name a loopback host (a page elsewhere whose name was rebound to 127.0.0.1, DNS
    rebinding, sends its own name in `Host:` and is answered 400, never the app)."""
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    middleware = [Middleware(ImagesFromHere)]
    if host in ("127.0.0.1", "localhost"):
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost"]))
    return {"middleware": middleware}


def check_exposure(host: str, share: bool, auth: str | None) -> None:
    """Who could reach the playground, and the credentials that must then guard it: off loopback or
    with a public share link, `user:password`, both parts non-empty."""
    if share and not auth:
        raise RecipeError(
            "--share: a public link anyone who has it can open; give --auth user:password (or RECIPE_PLAYGROUND_AUTH)"
        )
    if host not in LOOPBACK and not auth:
        raise RecipeError(
            f"--host {host}: other machines could reach the playground; give --auth user:password "
            "(or RECIPE_PLAYGROUND_AUTH) to bind beyond 127.0.0.1"
        )
    if auth is not None:
        user, _, password = auth.partition(":")
        if not user.strip() or not password:
            raise RecipeError("--auth: write it as user:password, neither part empty")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="recipe playground", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", help="config overrides naming the experiment (its Test settings)")
    parser.add_argument("--train", help="a train artifact's directory or fingerprint (default: the newest)")
    parser.add_argument("--store", type=Path, default=Path("outputs/store"))
    parser.add_argument("--host", default="127.0.0.1", help="the address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also open a public Gradio share link")
    parser.add_argument("--auth", help="user:password (or RECIPE_PLAYGROUND_AUTH); required off loopback")
    parser.add_argument("--keep-file", type=Path, default=Path("outputs/playground/kept.jsonl"))
    parser.add_argument("--device", default="cpu", help="local models: the device to serve on")
    parser.add_argument(
        "--add", action="append", default=[], metavar="KEY", help="a third model by config key, e.g. distill.teacher"
    )
    args = parser.parse_args(argv)
    auth = args.auth or os.environ.get("RECIPE_PLAYGROUND_AUTH")
    try:
        check_exposure(args.host, args.share, auth)
        try:
            import gradio  # noqa: F401
        except ImportError:
            raise RecipeError("recipe playground needs gradio: pip install 'recipe[playground]'") from None
        trained, fingerprint = load_trained(args.store, args.train)
        cfg = composed(args.overrides)
        defaults = defaults_from_config(cfg)
        started = time.monotonic()
        print(f"playground: train artifact {fingerprint} ({trained.provider}); reaching base and tuned…", flush=True)
        with contextlib.ExitStack() as stack:
            panes = stack.enter_context(reach_both(trained, args.store, LocalServing("auto", args.device)))
            for key in args.add:
                third = stack.enter_context(added(cfg, key))
                panes[third.which] = third
            page = build(panes, defaults, args.keep_file)
            credentials = tuple(auth.split(":", 1)) if auth else None
            page.queue().launch(
                app_kwargs=guards(args.host),
                theme=theme(),
                server_name=args.host,
                server_port=args.port,
                share=args.share,
                auth=credentials,
                prevent_thread_lock=True,
                quiet=True,
                show_error=True,  # an exception in a handler shows its text, not a bare "Error"
            )
            print(
                f"playground: ready at http://{args.host}:{args.port} after {time.monotonic() - started:.1f} s "
                "(Ctrl-C stops it and the model servers)",
                flush=True,
            )
            signal.signal(signal.SIGTERM, _stop)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                print("playground: stopping", flush=True)
            finally:
                page.close()
    except RecipeError as e:
        print(f"error: {printable(str(e))}", file=sys.stderr)
        return 2
    return 0
