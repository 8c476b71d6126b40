"""Never pay twice, even when the network lies: creates whose answer goes wrong after the server
created the object (a reply past the client's timeout, a dropped connection, a gateway's 502) leave
exactly one object, recorded; objects deleted behind our back are noticed, not fatal forever."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from recipe.errors import RecipeError
from recipe.runner import run

from .fake_together import FakeTogether
from .test_deploy import together as deploy_cfg
from .test_distill import together as distill_cfg
from .test_train import manifest, train_cfg

FAULTS = ["slow", "drop", "502"]


def inject(fake: FakeTogether, fault: str, path: str) -> None:
    """The server creates the object, then the answer goes wrong."""
    if fault == "slow":
        fake.slow(2.0, paths=(path,))  # the clients below time out after 0.5 s
    elif fault == "drop":
        fake.drop(paths=(path,), after=True)
    else:
        fake.fail(502, paths=(path,), after=True)


@pytest.mark.parametrize("fault", FAULTS)
def test_an_ambiguous_fine_tune_create_makes_one_job(make_cfg, tmp_path: Path, fake: FakeTogether, fault) -> None:
    inject(fake, fault, "/v1/fine-tunes")
    record = run(train_cfg(make_cfg, "train.timeout_s=0.5"), run_dir=tmp_path)
    assert len(fake.jobs) == 1 and len(fake.posts("/v1/fine-tunes")) == 1  # looked up, not sent again
    (job_id,) = fake.jobs
    assert manifest(record)["job_id"] == job_id
    # Recorded: a re-run re-attaches to it.
    assert run(train_cfg(make_cfg), run_dir=tmp_path)["stages"]["train"]["cache_hit"]
    record = run(train_cfg(make_cfg, "train.args.n_epochs=2"), run_dir=tmp_path)  # another config: a second job
    assert len(fake.jobs) == 2


def test_a_create_refused_before_any_work_is_sent_again(make_cfg, tmp_path: Path, fake: FakeTogether) -> None:
    fake.fail(503, 2, paths=("/v1/fine-tunes",))  # failed before creating anything: looked up, then resent
    fake.fail(400, 1, paths=("/v1/fine-tunes/estimate-price",))
    with pytest.raises(RecipeError, match="HTTP 400"):  # a clear 4xx is not retried
        run(train_cfg(make_cfg), run_dir=tmp_path)
    assert len(fake.posts("/v1/fine-tunes/estimate-price")) == 1
    record = run(train_cfg(make_cfg), run_dir=tmp_path)
    assert record["stages"]["train"]["status"] == "ok" and len(fake.jobs) == 1
    assert len(fake.posts("/v1/fine-tunes")) == 2  # the look-up took the second 503 (and was retried)


def test_a_create_sent_before_a_crash_is_found_on_the_rerun(make_cfg, tmp_path: Path, fake: FakeTogether) -> None:
    # The job is created but every answer is lost, past all retries: the run fails, the intent stays.
    fake.fail(502, 1, paths=("/v1/fine-tunes",), after=True)
    fake.fail(502, 100, paths=("/v1/fine-tunes",))
    fake.drop(100, paths=("/v1/fine-tunes",))  # not even the look-up answers
    with pytest.raises(RecipeError):
        run(train_cfg(make_cfg, "train.max_retries=0"), run_dir=tmp_path)
    assert len(fake.jobs) == 1
    fake.clear_faults()
    record = run(train_cfg(make_cfg), run_dir=tmp_path)
    assert len(fake.jobs) == 1 and manifest(record)["job_id"] in fake.jobs


@pytest.mark.parametrize("fault", FAULTS)
def test_an_ambiguous_endpoint_create_makes_one_endpoint(make_cfg, tmp_path: Path, fake: FakeTogether, fault) -> None:
    inject(fake, fault, "/v1/endpoints")
    record = run(deploy_cfg(make_cfg, "deploy.timeout_s=0.5"), run_dir=tmp_path)
    assert len(fake.endpoints) == 1 and len(fake.posts("/v1/endpoints")) == 1
    (endpoint_id,) = fake.endpoints
    deployed = json.loads((Path(record["stages"]["deploy"]["artifact"]) / "manifest.json").read_text())
    assert deployed["endpoint_id"] == endpoint_id
    run(deploy_cfg(make_cfg, "deploy.action=delete"), run_dir=tmp_path)  # recorded: deploy.action reaches it
    assert fake.endpoints == {}


@pytest.mark.parametrize("fault", FAULTS)
def test_an_ambiguous_batch_create_makes_one_batch(make_cfg, tmp_path: Path, fake: FakeTogether, fault) -> None:
    inject(fake, fault, "/v1/batches")
    overrides = ("distill.batch_poll_s=0.01", "distill.max_turns=1", "distill.timeout_s=0.5")
    record = run(distill_cfg(make_cfg, tmp_path, *overrides, distill="together_batch"), run_dir=tmp_path)
    assert record["stages"]["distill"]["status"] == "ok"
    assert len(fake.batches) == 1 and len(fake.posts("/v1/batches")) == 1


def test_an_endpoint_deleted_behind_our_back(make_cfg, tmp_path: Path, fake: FakeTogether, capsys) -> None:
    run(deploy_cfg(make_cfg), run_dir=tmp_path)
    (first,) = fake.endpoints
    fake.endpoints.clear()  # deleted in Together's console
    run(deploy_cfg(make_cfg, "deploy.action=delete"), run_dir=tmp_path)  # gone: delete succeeds, says so
    assert "is gone (deleted outside recipe): nothing to delete" in capsys.readouterr().out
    run(deploy_cfg(make_cfg), run_dir=tmp_path)  # the record says deleted: a new one
    (second,) = fake.endpoints
    fake.endpoints.clear()
    run(deploy_cfg(make_cfg), run_dir=tmp_path)  # ensure notices the 404 and creates a new, recorded one
    assert "is gone (deleted outside recipe); creating a new one" in capsys.readouterr().out
    (third,) = fake.endpoints
    assert len({first, second, third}) == 3 and len(fake.posts("/v1/endpoints")) == 3
    with pytest.raises(RecipeError, match=r"deploy.action=stop: the endpoint .* is gone"):
        fake.endpoints.clear()
        run(deploy_cfg(make_cfg, "deploy.action=stop"), run_dir=tmp_path)


def test_a_fine_tune_deleted_behind_our_back_is_not_relaunched_silently(
    make_cfg, tmp_path: Path, fake: FakeTogether
) -> None:
    run(train_cfg(make_cfg, "train.wait=false"), run_dir=tmp_path)
    fake.jobs.clear()
    with pytest.raises(RecipeError, match=r"no longer exists .*set train.relaunch=true"):
        run(train_cfg(make_cfg), run_dir=tmp_path)
    assert fake.jobs == {}
    record = run(train_cfg(make_cfg, "train.relaunch=true"), run_dir=tmp_path)
    assert record["stages"]["train"]["status"] == "ok" and len(fake.jobs) == 1


def test_an_upload_killed_mid_put_leaves_no_orphan(make_cfg, tmp_path: Path, fake: FakeTogether, capsys) -> None:
    fake.fail(500, 100, paths=("/upload/*",))  # the presigned PUT never gets through: the run dies there
    with pytest.raises(RecipeError, match="PUT upload"):
        run(train_cfg(make_cfg, "train.max_retries=0"), run_dir=tmp_path)
    (orphan,) = fake.uploads  # created on the server, never filled
    fake.clear_faults()
    record = run(train_cfg(make_cfg), run_dir=tmp_path)
    assert f"deleted the unfinished upload {orphan}" in capsys.readouterr().out
    assert orphan not in fake.uploads and list(fake.files) == [manifest(record)["training_file"]]


def test_an_uploaded_file_deleted_behind_our_back_is_uploaded_again(
    make_cfg, tmp_path: Path, fake: FakeTogether, capsys
) -> None:
    run(train_cfg(make_cfg, "train.wait=false"), run_dir=tmp_path)
    (first,) = fake.files
    fake.files.clear()  # deleted in Together's console
    record = run(train_cfg(make_cfg, "train.args.n_epochs=2"), run_dir=tmp_path)  # another job on the same data
    assert "is gone from Together (HTTP 404); uploading it again" in capsys.readouterr().out
    (second,) = fake.files
    assert second != first and manifest(record)["training_file"] == second


# A create the server is still working on when the client gives up: the object appears a moment after
# the client looked for it ("slow before the work"), or exists and its answer is late ("after").
# Clients time out after 0.5 s and give an ambiguous create 3 s to settle (Client.settle_s).
@pytest.mark.parametrize("when", ["before", "after"])
def test_a_create_still_in_progress_makes_one_job(make_cfg, tmp_path: Path, fake: FakeTogether, when: str) -> None:
    fake.slow(2.0, paths=("/v1/fine-tunes",), before=when == "before")
    record = run(train_cfg(make_cfg, "train.timeout_s=0.5"), run_dir=tmp_path)
    assert len(fake.jobs) == 1 and len(fake.posts("/v1/fine-tunes")) == 1  # waited for it to land: not re-sent
    assert manifest(record)["job_id"] in fake.jobs


@pytest.mark.slow
def test_a_create_landing_after_its_resend_is_cancelled(make_cfg, tmp_path: Path, fake: FakeTogether, capsys) -> None:
    """Past the settle window the create is sent again; the first lands later still, while the job is
    followed: it is cancelled at once (a pending job costs nothing), and the run says so."""
    fake.slow(6.0, paths=("/v1/fine-tunes",), before=True)
    record = run(train_cfg(make_cfg, "train.timeout_s=0.5", "train.poll_s=0.5"), run_dir=tmp_path)
    assert len(fake.posts("/v1/fine-tunes")) == 2 and len(fake.jobs) == 2
    assert fake.live_jobs() == [manifest(record)["job_id"]]  # one live job: the one recorded
    assert "discarded it (kept" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("when", ["before", "after", "past the settle window"])
def test_a_create_still_in_progress_makes_one_endpoint(make_cfg, tmp_path: Path, fake: FakeTogether, when: str) -> None:
    fake.slow(6.0 if when.startswith("past") else 2.0, paths=("/v1/endpoints",), before=when != "after")
    record = run(deploy_cfg(make_cfg, "deploy.timeout_s=0.5"), run_dir=tmp_path)
    deployed = json.loads((Path(record["stages"]["deploy"]["artifact"]) / "manifest.json").read_text())
    time.sleep(0.5)  # the slow create's thread may still be finishing its (already deleted) object
    assert list(fake.endpoints) == [deployed["endpoint_id"]]  # one endpoint left: no minute billed twice
    assert len(fake.posts("/v1/endpoints")) == (2 if when.startswith("past") else 1)


@pytest.mark.parametrize("when", ["before", "past the settle window"])
def test_a_batch_create_still_in_progress_makes_one_batch(
    make_cfg, tmp_path: Path, fake: FakeTogether, when: str
) -> None:
    fake.slow(6.0 if when.startswith("past") else 2.0, paths=("/v1/batches",), before=True)
    overrides = ("distill.batch_poll_s=0.01", "distill.max_turns=1", "distill.timeout_s=0.5")
    record = run(distill_cfg(make_cfg, tmp_path, *overrides, distill="together_batch"), run_dir=tmp_path)
    assert record["stages"]["distill"]["status"] == "ok"
    assert len(fake.live_batches()) == 1
