"""The Validate Lambda end to end on moto's S3: stream the upload, write report and splits, reject bad data."""

from __future__ import annotations

import gzip
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import boto3
import pytest
from moto import mock_aws

from tuneplane.adapters import s3 as s3_adapter
from tuneplane.config import validate_settings
from tuneplane.errors import InvalidTrainingData

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "tuneplane-data-test"
MODEL_PREFIX = "models/tiny/"
CONTEXT = SimpleNamespace(
    function_name="validate",
    memory_limit_in_mb=1024,
    invoked_function_arn="arn:aws:lambda:us-east-1:1:function:v",
    aws_request_id="req-1",
)


def _load_handler() -> ModuleType:
    spec = importlib.util.spec_from_file_location("validate_app", ROOT / "functions" / "validate" / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, base_model_dir: Path) -> Iterator[Any]:
    monkeypatch.setenv("DATA_BUCKET", BUCKET)
    monkeypatch.setenv("BASE_MODEL_S3_URI", f"s3://{BUCKET}/{MODEL_PREFIX}")
    monkeypatch.setenv("MIN_EXAMPLES", "10")
    with mock_aws():
        s3_adapter.s3_client.cache_clear()
        validate_settings.cache_clear()
        from tuneplane.logic import base_model

        base_model._fetch.cache_clear()
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        for file in base_model_dir.iterdir():
            client.upload_file(str(file), BUCKET, MODEL_PREFIX + file.name)
        yield client
    s3_adapter.s3_client.cache_clear()
    validate_settings.cache_clear()


def _read(client: Any, key: str) -> bytes:
    return client.get_object(Bucket=BUCKET, Key=key)["Body"].read()  # type: ignore[no-any-return]


def test_valid_upload_writes_splits_and_report(aws: Any, reversal_lines: list[str]) -> None:
    # GIVEN a gzip dataset uploaded under incoming/
    body = gzip.compress("\n".join(reversal_lines).encode(), mtime=0)
    version = aws.put_object(Bucket=BUCKET, Key="incoming/reverse.jsonl.gz", Body=body)["VersionId"]
    handler = _load_handler().handler
    # WHEN the Validate Lambda runs on that object version
    event = {"run_id": "run-1", "bucket": BUCKET, "key": "incoming/reverse.jsonl.gz", "version_id": version}
    summary = handler(event, CONTEXT)
    # THEN it returns a small summary pointing at the splits and the report under runs/<run-id>/
    assert summary["passed"] is True
    assert summary["train_uri"] == f"s3://{BUCKET}/runs/run-1/data/train.jsonl"
    assert summary["eval_uri"] == f"s3://{BUCKET}/runs/run-1/data/eval.jsonl"
    assert summary["train_examples"] + summary["eval_examples"] == 20
    assert summary["tokens_total"] > 0 and summary["estimated_cost_usd"] is not None
    assert len(json.dumps(summary)) < 4096
    train = _read(aws, "runs/run-1/data/train.jsonl").decode().splitlines()
    evaluation = _read(aws, "runs/run-1/data/eval.jsonl").decode().splitlines()
    assert len(train) == summary["train_examples"] and len(evaluation) == summary["eval_examples"]
    assert all(set(json.loads(line)) == {"messages"} for line in train + evaluation)
    report = json.loads(_read(aws, "runs/run-1/validation/report.json"))
    assert report["passed"] is True and report["split"]["train_uri"] == summary["train_uri"]
    assert b"PASSED" in _read(aws, "runs/run-1/validation/summary.txt")
    # AND the upload itself is untouched: same bytes, still a single version
    assert _read(aws, "incoming/reverse.jsonl.gz") == body
    versions = aws.list_object_versions(Bucket=BUCKET, Prefix="incoming/")["Versions"]
    assert [v["VersionId"] for v in versions] == [version]


def test_invalid_upload_raises_invalid_training_data_with_report(aws: Any, reversal_lines: list[str]) -> None:
    # GIVEN a dataset with a misspelled role on line 5
    lines = list(reversal_lines)
    lines[4] = lines[4].replace('"assistant"', '"assitant"')
    aws.put_object(Bucket=BUCKET, Key="incoming/bad.jsonl", Body="\n".join(lines).encode())
    handler = _load_handler().handler
    # WHEN validated THEN the error names the code, the first message and where the report is
    with pytest.raises(InvalidTrainingData) as raised:
        handler({"run_id": "run-2", "bucket": BUCKET, "key": "incoming/bad.jsonl"}, CONTEXT)
    message = str(raised.value)
    assert "REJECTED" in message and "unrecognized_role x1" in message
    assert f"s3://{BUCKET}/runs/run-2/validation/report.json" in message
    report = json.loads(_read(aws, "runs/run-2/validation/report.json"))
    assert report["problems"][0]["line"] == 5 and report["problems"][0]["path"] == "messages[1].role"
    # AND no splits were written for a rejected file
    listed = aws.list_objects_v2(Bucket=BUCKET, Prefix="runs/run-2/data/")
    assert listed["KeyCount"] == 0


