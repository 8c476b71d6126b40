"""The next round of faults: answers paid twice across processes, budgets at concurrency, answers
that are not answers, redirects that would carry a prompt or a create elsewhere."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recipe.errors import RecipeError
from recipe.runner import run
from recipe.store import inventory, note_sha256, sha256_file

from . import test_distill as distill
from .conftest import RECIPE, TOGETHER_KEY
from .fake_together import FakeTogether
from .subprocesses import limit, run_to_end
from .test_distill import conversations
from .test_distill import together as distill_cfg
from .test_train import train_cfg


def sent_bodies(fake: FakeTogether) -> list[str]:
    return [json.dumps(r.body, sort_keys=True) for r in fake.posts("/v1/completions")]


def distill_args(tmp_path: Path, store: str, *extra: str) -> list[str]:
    """Distill into its own store, on a cache shared with the other runs of the test."""
    return distill.distill_args(tmp_path, f"store_dir={tmp_path / store}", *extra, cache="shared-cache.sqlite")


# ---- 2. two processes never pay for the same answer -----------------------------------------------


def test_two_processes_sharing_a_cache_pay_for_each_answer_once(tmp_path: Path, fake: FakeTogether, spawn) -> None:
    """Two runs with different stores (two sweeps, two terminals) on one request cache."""
    fake.delay_s = 0.05
    env = {**os.environ, "TOGETHER_API_KEY": TOGETHER_KEY, "TOGETHER_BASE_URL": fake.base_url}
    runs = [
        spawn(distill_args(tmp_path, f"store{i}", "distill.concurrency=8"), cwd=tmp_path, env=env) for i in range(2)
    ]
    assert [p.wait(timeout=limit(600)) for p in runs] == [0, 0]
    bodies = sent_bodies(fake)
    assert len(bodies) > 40 and len(bodies) == len(set(bodies))  # every answer bought once
    made = [next((tmp_path / f"store{i}" / "distill").glob("*/conversations.jsonl")).read_bytes() for i in range(2)]
    assert made[0] == made[1] and made[0].count(b"\n") > 30  # both got every conversation, the same answers


@pytest.mark.slow
def test_resends_after_crashes_are_counted_across_every_crash(tmp_path: Path, fake: FakeTogether, spawn) -> None:
    """Three kill -9s in a row, then a run to the end: its manifest counts every request that was on
    the wire at any of the kills and was sent again (what the server saw twice)."""
    fake.delay_s = 0.4
    env = {**os.environ, "TOGETHER_API_KEY": TOGETHER_KEY, "TOGETHER_BASE_URL": fake.base_url}
    args = distill_args(tmp_path, "store", "distill.concurrency=4")
    for _ in range(3):
        before = len(fake.posts("/v1/completions"))
        proc = spawn(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + limit(120)
        while len(fake.posts("/v1/completions")) < before + 6 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(0.5)  # the requests the dead process left on the wire reach the server
    fake.delay_s = 0
    run_to_end(args, cwd=tmp_path, env=env, timeout_s=900)
    bodies = sent_bodies(fake)
    resent = len(bodies) - len(set(bodies))  # what the server read twice
    (manifest,) = [json.loads(p.read_text()) for p in (tmp_path / "store" / "distill").glob("*/manifest.json")]
    # Every request that had left when a run died and was sent again; one cut before the server read
    # it whole (the fake drops those unrecorded) counts too: it was sent again. At most 4 a kill.
    assert resent >= 3 and resent <= manifest["resent_after_crash"] <= resent + 3 * 4


# ---- 3. a budget is a ceiling, also at concurrency 32 --------------------------------------------


def worst_usage(body: dict, text: str) -> tuple[int, int]:
    """A server that bills a prompt at a token per byte and every answer at its max_tokens."""
    prompt = json.dumps(body.get("messages") if "messages" in body else body["prompt"], ensure_ascii=False)
    return len(prompt.encode()), body["max_tokens"]


def test_a_distill_budget_is_a_ceiling_at_concurrency_32(make_cfg, tmp_path: Path, fake: FakeTogether) -> None:
    fake.usage, fake.finish_reason = worst_usage, lambda body: "length"
    fake.delay_s = 0.05
    prices = ("distill.prices.input_per_mtok=1000", "distill.prices.output_per_mtok=1000")
    cfg = distill_cfg(
        make_cfg,
        tmp_path,
        *prices,
        "distill.max_conversations=40",
        "distill.sampling.max_tokens=256",
        "distill.budget.max_usd=2",
        "distill.concurrency=32",
        "preflight=warn",  # the plan is over the budget too: this tests the budget during the run
    )
    with pytest.raises(RecipeError, match=r"distill.budget.max_usd=2(\.0)? reached"):
        run(cfg, run_dir=tmp_path)
    spent = sum(sum(worst_usage(r.body, "")) * 1000 / 1e6 for r in fake.posts("/v1/completions"))
    entry = json.loads((tmp_path / "run.json").read_text())["stages"]["distill"]
    assert 0 < spent <= 2 and entry["cost_usd"] == pytest.approx(spent)


def test_a_test_budget_is_a_ceiling_at_concurrency_32(make_cfg, tmp_path: Path, fake: FakeTogether) -> None:
    from .test_eval import answer_and_judge, together_test

    fake.answer, fake.usage = answer_and_judge, worst_usage
    priced = ("test.prices.input_per_mtok=1000", "test.prices.output_per_mtok=1000", "test.concurrency=32")
    cfg = together_test(
        make_cfg, f"test.cache_path={tmp_path}/cache.sqlite", *priced, "test.budget.max_usd=3", "preflight=warn"
    )
    with pytest.raises(RecipeError, match=r"test.budget.max_usd=3(\.0)?: the budget is spent"):
        run(cfg, run_dir=tmp_path)
    chats = fake.posts("/v1/chat/completions") + fake.posts("/v1/completions")
    spent = sum(sum(worst_usage(r.body, "")) * 1000 / 1e6 for r in chats)
    assert 0 < spent <= 3


# ---- 5. teacher answers that are not answers -------------------------------------------------------


@pytest.mark.parametrize("kind", ["html", "stream", "null"])
def test_an_answer_that_is_not_one_is_retried_and_never_cached(
    make_cfg, tmp_path: Path, fake: FakeTogether, kind: str
) -> None:
    fake.bad_answer(kind, times=2, paths=("/v1/chat/completions",))
    record = run(distill_cfg(make_cfg, tmp_path, "distill.teacher.api=chat"), run_dir=tmp_path)
    assert record["stages"]["distill"]["status"] == "ok"
    convs = conversations(record)
    assert all(m["content"].startswith("answer ") for c in convs for m in c["messages"] if m["role"] == "assistant")
    manifest = json.loads((Path(record["stages"]["distill"]["artifact"]) / "manifest.json").read_text())
    assert manifest["retries"] >= 2


def test_a_server_that_never_answers_fails_its_conversations_and_the_run_goes_on(
    make_cfg, tmp_path: Path, fake: FakeTogether
) -> None:
    fake.bad_answer("null", times=1000, paths=("/v1/chat/completions",))
    overrides = ("distill.teacher.api=chat", "distill.max_retries=1", "distill.max_failure_share=1.0")
    record = run(distill_cfg(make_cfg, tmp_path, *overrides), run_dir=tmp_path)
    manifest = json.loads((Path(record["stages"]["distill"]["artifact"]) / "manifest.json").read_text())
    assert manifest["conversations"]["distilled"] == 0 and manifest["conversations"]["failed"] == 6
    fake.clear_faults()  # fixed: asked again, since nothing that was not an answer was cached
    again = run(distill_cfg(make_cfg, tmp_path, *overrides, f"store_dir={tmp_path / 's2'}"), run_dir=tmp_path)
    assert len(conversations(again)) == 6


@pytest.mark.parametrize("keep", [True, False])
def test_answers_cut_at_max_tokens_are_counted_and_a_key_decides(
    make_cfg, tmp_path: Path, fake: FakeTogether, keep: bool
) -> None:
    fake.finish_reason = lambda body: "length" if "haiku" in json.dumps(body).lower() else "stop"
    record = run(
        distill_cfg(make_cfg, tmp_path, "distill.max_conversations=12", f"distill.keep_truncated={keep}"),
        run_dir=tmp_path,
    )
    manifest = json.loads((Path(record["stages"]["distill"]["artifact"]) / "manifest.json").read_text())
    cut = manifest["truncated"]
    assert cut["answers"] >= 1 and cut["conversations"] >= 1 and cut["kept"] is keep
    written = conversations(record)
    assert any("haiku" in json.dumps(c).lower() for c in written) is keep
    assert manifest["conversations"]["truncated_left_out"] == (0 if keep else cut["conversations"])


# ---- 6. redirects ----------------------------------------------------------------------------------


def test_a_redirect_never_carries_a_prompt_or_a_create_to_another_host(
    make_cfg, tmp_path: Path, fake: FakeTogether
) -> None:
    with FakeTogether() as elsewhere:
        fake.redirect(f"{elsewhere.base_url}/chat/completions", times=100, paths=("/v1/chat/completions",))
        overrides = ("distill.teacher.api=chat", "distill.max_retries=0", "distill.max_failure_share=1.0")
        record = run(distill_cfg(make_cfg, tmp_path, *overrides), run_dir=tmp_path)
        manifest = json.loads((Path(record["stages"]["distill"]["artifact"]) / "manifest.json").read_text())
        assert (
            manifest["failed"]
            and f"redirected to {elsewhere.base_url}/chat/completions" in manifest["failed"][0]["error"]
        )
        fake.clear_faults()
        fake.redirect(f"{elsewhere.base_url}/fine-tunes", times=10, paths=("/v1/fine-tunes",), status=308)
        with pytest.raises(RecipeError, match=r"redirected to http://127\.0\.0\.1:\d+/v1/fine-tunes: not followed"):
            run(train_cfg(make_cfg), run_dir=tmp_path)
        assert elsewhere.requests == [] and fake.jobs == {}  # nothing reached the other host; no job adopted


# ---- 4. what is reused is what was made -------------------------------------------------------------


def artifact_dir(record: dict, stage: str) -> Path:
    return Path(record["stages"][stage]["artifact"])


def test_a_mixture_edited_after_it_was_made_is_never_uploaded(make_cfg, tmp_path: Path, fake: FakeTogether) -> None:
    first = run(train_cfg(make_cfg), run_dir=tmp_path)
    mixture = artifact_dir(first, "mix") / "mixture.jsonl"
    original = mixture.read_bytes()
    edited = original.replace(b"a", b"e", 1)  # by hand, still valid JSON, the same size
    mixture.write_bytes(edited)
    # Train alone reads the mixture from the store: refused, naming the file, before any request.
    sent = len(fake.requests)
    with pytest.raises(
        RecipeError, match=r"the mix artifact \w+ that train reads is damaged: .*mixture\.jsonl changed"
    ):
        run(train_cfg(make_cfg, "stages=[train]", "train.args.n_epochs=2"), run_dir=tmp_path)
    assert len(fake.requests) == sent
    # With Mix in the run, it is built again; what is uploaded is what Mix made.
    again = run(train_cfg(make_cfg, "train.args.n_epochs=2"), run_dir=tmp_path)
    assert not again["stages"]["mix"]["cache_hit"] and mixture.read_bytes() == original
    assert all(edited != data for data in fake.files.values())


def test_an_artifacts_listing_holds_each_files_own_sha256(make_cfg, tmp_path: Path, fake: FakeTogether) -> None:
    """Mix hands the digests it computed while writing to the listing: they must be the files' own."""
    first = run(train_cfg(make_cfg), run_dir=tmp_path)
    mix_dir = artifact_dir(first, "mix")
    listed = json.loads((mix_dir / "manifest.json").read_text())["files"]
    assert {"mixture.jsonl", "conversations.jsonl"} <= set(listed)
    for name, made in listed.items():
        assert made["sha256"] == sha256_file(mix_dir / name), name


