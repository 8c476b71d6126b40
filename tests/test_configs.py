"""Every committed YAML composes against the schemas and is valid for its stage."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from recipe.artifacts import PromptFormat
from recipe.cli import CONF_DIR
from recipe.runner import configured_stages
from recipe.stages.mix import Mix
from recipe.targets import build_stage

CONF = Path(CONF_DIR)
ALL_YAML = sorted(CONF.rglob("*.yaml"))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_every_yaml_opens_with_a_usage_comment() -> None:
    assert ALL_YAML
    for path in ALL_YAML:
        header = [line for line in path.read_text().splitlines() if not line.startswith("# @package")]
        assert header[0].startswith("# recipe"), f"{path} must open with the command that uses it"


def test_root_config_composes_with_every_source(make_cfg) -> None:
    cfg = make_cfg(base=())
    assert sorted(cfg.sources) == options("source")
    for name, source in cfg.sources.items():
        assert source.kind.value in ("sharegpt", "text", "prompt_completion", "synthetic"), name
        assert source.hub_id or source.data_files or source.kind.value == "synthetic", name
    # Shipped samples resolve to files in the package.
    for name in ("sharegpt_sample", "llama_instruct_sample", "booksum_sample", "mqa_sample"):
        assert Path(cfg.sources[name].data_files[0]).is_file()
    assert configured_stages(cfg) == ["distill", "mix", "train", "test", "deploy"]
    assert cfg.mix.components.instructions.source == "distill"


@pytest.mark.parametrize("mixture", options("mix"))
def test_every_mixture_composes_and_validates(make_cfg, mixture: str) -> None:
    cfg = make_cfg(f"mix={mixture}", base=())
    stage = build_stage("mix", cfg)
    assert isinstance(stage, Mix)
    assert stage.plan({}, {}).summary.startswith(f"{cfg.mix.total:,} examples (")


DISTILL_REQUIRED = {"openai_compatible": ("distill.teacher.base_url=http://127.0.0.1:9/v1", "distill.teacher.model=m")}


@pytest.mark.parametrize("distill", options("distill"))
def test_every_distill_option_composes_and_validates(make_cfg, distill: str) -> None:
    cfg = make_cfg(f"distill={distill}", *DISTILL_REQUIRED.get(distill, ()), base=())
    stage = build_stage("distill", cfg)
    assert stage.semantic_config()["teacher"]["model"] == cfg.distill.teacher.model
    # The plan names what would be asked of whom: the conversations to replay and the teacher.
    plan, d = stage.plan({}, {}), cfg.distill
    assert f" -> {d.teacher.provider.value}:{d.teacher.model}" in plan.summary, plan.summary
    if d.max_conversations is not None:
        assert plan.summary.startswith(f"{d.max_conversations:,} conversations"), plan.summary


DEPLOY_NEEDS = {"local": "train=local_lora"}
DEPLOY_SAYS = {
    "local": "on 127.0.0.1",
    "together_dedicated": "a dedicated endpoint",
    "together_serverless": "the serverless API",
}


@pytest.mark.parametrize("deploy", options("deploy"))
def test_every_deploy_option_composes_and_validates(make_cfg, deploy: str) -> None:
    train = DEPLOY_NEEDS.get(deploy, "train=together_lora")
    cfg = make_cfg(f"deploy={deploy}", train, base=("mix=samples",))
    stage = build_stage("deploy", cfg)
    assert stage.upstream() == ("train",)
    assert DEPLOY_SAYS[deploy] in stage.plan({}, {}).summary  # where the model would be served


@pytest.mark.parametrize("train", options("train"))
def test_every_train_option_composes_and_validates(make_cfg, train: str) -> None:
    cfg = make_cfg(f"train={train}", base=("mix=samples",))
    stage = build_stage("train", cfg)
    assert stage.upstream() == ("mix",)
    # The plan says what would be trained, how: the method, epochs and learning rate configured.
    plan, args = stage.plan({}, {}), cfg.train.args
    assert ("LoRA" in plan.summary) == ("lora" in train), plan.summary
    assert f"{args.n_epochs} epochs" in plan.summary and f"lr {args.learning_rate:g}" in (plan.details or ""), plan
    if train.startswith("together"):
        assert cfg.train.model == "togethercomputer/LLaMA-2-7B-32K" and stage.body("file-1", None)["n_epochs"] == 4


def test_a_typo_in_a_train_key_is_an_error_naming_it(make_cfg) -> None:
    with pytest.raises(ConfigCompositionException) as err:
        make_cfg("train=together_lora", "train.n_epoch=3", base=("mix=samples",))
    assert "n_epoch" in f"{err.value} {err.value.__cause__}"


TEST_NEEDS = {
    "offline": "train=local_lora",
    "model_card": "train=together_full",
    "heldout": "train=local_lora",
    "longctx": "train=local_lora",
}


@pytest.mark.parametrize("test", options("test"))
def test_every_test_option_composes_and_validates(make_cfg, test: str) -> None:
    cfg = make_cfg(f"test={test}", TEST_NEEDS[test], base=("mix=samples", "~distill"))
    stage = build_stage("test", cfg)
    assert stage.upstream() == ("mix", "train")
    plan = stage.plan({}, {})
    if test == "heldout":  # the held-out loss alone: nothing generated, nothing judged
        assert plan.summary == "base and tuned on 0 suites: 0 generations and 0 judge calls" and plan.usd == 0
        assert stage.semantic_config()["suite_data"] == {}
        return
    if test == "longctx":  # the main job's: the synthetic task's 108 prompts, made here, nothing judged
        assert plan.summary == "base and tuned on 1 suites: 216 generations and 0 judge calls" and plan.usd == 0
        assert plan.details.startswith("longctx (synthetic, 108 made records, 2×3 settings)")
        assert stage.semantic_config()["suite_data"]["longctx"]["synthetic"]["people"] == "test"
        return
    assert plan.summary.startswith("base and tuned on 3 suites: ") and plan.details.startswith("mqa (mqa, ")
    assert stage.semantic_config()["suite_data"].keys() == {"mqa", "booksum", "alpaca_eval"}


@pytest.mark.parametrize("suite", options("test/suite"))
def test_every_test_suite_composes_and_its_shipped_data_reads(make_cfg, suite: str) -> None:
    cfg = make_cfg(f"+test/suite@test.suites.extra={suite}", base=("mix=samples", "~distill"))
    stage = build_stage("test", cfg)
    node = cfg.test.suites.extra
    assert node.kind.value in ("mqa", "booksum", "judge", "synthetic") and node.description
    if node.hub_id is None:  # the shipped samples (or the synthetic task): every record makes prompts
        items = stage.items()[0]["extra"]
        assert items and all(i.prompt and i.answers for i in items)
    else:
        assert node.hub_id in ("json", "kmfoda/booksum", "tatsu-lab/alpaca_eval")


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes(make_cfg, experiment: str) -> None:
    cfg = make_cfg(f"experiment={experiment}", base=())
    assert cfg.notes.experiment == experiment
    for stage in configured_stages(cfg):
        build_stage(stage, cfg)


def test_the_main_job_is_the_default_recipe(make_cfg) -> None:
    """`make run` runs experiment=longctx_offline: plain `recipe` runs the same stages, the same way."""
    default, offline = make_cfg(base=()), make_cfg("experiment=longctx_offline", base=())
    for stage in configured_stages(default):
        assert build_stage(stage, offline).semantic_config() == build_stage(stage, default).semantic_config()
    assert configured_stages(offline) == ["distill", "mix", "train", "test", "deploy"]


def test_an_experiments_own_stages_and_store_are_what_runs(make_cfg, tmp_path: Path) -> None:
    """The root config's `stages: null` once won over an experiment's `stages:` (`_self_` came after
    `experiment` in the defaults): an experiment of a user's own sets them, and they are what runs;
    the command line still wins over both."""
    conf = tmp_path / "conf" / "experiment"
    conf.mkdir(parents=True)
    (conf / "mine.yaml").write_text("# @package _global_\nstages: [distill, mix]\nverbose: true\n")
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=["hydra.searchpath=[file://" + str(tmp_path / "conf") + "]", "experiment=mine"],
        )
        assert list(cfg.stages) == ["distill", "mix"] and cfg.verbose is True
        from recipe.runner import select_stages

        assert select_stages(cfg) == ["distill", "mix"]
        cfg = compose(
            config_name="config",
            overrides=["hydra.searchpath=[file://" + str(tmp_path / "conf") + "]", "experiment=mine", "stages=[mix]"],
        )
        assert list(cfg.stages) == ["mix"]


def test_seed_experiment_uses_hub_sources_at_50_25_25(make_cfg) -> None:
    cfg = make_cfg("experiment=llama2_7b_32k_instruct", base=())
    comps = cfg.mix.components
    assert {n: c.share for n, c in comps.items()} == {"instructions": 0.5, "booksum": 0.25, "mqa": 0.25}
    assert comps.instructions.source == "distill"
    assert cfg.sources[cfg.distill.source].hub_id == "philschmid/sharegpt-raw"
    assert (
        cfg.distill.teacher.model == "togethercomputer/llama-2-70b-chat"
        and cfg.distill.teacher.api.value == "completions"
    )
    assert dict(cfg.distill.sampling) == {
        "max_tokens": 1024,
        "temperature": 0.7,
        "top_p": 0.7,
        "top_k": 50,
        "repetition_penalty": 1.0,
        "stop": ["[INST]"],
        "seed": None,
    }
    assert cfg.sources[comps.mqa.source].data_files == ["fine-tune/natural_questions_10_200_docs.jsonl.zst"]
    assert cfg.mix.total == 38000 and cfg.mix.template == "llama2_inst"
    # Train renders the upload for LLaMA-2-7B-32K in the seed's [INST] text (what the mixture already is).
    train = build_stage("train", cfg)
    assert cfg.train.format.value == "auto" and train.format == PromptFormat("text", "llama2_inst")
    # Test as the model card: AlpacaEval's 805 prompts, MQA at 20/30/50 documents (prompts as trained).
    test = cfg.test
    assert test.suites.alpaca_eval.hub_id == "tatsu-lab/alpaca_eval" and test.suites.alpaca_eval.max_examples is None
    assert list(test.suites.mqa.num_documents) == [20, 30, 50]
    assert [p.value for p in test.suites.mqa.gold_positions] == ["first", "middle", "last"]
    assert test.suites.booksum.hub_id == "kmfoda/booksum" and test.suites.booksum.split == "test"
    assert cfg.deploy.dedicated and cfg.deploy._target_ == "recipe.stages.deploy.TogetherDeploy"


def test_a_typo_in_a_key_is_an_error_naming_it(make_cfg) -> None:
    with pytest.raises(ConfigCompositionException) as err:
        make_cfg("mix.totl=5")
    assert "totl" in str(err.value) or "totl" in str(err.value.__cause__)


def test_a_wrong_type_is_an_error_naming_the_key(make_cfg) -> None:
    with pytest.raises(ConfigCompositionException) as err:
        make_cfg("mix.total=lots")
    text = f"{err.value} {err.value.__cause__}"
    assert "mix.total" in text and "lots" in text


def test_an_unknown_enum_value_is_an_error(make_cfg) -> None:
    with pytest.raises(ConfigCompositionException) as err:
        make_cfg("mix.unit=bytes")
    assert "mix.unit" in f"{err.value} {err.value.__cause__}"


def test_unknown_key_inside_a_source_is_rejected(make_cfg) -> None:
    with pytest.raises((ConfigCompositionException, ConfigKeyError, ValidationError)) as err:
        make_cfg("sources.booksum_sample.colour=red")
    assert "colour" in f"{err.value} {err.value.__cause__}"


def test_a_typo_in_a_users_yaml_file_is_an_error_naming_the_key(make_cfg, tmp_path: Path) -> None:
    (tmp_path / "conf" / "source").mkdir(parents=True)
    (tmp_path / "conf" / "source" / "mine.yaml").write_text(
        "# recipe +source@sources.mine=mine\nkind: text\ndata_file: [x.jsonl]\n"
    )
    with pytest.raises(ConfigCompositionException) as err:
        make_cfg(f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "+source@sources.mine=mine")
    assert "data_file" in f"{err.value} {err.value.__cause__}"


def test_the_key_reference_is_generated_from_the_schemas() -> None:
    """docs/reference.md is `python -m recipe.reference`'s output, so it cannot drift from the schemas."""
    from recipe import reference

    committed = Path(__file__).resolve().parents[1] / "docs" / "reference.md"
    assert committed.read_text() == reference.render(), "docs/reference.md is stale: run `make reference`"
    text = reference.render()
    # Every key of every schema is in it, with its execution mark.
    assert "| `concurrency` | int? | null | execution |" in text and "| `total` | int | **required** | yes |" in text
    assert "## `train` (train=local_*)" in text and "## `deploy` (deploy=together)" in text
    assert "type: ignore" not in text


