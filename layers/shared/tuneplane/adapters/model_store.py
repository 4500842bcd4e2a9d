"""S3 side of `tuneplane stage-model`: what a prefix holds, managed (multipart) uploads, the manifest, cleanup."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError

from tuneplane.adapters.s3 import s3_client
from tuneplane.errors import StorageError

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

# Shards are GBs: parallel multipart uploads in 64 MiB parts (10,000 parts allowed: 625 GiB per file; boto3
# raises the part size itself beyond that).
TRANSFER_CONFIG = TransferConfig(
    multipart_threshold=64 * 1024 * 1024, multipart_chunksize=64 * 1024 * 1024, max_concurrency=10
)
_DELETE_BATCH = 1000  # DeleteObjects' limit
_CONTENT_TYPES = {
    ".json": "application/json",
    ".jinja": "text/plain; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}


def _error(exc: Exception, what: str) -> StorageError:
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        return StorageError(f"{what}: {code or exc} ({exc.response.get('Error', {}).get('Message', '')})")
    return StorageError(f"{what}: {exc}")


def _encryption(kms_key_id: str | None) -> dict[str, Any]:
    return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key_id} if kms_key_id else {}


def list_keys(bucket: str, prefix: str) -> list[str]:
    """Every key under ``prefix`` (which ends in "/")."""
    keys: list[str] = []
    try:
        for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents", []) if "Key" in o]
    except (ClientError, BotoCoreError) as exc:
        raise _error(exc, f"list s3://{bucket}/{prefix}") from exc
    return keys


def bucket_versioning(bucket: str) -> str | None:
    """ "Enabled", "Suspended", "" (never enabled), or None when it cannot be read (no s3:GetBucketVersioning)."""
    try:
        return str(s3_client().get_bucket_versioning(Bucket=bucket).get("Status", ""))
    except (ClientError, BotoCoreError):
        return None


def upload(
    path: Path, bucket: str, key: str, *, kms_key_id: str | None, progress: Callable[[int], None] | None = None
) -> None:
    """boto3's managed transfer (multipart above 64 MiB); SSE-KMS with ``kms_key_id``, else the bucket default."""
    extra = {"ContentType": _CONTENT_TYPES.get(path.suffix, "application/octet-stream"), **_encryption(kms_key_id)}
    try:
        s3_client().upload_file(str(path), bucket, key, ExtraArgs=extra, Config=TRANSFER_CONFIG, Callback=progress)
    except (ClientError, BotoCoreError, S3UploadFailedError) as exc:
        raise _error(exc, f"upload {path} to s3://{bucket}/{key}") from exc


def put_json(bucket: str, key: str, document: Any, *, kms_key_id: str | None) -> None:
    body = json.dumps(document, ensure_ascii=False, indent=2).encode()
    try:
        s3_client().put_object(
            Bucket=bucket, Key=key, Body=body, ContentType="application/json", **_encryption(kms_key_id)
        )
    except (ClientError, BotoCoreError) as exc:
        raise _error(exc, f"write s3://{bucket}/{key}") from exc


def delete_keys(bucket: str, keys: Sequence[str]) -> None:
    """Delete ``keys`` (on a versioned bucket: delete markers; the data stays as noncurrent versions)."""
    for start in range(0, len(keys), _DELETE_BATCH):
        batch: list[ObjectIdentifierTypeDef] = [{"Key": k} for k in keys[start : start + _DELETE_BATCH]]
        try:
            response = s3_client().delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        except (ClientError, BotoCoreError) as exc:
            raise _error(exc, f"delete from s3://{bucket}/") from exc
        errors = response.get("Errors", [])
        if errors:
            first = errors[0]
            raise StorageError(
                f"could not delete {len(errors)} object(s) from s3://{bucket}/, e.g. {first.get('Key')}: "
                f"{first.get('Code')} {first.get('Message', '')}"
            )
