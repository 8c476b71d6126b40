"""`recipe playground` as a person uses it, in headless Chromium: a prompt to base and tuned (the
tiny test model, trained here, both behind `transformers serve`), both panes streaming, the prompt
text in the trained format, "keep" writing a line, the `<>` curl snippet answering; and its refusals."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .browser import browser  # noqa: F401  (the fixture)
from .conftest import RECIPE, read_until, tiny_common
from .subprocesses import limit
from .test_deploy import serve_processes
from .test_tracking import free_port

STREAM_WATCH = """
window.seen = {};
for (const which of ["base", "tuned", "teacher"]) {
  const pane = document.querySelector("#pane-" + which);
  window.seen[which] = new Set([pane.innerText.length]);
  new MutationObserver(() => window.seen[which].add(pane.innerText.length)).observe(
    pane, {subtree: true, childList: true, characterData: true});
}
"""


MAX_TOKENS = 24  # what the page is set to ask for


def wait(condition, what: str, timeout_s: float = 120) -> None:
    """Until `condition()` holds; an element not on the page yet (Gradio renders an accordion's
    content when it opens, later on a loaded machine) or replaced meanwhile counts as not yet."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    deadline = time.monotonic() + limit(timeout_s)
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (NoSuchElementException, StaleElementReferenceException):
            pass
        time.sleep(0.2)
    raise AssertionError(f"waited {limit(timeout_s):.0f} s for {what}")


