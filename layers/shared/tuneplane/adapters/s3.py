"""S3 access for the pipeline: stream objects, upload results, fetch a base model's tokenizer files."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.exceptions import ClientError

from tuneplane.errors import DatasetNotFound, InvalidConfiguration, StorageError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_S3_URI = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(?P<key>.*)$")
_MISSING = {"NoSuchKey", "404", "NotFound", "NoSuchVersion", "NoSuchBucket"}


@cache
def s3_client() -> S3Client:
    """Created lazily so tests start moto first; call s3_client.cache_clear() between tests."""
    return boto3.client("s3")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    match = _S3_URI.match(uri)
    if not match:
        raise InvalidConfiguration(f"not an S3 URI: {uri!r} (expected s3://bucket/key)")
    return match["bucket"], match["key"]


def _error(exc: ClientError, what: str) -> Exception:
    code = exc.response.get("Error", {}).get("Code", "")
    if code in _MISSING:
        return DatasetNotFound(f"{what} does not exist ({code})")
    return StorageError(f"{what}: {code or exc}")


def object_size(bucket: str, key: str, version_id: str | None = None) -> int:
    extra: dict[str, Any] = {"VersionId": version_id} if version_id else {}
    try:
        return int(s3_client().head_object(Bucket=bucket, Key=key, **extra)["ContentLength"])
    except ClientError as exc:
        raise _error(exc, f"s3://{bucket}/{key}") from exc


def current_version(bucket: str, key: str) -> str | None:
    """The version id of the object's current version (None in a bucket that never had versioning on);
    DatasetNotFound when there is no such object (or its current version is a delete marker)."""
    try:
        return s3_client().head_object(Bucket=bucket, Key=key).get("VersionId")
    except ClientError as exc:
        raise _error(exc, f"s3://{bucket}/{key}") from exc


def open_object(
    bucket: str, key: str, version_id: str | None = None, *, start: int = 0, if_match: str | None = None
) -> Any:
    """A streaming body (read(n), close()); the object is read once, front to back.

    ``start`` > 0 reads from that byte on (a ranged GET, to resume a read that failed midway); ``if_match`` (an ETag)
    makes S3 refuse with 412 PreconditionFailed if the object has been replaced since, so that a resumed read never
    splices two different objects.
    """
    extra: dict[str, Any] = {"VersionId": version_id} if version_id else {}
    if start:
        extra["Range"] = f"bytes={start}-"
    if if_match:
        extra["IfMatch"] = if_match
    try:
        return s3_client().get_object(Bucket=bucket, Key=key, **extra)["Body"]
    except ClientError as exc:
        raise _error(exc, f"s3://{bucket}/{key}") from exc


def object_etag_and_size(bucket: str, key: str, version_id: str | None = None) -> tuple[str | None, int]:
    """The object's ETag and size (one HEAD request)."""
    extra: dict[str, Any] = {"VersionId": version_id} if version_id else {}
    try:
        head = s3_client().head_object(Bucket=bucket, Key=key, **extra)
    except ClientError as exc:
        raise _error(exc, f"s3://{bucket}/{key}") from exc
    return head.get("ETag"), int(head["ContentLength"])


def read_if_exists(bucket: str, key: str, limit: int) -> tuple[bytes, str | None] | None:
    """The current version's first ``limit + 1`` bytes and its version id, or None when there is no such object.

    Reading one byte past ``limit`` lets the caller tell an object of exactly ``limit`` bytes from a larger one.
    """
    try:
        response = s3_client().get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code", "") in _MISSING:
            return None
        raise _error(exc, f"s3://{bucket}/{key}") from exc
    with response["Body"] as body:
        data = body.read(limit + 1)
    return data, response.get("VersionId")


def read_json_object(uri: str) -> dict[str, Any] | None:
    """The JSON object stored at ``uri`` (a report, a summary), or None when there is no such object; StorageError
    when it cannot be read or is not a JSON object."""
    bucket, key = parse_s3_uri(uri)
    try:
        response = s3_client().get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code", "") in _MISSING:
            return None
        raise _error(exc, uri) from exc
    try:
        with response["Body"] as body:
            document = json.loads(body.read())
    except (OSError, ValueError) as exc:
        raise StorageError(f"read {uri}: {exc}") from exc
    if not isinstance(document, dict):
        raise StorageError(f"{uri}: expected a JSON object")
    return document


def upload_file(path: Path, bucket: str, key: str, content_type: str = "application/jsonl") -> str:
    try:
        s3_client().upload_file(str(path), bucket, key, ExtraArgs={"ContentType": content_type})
    except ClientError as exc:
        raise _error(exc, f"upload to s3://{bucket}/{key}") from exc
    return f"s3://{bucket}/{key}"


def put_json(bucket: str, key: str, document: Any) -> str:
    body = json.dumps(document, ensure_ascii=False, indent=2).encode()
    try:
        s3_client().put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
    except ClientError as exc:
        raise _error(exc, f"write s3://{bucket}/{key}") from exc
    return f"s3://{bucket}/{key}"


def put_text(bucket: str, key: str, text: str) -> str:
    try:
        s3_client().put_object(Bucket=bucket, Key=key, Body=text.encode(), ContentType="text/plain; charset=utf-8")
    except ClientError as exc:
        raise _error(exc, f"write s3://{bucket}/{key}") from exc
    return f"s3://{bucket}/{key}"


