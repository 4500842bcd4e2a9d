"""Which engine validates a dataset: the Validate Lambda, or a SageMaker Processing job when it is beyond the Lambda.

The Lambda has 10 GiB of /tmp, its memory and 900 s; validation writes about twice the data to disk
(tuneplane.logic.validation.validator), so a dataset past what those hold cannot be validated there. Such a dataset is
handed on, not rejected:

1. ``validate_in_lambda`` sees it up front (an uncompressed file larger than half its /tmp, or more data than it
   reads in its time) or when the scan's budget runs out midway (a gzip file, or too little time or memory), and
   answers a ValidateHandoff (files over max_file_bytes are rejected instead).
2. The state machine's ValidateEngine choice calls ``prepare_job_inputs`` (the Validate function again, with its
   whole 900 s for the copies): it pins what the job will read by copying inside S3 into
   ``runs/<run-id>/validation-input/`` the dataset's and the eval file's versions as StartRun pinned them (a
   Processing job's S3 input names no version, and an upload of the same key meanwhile must not change what this run
   validates), the base model's tokenizer files (not its weights), and ``job.json`` (the request, the stack's
   settings, the price table: the job runs with network isolation).
3. The Processing job (containers/validate) runs the same ``validate_and_store`` with the instance's budget and writes
   the report, the splits and ``result.json`` to the keys the Lambda would have written.
4. ``collect`` (the Validate function's last call) reads ``result.json``: the summary, or the rejection raised as
   InvalidTrainingData, so both engines end the stage the same way.

The copies are run intermediates: tagged for expiry with the splits when the run ends (logic/retention.py).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from typing import Any

from pydantic import ValidationError

from tuneplane.adapters import s3
from tuneplane.config import ValidateSettings
from tuneplane.errors import InvalidTrainingData, StorageError
from tuneplane.logic.base_model import load_model_context
from tuneplane.logic.chat_template import TOKENIZER_FILES
from tuneplane.logic.validate_stage import (
    BeyondReach,
    S3Store,
    ValidationPlan,
    _source,
    plan_validation,
    validate_and_store,
)
from tuneplane.logic.validation.scanner import DISK_HEADROOM_BYTES, ResourceBudget
from tuneplane.logic.validation.validator import DatasetSource
from tuneplane.models.stage import ValidateHandoff, ValidateRequest, ValidateSummary
from tuneplane.observability import logger

INPUT_FOLDER = "validation-input/"
JOB_FILE = "job.json"
RESULT_FILE = "result.json"  # under runs/<run-id>/validation/, written by the job
_GZIP_SUFFIXES = (".gz", ".gzip")


def input_prefix(settings: ValidateSettings, run_id: str) -> str:
    return f"{settings.runs_prefix}{run_id}/{INPUT_FOLDER}"


def _lambda_disk_reach(budget: ResourceBudget) -> int:
    """The uncompressed data the Lambda's /tmp can validate: it writes each byte about twice (spill, then split)."""
    free = shutil.disk_usage(tempfile.gettempdir()).free if budget.disk_bytes is None else budget.disk_bytes
    return max(free - DISK_HEADROOM_BYTES, 0) // 2


# What one Lambda validates per second, assumed to decide up front: bench/validation_bounds.py measured 4.6-7 MB/s on
# one core of a shared dev machine without tokenization; a 1 GB Lambda has about 0.6 of a vCPU and also tokenizes.
LAMBDA_BYTES_PER_S = 3 * 1024 * 1024
GZIP_RATIO_ASSUMED = 5  # for the time estimate only: JSONL gzips 5-10 times (the scan stops in time if it is more)


def beyond_lambda(data_bytes: int, gzip: bool, budget: ResourceBudget) -> str | None:
    """Why this Lambda cannot validate `data_bytes` (None: it may try; its budget still stops a scan that would
    outrun it, and the dataset is then handed on). Gzip files are only judged on time: their size is not known."""
    reach = _lambda_disk_reach(budget)
    if not gzip and data_bytes > reach:
        return (
            f"{data_bytes:,} bytes of data, and this Lambda's temporary disk holds the validation of {reach:,} "
            "(each byte is written about twice)"
        )
    expected = data_bytes * (GZIP_RATIO_ASSUMED if gzip else 1)
    if budget.seconds is not None and expected > budget.seconds * LAMBDA_BYTES_PER_S:
        return (
            f"{data_bytes:,} bytes of data{' (gzip)' if gzip else ''} would take about "
            f"{expected / LAMBDA_BYTES_PER_S:,.0f} s to validate here, and this Lambda has {budget.seconds:,.0f} s"
        )
    return None


