"""The Mix stage on the shipped samples and on hand-made sources, through the real runner."""

from __future__ import annotations

import collections
import hashlib
import json
from pathlib import Path

import pytest
import zstandard
from omegaconf import DictConfig, OmegaConf, open_dict

from recipe.config import ComponentConfig, SourceConfig
from recipe.data.filecheck import check_file
from recipe.data.selection import largest_remainder
from recipe.errors import RecipeError
from recipe.runner import run

from .conftest import SHARE_SWEEP, write_jsonl


def mix(cfg: DictConfig, tmp_path: Path) -> dict:
    record = run(cfg, run_dir=tmp_path)
    assert record["stages"]["mix"]["status"] == "ok"
    return record["stages"]["mix"]


def artifact(entry: dict) -> tuple[Path, dict]:
    path = Path(entry["artifact"])
    return path, json.loads((path / "manifest.json").read_text())


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def with_components(cfg: DictConfig, sources: dict[str, dict], components: dict[str, dict], **mixture) -> DictConfig:
    """Replace the mixture's components (and add sources) on a composed config."""
    with open_dict(cfg):
        for name, source in sources.items():
            cfg.sources[name] = OmegaConf.merge(OmegaConf.structured(SourceConfig), source)
        cfg.mix.components = {
            n: OmegaConf.merge(OmegaConf.structured(ComponentConfig), c) for n, c in components.items()
        }
        for key, value in mixture.items():
            cfg.mix[key] = value
        cfg.mix.progress = False
    return cfg


def one_source(cfg: DictConfig, name: str, source: dict, total: int, **component) -> DictConfig:
    """A mixture of a single component `name` reading `source`, with no eval split."""
    return with_components(
        cfg, {name: source}, {name: {"source": name, "share": 1.0, **component}}, total=total, eval_fraction=0.0
    )


def pc_records(n: int, prefix: str = "q") -> list[dict]:
    return [{"prompt": f"{prefix} {i}?", "completion": f" answer {i}"} for i in range(n)]


def store_entries(tmp_path: Path) -> list[Path]:
    root = tmp_path / "store" / "mix"
    return sorted(root.iterdir()) if root.exists() else []


# ---- the shipped samples ----------------------------------------------------------------------


def test_offline_mixture_counts_strata_sha_and_check(make_cfg, tmp_path: Path) -> None:
    entry = mix(make_cfg("stages=[mix]", "mix.progress=false"), tmp_path)
    path, manifest = artifact(entry)
    assert entry["cache_hit"] is False and entry["seconds"] >= 0
    assert manifest["counts"] == {"booksum": 8, "instructions": 16, "mqa": 8}
    assert manifest["examples"] == 32 == len(lines(path / "mixture.jsonl"))
    assert sum(manifest["strata"]["mqa"].values()) == 8
    assert set(manifest["strata"]["mqa"]) <= {"3", "5", "8", "12"} and len(manifest["strata"]["mqa"]) == 4
    assert manifest["sha256"] == hashlib.sha256((path / "mixture.jsonl").read_bytes()).hexdigest()
    assert manifest["tokens"] == sum(manifest["tokens_by_component"].values()) > 0
    assert manifest["check"]["is_check_passed"] and manifest["check"]["format"] == "text"
    # The held-out split: 12.5% of 32, same shares, disjoint from the mixture.
    assert manifest["eval"]["counts"] == {"booksum": 1, "instructions": 2, "mqa": 1}
    train = {json.dumps(x) for x in lines(path / "mixture.jsonl")}
    held = {json.dumps(x) for x in lines(path / "eval.jsonl")}
    assert len(held) == 4 and not train & held
    # ChatML for the embedded model.
    assert all(x["text"].startswith("<|im_start|>user\n") for x in lines(path / "mixture.jsonl"))