def tag_objects(bucket: str, prefix: str, tags: dict[str, str]) -> int:
    """Set ``tags`` on every object under ``prefix`` (their current versions); returns how many were tagged."""
    tag_set = [{"Key": key, "Value": value} for key, value in tags.items()]
    tagged = 0
    try:
        for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                s3_client().put_object_tagging(Bucket=bucket, Key=item["Key"], Tagging={"TagSet": tag_set})  # type: ignore[typeddict-item]
                tagged += 1
    except ClientError as exc:
        raise _error(exc, f"tag s3://{bucket}/{prefix}") from exc
    return tagged


def download_files(prefix_uri: str, names: Iterable[str], destination: Path) -> list[str]:
    """Download those of `names` that exist under `prefix_uri`; return the ones found."""
    bucket, prefix = parse_s3_uri(prefix_uri.rstrip("/") + "/")
    destination.mkdir(parents=True, exist_ok=True)
    found = []
    for name in names:
        try:
            s3_client().download_file(bucket, prefix + name, str(destination / name))
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in _MISSING:
                continue
            raise _error(exc, f"s3://{bucket}/{prefix}{name}") from exc
        found.append(name)
    return found


# Server-side copies of up to 5 GiB are one CopyObject; larger ones are multipart (UploadPartCopy), 256 MiB per part:
# the AWS docs allow parts of 5 MiB to 5 GiB and 10,000 parts, so this copies up to 2.4 TiB, past the 50 GiB limit.
_COPY_PART_BYTES = 256 * 1024 * 1024


def copy_version(bucket: str, key: str, version_id: str | None, to_bucket: str, to_key: str) -> str:
    """Copy one version of an object inside S3 (the bytes never pass through here); returns the copy's URI."""
    from boto3.s3.transfer import TransferConfig

    source: dict[str, str] = {"Bucket": bucket, "Key": key, **({"VersionId": version_id} if version_id else {})}
    config = TransferConfig(multipart_threshold=5 * 1024**3, multipart_chunksize=_COPY_PART_BYTES, max_concurrency=8)
    try:
        # REPLACE with no tags: the copy has none of the source's (copying them needs s3:GetObjectTagging and
        # s3:PutObjectTagging, and a multipart copy would not copy them anyway).
        extra = {"TaggingDirective": "REPLACE"}
        s3_client().copy(source, to_bucket, to_key, ExtraArgs=extra, Config=config)  # type: ignore[arg-type]
    except ClientError as exc:
        raise _error(exc, f"copy s3://{bucket}/{key} to s3://{to_bucket}/{to_key}") from exc
    return f"s3://{to_bucket}/{to_key}"


def copy_files(prefix_uri: str, names: Iterable[str], to_bucket: str, to_prefix: str) -> list[str]:
    """Copy those of `names` that exist under `prefix_uri` to `to_prefix`; return the ones found."""
    bucket, prefix = parse_s3_uri(prefix_uri.rstrip("/") + "/")
    found = []
    for name in names:
        try:
            s3_client().copy_object(
                Bucket=to_bucket,
                Key=to_prefix + name,
                CopySource={"Bucket": bucket, "Key": prefix + name},
                TaggingDirective="REPLACE",
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code", "") in _MISSING:
                continue
            raise _error(exc, f"copy s3://{bucket}/{prefix}{name}") from exc
        found.append(name)
    return found


# A resumed read (tuneplane.logic.validation.reader) is a ranged GET of the version being read, or of its ETag with
# If-Match. The AWS docs (GetObject) say S3 answers 412 PreconditionFailed when the ETag no longer matches (the key
# now holds another object) and 416 InvalidRange when the range starts past the object's end; 403 AccessDenied when
# the caller may not read it (or not decrypt it with the bucket's KMS key). None of these is a transport fault, and
# the same GET would be refused again: each is raised by its cause, never retried as a StorageError.


def resume_refusal(exc: ClientError, what: str, offset: int) -> Exception:
    """The error that names why S3 refused the ranged GET that resumes a read of ``what`` at byte ``offset``:
    DatasetNotFound when the object read is gone (replaced: 412, shorter: 416, deleted: 404), PermissionDenied for
    403, StorageError (transient: throttling, a 5xx) otherwise."""
    from tuneplane.errors import PermissionDenied

    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    at = f"at byte {offset:,}"
    if code == "PreconditionFailed" or status == 412:
        return DatasetNotFound(
            f"{what} changed while it was read (412 PreconditionFailed {at}): another upload replaced the object "
            "this run started for, and a run never splices two objects; upload it again (the newer upload starts "
            "its own run)"
        )
    if code == "InvalidRange" or status == 416:
        return DatasetNotFound(
            f"{what} changed while it was read (416 InvalidRange: it no longer has a byte {offset:,}); upload it again"
        )
    if code in _MISSING or status == 404:
        return DatasetNotFound(f"{what} was deleted while it was read ({code or status} {at}); upload it again")
    if code == "AccessDenied" or status == 403:
        return PermissionDenied(
            f"access denied reading {what} ({code or status} {at}): the function's role, the bucket policy or the "
            "bucket key's policy no longer allows s3:GetObject (and kms:Decrypt); a policy changed during the read",
            permission="s3:GetObject",
        )
    return StorageError(f"{what}: {code or exc} ({status}) {at}")


def open_object_at(bucket: str, key: str, version_id: str | None, *, start: int, if_match: str | None) -> Any:
    """:func:`open_object` for a resumed read: what S3 refuses for good raises by its cause (resume_refusal), so
    the reader retries only what may pass next time (a StorageError)."""
    try:
        return open_object(bucket, key, version_id, start=start, if_match=if_match)
    except (StorageError, DatasetNotFound) as exc:
        cause = exc.__cause__
        if not isinstance(cause, ClientError):
            raise
        raise resume_refusal(cause, f"s3://{bucket}/{key}", start) from cause
