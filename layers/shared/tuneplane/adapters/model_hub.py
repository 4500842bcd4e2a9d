"""Hugging Face hub downloads for `tuneplane stage-model`, a workstation command.

``huggingface_hub`` is imported only when a hub id is staged: it is not in the Lambda layer
(requirements/runtime.txt). .venv has it through transformers (requirements/ml.txt); elsewhere
``pip install huggingface_hub``. Gated models need a token (``hf auth login`` or ``HF_TOKEN``); files go to
the Hugging Face cache (``HF_HOME``), so an interrupted download resumes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tuneplane.errors import BaseModelUnavailable, InvalidConfiguration


def _require_hub() -> None:
    try:
        import huggingface_hub  # noqa: F401
    except ImportError as exc:
        raise InvalidConfiguration(
            "staging from the Hugging Face hub needs huggingface_hub (pip install huggingface_hub); "
            "or download the model yourself and pass its directory"
        ) from exc


def _unavailable(repo_id: str, exc: Exception) -> BaseModelUnavailable:
    hint = ""
    if type(exc).__name__ == "GatedRepoError":
        hint = " (gated: accept its licence on the model page, then `hf auth login` or set HF_TOKEN)"
    elif type(exc).__name__ == "RepositoryNotFoundError":
        hint = " (no such local directory either; a private repo needs `hf auth login` or HF_TOKEN)"
    return BaseModelUnavailable(f"{repo_id}: Hugging Face hub: {type(exc).__name__}: {exc}{hint}")


def _errors() -> tuple[type[Exception], ...]:
    import httpx
    from huggingface_hub.errors import HFValidationError

    # HfHubHTTPError, the offline and cache errors are OSErrors; connection failures surface as httpx errors.
    return (OSError, HFValidationError, httpx.HTTPError)


def repo_files(repo_id: str, revision: str | None) -> tuple[str, list[str]]:
    """The commit that ``revision`` (default: the main branch) resolves to, and the repo's file names there."""
    _require_hub()
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(repo_id, revision=revision)
    except _errors() as exc:
        raise _unavailable(repo_id, exc) from exc
    if not info.sha:
        raise BaseModelUnavailable(f"{repo_id}: the hub did not say which commit {revision or 'main'} is")
    return info.sha, [s.rfilename for s in info.siblings or []]


def download(repo_id: str, commit: str, allow_patterns: Sequence[str]) -> Path:
    """Download the files matching ``allow_patterns`` at ``commit``; returns the snapshot directory."""
    _require_hub()
    from huggingface_hub import snapshot_download

    try:
        directory = snapshot_download(repo_id, revision=commit, allow_patterns=list(allow_patterns))
    except _errors() as exc:
        raise _unavailable(repo_id, exc) from exc
    if not isinstance(directory, str):  # only a dry_run download returns a file list
        raise BaseModelUnavailable(f"{repo_id}: unexpected answer from snapshot_download: {directory!r}")
    return Path(directory)
