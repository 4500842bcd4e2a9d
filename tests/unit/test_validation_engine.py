"""A dataset beyond the Validate Lambda: handed to a Processing job over pinned copies, validated the same, collected.

The job is run here in-process (containers/validate's main) on the inputs the Lambda pinned, and its outputs are
put where SageMaker's EndOfJob upload puts them; tests/statemachine/test_validation_job.py runs the whole path in
the local cloud."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from containers.validate import validate as validate_job
from tests.unit.test_validate_lambda import BUCKET, CONTEXT, _load_handler, _read, aws  # noqa: F401 - aws: a fixture

from tuneplane.errors import InvalidTrainingData, StorageError
from tuneplane.logic import job_requests, validation_engine


def _beyond_the_lambda(monkeypatch: pytest.MonkeyPatch) -> None:
    """This Lambda's /tmp holds the validation of 10 bytes: any uncompressed dataset goes to the job."""
    monkeypatch.setattr(validation_engine, "_lambda_disk_reach", lambda budget: 10)


def _download(client: Any, prefix: str, target: Path) -> None:
    for item in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []):
        path = target / item["Key"].removeprefix(prefix)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_read(client, item["Key"]))


def _run_job(client: Any, run_id: str, work: Path) -> dict[str, Any]:
    """The Processing job as SageMaker runs it: inputs downloaded, main, outputs uploaded at the end."""
    job_dir, output, data = work / "job", work / "out" / "validation", work / "out" / "data"
    _download(client, f"runs/{run_id}/validation-input/", job_dir)
    argv = ["--job_dir", str(job_dir), "--output_dir", str(output), "--data_dir", str(data)]
    argv += ["--work_dir", str(work / "tmp"), "--failure_file", str(work / "failure")]
    assert validate_job.run(argv) == 0, (work / "failure").read_text() if (work / "failure").exists() else ""
    for folder, directory in (("validation", output), ("data", data)):
        for path in sorted(directory.glob("*")) if directory.is_dir() else []:
            client.put_object(Bucket=BUCKET, Key=f"runs/{run_id}/{folder}/{path.name}", Body=path.read_bytes())
    return json.loads((output / "result.json").read_text())


