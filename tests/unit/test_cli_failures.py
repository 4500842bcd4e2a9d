"""How the `tuneplane` command fails: one line on stderr naming the problem and a distinct exit code, never a
traceback (missing AWS credentials, a directory or unreadable file given as the dataset, a missing S3 object)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoRegionError
from moto import mock_aws

from tuneplane import cli
from tuneplane.adapters import s3 as s3_adapter
from tuneplane.cli import EXIT_AWS, EXIT_USAGE, main


@pytest.fixture
def no_aws_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No credentials anywhere botocore looks (environment, files, instance metadata)."""
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SECURITY_TOKEN",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    s3_adapter.s3_client.cache_clear()
    yield
    s3_adapter.s3_client.cache_clear()


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_missing_aws_credentials_are_one_line_and_exit_3(
    no_aws_credentials: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # WHEN an s3:// dataset is validated without any AWS credentials
    code = main(["validate", "s3://some-bucket/incoming/data.jsonl"])
    # THEN one line says so and what to do, with the AWS exit code (not 1, which means "invalid data")
    assert code == EXIT_AWS
    line = _error_line(capsys)
    assert line.startswith("tuneplane: error: no usable AWS credentials") and "aws configure" in line


def test_a_directory_as_the_dataset_says_it_is_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tmp_path)]) == EXIT_USAGE
    assert _error_line(capsys) == (
        f"tuneplane: error: {tmp_path} is a directory, not a dataset file: give the .jsonl or .jsonl.gz file in it"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_dataset_says_permission_denied(
    write_jsonl: Callable[..., Path], reversal_lines: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_jsonl(reversal_lines)
    path.chmod(0)
    try:
        assert main(["validate", str(path)]) == EXIT_USAGE
    finally:
        path.chmod(0o600)
    assert _error_line(capsys) == f"tuneplane: error: {path}: permission denied (cannot read it)"


def test_a_directory_as_the_eval_file_or_config_is_named(
    write_jsonl: Callable[..., Path], reversal_lines: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_jsonl(reversal_lines)
    folder = tmp_path / "folder"
    folder.mkdir()
    assert main(["validate", str(path), "--eval-file", str(folder)]) == EXIT_USAGE
    assert f"{folder} is a directory" in _error_line(capsys)
    assert main(["validate", str(path), "--config", str(folder)]) == EXIT_USAGE
    assert _error_line(capsys) == f"tuneplane: error: {folder} is a directory, not a file"


def test_an_s3_uri_of_a_missing_object_says_it_does_not_exist(capsys: pytest.CaptureFixture[str]) -> None:
    with mock_aws():
        s3_adapter.s3_client.cache_clear()
        boto3.client("s3").create_bucket(Bucket="some-bucket")
        code = main(["validate", "s3://some-bucket/incoming/missing.jsonl"])
    s3_adapter.s3_client.cache_clear()
    assert code == EXIT_USAGE
    assert _error_line(capsys) == "tuneplane: error: s3://some-bucket/incoming/missing.jsonl does not exist (404)"


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "HeadObject"),
            "tuneplane: error: AWS refused HeadObject: AccessDenied: no",
        ),
        (
            NoRegionError(),
            "tuneplane: error: no AWS region: set AWS_REGION (or pass --region where the command has it)",
        ),
        (
            EndpointConnectionError(endpoint_url="https://s3.example"),
            'tuneplane: error: cannot reach AWS: Could not connect to the endpoint URL: "https://s3.example"',
        ),
    ],
)
def test_an_aws_error_no_adapter_translates_is_one_line_with_the_aws_exit_code(
    error: Exception, expected: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a command whose AWS call fails with an SDK error
    def fail(args: object) -> int:
        raise error

    monkeypatch.setattr(cli, "_validate", fail)
    # WHEN it runs THEN one line names the problem, with the AWS exit code
    assert cli.main(["validate", "s3://bucket/key.jsonl"]) == EXIT_AWS
    assert _error_line(capsys) == expected


def test_an_unexpected_error_is_not_disguised(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(args: object) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "_validate", fail)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["validate", "x.jsonl"])