@pytest.mark.slow
def test_the_playground_streams_both_models_side_by_side(
    run_cli,
    tmp_path: Path,
    tiny_model_dir: Path,
    spawn,
    browser,  # noqa: F811
) -> None:
    from selenium.webdriver.common.by import By

    # Tuned in a text template (the seed's llama2_inst); the base pane asks in the model's chat template.
    run_cli(*tiny_common(tiny_model_dir), "train.max_steps=2", "train.template=llama2_inst")
    (trained,) = (tmp_path / "outputs" / "store" / "train").iterdir()
    before = serve_processes()
    port, kept = free_port(), tmp_path / "kept.jsonl"
    started = time.monotonic()
    command = [RECIPE, "playground", "--train", str(trained), "--port", str(port), "--keep-file", str(kept)]
    command += ["--add", "distill.teacher"]  # a third pane: the experiment's teacher (the GGUF behind llama.cpp)
    proc = spawn(
        command,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    said = read_until(proc, r"playground: ready at http://127\.0\.0\.1:\d+", timeout_s=limit(300))
    browser.get(f"http://127.0.0.1:{port}/")
    find = lambda css: browser.find_element(By.CSS_SELECTOR, css)  # noqa: E731
    wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#prompt textarea"), "the page")
    usable = time.monotonic() - started
    # How much of each answer the panes show, as it streams in: recorded in the page on every change
    # (polling from here missed whole answers when the machine was loaded).
    browser.execute_script(STREAM_WATCH)
    # Short answers (the tiny model never stops on its own): set in the page, as a person would.
    from selenium.webdriver.common.keys import Keys

    find("#settings button").click()
    wait(lambda: find("#max_tokens input").is_displayed(), "the settings")
    box = find("#max_tokens input")
    box.send_keys(Keys.CONTROL + "a")
    box.send_keys(Keys.BACKSPACE, str(MAX_TOKENS), Keys.TAB)
    wait(lambda: box.get_attribute("value") == str(MAX_TOKENS), "max tokens set")
    find("#prompt textarea").send_keys("Name three colours.")
    find("#send").click()
    wait(lambda: "Done." in find("#status").text or "error" in find("#status").text, "the answers", 180)
    assert "Done." in find("#status").text, find("#status").text
    lengths = browser.execute_script(
        "return Object.fromEntries(Object.entries(window.seen).map(([k, v]) => [k, [...v]]))"
    )
    for which in ("base", "tuned", "teacher"):  # all answered, a piece at a time
        assert find(f"#pane-{which}").text.count("Name three colours.") == 1
        assert len(lengths[which]) >= 3, lengths
    # The prompt as each model read it: base and tuned in the tuned model's recorded format (the
    # llama2_inst text template); the teacher, a chat model, as the messages its server templates.
    find("#show-prompt input").click()
    shown = lambda w: browser.execute_script(  # noqa: E731
        f"const c = document.querySelector('#prompt-{w} .cm-content'); return c ? c.innerText : ''"
    )
    wait(lambda: "[INST] Name three colours. [/INST]" in shown("tuned"), "the tuned prompt text")
    wait(lambda: "[INST] Name three colours. [/INST]" in shown("base"), "the base prompt text")
    wait(lambda: '"content": "Name three colours."' in shown("teacher"), "the teacher's messages")
    # Keep, preferring tuned: one valid line in the project's conversation format.
    find("#prefer-tuned").click()
    wait(lambda: "Kept in" in find("#status").text, "the keep")
    (line,) = [json.loads(x) for x in kept.read_text().splitlines()]
    assert line["messages"] == [{"role": "user", "content": "Name three colours."}]
    assert line["preferred"] == "tuned" and set(line["answers"]) == {"base", "tuned", "teacher"}
    assert all(line["answers"].values()) and line["settings"]["max_tokens"] == MAX_TOKENS
    # Two more turns: each prompt sent is the whole conversation so far, as text in the model's
    # format (Gradio 6 hands the history back as content parts; the second turn once sent those).
    for text in ("And one more?", "Thanks."):
        find("#prompt textarea").send_keys(text)
        find("#send").click()
        answered = lambda t=text: find("#pane-tuned").text.count(t) == 1 and "Done." in find("#status").text  # noqa: E731
        wait(answered, text, 180)
        wait(lambda t=text: f"[INST] {t} [/INST]" in shown("tuned"), f"the tuned prompt text for {text!r}")
        wait(lambda t=text: f'"content": "{t}"' in shown("teacher"), f"the teacher's messages for {text!r}")
        sent = shown("tuned")
        assert sent.startswith("[INST] Name three colours. [/INST]") and "'type'" not in sent, sent
    # Two answers kept in the history, and the open turn: as text in the template, as messages for chat.
    assert sent.count("[INST]") == 3 and sent.count("[/INST]") == 3 and "<|im_start|>" not in sent, sent
    assert shown("base").count("[INST]") == 3
    messages = json.loads(shown("teacher").split("\n", 1)[1])
    assert [m["role"] for m in messages] == ["user", "assistant"] * 2 + ["user"], messages
    assert all(isinstance(m["content"], str) for m in messages) and messages[0]["content"] == "Name three colours."
    assert [m["content"] for m in messages[::2]] == ["Name three colours.", "And one more?", "Thanks."]
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(tmp_path / "playground-three-turns.png"))
    # Regenerate: the last prompt again, its answers replaced (not a fourth turn); a tie, kept.
    find("#regenerate").click()
    wait(lambda: "Answering" in find("#status").text or "Done." in find("#status").text, "the regeneration")
    wait(lambda: "Done." in find("#status").text, "the regenerated answers", 180)
    assert find("#pane-tuned").text.count("Thanks.") == 1 and find("#pane-tuned").text.count("And one more?") == 1
    find("#tie").click()
    wait(lambda: "preferred: tie" in find("#status").text, "the tie")
    tie = json.loads(kept.read_text().splitlines()[-1])
    assert tie["preferred"] == "tie" and tie["messages"][-1] == {"role": "user", "content": "Thanks."}
    assert len(tie["messages"]) == 5  # three prompts, two answers: the conversation as the model read it
    # The <> panel's curl snippet, copied from the page, answers.
    find("#api button").click()
    snippets = lambda: " ".join(e.text for e in browser.find_elements(By.CSS_SELECTOR, "#snippet-tuned"))  # noqa: E731
    wait(lambda: "curl -s" in snippets(), "the snippets")
    snippet = browser.execute_script("return document.querySelector('#snippet-tuned .cm-content').innerText")
    # It asks what the page asks (its max_tokens) and says its server stops with the playground.
    assert f'"max_tokens": {MAX_TOKENS}' in snippet and "stops with the playground" in snippet, snippet
    (curl,) = [x for x in snippet.splitlines() if x.startswith("curl ")]
    answer = subprocess.run(
        ["bash", "-c", curl + " -w '\\n%{http_code}'"], capture_output=True, text=True, timeout=limit(120)
    )
    body, _, status = answer.stdout.rpartition("\n")
    assert status == "200" and json.loads(body)["choices"], answer.stdout + answer.stderr
    # Nothing went wrong in the page, nothing was fetched from elsewhere.
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(u.startswith(f"http://127.0.0.1:{port}") for u in fetched), fetched
    browser.save_screenshot(str(tmp_path / "playground.png"))
    print(f"distinct lengths seen per pane: { {k: len(v) for k, v in lengths.items()} }")
    print(f"usable after {usable:.1f} s; screenshot {tmp_path / 'playground.png'}; {said.splitlines()[-1]}")
    # A page elsewhere rebound to 127.0.0.1 names its own host: refused; the loopback names are served.
    import requests

    foreign = requests.get(f"http://127.0.0.1:{port}/", headers={"Host": f"rebound.example:{port}"}, timeout=30)
    assert foreign.status_code == 400
    page = requests.get(f"http://127.0.0.1:{port}/", headers={"Host": f"localhost:{port}"}, timeout=30)
    assert page.ok and "img-src 'self'" in page.headers["content-security-policy"]
    # An image from elsewhere, as a model's Markdown would make one, is not fetched by the browser.
    browser.execute_script(
        "window.blocked = []; document.addEventListener('securitypolicyviolation', e => window.blocked.push(e.blockedURI));"
        "const img = new Image(); img.src = 'http://203.0.113.9/leak.png?q=secret'; document.body.appendChild(img);"
    )
    wait(lambda: browser.execute_script("return window.blocked.length"), "the image to be refused", 30)
    assert browser.execute_script("return window.blocked")[0].startswith("http://203.0.113.9")
    # Ctrl-C stops the playground and the model servers it started.
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=limit(60)) == 0
    wait(lambda: not serve_processes() - before, "the model servers to stop", 30)


