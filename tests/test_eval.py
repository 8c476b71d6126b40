"""Test (the recipe's Step III): suite prompts, scores, the report, and a Together-backed run
against the fake server. The offline run (transformers serve, base against tuned) is in
tests/test_deploy.py's end-to-end test."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from recipe.data import templates
from recipe.data.sources import DataError
from recipe.errors import RecipeError
from recipe.evaluation import report, suites
from recipe.evaluation.uncertainty import Settings
from recipe.runner import run

from .conftest import TOGETHER_TRAIN_AND_TEST
from .fake_together import FakeTogether, default_answer
from .subprocesses import limit

DOCS = [{"title": f"T{i}", "text": f"text {i}"} for i in range(8)]


def records(*rows: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    return [(row, f"data.jsonl:{i}") for i, row in enumerate(rows, 1)]


def test_mqa_prompt_is_the_papers_and_the_gold_document_moves() -> None:
    gold = {"title": "Gold", "text": "the answer is here", "isgold": True}
    row = {"question": "q?", "answers": ["here"], "ctxs": [DOCS[0], gold, *DOCS[1:5]]}
    items, skipped = suites.mqa_items("mqa", records(row), [5], ["first", "middle", "last"], "test.suites.mqa")
    assert not skipped.counts
    prompts = {dict(i.group)["gold"]: i.prompt for i in items}
    first = prompts["first"]
    assert first.startswith(
        "Write a high-quality answer for the given question using only the provided search results "
        "(some of which might be irrelevant).\n\nDocument [1](Title: Gold) the answer is here\n"
        "Document [2](Title: T0) text 0\n"
    )
    assert first.endswith("Document [5](Title: T3) text 3\n\nQuestion: q?\nAnswer:")
    assert "Document [3](Title: Gold)" in prompts["middle"]  # (5 - 1) // 2 -> the third of five
    assert "Document [5](Title: Gold)" in prompts["last"]
    # Distractors keep their order and never repeat the gold document.
    assert all(p.count("Title: Gold") == 1 and p.count("Title: T0") == 1 for p in prompts.values())


def test_mqa_skips_and_counts_records_with_too_few_documents() -> None:
    row = {"question": "q", "answers": "a", "ctxs": DOCS[:4]}  # a bare string answer is accepted
    items, skipped = suites.mqa_items("mqa", records(row), [3, 10], ["first"], "k")
    assert [dict(i.group)["documents"] for i in items] == [3]
    assert skipped.counts == {"fewer than 10 documents": 1}


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"answers": ["a"], "ctxs": DOCS}, r"data\.jsonl:1: no text field 'question'"),
        ({"question": "q", "answers": [], "ctxs": DOCS}, r"data\.jsonl:1: `answers` must be"),
        ({"question": "q", "answers": ["a"], "ctxs": "x"}, r"data\.jsonl:1: `ctxs` must be"),
    ],
)
def test_bad_mqa_records_name_file_and_line(row: dict[str, Any], message: str) -> None:
    with pytest.raises(DataError, match=message):
        suites.mqa_items("mqa", records(row), [3], ["first"], "test.suites.mqa")


def test_booksum_prompt_cut_and_field_errors() -> None:
    text = "Para one.\n\nPara two is longer.\n\nPara three."
    (item,) = suites.booksum_items(
        "b", records({"chapter": text, "summary_text": "S"}), "chapter", "summary_text", None, "k"
    )
    assert item.prompt == text + "\n\nQ: Can you write an appropriate summary of the above paragraphs?\nA:"
    (cut,) = suites.booksum_items(
        "b", records({"chapter": text, "summary_text": "S"}), "chapter", "summary_text", 35, "k"
    )
    assert cut.prompt.startswith("Para one.\n\nPara two is longer.\n\nQ:")  # cut at a paragraph break
    with pytest.raises(DataError, match=r"data\.jsonl:1: no text field 'text'.*test\.suites\.b\.text_field"):
        suites.booksum_items("b", records({"chapter": text}), "text", "summary_text", None, "test.suites.b")


def test_judge_scores_both_orders_and_reads_messy_verdicts() -> None:
    items = suites.judge_items(
        "a", records(*({"instruction": f"i{n}", "output": "ref"} for n in range(4))), "instruction", "output", "k"
    )
    assert (
        suites.judge_items(
            "a", records({"instruction": "do", "input": "this", "output": "r"}), "instruction", "output", "k"
        )[0].instruction
        == "do\n\nthis"
    )
    messages = suites.judge_messages("do it", "first", "second")
    assert "# Output (a)\nfirst" in messages[1]["content"] and "# Output (b)\nsecond" in messages[1]["content"]
    verdicts = {
        "a/0": ("Output (a)", "**Output (b)** is better"),  # wins both orders -> 1
        "a/1": ("Output (a)", "Output (a)"),  # position bias: one each -> 0.5
        "a/2": ("I prefer Output (b).", "Verdict: A"),  # loses both -> 0
        "a/3": ("hmm", "no idea"),  # unreadable: not counted
    }
    scored = suites.score_judge(items, verdicts)
    assert scored["win_rate"] == pytest.approx(0.5) and scored["judged"] == 3 and scored["prompts"] == 4
    assert scored["stderr"] == pytest.approx(0.5 / 3**0.5)
    unreadable = suites.score_judge(items[:1], {"a/0": ("hmm", "dunno")})
    assert unreadable["win_rate"] is None and unreadable["judged"] == 0  # no verdict is not a loss


def test_mqa_and_booksum_scores() -> None:
    gold = {"title": "G", "text": "x", "isgold": True}
    row = {"question": "q", "answers": ["Canberra"], "ctxs": [gold, *DOCS[:3]]}
    items, _ = suites.mqa_items("m", records(row), [2, 4], ["first", "last"], "k")
    answers = {i.id: ("Canberra." if dict(i.group)["gold"] == "first" else "Sydney\nCanberra") for i in items}
    scored = suites.score_mqa(items, answers)
    assert scored["by_position"] == {"2/first": 1.0, "2/last": 0.0, "4/first": 1.0, "4/last": 0.0}
    shuffled, _ = suites.mqa_items("m", records(row), [3], ["last", "middle", "first"], "k")
    assert list(suites.score_mqa(shuffled, {i.id: "" for i in shuffled})["by_position"]) == [
        "3/first",
        "3/middle",
        "3/last",
    ]
    assert scored["by_documents"] == {"2": 0.5, "4": 0.5} and scored["accuracy"] == 0.5
    summaries = suites.booksum_items(
        "b", records({"chapter": "c", "summary_text": "the cat sat"}), "chapter", "summary_text", None, "k"
    )
    assert suites.score_booksum(summaries, {"b/0": "the cat sat"})["rouge1"] == pytest.approx(1.0)


def test_report_table_and_chart(tmp_path: Path) -> None:
    result = {
        "models": {
            "base": {
                "name": "b",
                "heldout_loss": 2.5,
                "suites": {"qa": {"accuracy": 0.25, "by_documents": {"3": 0.25}}},
            },
            "tuned": {
                "name": "t",
                "heldout_loss": 2.0,
                "suites": {"qa": {"accuracy": 0.75, "by_documents": {"3": 0.75}}},
            },
        }
    }
    summary = report.headline(result, {"qa": "mqa"}, Settings())
    assert summary == {  # no per-prompt scores here: figures without intervals
        "base": {"qa.accuracy": 0.25, "qa.docs3": 0.25, "heldout.loss": 2.5},
        "tuned": {"qa.accuracy": 0.75, "qa.docs3": 0.75, "heldout.loss": 2.0},
    }
    table = report.summary_table(summary).splitlines()
    assert table[0].split() == ["metric", "base", "tuned"] and table[1].split() == ["qa.accuracy", "0.250", "0.750"]
    report.write_chart(tmp_path / "chart.png", summary)
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- Together-backed Test against the fake server ------------------------------------------------


BASE = "togethercomputer/LLaMA-2-7B-32K"


def answer_and_judge(body: dict[str, Any]) -> str:
    """Models answer with their name attached; the fake's judge prefers the base model's answer
    in either order and otherwise always says "Output (a)" (pure position bias)."""
    messages = body.get("messages") or []
    if messages and messages[0]["role"] == "system" and "judge" in messages[0]["content"]:
        output_a = messages[-1]["content"].split("# Output (a)\n", 1)[1].split("# Output (b)", 1)[0]
        output_b = messages[-1]["content"].split("# Output (b)\n", 1)[1]
        return "Output (b)" if f"({BASE})" in output_b and f"({BASE})" not in output_a else "Output (a)"
    return f"{default_answer(body)} ({body['model']})"


def together_test(make_cfg, *overrides: str):
    return make_cfg(
        *TOGETHER_TRAIN_AND_TEST,
        "test.heldout.samples=2",
        *overrides,
        base=("mix=samples", "~distill"),
    )


def test_together_backed_test_scores_base_and_tuned(make_cfg, tmp_path: Path, fake: FakeTogether) -> None:
    fake.answer = answer_and_judge
    cfg = together_test(make_cfg, f"test.cache_path={tmp_path}/cache.sqlite")
    record = run(cfg, run_dir=tmp_path)
    entry = record["stages"]["test"]
    out = Path(entry["artifact"])
    train = json.loads((Path(record["stages"]["train"]["artifact"]) / "manifest.json").read_text())
    completions = [r.body for r in fake.posts("/v1/completions")]
    # 12 MQA + 2 BookSum + 3 instructions + 2 held-out samples, per model, both prompted in the format
    # Train recorded for the upload (LLaMA-2-7B-32K: the seed's llama2_inst text), never another.
    assert train["trained_model"]["format"] == {"kind": "text", "template": "llama2_inst"}
    assert len(completions) == 2 * 19
    assert {b["model"] for b in completions} == {train["model_output_name"], BASE}
    uploaded = fake.files[fake.posts("/v1/fine-tunes")[0].body["training_file"]].decode()
    assert all(json.loads(line)["text"].startswith("[INST] ") for line in uploaded.splitlines())
    for b in completions:
        question = b["prompt"].removeprefix("[INST] ").removesuffix(" [/INST]")
        assert b["prompt"] == templates.render_prompt([{"role": "user", "content": question}], "llama2_inst")
        assert b["prompt"] != question and b["stop"] == ["[INST]"]
    assert json.loads((out / "manifest.json").read_text())["prompt_format"] == "text template llama2_inst"
    assert all(b["temperature"] == 0.0 for b in completions)
    judged = [r.body for r in fake.posts("/v1/chat/completions")]
    assert len(judged) == 2 * 3 * 2 and {b["model"] for b in judged} == {"meta-llama/Llama-3.3-70B-Instruct-Turbo"}
    metrics = json.loads((out / "metrics.json").read_text())
    # Both orders asked: the base model wins both (1.0); position bias alone splits the tuned one (0.5).
    assert metrics["summary"]["base"]["alpaca_eval.win_rate"] == 1.0
    assert metrics["summary"]["tuned"]["alpaca_eval.win_rate"] == 0.5
    assert metrics["summary"]["tuned"]["alpaca_eval.win_rate_se"] == 0.0
    assert set(metrics["summary"]["tuned"]) >= {"booksum.rouge1", "mqa.docs3", "mqa.docs6", "mqa.accuracy"}
    assert entry["metrics"] == metrics["summary"]["tuned"]  # run.json carries the headline figures
    # Every figure with its bootstrap interval; tuned against base paired, with its word.
    tuned = metrics["summary"]["tuned"]
    assert tuned["alpaca_eval.win_rate_low"] == tuned["alpaca_eval.win_rate_high"] == 0.5  # every prompt split
    assert tuned["mqa.accuracy_low"] <= tuned["mqa.accuracy"] <= tuned["mqa.accuracy_high"]
    assert metrics["differences"]["alpaca_eval.win_rate"]["value"] == -0.5
    assert {d["verdict"] for d in metrics["differences"].values()} == {"too few prompts to tell"}  # 2-12 prompts
    assert json.loads((out / "manifest.json").read_text())["differences"] == metrics["differences"]
    # Mix checked the mixture against these very suites: one contamination line each.
    summary = (out / "summary.txt").read_text()
    print(summary)
    assert "tuned - base" in summary.splitlines()[0] and "[0.500, 0.500]" in summary
    for name, prompts in (("mqa", 2), ("booksum", 2), ("alpaca_eval", 3)):
        assert f"contamination {name}: 0 of {prompts} prompts found in the training mixture" in summary
        assert entry["contamination_counts"][name] == {"prompts_in_training": 0}
    text = (out / "report.md").read_text()
    assert "## mqa: accuracy by context length and the answer's position" in text and "| 6 (~" in text
    assert "## booksum: summarisation (ROUGE F-measure)" in text
    positions = metrics["positions"]["mqa"]  # the position map: each setting per model, and paired
    assert positions["documents"] == [3, 6] and positions["positions"] == ["first", "middle", "last"]
    assert [(c["documents"], c["gold"], c["prompts"]) for c in positions["cells"]][:2] == [
        (3, "first", 2),
        (3, "middle", 2),
    ]
    assert all(c["difference"]["verdict"] == "too few prompts to tell" for c in positions["cells"])
    assert (out / "chart.png").read_bytes()[:4] == b"\x89PNG"
    assert len((out / "generations.jsonl").read_text().splitlines()) == 19
    # A second run is a cache hit; with the artifact gone, the request cache answers: no request.
    sent = len(fake.requests)
    assert run(cfg, run_dir=tmp_path)["stages"]["test"]["cache_hit"]
    import shutil

    shutil.rmtree(out)
    again = run(cfg, run_dir=tmp_path)
    assert not again["stages"]["test"]["cache_hit"] and len(fake.requests) == sent
    assert json.loads((out / "metrics.json").read_text())["summary"] == metrics["summary"]


def test_a_temporary_dedicated_endpoint_is_deleted_after(make_cfg, tmp_path: Path, fake: FakeTogether) -> None:
    cfg = together_test(
        make_cfg,
        f"test.cache_path={tmp_path}/cache.sqlite",
        "test.endpoint=dedicated",
        "test.models=[tuned]",
        "~test.suites.alpaca_eval",
        "~test.suites.booksum",
    )
    run(cfg, run_dir=tmp_path)
    (create,) = fake.posts("/v1/endpoints")
    assert create.body["inactive_timeout"] == 15  # stops on its own if we die before deleting it
    names = {r.body["model"] for r in fake.posts("/v1/completions")}
    assert len(names) == 1 and names != {create.body["model"]}  # asked through the endpoint's name
    assert fake.endpoints == {}  # deleted afterwards


def test_budget_stop_and_missing_data_are_clear_errors(make_cfg, tmp_path: Path, fake: FakeTogether) -> None:
    cfg = together_test(make_cfg, f"test.cache_path={tmp_path}/cache.sqlite", "test.budget.max_usd=0.00001")
    with pytest.raises(RecipeError, match=r"test\.budget\.max_usd=1e-05: the budget is spent"):
        run(cfg, run_dir=tmp_path)
    cfg = together_test(make_cfg, "test.suites.mqa.data_files=[/nonexistent/*.jsonl]")
    with pytest.raises(RecipeError, match=r"test\.suites\.mqa\.data_files: '/nonexistent/\*\.jsonl' matches no file"):
        run(cfg, run_dir=tmp_path)


def alpaca_judge(body: dict[str, Any]) -> str:
    """Models answer with their name; the AlpacaEval annotator's judge prefers the base model's
    answer in either order and otherwise says "Output (a)" (pure position bias)."""
    user = (body.get("messages") or [{}])[-1].get("content", "")
    if "## Output (a):" not in user:
        return answer_and_judge(body)
    output_a = user.rsplit("## Output (a):", 1)[1].split("## Output (b):", 1)[0]
    output_b = user.rsplit("## Output (b):", 1)[1]
    return "Output (b)" if f"({BASE})" in output_b and f"({BASE})" not in output_a else "Output (a)"


def test_the_alpaca_eval_protocol_is_an_option_named_in_the_report(
    make_cfg, tmp_path: Path, fake: FakeTogether
) -> None:
    from recipe.evaluation import alpaca_eval

    fake.answer = alpaca_judge
    cfg = together_test(make_cfg, f"test.cache_path={tmp_path}/cache.sqlite", "test.judge_protocol=alpaca_eval")
    record = run(cfg, run_dir=tmp_path)
    out = Path(record["stages"]["test"]["artifact"])
    judged = [r.body for r in fake.posts("/v1/chat/completions")]
    assert len(judged) == 2 * 3  # one order per prompt (not two), per model
    assert all(b["max_tokens"] == 50 and b["messages"][0]["role"] == "system" for b in judged)  # the annotator's
    rows = [json.loads(line) for line in (out / "generations.jsonl").open()]
    instructions = [row["prompt"] for row in rows if row["suite"] == "alpaca_eval"]
    assert len(instructions) == 3
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["summary"]["base"]["alpaca_eval.win_rate_pct"] == 100.0
    shown_first = [alpaca_eval.model_shown_first(0, i) for i in instructions]
    assert metrics["summary"]["tuned"]["alpaca_eval.win_rate_pct"] == pytest.approx(
        100 * sum(shown_first) / 3, abs=1e-3
    )
    assert metrics["judge_protocol"].startswith("AlpacaEval chatgpt annotator (alpaca-eval 0.6.6)")
    report = (out / "report.md").read_text()
    assert "judged: AlpacaEval chatgpt annotator" in report and "Win rate (%)" in report


@pytest.mark.slow
def test_sampling_settings_change_the_local_engines_answers(tmp_path: Path, tiny_model_dir: Path) -> None:
    """`transformers serve` samples when a request's temperature is above 0 (it copies the model's
    generation config, where sampling is off, and reads the temperature without turning it on: every
    temperature and seed gave the greedy answer); the seed makes a sampled answer reproducible."""
    from recipe.artifacts import PromptFormat
    from recipe.providers.cache import RequestCache
    from recipe.providers.model_client import Ledger, ModelClient
    from recipe.providers.serving import LocalServing, local_model

    transformers = pytest.importorskip("transformers")
    # The tiny random model with sharper next-token distributions (its own are nearly flat, so one
    # seed draws the same tokens at any temperature): temperature then visibly changes the draws.
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.lm_head.weight.data *= 40
    model.save_pretrained(tmp_path / "sharp")
    transformers.AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "sharp")
    serving = LocalServing(engine="transformers", startup_timeout_s=limit(300), timeout_s=limit(120))
    prompt = [{"role": "user", "content": "Name three colours."}]
    fmt = PromptFormat("chat_template")
    with local_model(tmp_path / "sharp", serving, which="base", weights="sharp", fmt=fmt) as access:

        def answer(temperature: float, seed: int, cache: str) -> str:
            sampling = {"max_tokens": 12, "temperature": temperature, "seed": seed}
            client = ModelClient(
                access.client, RequestCache(tmp_path / cache), access.spec, sampling=sampling, ledger=Ledger(0, 0, None)
            )
            return client.ask(prompt).text

        greedy = {answer(0.0, seed, f"greedy-{seed}.db") for seed in (0, 1)}
        sampled = {(t, seed): answer(t, seed, f"s-{t}-{seed}.db") for t in (1.0, 1.5) for seed in (0, 1, 2)}
        again = answer(1.0, 0, "again.db")
    assert len(greedy) == 1, greedy  # temperature 0: the seed does not matter
    assert len(set(sampled.values()) - greedy) >= 4, sampled  # 6 draws, mostly distinct and none greedy
    assert sum(sampled[(1.0, seed)] != sampled[(1.5, seed)] for seed in (0, 1, 2)) >= 2, sampled  # temperature
    assert again == sampled[(1.0, 0)]  # the same seed, the same draw


@pytest.mark.slow
def test_greedy_chat_requests_are_batched_with_the_answers_of_one_at_a_time(
    tmp_path: Path, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Test's greedy requests go to `transformers serve --continuous-batching`, 8 at once, and get the
    answers one at a time gives; a batching server that misses its warm-up deadline is replaced by one
    that takes one request at a time."""
    from concurrent.futures import ThreadPoolExecutor

    from recipe.artifacts import PromptFormat
    from recipe.providers.cache import RequestCache
    from recipe.providers.model_client import Ledger, ModelClient
    from recipe.providers.serving import BATCH_IN_FLIGHT, LocalServing, local_model

    transformers = pytest.importorskip("transformers")
    # Sharper next-token distributions than the tiny random model's own (nearly flat: a rounding
    # difference could change a greedy token), as a trained model has.
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.lm_head.weight.data *= 40
    model.save_pretrained(tmp_path / "sharp")
    transformers.AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "sharp")
    fmt = PromptFormat("chat_template")
    prompts = [[{"role": "user", "content": f"Name {n} colours."}] for n in range(2, 2 + BATCH_IN_FLIGHT)]

    def answers(serving: LocalServing, cache: str) -> tuple[list[str], int | None, bool]:
        with local_model(tmp_path / "sharp", serving, which="base", weights="sharp", fmt=fmt) as access:
            client = ModelClient(
                access.client,
                RequestCache(tmp_path / cache),
                access.spec,
                sampling={"max_tokens": 24, "temperature": 0.0, "seed": 0},
                ledger=Ledger(0, 0, None),
            )
            with ThreadPoolExecutor(access.concurrency or 1) as pool:
                got = [a.text for a in pool.map(client.ask, prompts)]
            return got, access.concurrency, access.server.batching  # type: ignore[union-attr]

    common = {"engine": "transformers", "startup_timeout_s": limit(300), "timeout_s": limit(120)}
    # The warm-up deadline sized for a loaded machine, as the suite's other limits are.
    batching_serving = LocalServing(**common, greedy_batch=True, warmup_timeout_s=limit(120))
    batched, in_flight, batching = answers(batching_serving, "batched.db")
    assert (in_flight, batching) == (BATCH_IN_FLIGHT, True)
    with caplog.at_level(logging.WARNING, logger="recipe.providers.serving"):
        missed = LocalServing(**common, greedy_batch=True, warmup_timeout_s=0.001)
        one_at_a_time, in_flight, batching = answers(missed, "one.db")
    assert (in_flight, batching) == (1, False)
    assert "gave no answer in 0 s; serving it one request at a time instead" in caplog.text
    assert all(batched) and batched == one_at_a_time