def test_a_dataset_beyond_the_lambda_is_validated_by_the_job_as_the_lambda_would_on_the_pinned_version(
    aws: Any,  # noqa: F811 - the fixture
    reversal_lines: list[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # GIVEN a valid dataset version, validated once by the Lambda (run-ref) for reference
    key = "incoming/reverse.jsonl"
    body = "\n".join(reversal_lines).encode()
    version = aws.put_object(Bucket=BUCKET, Key=key, Body=body)["VersionId"]
    handler = _load_handler().handler
    reference = handler({"run_id": "run-ref", "bucket": BUCKET, "key": key, "version_id": version}, CONTEXT)
    # WHEN a run of the same version finds it beyond its Lambda's /tmp
    _beyond_the_lambda(monkeypatch)
    request = {"run_id": "run-1", "bucket": BUCKET, "key": key, "version_id": version}
    handoff = handler(request, CONTEXT)
    # THEN the Lambda hands it on, saying why, having copied nothing yet (the copy gets a call of its own)
    assert handoff["engine"] == "processing" and handoff["data_bytes"] == len(body) and handoff["gzip"] is False
    assert f"{len(body):,} bytes of data" in handoff["reason"] and "holds the validation of 10" in handoff["reason"]
    prefix = "runs/run-1/validation-input/"
    assert aws.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["KeyCount"] == 0
    # WHEN the next state prepares the job's inputs
    prepared = handler({"prepare": True, "state": request}, CONTEXT)
    # THEN the version is pinned by a copy, with the job's inputs beside it
    assert prepared == {"input_uri": f"s3://{BUCKET}/{prefix}"} and handoff["input_uri"] == prepared["input_uri"]
    assert _read(aws, f"{prefix}train/dataset.jsonl") == body
    assert {"tokenizer.json", "config.json"} <= {
        item["Key"].removeprefix(f"{prefix}model/")
        for item in aws.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}model/")["Contents"]
    }
    job = json.loads(_read(aws, f"{prefix}job.json"))
    assert job["request"]["version_id"] == version and job["settings"]["data_bucket"] == BUCKET
    # AND a newer upload of the same key while the job waits does not change what this run validates
    aws.put_object(Bucket=BUCKET, Key=key, Body=b'{"not": "chat"}\n' * 30)
    result = _run_job(aws, "run-1", tmp_path)
    summary = handler({"collect": True, "state": request}, CONTEXT)
    # THEN the job's summary is the stage's: the same numbers and the same split digests as the Lambda's own
    assert result["summary"] == summary and summary["engine"] == "processing"
    same = ("passed", "lines_read", "examples_valid", "train_examples", "eval_examples", "tokens_total")
    assert {name: summary[name] for name in same} == {name: reference[name] for name in same}
    assert (summary["train_sha256"], summary["eval_sha256"]) == (reference["train_sha256"], reference["eval_sha256"])
    assert summary["train_uri"] == f"s3://{BUCKET}/runs/run-1/data/train.jsonl"
    assert _read(aws, "runs/run-1/data/train.jsonl") == _read(aws, "runs/run-ref/data/train.jsonl")
    # AND the report names the uploaded object, not the job's local copy
    report = json.loads(_read(aws, "runs/run-1/validation/report.json"))
    assert report["dataset"] == f"s3://{BUCKET}/{key}"


def test_a_gzip_dataset_the_job_rejects_is_rejected_by_the_stage_with_the_jobs_report(
    aws: Any,  # noqa: F811 - the fixture
    reversal_lines: list[str],
    tmp_path: Path,
) -> None:
    # GIVEN a gzip dataset with a misspelled role on line 5, and a Lambda too small to hold one example (its 448 MB
    # are all headroom), so the scan stops at the first usable line
    lines = list(reversal_lines)
    lines[4] = lines[4].replace('"assistant"', '"assitant"')
    aws.put_object(Bucket=BUCKET, Key="incoming/bad.jsonl.gz", Body=gzip.compress("\n".join(lines).encode()))
    context = type(CONTEXT)(**{**vars(CONTEXT), "memory_limit_in_mb": 448})
    handler = _load_handler().handler
    request = {"run_id": "run-2", "bucket": BUCKET, "key": "incoming/bad.jsonl.gz"}
    # WHEN the Lambda runs THEN it hands the gzip file on, its compression kept in the copy's name
    handoff = handler(request, context)
    assert handoff["engine"] == "processing" and handoff["gzip"] is True
    assert "usable examples" in handoff["reason"]
    handler({"prepare": True, "state": request}, CONTEXT)
    assert aws.list_objects_v2(Bucket=BUCKET, Prefix="runs/run-2/validation-input/train/dataset.jsonl.gz")["KeyCount"]
    # WHEN the job runs: a rejection is its answer, not its failure
    result = _run_job(aws, "run-2", tmp_path)
    assert "unrecognized_role x1" in result["rejected"]
    # THEN collecting raises the rejection, with the report the job wrote, and no splits exist
    with pytest.raises(InvalidTrainingData, match="unrecognized_role x1") as raised:
        handler({"collect": True, "state": request}, CONTEXT)
    assert f"s3://{BUCKET}/runs/run-2/validation/report.json" in str(raised.value)
    assert json.loads(_read(aws, "runs/run-2/validation/report.json"))["problems"][0]["line"] == 5
    assert aws.list_objects_v2(Bucket=BUCKET, Prefix="runs/run-2/data/")["KeyCount"] == 0


def test_settings_beyond_the_stacks_limits_are_rejected_before_anything_is_copied(
    aws: Any,  # noqa: F811 - the fixture
    reversal_lines: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a dataset beyond the Lambda whose sidecar asks for an instance type the stack does not allow
    aws.put_object(Bucket=BUCKET, Key="incoming/big.jsonl", Body="\n".join(reversal_lines).encode())
    _beyond_the_lambda(monkeypatch)
    request = {
        "run_id": "run-3",
        "bucket": BUCKET,
        "key": "incoming/big.jsonl",
        "training": {"instance_types": ["ml.p5.48xlarge"]},
    }
    # WHEN validated THEN it is rejected at once, and no job input was copied
    with pytest.raises(InvalidTrainingData, match="ml.p5.48xlarge is not allowed by this stack"):
        _load_handler().handler(request, CONTEXT)
    assert aws.list_objects_v2(Bucket=BUCKET, Prefix="runs/run-3/")["KeyCount"] == 0


@pytest.mark.parametrize(
    ("document", "error", "match"),
    [
        (None, StorageError, "ended without writing"),
        ({"run_id": "run-4", "summary": {"run_id": "run-4"}}, StorageError, "is not a validation result"),
        ({"run_id": "run-4", "rejected": "REJECTED: 3 lines"}, InvalidTrainingData, "REJECTED: 3 lines"),
        ({"run_id": "run-3", "rejected": "REJECTED: 3 lines"}, StorageError, "is the result of run 'run-3'"),
    ],
)
def test_collect_without_a_usable_result_is_a_platform_fault_and_a_rejection_is_the_datas(
    aws: Any,  # noqa: F811 - the fixture
    document: dict[str, Any] | None,
    error: type[Exception],
    match: str,
) -> None:
    # GIVEN what a validation job left in result.json (nothing, a broken summary, a rejection)
    if document is not None:
        aws.put_object(Bucket=BUCKET, Key="runs/run-4/validation/result.json", Body=json.dumps(document).encode())
    # WHEN the stage collects it THEN each is raised as what it is
    state = {"run_id": "run-4", "bucket": BUCKET, "key": "incoming/x.jsonl"}
    with pytest.raises(error, match=match):
        _load_handler().handler({"collect": True, "state": state}, CONTEXT)


@pytest.mark.parametrize(
    ("data_bytes", "gzip_file", "volume_gb"),
    [
        (0, False, 10),
        (1024**3, False, 16),  # the copy, five times the data for the spill and the splits, 10 GB of room
        (50 * 1024**3, False, 310),
        (1024**3, True, 61),  # gzip: assumed ten times larger once decompressed
        (10 * 1024**4, False, 16384),  # SageMaker's largest volume; the job rejects what does not fit
    ],
)
def test_the_validation_jobs_volume_is_sized_from_the_data(data_bytes: int, gzip_file: bool, volume_gb: int) -> None:
    assert job_requests.validation_volume_gb(data_bytes, gzip_file) == volume_gb


def test_the_lambdas_disk_budget_is_its_ephemeral_storage_even_on_a_larger_disk() -> None:
    from types import SimpleNamespace

    from tuneplane.logic.validation.scanner import ResourceBudget

    # GIVEN a Lambda context on a host whose disk has more free than the function's 512 MiB of /tmp
    context = SimpleNamespace(memory_limit_in_mb=1024, get_remaining_time_in_millis=lambda: 900_000)
    # WHEN its budget is taken with and without the function's EphemeralStorage
    capped = ResourceBudget.for_lambda(context, tmp_bytes=512 * 1024**2)
    measured = ResourceBudget.for_lambda(context)
    # THEN the disk it may use is the smaller of the two, and the up-front reach follows from it
    assert capped.disk_bytes == 512 * 1024**2 and measured.disk_bytes is None
    assert validation_engine._lambda_disk_reach(capped) == (512 - 256) * 1024**2 // 2


@pytest.mark.parametrize(
    ("data_bytes", "gzip_file", "seconds", "why"),
    [
        (10 * 1024**3, False, 870.0, "temporary disk holds the validation of"),
        (3 * 1024**3, False, 870.0, "would take about 1,024 s to validate here, and this Lambda has 870 s"),
        (600 * 1024**2, True, 870.0, "(gzip) would take about 1,000 s"),
        (2 * 1024**3, False, 870.0, None),
        (100 * 1024**2, True, 870.0, None),
        (3 * 1024**3, False, None, None),  # no time limit (the CLI): only the disk counts
    ],
)
def test_the_lambda_hands_on_up_front_what_its_disk_or_time_cannot_hold(
    data_bytes: int, gzip_file: bool, seconds: float | None, why: str | None
) -> None:
    from tuneplane.logic.validation.scanner import ResourceBudget

    # GIVEN a Lambda with 10 GiB of /tmp and `seconds` left
    budget = ResourceBudget(seconds=seconds, disk_bytes=10 * 1024**3)
    # WHEN it is asked whether it can validate the dataset THEN it says why not, or lets it try
    reason = validation_engine.beyond_lambda(data_bytes, gzip_file, budget)
    assert (reason is None) if why is None else (why in str(reason))


def test_a_file_over_max_file_bytes_is_rejected_not_copied_to_a_job(
    aws: Any,  # noqa: F811 - the fixture
    reversal_lines: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a dataset beyond the Lambda whose sidecar allows at most 100 bytes a file
    body = "\n".join(reversal_lines).encode()
    aws.put_object(Bucket=BUCKET, Key="incoming/huge.jsonl", Body=body)
    _beyond_the_lambda(monkeypatch)
    request = {"run_id": "run-5", "bucket": BUCKET, "key": "incoming/huge.jsonl", "overrides": {"max_file_bytes": 100}}
    # WHEN validated THEN it is rejected at once, naming the file, its size and the limit, and nothing is copied
    with pytest.raises(InvalidTrainingData) as raised:
        _load_handler().handler(request, CONTEXT)
    message = str(raised.value)
    assert f"s3://{BUCKET}/incoming/huge.jsonl is {len(body):,} bytes" in message
    assert "the limit is 100 bytes (max_file_bytes)" in message
    assert aws.list_objects_v2(Bucket=BUCKET, Prefix="runs/run-5/")["KeyCount"] == 0


def test_a_gzip_files_volume_assumes_no_more_data_than_it_may_expand_to() -> None:
    # GIVEN a 50 GiB gzip file, which may expand to at most 50 GiB (max_decompressed_bytes)
    # WHEN the validation job's volume is sized THEN it is that of 50 GiB of data, not of 500 GiB
    assert job_requests.validation_volume_gb(50 * 1024**3, True, 50 * 1024**3) == 310
    assert job_requests.validation_volume_gb(50 * 1024**3, True) == 2560
