"""Together REST calls beyond completions: files and the Batch API (over the one HTTP client)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recipe.providers.http import Client

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


def create_batch(client: Client, input_file_id: str, endpoint: str) -> dict[str, Any]:
    response = client.post_json("batches", {"input_file_id": input_file_id, "endpoint": endpoint})
    return response.get("job", response)  # BatchJobWithWarning wraps the job


def get_batch(client: Client, batch_id: str) -> dict[str, Any]:
    return client.get_json(f"batches/{batch_id}")


def download_file(client: Client, file_id: str) -> bytes:
    return client.request("GET", f"files/{file_id}/content").content