def test_heldout_loss_per_component_has_intervals_and_lower_is_better(tmp_path: Path) -> None:
    """`heldout.loss.<component>`: the mean of each held-out example's loss, with its bootstrap
    interval, and tuned against base paired on the same examples, where lower is better."""
    from recipe.stages.test import by_component

    rng = __import__("random").Random(0)
    records = [
        {"component": c, "messages": [{"role": "user", "content": f"{c} {i}"}, {"role": "assistant", "content": "a"}]}
        for c in ("booksum", "mqa")
        for i in range(40)
    ]
    base_losses = [2.0 + rng.random() for _ in records]
    tuned_losses = [
        v - (0.5 if r["component"] == "booksum" else 0.0) + rng.gauss(0, 0.01)
        for v, r in zip(base_losses, records, strict=True)
    ]
    tuned_losses[3] = None  # cut past max_seq_length: no answer token left
    result = {
        "models": {
            w: {"name": w, "suites": {}, "heldout_loss": 2.5, "heldout_components": by_component(records, losses)}
            for w, losses in (("base", base_losses), ("tuned", tuned_losses))
        },
        "suites": {},
    }
    assert result["models"]["tuned"]["heldout_components"]["booksum"]["examples"] == 39
    settings = Settings(resamples=500)
    summary = report.headline(result, {}, settings)
    tuned = summary["tuned"]
    assert tuned["heldout.loss.booksum"] == pytest.approx(sum(v for v in tuned_losses[:40] if v) / 39, abs=1e-5)
    assert tuned["heldout.loss.booksum_low"] < tuned["heldout.loss.booksum"] < tuned["heldout.loss.booksum_high"]
    differences = report.differences(result, settings)
    assert differences["heldout.loss.booksum"]["verdict"] == "better" and differences["heldout.loss.booksum"]["n"] == 39
    assert differences["heldout.loss.mqa"]["verdict"] == "no difference detected"
    table = report.summary_table(summary, differences)
    assert "heldout.loss.booksum" in table and "better" in table
    report.write_report(tmp_path / "report.md", result, summary, [], {}, {}, table)
    assert "| tuned | 2.500 | " in (tmp_path / "report.md").read_text()
    # Each component's examples measured, and the one the row length dropped, said.
    assert "held-out examples measured: booksum 39 (1 dropped), mqa 40" in (tmp_path / "report.md").read_text()