def test_a_writers_digest_is_taken_only_for_the_file_as_it_was_written(tmp_path: Path) -> None:
    made = tmp_path / "out.jsonl"
    made.write_bytes(b'{"text": "a"}\n')
    claimed = "0" * 64  # not the file's digest: the listing shows whether it was taken or the file read
    note_sha256(made, claimed)
    assert inventory(tmp_path)["out.jsonl"]["sha256"] == claimed
    for change in ("size", "time"):
        note_sha256(made, claimed)
        if change == "size":
            made.write_bytes(b'{"text": "ab"}\n')
        else:
            st = made.stat()
            os.utime(made, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
        assert inventory(tmp_path)["out.jsonl"]["sha256"] == sha256_file(made), change


def test_bytes_that_leave_the_machine_are_hashed_again_before_they_go(
    make_cfg, tmp_path: Path, fake: FakeTogether
) -> None:
    """An edit that keeps the size and the modification time (the cheap check passes) is still
    caught before the upload: the bytes are hashed against the manifest."""
    as_is = ("train.format=mixture", "mix.template=llama2_inst")  # mixture.jsonl goes as it is
    first = run(train_cfg(make_cfg, *as_is), run_dir=tmp_path)
    mixture = artifact_dir(first, "mix") / "mixture.jsonl"
    st = mixture.stat()
    mixture.write_bytes(mixture.read_bytes().replace(b"a", b"e", 1))
    os.utime(mixture, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(RecipeError, match=r"mixture\.jsonl: its sha256 is not the one the mix artifact recorded"):
        run(train_cfg(make_cfg, *as_is, "train.args.n_epochs=2"), run_dir=tmp_path)
    assert len(fake.posts("/v1/files")) == 1  # only the first run's upload


@pytest.mark.slow
def test_a_trained_model_with_its_weights_deleted_is_not_a_cache_hit(run_cli, tmp_path: Path, tiny_model_dir) -> None:
    from .conftest import tiny_common

    run_cli(*tiny_common(tiny_model_dir), "train.max_steps=1")
    (merged,) = (tmp_path / "outputs" / "store" / "train").glob("*/merged")
    weights = next(merged.glob("*.safetensors"))
    weights.unlink()
    refused = run_cli(*tiny_common(tiny_model_dir), "train.max_steps=1", "stages=[test]", "~deploy", check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"that test reads is damaged: {weights} is missing" in refused.stderr
    rebuilt = run_cli(*tiny_common(tiny_model_dir), "train.max_steps=1")
    assert f"train: {weights} is missing: building it again" in rebuilt.stdout and weights.is_file()


@pytest.mark.slow
def test_prune_never_removes_what_a_running_run_reads(run_cli, tmp_path: Path, fake: FakeTogether, spawn) -> None:
    """A Train that follows a slow job reads the Mix artifact all along: prune --unused-for 0 keeps it."""
    fake.job_steps = 40
    env = {**os.environ, "TOGETHER_API_KEY": TOGETHER_KEY, "TOGETHER_BASE_URL": fake.base_url}
    train = spawn(
        [
            RECIPE,
            "stages=[mix,train]",
            "mix=samples",
            "train=together_lora",
            "train.poll_s=0.1",
            "train.progress=false",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + limit(120)
    while not fake.jobs and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.jobs, "the job was never created"
    pruned = run_cli("store", "prune", "--unused-for", "0").stdout
    (mix,) = (tmp_path / "outputs" / "store" / "mix").glob("*/manifest.json")
    assert f"skipped mix/{mix.parent.name}: in use (locked)" in pruned and mix.is_file()
    assert train.wait(timeout=limit(300)) == 0
    pruned = run_cli("store", "prune", "--unused-for", "0").stdout
    assert f"removed mix/{mix.parent.name}" in pruned  # no run reads it now


def processes_marked(mark: str) -> list[int]:
    """Processes whose environment carries `mark` (a run and everything it started)."""
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if mark.encode() in environ.read_bytes():
                pids.append(int(environ.parent.name))
        except OSError:
            continue
    return pids


@pytest.mark.slow
def test_kill_9_during_mix_leaves_no_workers_and_prune_clears_its_build(run_cli, tmp_path: Path, spawn) -> None:
    big = tmp_path / "big.jsonl"
    with open(big, "w") as f:  # ~130 MB: Mix reads it with worker processes
        for i in range(400_000):
            f.write(json.dumps({"prompt": f"Question {i}: " + "words " * 40, "completion": f"Answer {i}"}) + "\n")
    mark = f"RECIPE_TEST_MARK_{os.getpid()}_{time.monotonic_ns()}"
    env = {**os.environ, mark: "1"}
    args = [
        RECIPE,
        "stages=[mix]",
        "mix=samples",
        "mix.workers=2",
        "+source@sources.big=booksum_sample",
        f"sources.big.data_files=[{big}]",
        "mix.components.booksum.source=big",
    ]
    proc = spawn(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = tmp_path / "outputs" / "store" / "mix"
    deadline = time.monotonic() + limit(240)
    while time.monotonic() < deadline and not (list(store.glob(".tmp-*")) and len(processes_marked(mark)) >= 3):
        time.sleep(0.1)
    assert list(store.glob(".tmp-*")), "Mix never started building"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + limit(30)
    while processes_marked(mark) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_marked(mark) == [], "worker processes outlived the run"
    pruned = run_cli("store", "prune", "--unused-for", "1000").stdout
    assert "a build whose builder is gone" in pruned and not list(store.glob(".tmp-*"))


# ---- 5 (cont.). recipe-chat: a stream that does not arrive whole ---------------------------------


class _BrokenStream:
    """An OpenAI-compatible server whose streams end early: without [DONE], or cut inside an event."""

    def __init__(self, ending: bytes, pieces: tuple[str, ...] = ("Canberra is",)) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                events = [{"choices": [{"index": 0, "delta": {"content": piece}}]} for piece in pieces]
                body = "".join(f"data: {json.dumps(e)}\n\n" for e in events).encode() + ending
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    def __enter__(self) -> str:
        import threading

        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize(
    ("ending", "said"),
    [
        (b"", "the stream ended without [DONE] or a finish_reason"),
        (b'data: {"choices": [{"delta": {"cont', "a broken event"),
    ],
    ids=["no-done", "mid-json"],
)
def test_recipe_chat_says_a_cut_answer_was_cut_and_exits_non_zero(ending: bytes, said: str) -> None:
    import sys

    with _BrokenStream(ending) as url:
        chat = subprocess.run(
            [str(Path(sys.executable).parent / "recipe-chat"), "--url", url, "--model", "m", "Capital of Australia?"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert chat.returncode == 2 and "Canberra is" in chat.stdout
    assert f"error: the answer was cut: {said}" in chat.stderr and "Traceback" not in chat.stderr


@pytest.mark.parametrize(
    ("ending", "code", "out", "said"),
    [
        (  # what vLLM, Together and OpenAI send when a stream fails mid-answer
            b'data: {"error": {"message": "model overloaded, retry later", "code": 503}}\n\n',
            2,
            "Canberra is",
            "error: the server stopped the answer: model overloaded, retry later",
        ),
        (
            b'event: error\ndata: {"message": "internal error"}\n\n',
            2,
            "Canberra is",
            "the server stopped the answer: internal error",
        ),
        (  # one event's data over two lines, as the spec allows: read whole
            b'data: {"choices": [{"index": 0,\ndata: "delta": {"content": " the capital."}, "finish_reason": "stop"}]}\n\n'
            b"data: [DONE]\n\n",
            0,
            "Canberra is the capital.",
            "",
        ),
    ],
    ids=["error-data", "error-event", "multi-line"],
)
def test_recipe_chat_reads_the_stream_as_server_sent_events(ending: bytes, code: int, out: str, said: str) -> None:
    """The stream read by an SSE parser: a server's error event is reported in its own words (it
    once read as "the answer was cut"), and an event whose data spans lines is read whole."""
    import sys

    with _BrokenStream(ending) as url:
        chat = subprocess.run(
            [str(Path(sys.executable).parent / "recipe-chat"), "--url", url, "--model", "m", "Capital of Australia?"],
            capture_output=True,
            text=True,
            timeout=limit(120),
        )
    assert (chat.returncode, chat.stdout.strip()) == (code, out), chat.stderr
    assert said in chat.stderr and "Traceback" not in chat.stderr and ("cut" not in chat.stderr), chat.stderr


def test_recipe_chat_shows_a_models_escape_sequences_instead_of_obeying_them() -> None:
    """An answer may hold what a terminal acts on: a clipboard write (OSC 52), a screen clear, a
    carriage return over the line, a bidi override, an escape split across two stream events."""
    import sys

    pieces = (
        "Canberra\x1b]52;c;Y3VybCBldmlsIHwgc2g=\x07 is",
        "\x1b[2J\x1b[H the\r capital\u202e",
        "\x1b",
        "[31m.\n\tDone",
    )
    done = b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n'
    with _BrokenStream(done, pieces) as url:
        chat = subprocess.run(
            [str(Path(sys.executable).parent / "recipe-chat"), "--url", url, "--model", "m", "Capital of Australia?"],
            capture_output=True,
            timeout=120,
        )
    out = chat.stdout.decode()
    assert chat.returncode == 0, chat.stderr
    assert not any((ord(c) < 32 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F or c == "\u202e" for c in out)
    assert out == (
        "Canberra\\x1b]52;c;Y3VybCBldmlsIHwgc2g=\\x07 is\\x1b[2J\\x1b[H the\\r capital\\u202e\\x1b[31m.\n\tDone\n"
    )


# ---- 7. salvage every readable answer -----------------------------------------------------------------


def test_a_damaged_cache_keeps_every_row_readable_on_its_own(tmp_path: Path) -> None:
    import sqlite3

    from recipe.providers.cache import RequestCache

    path = tmp_path / "cache.sqlite"
    cache = RequestCache(path)
    for i in range(404):
        cache.put(f"key-{i}", f"an answer that was paid for, number {i} " * 8, 10, 20)
    cache.close()
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    middle = (len(data) // page) // 2
    data[middle * page + 8 : (middle + 1) * page] = b"\xa5" * (page - 8)  # one page of the table overwritten
    path.write_bytes(bytes(data))
    # What a reader gets row by row from the damaged file (the reference: SQLite itself, one query a row).
    copy = tmp_path / "reference.sqlite"
    copy.write_bytes(bytes(data))
    db = sqlite3.connect(f"file:{copy}?immutable=1", uri=True)
    readable = 0
    for rowid in range(1, 405):
        try:
            readable += len(db.execute("SELECT key FROM answers WHERE rowid = ?", (rowid,)).fetchall())
        except sqlite3.DatabaseError:
            pass
    db.close()
    cache = RequestCache(path)
    assert cache.salvaged is not None and 300 < readable < 404
    assert cache.salvaged["answers"] == readable == len(cache)
    cache.close()


def _open_and_put(paths: list[str], name: str, barrier, wait_s: float) -> None:  # in a process of its own (spawned)
    from recipe.providers.cache import RequestCache

    for path in paths:  # each file opened by every process at once
        barrier.wait(timeout=wait_s)
        cache = RequestCache(path)
        cache.put(f"key-{name}", f"answer of {name}", 1, 1)
        cache.close()


OLD_CACHE = """
CREATE TABLE answers (key TEXT PRIMARY KEY, text TEXT NOT NULL, prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE batches (key TEXT PRIMARY KEY, batch_id TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE inflight (key TEXT PRIMARY KEY, started REAL NOT NULL);
INSERT INTO answers VALUES ('key-paid', 'paid for before the upgrade', 1, 1, 0);
"""


ROUNDS = 20  # files, each opened by six processes at the same moment (the race is a few microseconds wide)


@pytest.mark.parametrize("start", ["new", "old"])
def test_processes_opening_one_cache_at_once_share_it(tmp_path: Path, start: str) -> None:
    """Processes (a sweep's jobs, two terminals) opening one cache at the same moment, a new file or
    one written by an older release (its columns added on opening), all write into that one file:
    none takes another's first open for damage and moves the file aside (every answer then bought
    twice, as a full run once caught: 'damaged (duplicate column name: sent)')."""
    import multiprocessing
    import sqlite3

    from recipe.providers.cache import RequestCache

    paths = [tmp_path / f"requests-{round}.sqlite" for round in range(ROUNDS)]
    if start == "old":
        for path in paths:
            with contextlib.closing(sqlite3.connect(path)) as db:
                db.executescript(OLD_CACHE)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(6)
    names = [str(p) for p in paths]
    processes = [context.Process(target=_open_and_put, args=(names, str(i), barrier, limit(120))) for i in range(6)]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join(timeout=limit(120))
        assert [p.exitcode for p in processes] == [0] * 6
    finally:
        for process in processes:
            process.kill()
    assert not list(tmp_path.glob("*.damaged-*"))
    for path in paths:
        cache = RequestCache(path)
        try:
            assert {cache.get(f"key-{i}").text for i in range(6)} == {f"answer of {i}" for i in range(6)}
            if start == "old":
                assert cache.get("key-paid").text == "paid for before the upgrade" and len(cache) == 7
        finally:
            cache.close()


def test_a_cache_under_its_old_name_is_adopted_with_every_answer(tmp_path: Path) -> None:
    """The default cache was renamed (teacher.sqlite -> requests.sqlite): a user's paid answers,
    still in a WAL the old process did not checkpoint, come along; the old file stays as it was."""
    from recipe.providers.cache import RequestCache

    old = RequestCache(tmp_path / "teacher.sqlite")
    for i in range(50):
        old.put(f"key-{i}", f"answer {i}", 10, 20)
    # not closed: the answers may still sit in teacher.sqlite-wal, as after a kill
    new = RequestCache(tmp_path / "requests.sqlite")
    try:
        assert len(new) == 50 and new.get("key-7").text == "answer 7"
        assert (tmp_path / "teacher.sqlite").exists() and not list(tmp_path.glob("*.partial"))
        new.put("key-new", "only in the new cache", 1, 1)
    finally:
        new.close()
    again = RequestCache(tmp_path / "requests.sqlite")  # adopted once: the new file is not replaced again
    try:
        assert len(again) == 51
    finally:
        again.close()
        old.close()


@pytest.mark.slow
def test_a_run_past_its_limit_is_reported_with_the_stage_it_was_in(tmp_path: Path, fake: FakeTogether) -> None:
    """The suite's subprocess limits (tests/subprocesses.py) say which stage a timed-out run was in."""
    fake.delay_s = limit(30)  # every teacher answer comes late, later than the limit below
    env = {**os.environ, "TOGETHER_API_KEY": TOGETHER_KEY, "TOGETHER_BASE_URL": fake.base_url}
    with pytest.raises(AssertionError, match=r"ran past \d+ s; stage distill was running"):
        run_to_end(distill_args(tmp_path, "store"), cwd=tmp_path, env=env, timeout_s=8)


# ---- signals: one line at any moment -------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_sources(tmp_path_factory) -> Path:
    """A config directory with three sources over ~80 MB of records: Mix starts its worker pool."""
    from .benchmarks.bench_mix import generate

    root = tmp_path_factory.mktemp("big")
    paths = generate(root / "data", 60_000)
    kinds = {"instructions": "text", "booksum": "prompt_completion", "mqa": "prompt_completion"}
    for path in paths:
        source = root / "conf" / "source" / f"big_{path.stem}.yaml"
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text(f"# recipe --config-dir conf\nkind: {kinds[path.stem]}\ndata_files: [{path}]\n")
    return root / "conf"


STOPPED = {  # what a run says and returns when a signal stops it
    signal.SIGINT: (130, "interrupted (Ctrl-C): stopped"),
    signal.SIGTERM: (143, "terminated (SIGTERM): stopped"),
}


def signal_and_wait(proc: subprocess.Popen, signum: int) -> tuple[int, float]:
    """Ctrl-C to the whole process group (as a terminal sends it) or SIGTERM to the run; its exit
    code and how long it took to end."""
    sent = time.monotonic()
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    code = proc.wait(timeout=limit(30))
    return code, time.monotonic() - sent


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["int", "term"])
def test_mix_ends_on_a_signal_in_one_line_at_any_moment(tmp_path: Path, spawn, big_sources: Path, signum: int) -> None:
    """Ctrl-C (to the whole process group, as a terminal sends it) or SIGTERM while the config is
    composed, while workers start, read and check: one line, exit 130 / 143, within 2 s (on an idle
    machine; scaled here), and no artifact or temporary directory left."""
    args = [
        RECIPE,
        "--config-dir",
        str(big_sources),
        "stages=[mix]",
        "mix=offline",
        "mix.progress=false",
        "mix.total=30000",
    ]
    for name in ("instructions", "booksum", "mqa"):
        args += [f"+source@sources.big_{name}=big_{name}", f"mix.components.{name}.source=big_{name}"]
    args.append("mix.components.mqa.strata=null")
    for delay in (0.3, 1.0, 1.6, 2.2):
        store = tmp_path / f"store-{delay}"
        proc = spawn(
            [*args, f"store_dir={store}"],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        time.sleep(delay)
        code, took = signal_and_wait(proc, signum)
        said = proc.stderr.read().decode().strip().splitlines()
        if code == 0:  # the run ended before the signal: this machine is faster than the delays
            continue
        assert (code, said) == (STOPPED[signum][0], [STOPPED[signum][1]]), f"after {delay} s: {code} {said}"
        assert took < limit(2), f"stopped {took:.1f} s after the signal"
        assert not list(store.glob("mix/*/manifest.json")) and not list(store.glob("mix/.tmp-*"))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["int", "term"])
def test_distill_in_a_429_storm_ends_on_a_signal_in_one_line(tmp_path: Path, spawn, signum: int) -> None:
    """A teacher that answers every request 429 with Retry-After of a day: the run says it waits (and
    for how long at most), and Ctrl-C or SIGTERM ends it within 2 s (scaled for a loaded machine),
    one line, exit 130 / 143, not after the pause."""
    from .limited_server import LimitedServer

    with LimitedServer(0, retry_after_s=86400, latency_s=0.01) as server:
        proc = spawn(
            [
                RECIPE,
                "distill=openai_compatible",
                "stages=[distill]",
                f"distill.teacher.base_url={server.base_url}",
                "distill.teacher.model=teacher",
                "distill.source=sharegpt_sample",
                "distill.max_conversations=4",
                "distill.progress=false",
                f"store_dir={tmp_path / 'store'}",
            ],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env={**os.environ, "OPENAI_API_KEY": "k"},
        )
        said = b""
        deadline = time.monotonic() + limit(120)
        while b"until" not in said and time.monotonic() < deadline and proc.poll() is None:
            if select.select([proc.stderr], [], [], 1.0)[0]:
                said += os.read(proc.stderr.fileno(), 65536)
        assert b"the server asked to wait 86400 s; waiting 60 s at most" in said, said
        assert b"rate limit: waiting" in said, said
        code, took = signal_and_wait(proc, signum)
    rest = proc.stderr.read().decode().strip().splitlines()
    assert (code, rest) == (STOPPED[signum][0], [STOPPED[signum][1]]), f"{code} {rest}"
    assert took < limit(2), f"stopped {took:.1f} s after the signal"


LATE_SIGNAL = """
import os, signal, time
from recipe.console import main

class SignalWhenDestroyed:  # Python's last step destroys modules: a Ctrl-C arrives then
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)

late = SignalWhenDestroyed()
main()
"""


@pytest.mark.parametrize("argv", [["--version"], ["stages=[nothing]"]], ids=["ok", "error"])
def test_a_signal_while_python_shuts_down_keeps_the_runs_exit_code(tmp_path: Path, spawn, argv: list[str]) -> None:
    """A Ctrl-C while Python shuts down, after the run finished and said so, killed it with no word
    (exit -2: a finished run read as a failure, once in CI). The run's own exit code stands."""
    proc = spawn(
        [sys.executable, "-c", LATE_SIGNAL, *argv],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = proc.communicate(timeout=limit(60))
    expected = 0 if argv == ["--version"] else 2
    assert proc.returncode == expected, (proc.returncode, err.decode())
    assert (b"recipe " in out) if expected == 0 else (b"error: " in err)
    assert b"Traceback" not in err and b"interrupted" not in err
