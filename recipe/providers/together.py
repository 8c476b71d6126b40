"""Together REST calls beyond completions: files, the Batch API, fine-tuning and dedicated endpoints
(one HTTP client)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import requests
from tqdm import tqdm

from recipe.errors import RecipeError
from recipe.providers.http import RETRY_STATUSES, APIError, Client, reconcile

T = TypeVar("T")
BATCH_DONE = frozenset({"COMPLETED", "FAILED", "EXPIRED", "CANCELLED"})


def upload_batch_file(client: Client, path: Path) -> str:
    """Upload a batch requests file (`POST /files/upload`, multipart); return its file id."""
    with open(path, "rb") as f:
        response = client.request(
            "POST",
            "files/upload",
            data={"purpose": "batch-api", "file_name": path.name, "file_type": "jsonl"},
            files={"file": (path.name, f, "application/jsonl")},
        ).json()
    return str(response["id"])


def create_batch(
    client: Client, input_file_id: str, endpoint: str
) -> tuple[dict[str, Any], Callable[[], object] | None]:
    """Create a batch job, never twice for one input file (see Client.create): after an ambiguous
    failure, or for a create sent before a crash, the batch made from `input_file_id` is adopted; a
    duplicate of a re-sent create is cancelled. (the batch, and when an earlier attempt may still
    land, what to call while waiting on it: it cancels such late duplicates)."""

    def find() -> list[dict[str, Any]]:
        listed = client.request("GET", "batches").json()
        jobs = listed if isinstance(listed, list) else listed.get("data") or []
        mine = [j for j in jobs if j.get("input_file_id") == input_file_id and j.get("status") != "CANCELLED"]
        return sorted(mine, key=lambda j: str(j.get("created_at", "")), reverse=True)

    def cancel(job: dict[str, Any]) -> None:
        unless_gone(lambda: client.post_json(f"batches/{job['id']}/cancel", {}))

    found = find()  # a create sent before a crash may have made it already
    if found:
        keep = str(found[0]["id"])
        reconcile(find, keep, cancel, "batch job")
        return found[0], lambda: reconcile(find, keep, cancel, "batch job")
    created = client.create(
        "batches", {"input_file_id": input_file_id, "endpoint": endpoint}, find=find, discard=cancel, what="batch job"
    )
    job = created.value.get("job", created.value)  # BatchJobWithWarning wraps the job
    later = (lambda: reconcile(find, str(job["id"]), cancel, "batch job")) if created.resent else None
    return job, later


def get_batch(client: Client, batch_id: str) -> dict[str, Any]:
    return client.get_json(f"batches/{batch_id}")


def unless_gone(request: Callable[[], T]) -> T | None:
    """`request()`'s result, or None when Together answers HTTP 404 (the object is gone, e.g. deleted
    outside recipe); other errors raise."""
    try:
        return request()
    except APIError as e:
        if e.status != 404:
            raise
        return None


def file_exists(client: Client, file_id: str) -> bool:
    """Whether Together still has the file."""
    return unless_gone(lambda: client.get_json(f"files/{file_id}")) is not None


def delete_file(client: Client, file_id: str) -> bool:
    """Delete a file; False when Together had no such file."""
    return unless_gone(lambda: client.request("DELETE", f"files/{file_id}")) is not None


def download_file(client: Client, file_id: str) -> bytes:
    return client.request("GET", f"files/{file_id}/content").content


# ---- fine-tuning files: the SDKs' upload ---------------------------------------------------------


class _Reader:
    """A file region read in 1 MiB blocks, counting bytes into a progress bar (constant memory)."""

    def __init__(self, path: Path, start: int, length: int, progress: Any) -> None:
        self.file = open(path, "rb")
        self.file.seek(start)
        self.left = length
        self.length = length
        self.progress = progress

    def __len__(self) -> int:
        return self.length

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        block = self.file.read(min(size, 1 << 20))
        self.left -= len(block)
        if self.progress is not None:
            self.progress.update(len(block))
        return block

    def __iter__(self) -> Any:
        while block := self.read(1 << 20):
            yield block

    def close(self) -> None:
        self.file.close()


def _put(client: Client, url: str, path: Path, start: int, length: int, progress: Any) -> requests.Response:
    """PUT a file region to a presigned URL, without our Authorization header, retrying transient
    failures (the SDKs never retry this step; a user expects every step to survive a hiccup)."""
    attempt = 0
    while True:
        reader = _Reader(path, start, length, progress)
        done = progress.n if progress is not None else 0
        try:
            response = requests.put(url, data=reader, headers={"Content-Length": str(length)}, timeout=client.timeout_s)
            if response.status_code < 400:
                return response
            error = APIError(f"PUT upload: HTTP {response.status_code}: {response.text[:200]}", response.status_code)
            retryable = response.status_code in RETRY_STATUSES
        except requests.RequestException as e:
            error, retryable = APIError(f"PUT upload: {type(e).__name__}: {e}"), True
        finally:
            reader.close()
        attempt += 1
        if not retryable or attempt > client.max_retries:
            raise error
        if progress is not None:
            progress.n = done  # this region is sent again from its start
        time.sleep(client.backoff(attempt))


def upload_fine_tune_file(
    client: Client,
    path: Path,
    *,
    progress: Any = None,
    multipart_threshold: int = 5 << 30,
    part_size: int = 256 << 20,
    workers: int = 4,
    on_file_id: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Upload a JSONL training file as the official SDKs do; return Together's file object.

    Small files: `POST /files` (form fields, redirects off) -> 302 with `Location` and
    `X-Together-File-Id` -> `PUT` the bytes there -> `POST /files/{id}/preprocess`. Files over
    `multipart_threshold`: initiate, parallel part PUTs collecting ETags, complete (abort on failure).
    `on_file_id` hears the file's id as soon as Together names it, before any byte is sent."""
    size = path.stat().st_size
    form = {"purpose": "fine-tune", "file_name": path.name, "file_type": "jsonl"}
    if size <= multipart_threshold:
        response = client.request("POST", "files", data=form, expect_redirect=True)
        if response.status_code != 302 or "Location" not in response.headers:
            raise APIError(f"POST files: expected a 302 redirect to the upload URL, got HTTP {response.status_code}")
        file_id = response.headers["X-Together-File-Id"]
        if on_file_id is not None:
            on_file_id(file_id)
        _put(client, response.headers["Location"], path, 0, size, progress)
        return client.post_json(f"files/{file_id}/preprocess", {})
    parts = -(-size // part_size)
    started = client.post_json("files/multipart/initiate", {**form, "file_size": size, "num_parts": parts})
    upload = {"upload_id": started["upload_id"], "file_id": started["file_id"]}
    if on_file_id is not None:
        on_file_id(started["file_id"])
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {
                part["PartNumber"]: pool.submit(
                    _put,
                    client,
                    part["URL"],
                    path,
                    (part["PartNumber"] - 1) * part_size,
                    min(part_size, size - (part["PartNumber"] - 1) * part_size),
                    progress,
                )
                for part in started["parts"]
            }
            etags = [{"PartNumber": n, "ETag": futures[n].result().headers["ETag"]} for n in sorted(futures)]
        return client.post_json("files/multipart/complete", {**upload, "parts": etags})
    except BaseException:
        with contextlib.suppress(APIError):
            client.post_json("files/multipart/abort", upload)
        raise


# ---- fine-tuning jobs ----------------------------------------------------------------------------

FINE_TUNE_DONE = frozenset({"completed", "cancelled", "error", "user_error"})


def estimate_price(client: Client, body: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "training_file",
        "validation_file",
        "model",
        "n_epochs",
        "n_evals",
        "training_method",
        "training_type",
        "from_checkpoint",
    )
    return client.post_json("fine-tunes/estimate-price", {k: body[k] for k in keys if k in body})


def get_fine_tune(client: Client, job_id: str) -> dict[str, Any]:
    return client.get_json(f"fine-tunes/{job_id}")


def fine_tune_events(client: Client, job_id: str) -> list[dict[str, Any]]:
    return client.get_json(f"fine-tunes/{job_id}/events").get("data") or []


def fine_tune_checkpoints(client: Client, job_id: str) -> list[dict[str, Any]]:
    return client.get_json(f"fine-tunes/{job_id}/checkpoints").get("data") or []


def cancel_fine_tune(client: Client, job_id: str) -> dict[str, Any]:
    return client.post_json(f"fine-tunes/{job_id}/cancel", {})


def download_fine_tune(client: Client, job_id: str, checkpoint: str, target: Path, progress: Any = None) -> int:
    """Stream the merged model or adapter to `target`; return its size."""
    response = client.request(
        "GET", "finetune/download", params={"ft_id": job_id, "checkpoint": checkpoint}, stream=True
    )
    size = 0
    with open(target, "wb") as f:
        for block in response.iter_content(1 << 20):
            f.write(block)
            size += len(block)
            if progress is not None:
                progress.update(len(block))
    return size


# Dedicated endpoints (Deploy, and Test's temporary endpoint).
ENDPOINT_READY = "STARTED"
ENDPOINT_FAILED = frozenset({"ERROR"})


def cheapest_hardware(client: Client, model: str) -> str:
    """The id of the cheapest hardware Together lists as available for the model."""
    options = client.get_json("hardware", model=model).get("data") or []
    available = [h for h in options if (h.get("availability") or {}).get("status") == "available"]
    if not available:
        raise RecipeError(f"Together lists no available hardware for {model}; set the hardware in the config")
    return min(available, key=lambda h: h["pricing"]["cents_per_minute"])["id"]


def hardware_usd_per_hour(client: Client, model: str, hardware: str) -> float | None:
    """What Together lists for running `hardware` for `model`, in USD per hour (its /hardware gives
    cents per minute); None when it does not list that hardware."""
    for h in client.get_json("hardware", model=model).get("data") or []:
        if h.get("id") == hardware and (h.get("pricing") or {}).get("cents_per_minute") is not None:
            return round(float(h["pricing"]["cents_per_minute"]) * 60 / 100, 4)
    return None


def wait_endpoint_started(
    client: Client, endpoint_id: str, poll_s: float, progress: bool, each: Callable[[], object] | None = None
) -> dict[str, Any]:
    """Poll an endpoint until it is STARTED (its state shown on a progress line), calling `each` at
    every poll; ERROR raises."""
    with tqdm(desc=f"endpoint {endpoint_id}", bar_format="{desc}: {postfix}", disable=not progress) as bar:
        while True:
            endpoint = client.get_json(f"endpoints/{endpoint_id}")
            if each is not None:
                each()
            bar.set_postfix_str(endpoint.get("state", "?"))
            if endpoint.get("state") == ENDPOINT_READY:
                return endpoint
            if endpoint.get("state") in ENDPOINT_FAILED:
                raise RecipeError(f"Together endpoint {endpoint_id} is in state ERROR; deploy.action=delete removes it")
            time.sleep(poll_s)
