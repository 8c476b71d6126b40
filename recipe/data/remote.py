"""Remote inputs found before anything is paid: every hub dataset (repository, revision, data files)
and every http(s) data file that a selected stage will read, checked with metadata calls only (the
Hub's repository info, a HEAD for a URL) in the pre-flight, so a mistyped `hub_id`, a private
repository without a token, a revision or file that does not exist, or a hub switched off
(`HF_HUB_OFFLINE`) stops the run before Distill's first paid request rather than in Mix after it.

The Hub client (`huggingface_hub`) honours `HF_ENDPOINT` (a mirror, or the tests' loopback hub) and
`HF_TOKEN`, as `datasets` does when it reads the data later.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig

from recipe.data.sources import config_key, is_repo_id

HEAD_TIMEOUT_S = 20.0


def inputs(cfg: DictConfig, stages: list[str]) -> Iterator[tuple[str, Any]]:
    """(config key, node) of every source or suite that these stages read: Distill's source, Mix's
    components' sources (not the distilled one), Test's suites."""
    sources = cfg.get("sources") or {}
    seen: set[str] = set()

    def source(name: str) -> Iterator[tuple[str, Any]]:
        if name in sources and name not in seen:
            seen.add(name)
            yield config_key(name), sources[name]

    if "distill" in stages and cfg.get("distill") is not None:
        yield from source(str(cfg.distill.source))
    if "mix" in stages and cfg.get("mix") is not None:
        for component in (cfg.mix.components or {}).values():
            if str(component.source) != "distill":
                yield from source(str(component.source))
    if "test" in stages and cfg.get("test") is not None:
        for name, suite in (cfg.test.suites or {}).items():
            yield f"test.suites.{name}", suite


def offline() -> bool:
    return any(
        os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
        for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def problem(where: str, node: Any) -> str | None:
    """What is missing of this node's remote data (None: everything is there, or nothing is remote)."""
    hub_id = node.get("hub_id")
    files = [str(f) for f in node.get("data_files") or []]
    urls = [f for f in files if f.startswith(("http://", "https://"))]
    if hub_id and is_repo_id(str(hub_id)):
        said = _hub(where, str(hub_id), node.get("revision"), [f for f in files if f not in urls])
        if said:
            return said
    for url in urls:
        said = _url(where, url)
        if said:
            return said
    return None


def _hub(where: str, repo: str, revision: str | None, patterns: list[str]) -> str | None:
    at = f"{where}: hub dataset {repo!r}" + (f" at revision {revision!r}" if revision else "")
    if offline():
        return (
            f"{at}: the hub is switched off (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE); unset it, or use local data_files"
        )
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        info = HfApi().dataset_info(repo, revision=revision)
    except GatedRepoError:
        return f"{at}: gated; accept its terms on the Hub and set HF_TOKEN"
    except RepositoryNotFoundError:
        return f"{at}: not found (a typo in hub_id, or a private repository and no HF_TOKEN)"
    except RevisionNotFoundError:
        return f"{at}: no such revision; check revision"
    except (HfHubHTTPError, OSError, ValueError) as e:
        return f"{at}: the hub cannot be reached ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    names = [s.rfilename for s in info.siblings or []]
    for pattern in patterns:
        wanted = pattern.lstrip("/")
        if not any(fnmatch.fnmatch(name, wanted) for name in names):
            return f"{at}: no file matches data_files entry {pattern!r}"
    return None


def _url(where: str, url: str) -> str | None:
    import requests

    try:
        answer = requests.head(url, allow_redirects=True, timeout=HEAD_TIMEOUT_S)
    except requests.RequestException as e:
        return f"{where}: data file {url} cannot be reached ({type(e).__name__})"
    if answer.status_code >= 400:
        return f"{where}: data file {url} answers {answer.status_code}"
    return None


def missing(cfg: DictConfig, stages: list[str]) -> list[str]:
    """Every problem of the remote inputs of these stages (each source or suite checked once)."""
    return [said for where, node in inputs(cfg, stages) if (said := problem(where, node))]
