"""A resumed S3 read (a ranged GET after a read failed midway) that S3 refuses for good (403 AccessDenied, 412
PreconditionFailed: the object was replaced, 416 InvalidRange, 404 NoSuchVersion) is reported by its cause with the
error class the state machine handles for it, never retried as a transport fault and reported as a generic read
failure. Throttling or a 5xx on the resumed GET stays a retried StorageError."""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from tuneplane.adapters import s3 as s3_adapter
from tuneplane.errors import DatasetNotFound, PermissionDenied, StorageError
from tuneplane.logic.validation import reader as reader_module
from tuneplane.logic.validation.validator import DatasetSource, validate_dataset
from tuneplane.models.validation import ValidationOptions

BUCKET = "tuneplane-resume"
KEY = "data.jsonl.gz"
FAIL_AT = 1000


def body(count: int = 3000) -> bytes:
    lines = []
    for i in range(count):
        user, assistant = {"role": "user", "content": f"Count to {i}."}, {"role": "assistant", "content": f"{i}!"}
        lines.append(json.dumps({"messages": [user, assistant]}) + "\n")
    return gzip.compress("".join(lines).encode(), mtime=0)


class CutShort(io.BytesIO):
    """The first GET's body: its first FAIL_AT bytes, then a read timeout (a connection that drops)."""

    def read(self, size: int | None = -1, /) -> bytes:
        if self.tell() >= FAIL_AT:
            raise botocore.exceptions.ReadTimeoutError(endpoint_url="https://s3")
        return super().read(FAIL_AT - self.tell() if size is None or size < 0 else min(size, FAIL_AT - self.tell()))


class RefusingClient:
    """The moto S3 client, except that a ranged GET (a resumed read) is refused with ``code``/``status`` when given;
    the first GET's body breaks after FAIL_AT bytes. Records every GET."""

    def __init__(self, real: Any, code: str | None, status: int | None) -> None:
        self._real, self._code, self._status = real, code, status
        self.gets: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def get_object(self, **kwargs: Any) -> dict[str, Any]:
        self.gets.append(kwargs)
        if "Range" not in kwargs:
            response = self._real.get_object(**kwargs)
            return response | {"Body": CutShort(response["Body"].read())}
        if self._code is not None:
            error = {"Error": {"Code": self._code, "Message": self._code}, "ResponseMetadata": {}}
            error["ResponseMetadata"]["HTTPStatusCode"] = self._status
            raise ClientError(error, "GetObject")  # type: ignore[arg-type]
        return self._real.get_object(**kwargs)  # type: ignore[no-any-return]


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    waited: list[float] = []
    monkeypatch.setattr(reader_module, "_pause", waited.append)
    return waited


@pytest.fixture
def bucket() -> Iterator[Any]:
    with mock_aws():
        s3_adapter.s3_client.cache_clear()
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        client.put_object(Bucket=BUCKET, Key=KEY, Body=body())
        yield client
    s3_adapter.s3_client.cache_clear()


def refusing(monkeypatch: pytest.MonkeyPatch, bucket: Any, code: str | None, status: int | None) -> RefusingClient:
    client = RefusingClient(bucket, code, status)
    monkeypatch.setattr(s3_adapter, "s3_client", lambda: client)
    return client


@pytest.mark.parametrize(
    ("code", "status", "error", "cause"),
    [
        pytest.param("AccessDenied", 403, PermissionDenied, "access denied", id="403-access-denied"),
        pytest.param("PreconditionFailed", 412, DatasetNotFound, r"changed while it was read \(412", id="412"),
        pytest.param("InvalidRange", 416, DatasetNotFound, r"changed while it was read \(416", id="416"),
        pytest.param("NoSuchVersion", 404, DatasetNotFound, "was deleted while it was read", id="404-no-version"),
    ],
)
def test_a_resumed_read_refused_for_good_is_reported_by_its_cause_at_once(
    bucket: Any,
    tmp_path: Path,
    pauses: list[float],
    monkeypatch: pytest.MonkeyPatch,
    code: str,
    status: int,
    error: type[Exception],
    cause: str,
) -> None:
    # GIVEN an S3 dataset whose first GET breaks after 1,000 bytes and whose resumed (ranged) GET S3 refuses
    client = refusing(monkeypatch, bucket, code, status)
    # WHEN it is validated
    with pytest.raises(error, match=cause) as raised:
        validate_dataset(DatasetSource.s3(BUCKET, KEY), ValidationOptions(), out_dir=tmp_path / "o")
    # THEN the error names the cause and where the read stopped, is not a StorageError (which would be retried),
    # and the refused ranged GET was asked once, not retried as a transport fault
    assert not isinstance(raised.value, StorageError)
    assert f"s3://{BUCKET}/{KEY}" in str(raised.value) and "byte 1,000" in str(raised.value)
    assert [get.get("Range") for get in client.gets] == [None, "bytes=1000-"]
    assert len(pauses) == 1  # the wait after the broken first read only


def test_throttling_on_the_resumed_read_is_still_retried_as_a_storage_error(
    bucket: Any, tmp_path: Path, pauses: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a resumed GET that S3 answers with 503 SlowDown every time
    client = refusing(monkeypatch, bucket, "SlowDown", 503)
    # WHEN it is validated THEN the resumed read is tried 3 times (the reader's retries), then a StorageError, which
    # the state machine retries
    with pytest.raises(StorageError, match="SlowDown"):
        validate_dataset(DatasetSource.s3(BUCKET, KEY), ValidationOptions(), out_dir=tmp_path / "o")
    assert len(client.gets) == 1 + 3 and len(pauses) == 3


def test_a_resumed_read_that_s3_answers_passes_whole(
    bucket: Any, tmp_path: Path, pauses: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the same broken first GET, and a resumed GET that S3 answers
    client = refusing(monkeypatch, bucket, None, None)
    # WHEN it is validated THEN it reads the rest from byte 1,000 and passes with every line
    result = validate_dataset(DatasetSource.s3(BUCKET, KEY), ValidationOptions(), out_dir=tmp_path / "o")
    assert client.gets[1]["Range"] == "bytes=1000-"
    assert result.report.passed and result.report.lines_read == 3000


def test_a_replaced_object_is_refused_by_s3_itself_and_named_as_changed(
    bucket: Any, tmp_path: Path, pauses: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN an unversioned object that another upload replaces after the first GET broke (moto checks If-Match)
    client = refusing(monkeypatch, bucket, None, None)
    real_get = client.get_object

    def replaced_before_resume(**kwargs: Any) -> dict[str, Any]:
        if "Range" in kwargs:
            bucket.put_object(Bucket=BUCKET, Key=KEY, Body=body(2000))
        return real_get(**kwargs)

    monkeypatch.setattr(client, "get_object", replaced_before_resume)
    # WHEN it is validated THEN the 412 is reported as the object having changed: upload again, not retried
    with pytest.raises(DatasetNotFound, match=r"changed while it was read \(412 PreconditionFailed.*upload it again"):
        validate_dataset(DatasetSource.s3(BUCKET, KEY), ValidationOptions(), out_dir=tmp_path / "o")
    assert len(pauses) == 1
