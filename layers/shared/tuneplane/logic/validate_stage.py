"""The Validate stage: validate the uploaded object, store report and splits under runs/<run-id>/."""

from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path

from pydantic import ValidationError

from tuneplane.adapters import s3
from tuneplane.config import ValidateSettings
from tuneplane.errors import InvalidTrainingData
from tuneplane.logic.base_model import load_model_context
from tuneplane.logic.cost import PricingTable
from tuneplane.logic.validation import DatasetSource, validate_dataset
from tuneplane.logic.validation.summary import headline, render_summary
from tuneplane.models.stage import ValidateRequest, ValidateSummary
from tuneplane.models.validation import Code, ValidationOptions, ValidationReport
from tuneplane.observability import logger

_TOP_ERRORS_IN_MESSAGE = 3


def build_options(
    settings: ValidateSettings, overrides: dict[str, object], sidecar: str | None = None
) -> ValidationOptions:
    """Deployment defaults from the environment, then the dataset's own overrides (from ``sidecar``) on top."""
    defaults: dict[str, object] = {
        "max_seq_length": settings.max_seq_length,
        "min_examples": settings.min_examples,
        "max_invalid_fraction": settings.max_invalid_fraction,
        "instance_type": settings.training_instance_type,
        "severity_overrides": {Code.PII_DETECTED: settings.pii_severity},
    }
    try:
        return ValidationOptions.model_validate(defaults | overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        where = f"validation settings in {sidecar}" if sidecar else "sidecar file"
        raise InvalidTrainingData(f"invalid dataset settings ({where}): {problems}") from exc


def _source(bucket: str, key: str, version_id: str | None) -> DatasetSource:
    return DatasetSource(
        name=f"s3://{bucket}/{key}",
        open=partial(s3.open_object, bucket, key, version_id),
        size=s3.object_size(bucket, key, version_id),
    )


def _pricing(settings: ValidateSettings) -> PricingTable:
    if not settings.pricing_table_s3_uri:
        return PricingTable.bundled()
    bucket, key = s3.parse_s3_uri(settings.pricing_table_s3_uri)
    with s3.open_object(bucket, key) as body:
        return PricingTable.model_validate_json(body.read())


def _rejection(report: ValidationReport, report_uri: str) -> str:
    top = [f"{c.code.value} x{c.count} (first: {c.first_message})" for c in report.errors[:_TOP_ERRORS_IN_MESSAGE]]
    return f"{headline(report)}; {'; '.join(top)}; full report: {report_uri}"


def run_validate_stage(request: ValidateRequest, settings: ValidateSettings) -> ValidateSummary:
    sidecar = f"s3://{request.bucket}/{request.sidecar_key}" if request.sidecar_key else None
    if request.sidecar_error:  # StartRun starts the run even with a broken sidecar file: it is rejected here
        raise InvalidTrainingData(
            f"invalid dataset settings file {sidecar or '(sidecar)'}: {request.sidecar_error}. "
            "Fix the settings file, then upload the dataset again to start a new run."
        )
    options = build_options(settings, request.overrides, sidecar)
    run_prefix = f"{settings.runs_prefix}{request.run_id}/"
    train = _source(request.bucket, request.key, request.version_id)
    evaluation = _source(request.bucket, request.eval_key, None) if request.eval_key else None
    model = load_model_context(settings.base_model_s3_uri)
    with tempfile.TemporaryDirectory(prefix="validate-") as work:
        result = validate_dataset(
            train, options, eval_source=evaluation, model=model, out_dir=Path(work), pricing=_pricing(settings)
        )
        report = result.report
        if result.train_path and report.split:
            report.split.train_uri = s3.upload_file(
                result.train_path, settings.data_bucket, f"{run_prefix}data/train.jsonl"
            )
        if result.eval_path and report.split:
            report.split.eval_uri = s3.upload_file(
                result.eval_path, settings.data_bucket, f"{run_prefix}data/eval.jsonl"
            )
    report_uri = s3.put_json(
        settings.data_bucket, f"{run_prefix}validation/report.json", report.model_dump(mode="json")
    )
    summary_uri = s3.put_text(settings.data_bucket, f"{run_prefix}validation/summary.txt", render_summary(report))
    logger.info("dataset validated", run_id=request.run_id, passed=report.passed, report_uri=report_uri)
    if not report.passed:
        raise InvalidTrainingData(_rejection(report, report_uri))
    split = report.split
    assert split is not None  # always set by validate_dataset
    return ValidateSummary(
        run_id=request.run_id,
        passed=report.passed,
        dataset_uri=report.dataset,
        format=report.format.value if report.format else None,
        lines_read=report.lines_read,
        examples_valid=report.examples_valid,
        train_examples=split.train_examples,
        eval_examples=split.eval_examples,
        eval_source=split.eval_source,
        train_uri=split.train_uri,
        eval_uri=split.eval_uri,
        report_uri=report_uri,
        summary_uri=summary_uri,
        errors=sum(c.count for c in report.errors),
        warnings=sum(c.count for c in report.warnings),
        tokens_total=report.tokens.total if report.tokens else None,
        estimated_training_hours=report.cost.hours if report.cost else None,
        estimated_cost_usd=report.cost.cost_usd if report.cost else None,
        headline=headline(report),
    )