def validate_in_lambda(
    request: ValidateRequest, settings: ValidateSettings, budget: ResourceBudget
) -> ValidateSummary | ValidateHandoff:
    """Validate here when this Lambda can; else hand the dataset on to a Processing job (see the module docstring).
    Settings beyond the stack's limits, and files over max_file_bytes, are rejected here either way: nothing is
    copied for a run that cannot pass."""
    plan = plan_validation(request, settings)
    train = _source(request.bucket, request.key, request.version_id)
    evaluation = _source(request.bucket, request.eval_key, request.eval_version_id) if request.eval_key else None
    sources = [source for source in (train, evaluation) if source is not None]
    data_bytes = sum(source.size or 0 for source in sources)
    gzip = any(key.lower().endswith(_GZIP_SUFFIXES) for key in (request.key, request.eval_key or ""))
    reason = beyond_lambda(data_bytes, gzip, budget)
    if reason:
        _refuse_files_over_the_limit(plan, sources)
        return _handoff(plan, reason, data_bytes, gzip)
    model = load_model_context(settings.base_model_s3_uri)
    try:
        return validate_and_store(
            plan, train, evaluation, model, S3Store(settings.data_bucket), budget, beyond_reach_is_handed_on=True
        )
    except BeyondReach as exc:
        return _handoff(plan, str(exc), data_bytes, gzip)


def _refuse_files_over_the_limit(plan: ValidationPlan, sources: list[DatasetSource]) -> None:
    limit = plan.options.max_file_bytes
    over = [f"{source.name} is {source.size:,} bytes" for source in sources if (source.size or 0) > limit]
    if over:
        raise InvalidTrainingData(
            f"REJECTED: file_too_large: {'; '.join(over)}; the limit is {limit:,} bytes (max_file_bytes). "
            "Split the dataset or remove examples, then upload it again."
        )


def _handoff(plan: ValidationPlan, reason: str, data_bytes: int, gzip: bool) -> ValidateHandoff:
    """The answer that sends the dataset to a Processing job; its inputs are pinned by the next state
    (``prepare_job_inputs``), a call of its own with the Lambda's whole time for the copy."""
    request = plan.request
    input_uri = f"s3://{plan.settings.data_bucket}/{input_prefix(plan.settings, request.run_id)}"
    logger.info("dataset handed on to a processing job", run_id=request.run_id, reason=reason)
    return ValidateHandoff(
        run_id=request.run_id,
        reason=reason[:1000],
        input_uri=input_uri,
        data_bytes=data_bytes,
        gzip=gzip,
        max_data_bytes=plan.options.max_decompressed_bytes,
    )


def prepare_job_inputs(request: ValidateRequest, settings: ValidateSettings) -> dict[str, str]:
    """Pin the inputs of the validation job under runs/<run-id>/validation-input/: the dataset's (and eval file's)
    versions copied inside S3, the base model's tokenizer files, and job.json (the request, the stack's settings, the
    price table: the job runs with network isolation). Idempotent: a retried call copies the same versions again."""
    plan = plan_validation(request, settings)
    bucket, prefix = settings.data_bucket, input_prefix(settings, request.run_id)
    s3.copy_version(request.bucket, request.key, request.version_id, bucket, f"{prefix}train/{_name(request.key)}")
    if request.eval_key:
        eval_copy = f"{prefix}eval/{_name(request.eval_key)}"
        s3.copy_version(request.bucket, request.eval_key, request.eval_version_id, bucket, eval_copy)
    s3.copy_files(settings.base_model_s3_uri, (*TOKENIZER_FILES, "config.json"), bucket, f"{prefix}model/")
    job = {
        "request": request.model_dump(mode="json"),
        "settings": settings.model_dump(mode="json"),
        "pricing": plan.pricing.model_dump(mode="json"),
    }
    input_uri = s3.put_json(bucket, prefix + JOB_FILE, job).removesuffix(JOB_FILE)
    logger.info("validation job inputs pinned", run_id=request.run_id, input_uri=input_uri)
    return {"input_uri": input_uri}


def _name(key: str) -> str:
    """A fixed local name that keeps the compression: the job reads a .gz file as gzip, as the Lambda does. Not the
    upload's own name, which S3 allows up to 1,024 bytes and a file system to 255."""
    return "dataset.jsonl.gz" if key.lower().endswith(_GZIP_SUFFIXES) else "dataset.jsonl"


def result_document(run_id: str, summary: ValidateSummary | None, rejection: str | None) -> dict[str, Any]:
    """What the job writes to result.json: the stage's summary, or the rejection message (a rejection is an ending
    of the stage, not a failure of the job), with the run it is of."""
    if summary is not None:
        return {"run_id": run_id, "summary": summary.model_dump(mode="json")}
    return {"run_id": run_id, "rejected": rejection}


def collect(request: ValidateRequest, settings: ValidateSettings) -> ValidateSummary:
    """The Processing job's result as the stage's: its summary, or its rejection raised as InvalidTrainingData."""
    uri = f"s3://{settings.data_bucket}/{settings.runs_prefix}{request.run_id}/validation/{RESULT_FILE}"
    document = s3.read_json_object(uri)
    if document is None:
        raise StorageError(f"the validation job ended without writing {uri}")
    if document.get("run_id") != request.run_id:
        raise StorageError(f"{uri} is the result of run {document.get('run_id')!r}, not of {request.run_id}")
    if isinstance(document.get("rejected"), str):
        raise InvalidTrainingData(document["rejected"])
    try:
        summary = ValidateSummary.model_validate(document.get("summary"))
    except ValidationError as exc:
        raise StorageError(f"{uri} is not a validation result: {json.dumps(exc.errors()[:3], default=str)}") from exc
    if summary.run_id != request.run_id:
        raise StorageError(f"{uri} is the result of run {summary.run_id}, not of {request.run_id}")
    return summary