def test_second_run_is_a_cache_hit_and_seed_changes_the_file(make_cfg, tmp_path: Path) -> None:
    first = mix(make_cfg("mix.progress=false"), tmp_path)
    again = mix(make_cfg("mix.progress=true"), tmp_path)  # execution-only key: same fingerprint
    assert again["cache_hit"] and again["fingerprint"] == first["fingerprint"]
    assert artifact(again)[1]["sha256"] == artifact(first)[1]["sha256"]
    other = mix(make_cfg("mix.seed=1", "mix.progress=false"), tmp_path)
    assert not other["cache_hit"] and other["fingerprint"] != first["fingerprint"]
    assert artifact(other)[1]["sha256"] != artifact(first)[1]["sha256"]


def test_same_config_and_seed_give_a_byte_identical_file(make_cfg, tmp_path: Path) -> None:
    a = artifact(mix(make_cfg("mix.progress=false"), tmp_path))[0]
    b_cfg = make_cfg("mix.progress=false", f"store_dir={tmp_path / 'other_store'}")
    b = artifact(mix(b_cfg, tmp_path))[0]
    assert a != b
    assert (a / "mixture.jsonl").read_bytes() == (b / "mixture.jsonl").read_bytes()
    assert (a / "eval.jsonl").read_bytes() == (b / "eval.jsonl").read_bytes()


def test_blocks_written_by_worker_processes_make_the_same_files(make_cfg, tmp_path: Path, monkeypatch) -> None:
    """Workers gather, check and write blocks at their places in the files while this process hashes
    them in order: the files, their digests and the listing are those of a run in one process."""
    import recipe.data.spool as spool
    import recipe.stages.mix as mix_stage
    from recipe.store import sha256_file

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    alone = artifact(mix(make_cfg("mix.progress=false", "mix.workers=1"), tmp_path / "a"))
    monkeypatch.setattr(mix_stage, "POOL_MIN_BYTES", 0)  # Mix's own pool even for the small samples
    monkeypatch.setattr(mix_stage, "CHUNK_BYTES", 4096)  # ... read in several ranges
    monkeypatch.setattr(spool, "BLOCK_LINES", 7)  # ... and written in many blocks
    cfg = make_cfg("mix.progress=false", "mix.workers=2", f"store_dir={tmp_path / 'b' / 'store'}")
    parallel = artifact(mix(cfg, tmp_path / "b"))
    for name in ("mixture.jsonl", "conversations.jsonl", "eval.jsonl", "eval_conversations.jsonl"):
        assert (parallel[0] / name).read_bytes() == (alone[0] / name).read_bytes(), name
        assert parallel[1]["files"][name]["sha256"] == sha256_file(parallel[0] / name), name
    for key in ("sha256", "conversations", "eval", "check", "eval_check", "counts", "tokens"):
        assert parallel[1][key] == alone[1][key], key