def test_the_config_tree_in_the_docs_lists_every_committed_yaml() -> None:
    """docs/configs.md's tree names each file under conf/ (in its group's block), and no file that is gone."""
    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "configs.md").read_text()
    tree = doc.split("```", 2)[1]
    listed = set(re.findall(r"\b([\w.]+\.yaml)\b", tree))
    committed = {p.name for p in (root / "conf").rglob("*.yaml")}
    assert committed - listed == set(), "not in docs/configs.md's tree"
    assert listed - committed == set(), "in docs/configs.md's tree, but not under conf/"


def documented_commands() -> list[tuple[str, str]]:
    """(file, command) for every `recipe ...` line of a bash block in the README and docs/."""
    root = Path(__file__).resolve().parents[1]
    found = []
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        in_block, lines = False, []
        for line in doc.read_text().splitlines():
            if line.strip().startswith("```"):
                in_block = line.strip() in ("```bash", "```sh") if not in_block else False
            elif in_block and lines and lines[-1].endswith("\\"):
                lines[-1] = lines[-1][:-1].rstrip() + " " + line.strip()  # a continued line
            elif in_block:
                lines.append(line.split(" #")[0].strip())
        found += [(doc.name, line) for line in lines if line.startswith("recipe ")]
    return found


@pytest.mark.slow
def test_every_recipe_command_in_the_docs_composes(make_cfg) -> None:
    """Each documented `recipe` command's overrides compose against the shipped configs (a sweep's
    first value of each swept key), so a renamed key or option cannot linger in a guide."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    checked = 0
    for doc, command in documented_commands():
        words = shlex.split(command)[1:]
        if (
            not words
            or words[0] in ("store", "init", "sweep", "playground", "--help", "--hydra-help")
            or "..." in words
        ):
            continue
        if "--config-dir" in words or any(w.startswith("--cfg") for w in words):
            continue  # a config directory of the reader's own / printing the config: composed elsewhere
        overrides = []
        for parsed in parser.parse_overrides([w for w in words if w != "-m"]):
            if parsed.is_sweep_override() and parsed.is_interval_sweep():
                overrides.append(f"{parsed.get_key_element()}={parsed.value().start}")  # type: ignore[union-attr]
            elif parsed.is_sweep_override():
                overrides.append(f"{parsed.get_key_element()}={next(parsed.sweep_string_iterator())}")
            else:
                overrides.append(parsed.input_line)
        try:
            make_cfg(*overrides, base=())
        except Exception as error:
            raise AssertionError(f"{doc}: `{command}` does not compose: {error}") from None
        checked += 1
    assert checked > 40
