"""Distill against the fake Together server (spec-validated) and the real embedded teacher."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recipe.errors import RecipeError
from recipe.runner import run

from .conftest import RECIPE, TOGETHER_KEY
from .fake_together import FakeTogether
from .subprocesses import limit, processes, run_to_end

KEY = TOGETHER_KEY


def together(make_cfg, tmp_path: Path, *overrides: str, distill: str = "together"):
    """Distill through Together on the shipped ShareGPT sample, small, with a private cache."""
    return make_cfg(
        f"distill={distill}",
        "distill.source=sharegpt_sample",
        "distill.max_conversations=6",
        "distill.max_turns=3",
        "distill.progress=false",
        "distill.retry_backoff_s=0.01",
        f"distill.cache_path={tmp_path / 'cache.sqlite'}",
        "stages=[distill]",
        *overrides,
        base=("mix=samples",),
    )


def conversations(record: dict) -> list[dict]:
    artifact = Path(record["stages"]["distill"]["artifact"])
    return [json.loads(line) for line in (artifact / "conversations.jsonl").read_text().splitlines()]


def test_chat_replays_every_turn_with_the_whole_history(make_cfg, tmp_path: Path, fake: FakeTogether) -> None:
    record = run(together(make_cfg, tmp_path, "distill.teacher.api=chat"), run_dir=tmp_path)
    convs = conversations(record)
    assert len(convs) == 6
    for conv in convs:
        users = [m["content"] for m in conv["messages"] if m["role"] == "user"]
        answers = [m["content"] for m in conv["messages"] if m["role"] == "assistant"]
        # The k-th answer was asked with all k user turns (and the k-1 answers) in the request.
        assert answers == [f"answer {k} to: {u[:60]}" for k, u in enumerate(users, 1)]
    posts = fake.posts("/v1/chat/completions")
    assert len(posts) == sum(len(c["messages"]) // 2 for c in convs)
    longest = max(posts, key=lambda r: len(r.body["messages"]))
    roles = [m["role"] for m in longest.body["messages"]]
    assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"]
    assert all(r.headers["Authorization"] == f"Bearer {KEY}" for r in posts)
    usage = record["stages"]["distill"]["usage"]
    assert usage["requests"] == len(posts) and usage["prompt_tokens"] > 0 and usage["cached_requests"] == 0
    # ShareGPT page counters ("1 / 1Write a haiku") are cut, as the seed did.
    assert not any(m["content"].startswith("1 / 1") for c in convs for m in c["messages"])


def test_seed_format_raw_completions(make_cfg, tmp_path: Path, fake: FakeTogether) -> None:
    run(together(make_cfg, tmp_path), run_dir=tmp_path)
    posts = fake.posts("/v1/completions")
    assert posts and not fake.posts("/v1/chat/completions")
    body = max(posts, key=lambda r: len(r.body["prompt"])).body
    assert body["model"] == "togethercomputer/llama-2-70b-chat"
    sampling = {k: body[k] for k in ("max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "stop")}
    assert sampling == {
        "max_tokens": 1024,
        "temperature": 0.7,
        "top_p": 0.7,
        "top_k": 50,
        "repetition_penalty": 1.0,
        "stop": ["[INST]"],
    }
    # The seed script's prompts: it grows turn by turn with the answers fed back as they came.
    assert body["prompt"].startswith("  [INST]  ") and body["prompt"].endswith("  [/INST]  ")
    assert body["prompt"].count("[INST]") >= 2 and "answer 1 to:" in body["prompt"]


def test_a_second_run_sends_nothing(make_cfg, tmp_path: Path, fake: FakeTogether) -> None:
    run(together(make_cfg, tmp_path), run_dir=tmp_path)
    sent = len(fake.requests)
    # Another store (no artifact to reuse), same teacher cache: every answer comes from the cache.
    record = run(together(make_cfg, tmp_path, f"store_dir={tmp_path / 'store2'}"), run_dir=tmp_path)
    assert len(fake.requests) == sent
    assert record["stages"]["distill"]["usage"]["requests"] == 0
    assert record["stages"]["distill"]["usage"]["cached_requests"] > 0


def test_faults_are_survived(make_cfg, tmp_path: Path, fake: FakeTogether) -> None:
    fake.fail(429, 2, retry_after_ms=20)
    fake.fail(503, 2, retry_after=0)
    fake.fail(500, 1)
    fake.drop(2)
    record = run(together(make_cfg, tmp_path, "distill.concurrency=3"), run_dir=tmp_path)
    manifest = json.loads((Path(record["stages"]["distill"]["artifact"]) / "manifest.json").read_text())
    assert manifest["conversations"]["distilled"] == 6 and manifest["conversations"]["failed"] == 0
    assert manifest["retries"] >= 7


def test_failures_past_the_threshold_fail_the_stage(make_cfg, tmp_path: Path, fake: FakeTogether) -> None:
    fake.fail(500, 40)  # more than every request's retries (500: 429 and 503 would slow the rate controller down)
    with pytest.raises(RecipeError, match=r"conversations failed \(distill.max_failure_share=0.05\)"):
        run(together(make_cfg, tmp_path, "distill.max_retries=1", "distill.concurrency=1"), run_dir=tmp_path)
    # Below the threshold the run goes on and records the failures.
    fake.clear_faults()
    fake.fail(400, 1)  # not retried: one conversation fails for good
    record = run(
        together(make_cfg, tmp_path, "distill.max_failure_share=0.5", "distill.concurrency=1"), run_dir=tmp_path
    )
    manifest = json.loads((Path(record["stages"]["distill"]["artifact"]) / "manifest.json").read_text())
    assert manifest["conversations"]["failed"] == 1 and manifest["conversations"]["distilled"] == 5
    assert "HTTP 400" in manifest["failed"][0]["error"]


def test_budget_stops_sending_and_a_rerun_continues(make_cfg, tmp_path: Path, fake: FakeTogether) -> None:
    # $1 per 1K tokens: the budget covers a few requests (each reserves its 1024 max_tokens).
    prices = ("distill.prices.input_per_mtok=1000", "distill.prices.output_per_mtok=1000")
    cfg = together(make_cfg, tmp_path, *prices, "distill.budget.max_usd=1.3", "distill.concurrency=1")
    with pytest.raises(RecipeError, match=r"pre-flight: distill would cost ~\$.*, over distill.budget.max_usd=1.3"):
        run(cfg, run_dir=tmp_path)  # refused before any request
    assert fake.requests == []
    cfg = together(make_cfg, tmp_path, *prices, "distill.budget.max_usd=1.3", "distill.concurrency=1", "preflight=warn")
    with pytest.raises(RecipeError, match=r"distill.budget.max_usd=1.3 reached: spent \$"):
        run(cfg, run_dir=tmp_path)
    entry = json.loads((tmp_path / "run.json").read_text())["stages"]["distill"]
    assert entry["status"] == "failed" and 0 < entry["cost_usd"] <= 1.3 and entry["usage"]["requests"] >= 1
    first = len(fake.answered)
    record = run(together(make_cfg, tmp_path, *prices, "distill.budget.max_usd=1000"), run_dir=tmp_path)
    assert record["stages"]["distill"]["status"] == "ok"
    assert len(fake.answered) == len(set(fake.answered))  # nothing answered was bought twice
    assert len(fake.answered) > first


def test_dry_run_estimates_from_the_cache_and_sends_nothing(make_cfg, tmp_path: Path, fake: FakeTogether) -> None:
    prices = ("distill.prices.input_per_mtok=2", "distill.prices.output_per_mtok=6")
    plan = run(together(make_cfg, tmp_path, "dry_run=true", *prices), run_dir=tmp_path)["stages"]["distill"]["plan"]
    assert fake.requests == [] and not (tmp_path / "cache.sqlite").exists()  # a dry run writes nothing
    assert "0 answers cached" in plan and "to send" in plan and "prompt tokens; ~$" in plan
    run(together(make_cfg, tmp_path, *prices), run_dir=tmp_path)
    again = run(together(make_cfg, tmp_path, "dry_run=true", f"store_dir={tmp_path / 's2'}", *prices), run_dir=tmp_path)
    assert ", 0 to send" in again["stages"]["distill"]["plan"]


def test_batch_mode_one_job_per_turn_and_reattach(make_cfg, tmp_path: Path, fake: FakeTogether) -> None:
    batch = ("distill.batch_poll_s=0.01",)
    fake.fail(500, 1000, paths=("/v1/batches/*",))  # polling breaks after the first job is created
    with pytest.raises(RecipeError, match="HTTP 500"):
        run(together(make_cfg, tmp_path, *batch, "distill.max_retries=0", distill="together_batch"), run_dir=tmp_path)
    assert len(fake.posts("/v1/batches")) == 1
    fake.clear_faults()
    record = run(together(make_cfg, tmp_path, *batch, distill="together_batch"), run_dir=tmp_path)
    # Re-attached to the first job; then one new job per remaining turn index (3 turns at most).
    assert len(fake.posts("/v1/batches")) <= 3
    assert [r.body["purpose"] for r in fake.posts("/v1/files/upload")] == ["batch-api"] * len(fake.posts("/v1/batches"))
    convs = conversations(record)
    assert len(convs) == 6 and all(
        m["content"].startswith("answer") for c in convs for m in c["messages"] if m["role"] == "assistant"
    )
    assert fake.posts("/v1/chat/completions") == []  # everything went through batches


def test_distilled_conversations_feed_the_mixture(make_cfg, tmp_path: Path, fake: FakeTogether) -> None:
    cfg = together(
        make_cfg,
        tmp_path,
        "stages=[distill,mix]",
        "mix=offline",
        "distill.max_conversations=12",
        "mix.total=16",
        "mix.eval_fraction=0",
        "mix.eval_per_component=0",
        "mix.progress=false",
    )
    record = run(cfg, run_dir=tmp_path)
    mixture = Path(record["stages"]["mix"]["artifact"]) / "mixture.jsonl"
    texts = [json.loads(line)["text"] for line in mixture.read_text().splitlines()]
    assert sum("answer 1 to:" in t for t in texts) == 8  # the instructions half, answered by the teacher


def distill_args(tmp_path: Path, *extra: str, cache: str = "cache.sqlite") -> list[str]:
    """`recipe` distilling the ShareGPT sample from Together (the fake), three turns each."""
    return [
        RECIPE,
        "stages=[distill]",
        "mix=samples",
        "distill=together",
        "distill.source=sharegpt_sample",
        "distill.max_turns=3",
        "distill.progress=false",
        f"distill.cache_path={tmp_path / cache}",
        *extra,
    ]


def test_kill_9_then_resume_resends_nothing_finished(tmp_path: Path, fake: FakeTogether, spawn) -> None:
    fake.delay_s = 0.15
    args = distill_args(tmp_path, "distill.concurrency=2")
    env = {**os.environ, "TOGETHER_API_KEY": KEY, "TOGETHER_BASE_URL": fake.base_url}
    proc = spawn(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + limit(60)
    while len(fake.answered) < 8 and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with fake._lock:
        answered_before = set(fake.answered)
        sent_before = len(fake.requests)
    db = sqlite3.connect(tmp_path / "cache.sqlite")
    cached = db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    in_flight = db.execute("SELECT COUNT(*) FROM inflight WHERE sent = 1").fetchone()[0]  # the killed run's claims
    db.close()
    assert cached >= len(answered_before) - 2  # at most the answers in flight at the kill are lost
    assert 1 <= in_flight <= 2  # the server was answering two conversations when the kill came
    fake.delay_s = 0
    run_to_end(args, cwd=tmp_path, env=env, timeout_s=600)
    resent = [r for r in fake.requests[sent_before:] if json.dumps(r.body, sort_keys=True) in answered_before]
    assert len(resent) <= in_flight  # only requests whose answers were on the wire at the kill
    record = json.loads(sorted((tmp_path / "outputs" / "runs").glob("*/*/run.json"))[-1].read_text())
    manifest = json.loads((Path(record["stages"]["distill"]["artifact"]) / "manifest.json").read_text())
    assert manifest["resent_after_crash"] == in_flight


def test_the_key_stays_off_disk(make_cfg, tmp_path: Path, fake: FakeTogether) -> None:
    run(together(make_cfg, tmp_path), run_dir=tmp_path)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_together_without_a_key_is_a_clear_error(make_cfg, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("TOGETHER_API_KEY", raising=False)
    with pytest.raises(RecipeError, match="TOGETHER_API_KEY is not set"):
        run(together(make_cfg, tmp_path), run_dir=tmp_path)


@pytest.mark.slow
def test_offline_distill_and_mix_with_the_embedded_teacher(run_cli, tmp_path: Path) -> None:
    """The offline recipe's first two stages for real: SmolLM2 behind llama.cpp on 127.0.0.1."""
    pytest.importorskip("llama_cpp")
    run_cli(
        "stages=[distill,mix]",
        "mix=offline",
        "distill.max_conversations=6",
        "distill.sampling.max_tokens=32",
        "distill.progress=false",
        "mix.total=8",
        "mix.eval_fraction=0",
        "mix.eval_per_component=0",
        "mix.progress=false",
    )
    runs = sorted((tmp_path / "outputs" / "runs").glob("*/*/run.json"))
    record = json.loads(runs[-1].read_text())
    assert record["stages"]["distill"]["status"] == "ok" and record["stages"]["distill"]["usage"]["requests"] > 0
    convs = conversations(record)
    answers = [m["content"] for c in convs for m in c["messages"] if m["role"] == "assistant"]
    assert len(convs) >= 4 and all(a.strip() for a in answers)
    mixture = Path(record["stages"]["mix"]["artifact"]) / "mixture.jsonl"
    texts = mixture.read_text()
    assert sum(answer[:40] in texts for answer in answers) >= 4  # the teacher's real answers are mixed in
    assert not llama_servers_started_in(tmp_path)  # the teacher's server was stopped