def test_eval_per_component_holds_out_the_same_examples_whatever_the_shares(make_cfg, tmp_path: Path) -> None:
    """`mix.eval_per_component`: k examples of every component drawn before the mixture, so jobs of
    a share sweep (or of another total) are scored on the same held-out examples."""

    def held_out(*overrides: str) -> tuple[list[dict], list[dict], dict]:
        path, manifest = artifact(mix(make_cfg("mix.progress=false", "mix.eval_fraction=0", *overrides), tmp_path))
        return lines(path / "eval_conversations.jsonl"), lines(path / "conversations.jsonl"), manifest

    first, train, manifest = held_out("mix.eval_per_component=3")
    assert manifest["eval"]["counts"] == {"booksum": 3, "instructions": 3, "mqa": 3}
    assert manifest["counts"] == {"booksum": 8, "instructions": 16, "mqa": 8}
    assert not {json.dumps(r["messages"]) for r in first} & {json.dumps(r["messages"]) for r in train}
    for shares in (
        ("mix.components.instructions.share=0.7", "mix.components.booksum.share=0.1", "mix.components.mqa.share=0.2"),
        ("mix.total=20",),
    ):
        again, train, _ = held_out("mix.eval_per_component=3", *shares)
        assert again == first, shares  # the same records, in the same order
        assert not {json.dumps(r["messages"]) for r in again} & {json.dumps(r["messages"]) for r in train}
    other_seed, _, _ = held_out("mix.eval_per_component=3", "mix.seed=1")
    assert other_seed != first
    # The eval_fraction split, by contrast, follows the shares.
    a, _, _ = held_out("mix.eval_fraction=0.25")
    b, _, _ = held_out("mix.eval_fraction=0.25", "mix.components.instructions.share=0.75", "mix.rescale=instructions")
    count = lambda held: collections.Counter(r["component"] for r in held)  # noqa: E731
    assert count(a) == {"instructions": 4, "booksum": 2, "mqa": 2} and count(b) == {
        "instructions": 6,
        "booksum": 1,
        "mqa": 1,
    }


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["mix.eval_per_component=2", "mix.eval_fraction=0.1"], r"mix.eval_per_component=2 and mix.eval_fraction=0.1"),
        (["mix.eval_per_component=-1", "mix.eval_fraction=0"], r"mix.eval_per_component=-1: must be 0"),
        (
            ["mix.eval_per_component=20", "mix.eval_fraction=0"],
            r"mix.eval_per_component=20: component 'booksum' has 20 distinct records",
        ),
    ],
)
def test_bad_eval_per_component_is_named(make_cfg, tmp_path: Path, overrides: list[str], message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        run(make_cfg("mix.progress=false", *overrides), run_dir=tmp_path)
    assert store_entries(tmp_path) == []


def test_largest_remainder_sums_exactly() -> None:
    assert largest_remainder(10, [0.5, 0.25, 0.25]) == [5, 3, 2]
    assert largest_remainder(7, [1, 1, 1]) == [3, 2, 2]
    assert largest_remainder(0, [0.3, 0.7]) == [0, 0]
    for total in range(1, 50):
        assert sum(largest_remainder(total, [0.4, 0.35, 0.25])) == total


@pytest.mark.parametrize("fmt", ["text", "messages", "prompt_completion"])
@pytest.mark.parametrize("template", ["llama2_inst", "chatml", "raw", "### {role}:\n{content}\n"])
def test_every_format_and_template_passes_the_file_check(make_cfg, tmp_path: Path, fmt: str, template: str) -> None:
    cfg = make_cfg("mix.progress=false", f"mix.format={fmt}", f"mix.template='{template}'")
    path, _manifest = artifact(mix(cfg, tmp_path))
    assert check_file(path / "mixture.jsonl")["format"] == fmt
    first = lines(path / "mixture.jsonl")[0]
    if fmt == "messages":
        assert [m["role"] for m in first["messages"]][-1] == "assistant"
    if fmt == "text" and template == "llama2_inst":
        assert any(x["text"].startswith("[INST] ") for x in lines(path / "mixture.jsonl"))


def test_per_component_template_overrides_the_mixture_template(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("mix.progress=false", "mix.template=llama2_inst", "mix.components.booksum.template=raw")
    path, _ = artifact(mix(cfg, tmp_path))
    texts = [x["text"] for x in lines(path / "mixture.jsonl")]
    booksum = [t for t in texts if "Can you write an appropriate summary" in t]
    assert booksum and all(t.startswith("Chapter ") for t in booksum)  # raw: prompt + completion as is
    assert all(t.startswith("[INST] ") for t in texts if t not in booksum)


def test_tokens_unit_splits_a_token_budget(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("mix.progress=false", "mix.unit=tokens", "mix.total=4000", "mix.eval_fraction=0")
    _, manifest = artifact(mix(cfg, tmp_path))
    by = manifest["tokens_by_component"]
    # Each component reaches its budget, overshooting by less than one record.
    assert by["instructions"] >= 2000 and by["booksum"] >= 1000 and by["mqa"] >= 1000
    assert manifest["tokens"] < 4000 + 3 * 1000


# ---- hand-made sources ------------------------------------------------------------------------


def test_too_small_source_is_a_clear_error_and_nothing_is_stored(make_cfg, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "small.jsonl", pc_records(5))
    cfg = one_source(make_cfg(), "small", {"kind": "prompt_completion", "data_files": [str(src)]}, total=8)
    with pytest.raises(RecipeError, match=r"mix.components.small: needs 8 examples .* has 5 .*replace=true"):
        run(cfg, run_dir=tmp_path)
    assert store_entries(tmp_path) == []
    assert json.loads((tmp_path / "run.json").read_text())["stages"]["mix"]["status"] == "failed"
    with open_dict(cfg):
        cfg.mix.components.small.replace = True
    path, _manifest = artifact(mix(cfg, tmp_path))
    rows = lines(path / "mixture.jsonl")
    assert len(rows) == 8 and len({json.dumps(r) for r in rows}) == 5  # every record once, 3 repeated


def test_exact_duplicates_are_removed_within_and_across_components(make_cfg, tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", pc_records(10) + pc_records(3))  # 3 repeats inside
    b = write_jsonl(tmp_path / "b.jsonl", pc_records(2) + pc_records(10, "z"))  # 2 shared with a
    cfg = with_components(
        make_cfg(),
        {
            "a": {"kind": "prompt_completion", "data_files": [str(a)]},
            "b": {"kind": "prompt_completion", "data_files": [str(b)]},
        },
        {"a": {"source": "a", "share": 0.5}, "b": {"source": "b", "share": 0.5}},
        total=20,
        eval_fraction=0.0,
    )
    path, manifest = artifact(mix(cfg, tmp_path))
    assert manifest["sources"]["a"]["duplicates_removed"] == 3
    assert manifest["sources"]["b"]["duplicates_removed"] == 2
    rows = [json.dumps(r) for r in lines(path / "mixture.jsonl")]
    assert len(rows) == len(set(rows)) == 20


def test_strata_from_a_record_field_are_proportional(make_cfg, tmp_path: Path) -> None:
    records = [{"prompt": f"p{i}", "completion": "c", "lang": "en"} for i in range(30)]
    records += [{"prompt": f"q{i}", "completion": "c", "lang": "fr"} for i in range(10)]
    src = write_jsonl(tmp_path / "s.jsonl", records)
    cfg = one_source(make_cfg(), "s", {"kind": "prompt_completion", "data_files": [str(src)]}, total=20, strata="lang")
    _, manifest = artifact(mix(cfg, tmp_path))
    assert manifest["strata"]["s"] == {"en": 15, "fr": 5}


def test_zst_json_list_and_parquet_sources(make_cfg, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    zst = tmp_path / "a.jsonl.zst"
    zst.write_bytes(
        zstandard.ZstdCompressor().compress("".join(json.dumps(r) + "\n" for r in pc_records(6, "z")).encode())
    )
    listed = tmp_path / "b.json"
    listed.write_text(
        json.dumps(
            [
                {"conversations": [{"from": "human", "value": f"hi {i}"}, {"from": "gpt", "value": "hello"}]}
                for i in range(6)
            ]
        )
    )
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist(pc_records(6, "p")), parquet)
    cfg = with_components(
        make_cfg(),
        {
            "zst": {"kind": "prompt_completion", "data_files": [str(zst)]},
            "listed": {"kind": "sharegpt", "data_files": [str(listed)]},
            "parquet": {"kind": "prompt_completion", "data_files": [str(parquet)]},
        },
        {
            "zst": {"source": "zst", "share": 0.5},
            "listed": {"source": "listed", "share": 0.25},
            "parquet": {"source": "parquet", "share": 0.25},
        },
        total=8,
        eval_fraction=0.0,
        format="messages",
    )
    path, manifest = artifact(mix(cfg, tmp_path))
    assert manifest["counts"] == {"listed": 2, "parquet": 2, "zst": 4}
    contents = " ".join(m["content"] for r in lines(path / "mixture.jsonl") for m in r["messages"])
    assert "z " in contents and "p " in contents and "hi " in contents


# ---- bad input: a clear error naming the place, and nothing written to the store ---------------

BAD_LINES = [
    (b'{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": \n', r"bad\.jsonl:2: malformed JSON"),
    (b'{"prompt": "a", "completion": "b"}\n\n{"prompt": "c", "completion": "d"}\n', r"bad\.jsonl:2: blank line"),
    (
        b'{"prompt": "a", "completion": "b"}\n{"prompt": "\xff\xfe", "completion": "b"}\n',
        r"bad\.jsonl:2: not valid UTF-8",
    ),
    (b'{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n', r"bad\.jsonl:2: missing field 'completion'"),
    (b'{"prompt": "a", "completion": "b"}\n[1, 2]\n', r"bad\.jsonl:2: expected a JSON object"),
    (b"", r"sources\.bad: no records"),
]


@pytest.mark.parametrize(("content", "message"), BAD_LINES)
def test_bad_input_names_the_file_and_line(make_cfg, tmp_path: Path, content: bytes, message: str) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(content)
    cfg = one_source(make_cfg(), "bad", {"kind": "prompt_completion", "data_files": [str(bad)]}, total=1)
    with pytest.raises(RecipeError, match=message):
        run(cfg, run_dir=tmp_path)
    assert list(tmp_path.glob("store/mix/*")) == []  # no artifact, no temp dir (".tmp-*") left


def test_a_bad_line_found_while_building_leaves_nothing_behind(make_cfg, tmp_path: Path) -> None:
    """Past the first 1,000 records the pre-flight measures, a bad line stops the build itself."""
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"prompt": "a", "completion": "b"}\n' * 1500 + b'{"prompt": "a", "completion": \n')
    cfg = one_source(make_cfg(), "bad", {"kind": "prompt_completion", "data_files": [str(bad)]}, total=1)
    with pytest.raises(RecipeError, match=r"bad\.jsonl:1501: malformed JSON"):
        run(cfg, run_dir=tmp_path)
    mix_dir = tmp_path / "store" / "mix"
    assert mix_dir.is_dir() and list(mix_dir.iterdir()) == []  # it was building: no artifact, no temp dir left


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["mix.components.booksum.share=0.5"],
            r"shares must sum to 1, got 1.25 \(booksum=0.5, instructions=0.5, mqa=0.25\)",
        ),
        (["mix.total=0"], r"mix.total=0: must be a positive"),
        (["mix.total=-3"], r"mix.total=-3"),
        (["mix.components.mqa.source=nope"], r"mix.components.mqa.source='nope': no such source"),
        (["+mix.components.extra.share=0.1"], r"mix.components.extra"),
        (["mix.template=mine"], r"mix.template='mine': not a template"),
        (["mix.eval_fraction=1.5"], r"mix.eval_fraction=1.5"),
        (["mix.token_counter=gpt9"], r"mix.token_counter='gpt9'"),
        (
            ["mix.components.mqa.strata=colour"],
            r"mqa\.jsonl:1: missing field 'colour' named by mix.components.mqa.strata",
        ),
    ],
)
def test_bad_config_is_a_clear_error(make_cfg, tmp_path: Path, overrides: list[str], message: str) -> None:
    with pytest.raises(Exception, match=message):
        run(make_cfg("mix.progress=false", *overrides), run_dir=tmp_path)
    assert store_entries(tmp_path) == []


def test_unknown_source_file_is_named(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("mix.progress=false")
    with open_dict(cfg):
        cfg.sources.booksum_sample.data_files = [str(tmp_path / "missing-*.jsonl")]
    with pytest.raises(RecipeError, match=r"sources.booksum_sample.data_files: '.*missing-\*.jsonl' matches no file"):
        run(cfg, run_dir=tmp_path)


def test_manifest_config_holds_no_paths_only_content_hashes(make_cfg, tmp_path: Path) -> None:
    _, manifest = artifact(mix(make_cfg("mix.progress=false"), tmp_path))
    files = manifest["config"]["sources"]["booksum_sample"]["files"]
    assert files[0]["name"] == "booksum.jsonl" and len(files[0]["sha256"]) == 64
    assert OmegaConf.create(manifest["config"])  # plain JSON-able


def test_a_dataset_repository_loads_through_datasets(make_cfg, tmp_path: Path) -> None:
    # hub_id takes anything datasets.load_dataset takes: here a local dataset directory, the same
    # code path as a hub id without the network.
    repo = tmp_path / "repo"
    repo.mkdir()
    write_jsonl(repo / "part.jsonl", pc_records(12, "hub"))
    cfg = one_source(
        make_cfg(), "hub", {"kind": "prompt_completion", "hub_id": str(repo), "data_files": ["part.jsonl"]}, total=10
    )
    _path, manifest = artifact(mix(cfg, tmp_path))
    assert manifest["counts"] == {"hub": 10}
    assert manifest["config"]["sources"]["hub"]["hub_id"] == str(repo)


def test_an_unreadable_parquet_file_names_the_source(make_cfg, tmp_path: Path) -> None:
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"not parquet at all")
    cfg = one_source(make_cfg(), "pq", {"kind": "prompt_completion", "data_files": [str(bad)]}, total=1)
    with pytest.raises(RecipeError, match=r"sources.pq: .*broken.parquet cannot be read"):
        run(cfg, run_dir=tmp_path)
    assert store_entries(tmp_path) == []


def test_normalize_makes_any_positive_weights_a_mixture(make_cfg, tmp_path: Path) -> None:
    """mix.normalize=true: shares are weights divided by their sum (a search sweeper moves every
    component at once and each trial is a valid mixture); the same mixture as its shares written out."""
    weights = ("mix.components.instructions.share=2", "mix.components.booksum.share=1", "mix.components.mqa.share=1")
    entry = mix(make_cfg("mix.progress=false", "mix.normalize=true", *weights), tmp_path)
    assert artifact(entry)[1]["shares"] == {"booksum": 0.25, "instructions": 0.5, "mqa": 0.25}
    same = mix(make_cfg("mix.progress=false"), tmp_path)  # the config's own 0.5 / 0.25 / 0.25
    assert same["cache_hit"] and same["fingerprint"] == entry["fingerprint"]
    with pytest.raises(RecipeError, match=r"mix\.rescale=instructions and mix\.normalize=true: choose one"):
        run(make_cfg("mix.progress=false", "mix.normalize=true", "mix.rescale=instructions"), run_dir=tmp_path)
    with pytest.raises(RecipeError, match=r"mix.components.mqa.share=-1.0: must be in \(0, 1\]"):
        run(make_cfg("mix.progress=false", "mix.normalize=true", "mix.components.mqa.share=-1"), run_dir=tmp_path)


def test_rescale_keeps_one_share_and_scales_the_others(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg(
        "mix.progress=false",
        "mix.rescale=instructions",
        "mix.components.instructions.share=0.6",
        "mix.total=20",
        "mix.eval_fraction=0",
    )
    _, manifest = artifact(mix(cfg, tmp_path))
    assert manifest["shares"] == {"booksum": 0.2, "instructions": 0.6, "mqa": 0.2}
    assert manifest["counts"] == {"booksum": 4, "instructions": 12, "mqa": 4}
    with pytest.raises(RecipeError, match=r"mix.rescale='books': not a component"):
        run(make_cfg("mix.rescale=books"), run_dir=tmp_path)


def test_a_sweep_over_one_share_reuses_one_distill(run_cli, tmp_path: Path) -> None:
    """The sweep pays for Distill once: every job after the first reports a cache hit for it."""
    from .fake_together import FakeTogether

    with FakeTogether(api_key="k") as fake:
        run_cli(
            "-m",
            "stages=[distill,mix]",
            *SHARE_SWEEP,
            env={"TOGETHER_API_KEY": "k", "TOGETHER_BASE_URL": fake.base_url},
        )
        sent = len(fake.posts("/v1/completions"))
    jobs = sorted((tmp_path / "outputs" / "multiruns").glob("*/*/*/run.json"), key=lambda p: int(p.parent.name))
    records = [json.loads(p.read_text()) for p in jobs]
    assert [r["stages"]["distill"]["cache_hit"] for r in records] == [False, True, True]
    assert len({r["stages"]["distill"]["fingerprint"] for r in records}) == 1
    assert len({r["stages"]["mix"]["fingerprint"] for r in records}) == 3
    counts = [json.loads(Path(r["stages"]["mix"]["artifact"], "manifest.json").read_text())["counts"] for r in records]
    assert [c["instructions"] for c in counts] == [4, 8, 12]
    assert sent == sum(
        len(json.loads(line)["messages"]) // 2
        for line in Path(records[0]["stages"]["distill"]["artifact"], "conversations.jsonl").read_text().splitlines()
    )
