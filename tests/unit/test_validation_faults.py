"""Faults that are not the data's (issue 15 item 7, the validator's half): a read that times out or loses its
connection midway is retried from the byte reached; what still fails is a platform error (StorageError,
PlatformLimitExceeded), never "unsupported_compression" for the uploader to fix. A corrupt gzip stays the data's
problem, and says where it broke."""

from __future__ import annotations

import errno
import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest
import urllib3.exceptions
from moto import mock_aws

from tuneplane.adapters import s3 as s3_adapter
from tuneplane.errors import DatasetNotFound, PlatformLimitExceeded, StorageError
from tuneplane.logic.validation import reader as reader_module
from tuneplane.logic.validation.validator import DatasetSource, ValidationResult, validate_dataset
from tuneplane.models.validation import Code, ValidationOptions

BUCKET = "tuneplane-faults"


def body(count: int = 3000) -> bytes:
    lines = []
    for i in range(count):
        user, assistant = {"role": "user", "content": f"Count to {i}."}, {"role": "assistant", "content": f"{i}!"}
        lines.append(json.dumps({"messages": [user, assistant]}) + "\n")
    return gzip.compress("".join(lines).encode(), mtime=0)


class Flaky(io.BytesIO):
    """A stream that gives its bytes up to `fail_at`, then raises the next of `faults` (shared across re-opens) on
    every read until they are used up: a connection that drops at that byte."""

    def __init__(self, data: bytes, fail_at: int, faults: list[BaseException], start: int = 0) -> None:
        super().__init__(data)
        self.seek(start)
        self._fail_at = fail_at
        self._faults = faults

    def read(self, size: int | None = -1, /) -> bytes:
        if self._faults and self.tell() >= self._fail_at:
            raise self._faults.pop(0)
        if self._faults and (size is None or size < 0 or self.tell() + size > self._fail_at):
            size = self._fail_at - self.tell()
        return super().read(size)


def source(data: bytes, fail_at: int, faults: list[BaseException], reopens: list[int] | None) -> DatasetSource:
    """A dataset whose reads fail as given; `reopens` records the offsets re-opened at (None: cannot re-open)."""

    def reopen(offset: int) -> Flaky:
        assert reopens is not None
        reopens.append(offset)
        return Flaky(data, fail_at, faults, start=offset)

    return DatasetSource("s3://bucket/data.jsonl.gz", lambda: Flaky(data, fail_at, faults), len(data), reopen)


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    waited: list[float] = []
    monkeypatch.setattr(reader_module, "_pause", waited.append)
    return waited


def splits(result: ValidationResult) -> tuple[bytes, bytes]:
    assert result.train_path is not None and result.eval_path is not None
    return result.train_path.read_bytes(), result.eval_path.read_bytes()


TRANSIENT = [
    pytest.param(lambda: botocore.exceptions.ReadTimeoutError(endpoint_url="https://s3"), id="botocore-read-timeout"),
    pytest.param(lambda: urllib3.exceptions.ProtocolError("Connection broken: reset"), id="urllib3-protocol-error"),
    pytest.param(
        lambda: botocore.exceptions.ResponseStreamingError(error="Connection broken"), id="botocore-streaming-error"
    ),
    pytest.param(lambda: ConnectionResetError(errno.ECONNRESET, "reset by peer"), id="connection-reset"),
]