def llama_servers_started_in(cwd: Path) -> list[int]:
    """llama.cpp servers still running whose working directory is `cwd`."""
    pids = []
    for pid in llama_servers():
        try:
            if Path(f"/proc/{pid}/cwd").resolve() == cwd.resolve():
                pids.append(pid)
        except OSError:
            continue
    return pids


def llama_servers() -> list[int]:
    """llama.cpp servers started by this test worker."""
    return processes(b"llama_cpp.server")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["int", "term", "kill"])
def test_a_signal_stops_the_local_teacher_server(tmp_path: Path, spawn, signum: int) -> None:
    """Ctrl-C and SIGTERM stop cleanly (exit 130 / 143, one line, no traceback); even kill -9 takes
    the managed llama.cpp server with it."""
    pytest.importorskip("llama_cpp")
    before = set(llama_servers())
    proc = spawn(
        [RECIPE, "stages=[distill]", "distill.progress=false", "distill.max_conversations=20"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + limit(60)
    while not set(llama_servers()) - before and time.monotonic() < deadline:
        time.sleep(0.1)
    started = set(llama_servers()) - before
    assert started, "the local server never started"
    time.sleep(2)  # let it answer a little
    proc.send_signal(signum)
    code = proc.wait(timeout=limit(60))
    stderr = proc.stderr.read()
    if signum == signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:
        assert code == {signal.SIGINT: 130, signal.SIGTERM: 143}[signum], stderr
        assert "Traceback" not in stderr and ("interrupted" in stderr or "terminated" in stderr), stderr
    deadline = time.monotonic() + limit(15)
    while started & set(llama_servers()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not started & set(llama_servers()), "the llama.cpp server outlived its recipe"
    distill_store = tmp_path / "outputs" / "store" / "distill"
    assert not list(distill_store.glob("*/manifest.json"))  # no artifact
    if signum != signal.SIGKILL:  # stopped cleanly: no temp dir either (kill -9's is removed by the next build)
        assert distill_store.is_dir() and not any(distill_store.iterdir())  # it was building


def test_claims_make_one_sender_per_request_and_count_resends_of_the_dead(tmp_path: Path, spawn) -> None:
    """The answer and the end of its claim are one transaction; a request claimed by a live process
    is not sent by another; one claimed and sent by a dead process is taken over and counted."""
    from recipe.providers.cache import RequestCache

    cache = RequestCache(tmp_path / "c.sqlite")
    assert cache.claim("answered").mine and cache.claim("lost").mine
    cache.mark_sent("answered")
    cache.put("answered", "text", 1, 1)
    assert cache.claim("answered").answer.text == "text"
    assert not cache.claim("lost").mine  # this process (another of its threads) is asking it: wait
    # A process that claimed and sent a request, then died without an answer (kill -9).
    code = (
        "import os, sys; from recipe.providers.cache import RequestCache; c = RequestCache(sys.argv[1]); "
        "[c.claim(k) for k in ('sent', 'never_sent')]; c.mark_sent('sent'); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "c.sqlite")], check=True, timeout=120)
    taken = cache.claim("sent")
    assert taken.mine and taken.taken_over and cache.claim("never_sent").mine
    assert cache.resent_count({"sent", "never_sent", "answered"}) == 1  # only what had left was sent again
    cache.close()


def test_a_damaged_cache_is_moved_aside_and_its_answers_salvaged(make_cfg, tmp_path: Path, fake: FakeTogether) -> None:
    from recipe.providers.cache import RequestCache

    cache = RequestCache(tmp_path / "big.sqlite")
    for i in range(3000):
        cache.put(f"key-{i}", "an answer that was paid for " * 4, 10, 20)
    cache.close()
    path = tmp_path / "big.sqlite"
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])  # truncated: "malformed"
    cache = RequestCache(path)
    assert cache.salvaged is not None and 0 < cache.salvaged["answers"] < 3000
    assert cache.get("key-0") is not None and len(cache) == cache.salvaged["answers"]
    assert Path(cache.salvaged["moved_to"]).is_file()
    cache.close()
    # A run on the damaged teacher cache goes on: the salvaged answers are not bought again.
    record = run(together(make_cfg, tmp_path), run_dir=tmp_path)
    asked = len(fake.requests)
    cache_file = tmp_path / "cache.sqlite"
    cache_file.write_bytes(cache_file.read_bytes()[:4096] + b"\0" * 100)
    again = run(together(make_cfg, tmp_path, f"store_dir={tmp_path / 'store2'}"), run_dir=tmp_path)
    assert again["stages"]["distill"]["status"] == "ok" and record["stages"]["distill"]["status"] == "ok"
    assert len(list(tmp_path.glob("cache.sqlite.damaged-????????-??????"))) == 1 and len(fake.requests) > asked


@pytest.mark.parametrize(
    ("turn", "cut", "had"),
    [
        ("1 / 1Hello there", "Hello there", True),
        ("2 / 2- Go on", " Go on", True),
        ("19 / 19Last", "Last", True),
        ("10 / 5 = ? Explain the division.", "10 / 5 = ? Explain the division.", False),
        ("3 / 4 of 12 is what?", "3 / 4 of 12 is what?", False),
        ("1 / 10 of the pie", "1 / 10 of the pie", False),  # the seed's plain replace would leave "0 of the pie"
        ("1 / 2 cups of flour", "1 / 2 cups of flour", False),
        ("20 / 20 vision", "20 / 20 vision", False),  # the seed cut counters 0 to 19 only
        ("5/5 stars", "5/5 stars", False),
        ("Page 1 / 1", "Page 1 / 1", False),
    ],
)
def test_only_page_counters_are_cut(turn: str, cut: str, had: bool) -> None:
    from recipe.data.sources import cut_page_counter

    assert cut_page_counter(turn) == (cut, had)


def test_the_seed_experiment_sends_the_seed_scripts_prompts_byte_for_byte(make_cfg, tmp_path: Path) -> None:
    """Rebuilt from the seed script's description (FACTS.md): the prompt starts empty; each human
    turn, verbatim with its page counter, adds two spaces, [INST], two spaces, the turn, two spaces,
    [/INST], two spaces; the teacher's raw answer (not stripped) follows; the whole prompt is sent.
    Every human turn is sent, as the seed sent every turn of its input: an empty one, one of spaces
    only, one that is nothing but a page counter."""
    turns = ["1 / 1Hi there", "", "   ", "2 / 2", "2 / 2  What is 10 / 5?", "3 / 4 of 12 is what?"]
    sharegpt = [
        {
            "id": "c1",
            "conversations": [
                x for t in turns for x in ({"from": "human", "value": t}, {"from": "gpt", "value": "old"})
            ],
        }
    ]
    (tmp_path / "sg.json").write_text(json.dumps(sharegpt))

    def answer(body: dict) -> str:
        return f" Sure {body['prompt'].count('[INST]')}! \n"  # whitespace the seed fed back as it came

    with FakeTogether(answer=answer, api_key=KEY) as fake, pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOGETHER_API_KEY", KEY)
        mp.setenv("TOGETHER_BASE_URL", fake.base_url)
        cfg = make_cfg(
            "experiment=llama2_7b_32k_instruct",
            "test=offline",  # decontamination against the shipped suites (the card's are on the hub)
            "stages=[distill]",
            "+source@sources.mine=sharegpt_sample",
            f"sources.mine.data_files=[{tmp_path / 'sg.json'}]",
            "distill.source=mine",
            "distill.progress=false",
            f"distill.cache_path={tmp_path / 'cache.sqlite'}",
            base=(),
        )
        record = run(cfg, run_dir=tmp_path)
        sent = [r.body["prompt"] for r in fake.posts("/v1/completions")]
    expected, prompt = [], ""
    for k, turn in enumerate(turns, 1):
        prompt += "  [INST]  " + turn + "  [/INST]  "
        expected.append(prompt)
        prompt += " " + f" Sure {k}! \n"  # as received: the fake's completions text opens with a space
    assert sent == expected
    (conv,) = conversations(record)
    assert [m["content"] for m in conv["messages"]] == [
        "Hi there",
        "Sure 1!",
        "",
        "Sure 2!",
        "",
        "Sure 3!",
        "",  # the bare page counter, cut as the seed's output cut it
        "Sure 4!",
        "What is 10 / 5?",
        "Sure 5!",
        "3 / 4 of 12 is what?",
        "Sure 6!",
    ]
    manifest = json.loads((Path(record["stages"]["distill"]["artifact"]) / "manifest.json").read_text())
    assert manifest["turns"]["page_counters_cut"] == 3 and manifest["turns"]["skipped_empty_turns"] == 0