def test_sidecar_overrides_apply_and_bad_ones_reject(aws: Any, reversal_lines: list[str]) -> None:
    # GIVEN a 20-example dataset
    aws.put_object(Bucket=BUCKET, Key="incoming/small.jsonl", Body="\n".join(reversal_lines).encode())
    handler = _load_handler().handler
    # WHEN the dataset's settings ask for 50 examples minimum THEN it is rejected as too small
    with pytest.raises(InvalidTrainingData, match="too_few_examples"):
        handler(
            {"run_id": "run-3", "bucket": BUCKET, "key": "incoming/small.jsonl", "overrides": {"min_examples": 50}},
            CONTEXT,
        )
    # WHEN the settings hold an unknown option THEN the rejection names it
    with pytest.raises(InvalidTrainingData, match="max_seq_lenght"):
        handler(
            {"run_id": "run-4", "bucket": BUCKET, "key": "incoming/small.jsonl", "overrides": {"max_seq_lenght": 10}},
            CONTEXT,
        )


def test_no_evaluation_examples_rejects_the_run_before_anything_trains(aws: Any, reversal_lines: list[str]) -> None:
    # GIVEN a valid dataset and settings that hold nothing out for evaluation (and no eval file)
    aws.put_object(Bucket=BUCKET, Key="incoming/small.jsonl", Body="\n".join(reversal_lines).encode())
    request = {"run_id": "run-9", "bucket": BUCKET, "key": "incoming/small.jsonl", "overrides": {"eval_fraction": 0}}
    # WHEN it is validated THEN it is rejected saying the gate needs evaluation examples and what to set
    with pytest.raises(InvalidTrainingData, match=r"no evaluation examples: .*eval_fraction above 0"):
        _load_handler().handler(request, CONTEXT)
    # AND no split was uploaded for training
    listed = aws.list_objects_v2(Bucket=BUCKET, Prefix="runs/run-9/data/").get("Contents", [])
    assert listed == []


def test_missing_object_is_dataset_not_found(aws: Any) -> None:
    from tuneplane.errors import DatasetNotFound

    handler = _load_handler().handler
    with pytest.raises(DatasetNotFound, match="incoming/nope.jsonl"):
        handler({"run_id": "run-5", "bucket": BUCKET, "key": "incoming/nope.jsonl"}, CONTEXT)


def test_a_scan_that_outruns_the_lambdas_time_is_handed_to_a_processing_job_not_rejected(
    aws: Any, reversal_lines: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuneplane.logic.validation import scanner

    # GIVEN a valid upload, a Lambda with 31 s left (1 s of budget after the 30 s margin) and a clock that jumps
    # 10 s at every look, so the budget is spent before the first chunk is checked
    aws.put_object(Bucket=BUCKET, Key="incoming/slow.jsonl", Body="\n".join(reversal_lines).encode())
    context = SimpleNamespace(**vars(CONTEXT), get_remaining_time_in_millis=lambda: 31_000)
    clock = iter(range(0, 1_000_000, 10))
    monkeypatch.setattr(scanner, "_now", lambda: float(next(clock)))
    handler = _load_handler().handler
    # WHEN the Validate Lambda runs
    answer = handler({"run_id": "run-6", "bucket": BUCKET, "key": "incoming/slow.jsonl"}, context)
    # THEN it hands the dataset on to a Processing job, saying it is the platform's limit and which one
    assert answer["engine"] == "processing" and answer["input_uri"] == f"s3://{BUCKET}/runs/run-6/validation-input/"
    assert "the 1 s this validation may take ran out" in answer["reason"]
    assert "a limit of the platform, not an error in the data" in answer["reason"]
    # AND it stored no verdict of its own: no report, no splits (the job writes them)
    assert aws.list_objects_v2(Bucket=BUCKET, Prefix="runs/run-6/validation/")["KeyCount"] == 0
    assert aws.list_objects_v2(Bucket=BUCKET, Prefix="runs/run-6/data/")["KeyCount"] == 0