def test_the_playground_refuses_clearly(recipe_here) -> None:
    """Off loopback without credentials, or with nothing trained: one line, exit 2, no traceback."""
    wide = recipe_here("playground", "--host", "0.0.0.0")
    assert wide.returncode == 2 and "give --auth user:password" in wide.stderr and "Traceback" not in wide.stderr
    empty = recipe_here("playground")
    assert empty.returncode == 2 and "Traceback" not in empty.stderr
    assert re.search(
        r"^error: no trained model in outputs/store: run `recipe stages=\[mix,train\]`", empty.stderr, re.M
    )
    from recipe.errors import RecipeError
    from recipe.playground import added, check_exposure, composed

    # A public link without credentials, or credentials with an empty part: refused before anything starts.
    for args, said in (
        (["--share"], "--share: a public link anyone who has it can open"),
        (["--host", "0.0.0.0", "--auth", "admin:"], "neither part empty"),
        (["--share", "--auth", ":secret"], "neither part empty"),
    ):
        proc = recipe_here("playground", *args)
        assert proc.returncode == 2 and said in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    check_exposure("127.0.0.1", False, None)  # loopback, no link: no credentials needed
    check_exposure("0.0.0.0", True, "me:secret")

    with pytest.raises(RecipeError, match=r"--add nope\.model: not a model in the experiment's config"):
        with added(composed([]), "nope.model"):
            pass


THREE_TURNS = [
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue.\n\nAnother: green."},
]


def test_a_chat_history_from_gradio_becomes_the_projects_conversation() -> None:
    """Gradio 6 hands a Chatbot's history back as lists of content parts (a string's text becomes
    `[{"type": "text", "text": ...}]`); Gradio 5 as strings. Both become role and text, through
    Gradio's own conversion of what the page showed."""
    gr = pytest.importorskip("gradio")
    from recipe.playground import from_chatbot

    box = gr.Chatbot()
    handed_back = box.preprocess(box.postprocess(THREE_TURNS))
    assert not isinstance(handed_back[0]["content"], str)  # Gradio 6: parts, as the page hands them
    assert from_chatbot(handed_back) == THREE_TURNS
    assert from_chatbot(THREE_TURNS) == THREE_TURNS  # Gradio 5's strings
    with_metadata = [{**m, "metadata": {"title": "t"}, "options": []} for m in THREE_TURNS]
    assert from_chatbot(with_metadata) == THREE_TURNS


def test_an_error_shown_in_a_pane_is_never_sent_back_as_the_models_words() -> None:
    """An answer cut by an error keeps what the model said; the error itself (a titled box in the
    pane) is not part of the conversation; an exchange that got no answer at all is dropped whole,
    so the next prompt never holds two user turns in a row. Through Gradio's own round trip."""
    gr = pytest.importorskip("gradio")
    from recipe.playground import error_note, from_chatbot

    box = gr.Chatbot()
    cut = [*THREE_TURNS[:2], {"role": "user", "content": "Go on."}, {"role": "assistant", "content": "Then"}]
    shown = [*cut, error_note("the server stopped the answer: model overloaded")]
    assert from_chatbot(box.preprocess(box.postprocess(shown))) == cut
    nothing = [*THREE_TURNS[:2], {"role": "user", "content": "Go on."}, {"role": "assistant", "content": ""}]
    shown = [*nothing, error_note("POST /v1/chat/completions: ConnectionError"), *THREE_TURNS[2:]]
    assert from_chatbot(box.preprocess(box.postprocess(shown))) == THREE_TURNS
    assert "overloaded" not in str(from_chatbot([*cut, error_note("model overloaded")]))


@pytest.mark.parametrize("template", ["llama2_inst", "chatml"])
def test_every_turns_prompt_is_rendered_from_the_text_of_the_conversation(template: str) -> None:
    """The third turn's prompt for a model trained in a text template: the earlier turns' text in
    that template, never Gradio's parts (the second turn once sent `[{'text': 'hi', 'type': 'text'}]`)."""
    gr = pytest.importorskip("gradio")
    from recipe.artifacts import PromptFormat
    from recipe.data import templates
    from recipe.playground import Pane, conversation, from_chatbot

    box = gr.Chatbot()
    history = box.preprocess(box.postprocess(THREE_TURNS))
    pane = Pane("tuned", "http://127.0.0.1:9/v1", "m", PromptFormat("text", template), "local-transformers", None)
    sent = pane.prompt_text(conversation("Be brief.", from_chatbot(history), "And a third?"))
    expected = [{"role": "system", "content": "Be brief."}, *THREE_TURNS, {"role": "user", "content": "And a third?"}]
    assert sent == templates.render_prompt(expected, template)
    assert "'type'" not in sent and "Hello! How can I help?" in sent and "hi" in sent
