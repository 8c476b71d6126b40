"""A dry run prices each stage from what the stage upstream plans to make, before anything exists."""

from __future__ import annotations

import json
from pathlib import Path

from recipe.providers.model_client import approx_tokens
from recipe.runner import run
from recipe.targets import build_stage

from .conftest import MIX_AND_TRAIN


def test_mixs_planned_tokens_are_measured_on_local_sources_and_match_the_mixture(make_cfg, tmp_path: Path) -> None:
    planned = run(make_cfg("dry_run=true", "stages=[mix]"), run_dir=tmp_path)["stages"]["mix"]
    assert "measured on its first" in planned["plan"]
    estimate = planned["planned_size"]["tokens"]
    built = run(make_cfg("stages=[mix]", "mix.progress=false"), run_dir=tmp_path)["stages"]["mix"]
    tokens = json.loads((Path(built["artifact"]) / "manifest.json").read_text())["tokens"]
    # The plan's mean per source x the share's count, against the tokens of the examples Mix drew.
    assert abs(estimate - tokens) / tokens < 0.25, (estimate, tokens)


def test_train_is_priced_from_mixs_plan_before_the_mixture_exists(make_cfg, tmp_path: Path) -> None:
    common = ("dry_run=true", "stages=[mix,train]", "train=together_lora", "train.price_per_mtok=2.0")
    stages = run(make_cfg(*common, base=MIX_AND_TRAIN), run_dir=tmp_path)["stages"]
    assert not stages["mix"]["cache_hit"]
    mix_tokens = stages["mix"]["planned_size"]["tokens"]
    assert stages["train"]["estimated_usd"] == round(4 * mix_tokens * 2.0 / 1e6, 2)
    assert "Mix's plan" in stages["train"]["plan"]
    # Without packing Together bills every example as max_seq_length tokens: exact from the count alone.
    unpacked = ("train.args.packing=false", "train.args.max_seq_length=2048")
    stages = run(make_cfg(*common, *unpacked, base=MIX_AND_TRAIN), run_dir=tmp_path)["stages"]
    assert stages["train"]["estimated_usd"] == round(4 * 32 * 2048 * 2.0 / 1e6, 2)  # mix=samples: 32 examples
    assert "32 examples x max_seq_length 2,048, packing off" in stages["train"]["plan"]
    # Without a rate, or without a length to bill unpacked examples at, the plan says what to set.
    stages = run(make_cfg(*common, "train.args.packing=false", base=MIX_AND_TRAIN), run_dir=tmp_path)["stages"]
    assert stages["train"]["estimated_usd"] is None and "set train.args.max_seq_length" in stages["train"]["plan"]
    stages = run(make_cfg(*common, "train.price_per_mtok=null", base=MIX_AND_TRAIN), run_dir=tmp_path)["stages"]
    assert stages["train"]["estimated_usd"] is None and "set train.price_per_mtok" in stages["train"]["plan"]
    alone = (*common[:1], "stages=[train]", *common[2:], "store_dir=" + str(tmp_path / "empty"))
    stages = run(make_cfg(*alone, base=MIX_AND_TRAIN), run_dir=tmp_path)["stages"]
    assert stages["train"]["estimated_usd"] is None and "add it, stages=[mix,train]" in stages["train"]["plan"]


def test_a_budget_the_plan_exceeds_is_said_before_anything_is_spent(make_cfg, tmp_path: Path, capsys) -> None:
    overrides = ("dry_run=true", "stages=[mix,train]", "train=together_lora", "train.price_per_mtok=1000")
    stages = run(make_cfg(*overrides, "train.budget.max_usd=1", base=MIX_AND_TRAIN), run_dir=tmp_path)["stages"]
    assert stages["train"]["over_budget"] and stages["train"]["budget"]["key"] == "train.budget.max_usd"
    out = capsys.readouterr().out
    assert "as configured, a run refuses at the pre-flight and spends nothing: train would cost ~$" in out


def test_local_suites_are_counted_from_their_prompts(make_cfg, tmp_path: Path) -> None:
    """The offline suites are read: the plan's requests and prompt tokens are those of the prompts."""
    priced = ("test.judge.provider=together", "test.prices.input_per_mtok=1.0", "test.prices.output_per_mtok=1.0")
    cfg = make_cfg(
        "dry_run=true", "stages=[test]", "test=offline", *priced, base=("mix=samples", "~distill", "~deploy")
    )
    test = build_stage("test", cfg)
    items, _ = test.items()
    prompts = sum(len(v) for v in items.values())
    plan = run(cfg, run_dir=tmp_path)["stages"]["test"]
    judged = len(items["alpaca_eval"])
    assert f"{2 * (prompts + 2)} generations and {2 * 2 * judged} judge calls" in plan["plan"]  # 2 held out
    assert "assumed" not in plan["plan"]
    tokens_in = int(plan["plan"].split("; ~")[-1].split()[0].replace(",", ""))
    model_prompts = sum(approx_tokens(i.prompt) for v in items.values() for i in v)
    assert tokens_in > 2 * model_prompts  # and the judge reads each instruction, reference and answer twice
    assert plan["estimated_usd"] > 0


def test_a_hub_suite_without_a_stated_size_leaves_test_unpriced(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg(
        "dry_run=true",
        "stages=[test]",
        "experiment=llama2_7b_32k_instruct",
        "test.suites.booksum.records=null",
        base=(),
    )
    plan = run(cfg, run_dir=tmp_path)["stages"]["test"]
    assert plan["estimated_usd"] is None
    assert "not sized offline: booksum (set test.suites.booksum.records)" in plan["plan"]


def test_deploy_prices_the_idle_minutes_and_refuses_to_guess_without_a_stop(make_cfg, tmp_path: Path) -> None:
    seed = ("experiment=llama2_7b_32k_instruct", "dry_run=true", "stages=[deploy]")
    deploy = run(make_cfg(*seed, "deploy.usd_per_hour=6", base=()), run_dir=tmp_path)["stages"]["deploy"]
    assert deploy["estimated_usd"] == 1.5  # 15 idle minutes at $6/hour, at least
    forever = run(make_cfg(*seed, "deploy.inactive_timeout=null", base=()), run_dir=tmp_path)["stages"]["deploy"]
    assert forever["estimated_usd"] is None and "until you stop it" in forever["plan"]
    stop = run(make_cfg(*seed, "deploy.action=stop", base=()), run_dir=tmp_path)["stages"]["deploy"]
    assert stop["estimated_usd"] == 0.0


def test_a_tuned_model_on_a_dedicated_endpoint_is_not_priced_by_the_token(make_cfg, tmp_path: Path) -> None:
    seed = ("experiment=llama2_7b_32k_instruct", "dry_run=true", "stages=[test]")
    plan = run(make_cfg(*seed, "test.endpoint=dedicated", base=()), run_dir=tmp_path)["stages"]["test"]
    assert plan["estimated_usd"] is None and "temporary dedicated endpoint (billed per minute)" in plan["plan"]