@pytest.mark.parametrize("fault", TRANSIENT)
def test_a_transient_read_failure_midway_is_retried_from_the_byte_reached(
    tmp_path: Path, pauses: list[float], fault: Any
) -> None:
    # GIVEN a gzip dataset whose read fails twice past 40% of the file, from a source that can re-open at an offset
    data = body()
    reopens: list[int] = []
    flaky = source(data, len(data) * 4 // 10, [fault(), fault()], reopens)
    # WHEN validated
    result = validate_dataset(flaky, ValidationOptions(), out_dir=tmp_path / "flaky")
    # THEN it passes with exactly the splits an uninterrupted read gives
    clean = validate_dataset(source(data, len(data), [], None), ValidationOptions(), out_dir=tmp_path / "clean")
    assert result.report.passed and result.report.problems == []
    assert splits(result) == splits(clean)
    # AND the object was re-opened twice at the offset reached (not from the start), after growing pauses
    assert len(reopens) == 2 and reopens[0] == reopens[1] > 0
    assert pauses == [0.5, 1.0]


def test_a_read_that_keeps_failing_is_a_storage_error_not_a_data_problem(tmp_path: Path, pauses: list[float]) -> None:
    # GIVEN a source that times out every time past its middle
    data = body()
    faults: list[BaseException] = [botocore.exceptions.ReadTimeoutError(endpoint_url="https://s3") for _ in range(9)]
    reopens: list[int] = []
    # WHEN validated
    with pytest.raises(StorageError) as raised:
        validate_dataset(source(data, len(data) // 2, faults, reopens), ValidationOptions(), out_dir=tmp_path / "o")
    # THEN StorageError (which the state machine retries) says where and how often it failed; 1 try + 3 retries
    message = str(raised.value)
    assert "cannot read s3://bucket/data.jsonl.gz after line" in message
    assert "after 4 attempt(s): ReadTimeoutError" in message
    assert len(reopens) == 3 and len(pauses) == 3


def test_a_source_that_cannot_reopen_fails_as_storage_error_at_once(tmp_path: Path, pauses: list[float]) -> None:
    # GIVEN a source without reopen whose connection breaks midway
    data = body()
    broken = source(data, len(data) // 2, [urllib3.exceptions.ProtocolError("Connection broken")], None)
    flaky = DatasetSource(broken.name, broken.open, broken.size)
    # WHEN validated THEN a StorageError, not a report blaming the file
    with pytest.raises(StorageError, match="after 1 attempt"):
        validate_dataset(flaky, ValidationOptions(), out_dir=tmp_path / "o")
    assert pauses == []


def test_a_corrupt_gzip_is_the_datas_problem_and_says_where(tmp_path: Path) -> None:
    # GIVEN a gzip file with garbage written over its middle
    data = bytearray(body())
    middle = len(data) // 2
    data[middle : middle + 64] = b"\xff" * 64
    path = tmp_path / "corrupt.jsonl.gz"
    path.write_bytes(bytes(data))
    # WHEN validated
    result = validate_dataset(DatasetSource.local(path), ValidationOptions(), out_dir=tmp_path / "o")
    # THEN one file-level unsupported_compression error names the compressed byte offset and the line reached
    (problem,) = [p for p in result.report.problems if p.code is Code.UNSUPPORTED_COMPRESSION]
    assert problem.message.startswith("corrupt or truncated gzip at or before compressed byte ")
    offset = int(problem.message.split("compressed byte ")[1].split(" ")[0].replace(",", ""))
    assert 0 < offset <= len(data)
    assert not result.report.passed
    # AND no file_empty / too_few_examples verdict is drawn from the part read
    assert {p.code for p in result.report.problems} == {Code.UNSUPPORTED_COMPRESSION}


def test_a_full_temporary_disk_is_a_platform_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a valid dataset and a spill file whose writes fail with ENOSPC
    path = tmp_path / "data.jsonl.gz"
    path.write_bytes(body())

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("tuneplane.logic.validation.validator.Ledger.append", full)
    # WHEN validated THEN PlatformLimitExceeded says it is the platform's limit, with no report blaming the data
    with pytest.raises(PlatformLimitExceeded, match="not an error in the data"):
        validate_dataset(DatasetSource.local(path), ValidationOptions(), out_dir=tmp_path / "o")


def test_another_local_read_error_is_raised_as_it_is(tmp_path: Path) -> None:
    # GIVEN a source whose read fails with EIO (a disk error: neither transient nor the data's)
    class Broken(io.BytesIO):
        def read(self, size: int | None = -1, /) -> bytes:
            raise OSError(errno.EIO, "Input/output error")

    broken = DatasetSource("data.jsonl", lambda: Broken(b""), 10)
    # WHEN validated THEN the OSError surfaces, instead of a report calling the file corrupt
    with pytest.raises(OSError, match="Input/output error"):
        validate_dataset(broken, ValidationOptions())


# ---- S3: the resumed read is a ranged GET of the same object -------------------------------------------------------


@pytest.fixture
def bucket() -> Iterator[Any]:
    with mock_aws():
        s3_adapter.s3_client.cache_clear()
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client
    s3_adapter.s3_client.cache_clear()


def failing_first_read(monkeypatch: pytest.MonkeyPatch, at: int, before_reopen: Any = None) -> list[dict[str, Any]]:
    """Make the first GET's body time out past byte `at`; record the arguments of every GET."""
    real = s3_adapter.open_object
    calls: list[dict[str, Any]] = []

    def open_object(bucket: str, key: str, version_id: str | None = None, **kwargs: Any) -> Any:
        calls.append(kwargs)
        if len(calls) > 1 and before_reopen is not None:
            before_reopen()
        stream = real(bucket, key, version_id, **kwargs)
        if len(calls) > 1:
            return stream
        data = stream.read(at)
        return Flaky(data, at, [botocore.exceptions.ReadTimeoutError(endpoint_url="https://s3")])

    monkeypatch.setattr(s3_adapter, "open_object", open_object)
    return calls


def test_an_s3_read_resumes_with_a_range_request(
    bucket: Any, tmp_path: Path, pauses: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a gzip dataset in S3 whose first GET times out after 1,000 bytes
    data = body()
    bucket.put_object(Bucket=BUCKET, Key="data.jsonl.gz", Body=data)
    calls = failing_first_read(monkeypatch, 1000)
    # WHEN validated through DatasetSource.s3
    result = validate_dataset(DatasetSource.s3(BUCKET, "data.jsonl.gz"), ValidationOptions(), out_dir=tmp_path / "o")
    # THEN the second GET asked for the rest from byte 1,000 of the same ETag, and the dataset passed whole
    assert calls[1]["start"] == 1000 and calls[1]["if_match"]
    assert result.report.passed and result.report.lines_read == 3000


def test_an_s3_object_replaced_midway_is_not_spliced(
    bucket: Any, tmp_path: Path, pauses: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN an unversioned object that is overwritten between the failed read and its resumption
    bucket.put_object(Bucket=BUCKET, Key="data.jsonl.gz", Body=body())

    def overwrite() -> None:
        bucket.put_object(Bucket=BUCKET, Key="data.jsonl.gz", Body=body(2000))

    failing_first_read(monkeypatch, 1000, before_reopen=overwrite)
    # WHEN validated THEN S3 refuses the resumed read (If-Match), not a spliced file: the object this run read is
    # gone (DatasetNotFound, named by its cause), not a transient StorageError
    with pytest.raises(DatasetNotFound, match="changed while it was read .412 PreconditionFailed"):
        validate_dataset(DatasetSource.s3(BUCKET, "data.jsonl.gz"), ValidationOptions(), out_dir=tmp_path / "o")
