"""The doctor's **base-model** check: ``BaseModelS3Uri`` holds the manifest ``tuneplane stage-model`` writes last
(``tuneplane-model.json``) and every file it lists, with the listed size, in a bucket of the stack's region."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tuneplane.errors import InvalidConfiguration, PermissionDenied, ServiceUnavailable
from tuneplane.logic.doctor.context import CheckContext
from tuneplane.logic.doctor.report import Finding, Level
from tuneplane.logic.stage_model import MANIFEST_NAME, destination, format_size

MANIFEST_MAX_BYTES = 4 * 1024 * 1024


def check_base_model(context: CheckContext) -> list[Finding]:
    """The manifest and every file it lists (names and sizes; hashes would mean reading GBs)."""
    uri, region = context.settings.base_model_uri, context.region
    stage_hint = f"tuneplane stage-model <hub-id-or-directory> {uri or 's3://<bucket>/<prefix>/'}"
    try:
        bucket, prefix = destination(uri)
    except InvalidConfiguration as exc:
        return [Finding(Level.ERROR, "base-model", uri or "BaseModelS3Uri", str(exc), f"stage it: {stage_hint}")]
    uri = f"s3://{bucket}/{prefix}"
    findings: list[Finding] = []
    try:  # often denied on a bucket of another account: the manifest is still worth checking
        bucket_region: str | None = context.account.bucket_region(bucket)
    except (PermissionDenied, ServiceUnavailable) as exc:
        bucket_region = region
        findings.append(
            Finding(
                Level.WARN,
                "base-model",
                uri,
                f"the bucket's region was not checked: {exc}",
                f"allow {exc.permission} to check it (SageMaker jobs read input only from their own region)",
            )
        )
    if bucket_region is None:
        return [
            Finding(
                Level.ERROR,
                "base-model",
                uri,
                f"the bucket {bucket} does not exist",
                f"create a bucket in {region}, stage the model into it ({stage_hint}) and deploy its URI: "
                "sam deploy --parameter-overrides BaseModelS3Uri=s3://<bucket>/<prefix>/",
            )
        ]
    if bucket_region != region:
        # The AWS docs say of S3DataSource: "Your input bucket must be in the same AWS region as your training job."
        findings.append(
            Finding(
                Level.ERROR,
                "base-model",
                uri,
                f"the bucket is in {bucket_region}, the stack in {region}: SageMaker jobs read their input only from "
                "a bucket in their own region",
                f"stage the model in a bucket in {region} and deploy its URI "
                "(sam deploy --parameter-overrides BaseModelS3Uri=...)",
            )
        )
    body = context.account.read_object(bucket, prefix + MANIFEST_NAME, MANIFEST_MAX_BYTES)
    if body is None:
        present = context.account.object_sizes(bucket, prefix)
        state = (
            f"the prefix holds {len(present)} object(s) but no {MANIFEST_NAME}: an unfinished copy, or one not made "
            "by tuneplane stage-model"
            if present
            else "the prefix is empty"
        )
        fix = f"stage it: {stage_hint}" + (" --overwrite" if present else "")
        return [*findings, Finding(Level.ERROR, "base-model", uri, f"not staged: {state}", fix)]
    files = _manifest_files(body)
    if files is None:
        return [
            *findings,
            Finding(
                Level.ERROR,
                "base-model",
                uri + MANIFEST_NAME,
                "not a manifest written by tuneplane stage-model (not JSON, or no list of files with sizes)",
                f"stage the model again: {stage_hint} --overwrite",
            ),
        ]
    manifest = json.loads(body)
    return [*findings, *_compare_files(uri, prefix, files, context.account.object_sizes(bucket, prefix), manifest)]


def _manifest_files(body: bytes) -> dict[str, int] | None:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    files = document.get("files") if isinstance(document, dict) else None
    if not isinstance(files, list) or not files:
        return None
    result: dict[str, int] = {}
    for entry in files:
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("name"), str)
            or not isinstance(entry.get("size"), int)
        ):
            return None
        result[entry["name"]] = entry["size"]
    return result


def _compare_files(
    uri: str, prefix: str, files: Mapping[str, int], present: Mapping[str, int], manifest: Mapping[str, Any]
) -> list[Finding]:
    relative = {key[len(prefix) :]: size for key, size in present.items()}
    absent = sorted(name for name in files if name not in relative)
    wrong = sorted(name for name, size in files.items() if name in relative and relative[name] != size)
    extra = sorted(name for name in relative if name not in files and name != MANIFEST_NAME)
    stage_again = (
        f"stage the model again: tuneplane stage-model {manifest.get('source') or '<source>'} {uri} --overwrite"
    )
    findings: list[Finding] = []
    if absent:
        findings.append(
            Finding(
                Level.ERROR,
                "base-model",
                uri,
                f"{len(absent)} of the {len(files)} files in {MANIFEST_NAME} are missing: {_some(absent)}",
                stage_again,
            )
        )
    if wrong:
        findings.append(
            Finding(
                Level.ERROR,
                "base-model",
                uri,
                f"{len(wrong)} file(s) differ in size from {MANIFEST_NAME}: "
                + _some([f"{n} ({relative[n]} bytes, manifest {files[n]})" for n in wrong]),
                stage_again,
            )
        )
    if extra:
        findings.append(
            Finding(
                Level.WARN,
                "base-model",
                uri,
                f"{len(extra)} object(s) not in {MANIFEST_NAME}, which SageMaker copies into every job too: "
                + _some(extra),
                stage_again + " (deletes objects that are not part of the model)",
            )
        )
    if not absent and not wrong:
        source = str(manifest.get("source") or "?")
        commit = manifest.get("commit")
        origin = f"{source}@{str(commit)[:12]}" if commit else source
        findings.insert(
            0,
            Finding(
                Level.OK,
                "base-model",
                uri,
                f"staged: {len(files)} files, {format_size(sum(files.values()))}, "
                f"{manifest.get('model_type') or 'model'} from {origin}",
            ),
        )
    return findings


def _some(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
