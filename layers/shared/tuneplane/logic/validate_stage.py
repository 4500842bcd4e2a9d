"""The Validate stage: validate the uploaded object, store report and splits under runs/<run-id>/."""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from tuneplane.adapters import s3
from tuneplane.config import ValidateSettings
from tuneplane.errors import InvalidTrainingData
from tuneplane.logic import run_limits
from tuneplane.logic.base_model import load_model_context
from tuneplane.logic.cost import PricingTable, estimate_run
from tuneplane.logic.validation.scanner import ResourceBudget
from tuneplane.logic.validation.summary import headline, render_summary
from tuneplane.logic.validation.validator import DatasetSource, ModelContext, validate_dataset
from tuneplane.models.pipeline import EvaluationOverrides, TrainingOverrides
from tuneplane.models.stage import ValidateRequest, ValidateSummary
from tuneplane.models.validation import Code, CostEstimate, ValidationOptions, ValidationReport
from tuneplane.observability import logger

_TOP_ERRORS_IN_MESSAGE = 3


def build_options(
    settings: ValidateSettings,
    overrides: dict[str, Any],
    sidecar: str | None = None,
    training: TrainingOverrides | None = None,
) -> ValidationOptions:
    """The stack's settings from the environment, then the dataset's own (from ``sidecar``) on top as far as
    tuneplane.logic.run_limits allows (stricter, never looser); the estimate's inputs come from the run's real
    training settings (``training``), and the token check uses the max_seq_length the run trains with."""
    training = training or TrainingOverrides()
    try:
        ValidationOptions.model_validate(overrides)  # the sidecar's own fields, reported as the sidecar's
        stack: dict[str, Any] = {
            "min_examples": settings.min_examples,
            "max_invalid_fraction": settings.max_invalid_fraction,
            "severity_overrides": {Code.PII_DETECTED: settings.pii_severity},
            "instance_type": (training.instance_types or settings.instance_types)[0],
            "epochs": run_limits.effective_epochs(training, settings),
            "spot": settings.use_spot,
        }
        merged, problems = run_limits.validation_options(
            stack, overrides, run_limits.effective_seq_len(training, settings)
        )
        if problems:
            raise _over_limits(problems, sidecar)
        return ValidationOptions.model_validate(merged)
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        where = f"validation settings in {sidecar}" if sidecar else "sidecar file"
        raise InvalidTrainingData(f"invalid dataset settings ({where}): {'; '.join(problems)}") from exc


def _over_limits(problems: list[str], sidecar: str | None) -> InvalidTrainingData:
    where = f"dataset settings file {sidecar}" if sidecar else "the run's dataset settings (no sidecar file)"
    return InvalidTrainingData(
        f"{where} go beyond this stack's limits: {'; '.join(problems)}. A sidecar may choose among what the stack "
        "allows and make checks stricter, never looser; fix the settings file, then upload the dataset again."
    )


def _sidecar_sections(
    request: ValidateRequest, settings: ValidateSettings, sidecar: str | None
) -> tuple[TrainingOverrides, EvaluationOverrides]:
    """The sidecar's training and evaluation sections, checked against the stack's caps before any data is read."""
    try:
        training = TrainingOverrides.model_validate(request.training or {})
        evaluation = EvaluationOverrides.model_validate(request.evaluation or {})
    except ValidationError as exc:
        invalid = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidTrainingData(f"invalid dataset settings ({sidecar or 'sidecar file'}): {invalid}") from exc
    problems = (
        run_limits.training_problems(training, settings, request.deploy_target or settings.deploy_target)
        + run_limits.evaluation_problems(evaluation, settings)
        + run_limits.deploy_problems(request.deploy_target, settings)
    )
    if problems:
        raise _over_limits(problems, sidecar)
    return training, evaluation


def _source(bucket: str, key: str, version_id: str | None) -> DatasetSource:
    return DatasetSource.s3(bucket, key, version_id)  # resumes a read that fails midway with a ranged GET


def _pricing(settings: ValidateSettings) -> PricingTable:
    if not settings.pricing_table_s3_uri:
        return PricingTable.bundled()
    bucket, key = s3.parse_s3_uri(settings.pricing_table_s3_uri)
    with s3.open_object(bucket, key) as body:
        return PricingTable.model_validate_json(body.read())


def _rejection(report: ValidationReport, report_uri: str) -> str:
    top = [f"{c.code.value} x{c.count} (first: {c.first_message})" for c in report.errors[:_TOP_ERRORS_IN_MESSAGE]]
    top += report.cost.over_limits if report.cost else []
    top += report.run_problems
    return f"{headline(report)}; {'; '.join(top)}; full report: {report_uri}"


def _run_estimate(
    training_estimate: CostEstimate,
    training: TrainingOverrides,
    request: ValidateRequest,
    settings: ValidateSettings,
    parameters: int | None,
    pricing: PricingTable,
    report: ValidationReport | None = None,
) -> CostEstimate:
    """The run's estimate: training with its real epochs or steps, batch, sequence length and spot setting, then
    merge, (quantize,) evaluate and deploy; checked against MaxRunCostUsd and MaxTrainingRuntimeSeconds.

    A run may fall back to each of its instance types in turn when one has no capacity, so the budget is checked on
    the costliest of them (the one shown); the first is shown when they all cost the same."""
    shape = run_limits.run_shape(
        training,
        settings,
        tokens_per_epoch=training_estimate.tokens_per_epoch,
        parameters=parameters,
        deploy_target=request.deploy_target or settings.deploy_target,
        endpoint_instance_type=settings.endpoint_instance_type,
        endpoint_instances=settings.endpoint_min_instances,
        bake_time_s=settings.bake_time_s,
        # the evaluate stage priced from the eval split: its examples and their mean tokens (an upper bound of a
        # prompt's), up to the sidecar's max_examples and max_new_tokens
        evaluation=EvaluationOverrides.model_validate(request.evaluation or {}),
        eval_examples=report.split.eval_examples if report and report.split else None,
        eval_tokens_per_example=(
            report.tokens.total / report.tokens.examples
            if report and report.tokens and report.tokens.examples
            else None
        ),
    )
    caps = run_limits.run_caps(settings)
    candidates = [
        estimate_run(replace(shape, instance_type=instance_type), caps, pricing)
        for instance_type in dict.fromkeys(training.instance_types or settings.instance_types)
    ]
    costliest = max(candidates, key=lambda estimate: (estimate.total_cost_usd or 0.0, estimate.hours or 0.0))
    unpriced = [warning for other in candidates if other is not costliest for warning in other.warnings]
    warnings = list(dict.fromkeys([*costliest.warnings, *unpriced]))
    return costliest.model_copy(update={"warnings": warnings, "known": all(c.known for c in candidates)})


def _sha256(path: Path | None) -> str | None:
    """The digest of a split as written (the usable examples in file order, duplicates and blank lines left out,
    the seeded held-out split): two uploads of the same lines have the same digests, gzipped or not."""
    if path is None:
        return None
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


class OutputStore(Protocol):
    """Where a validation's report and splits go: S3 directly (the Lambda), or the Processing job's output
    directories that SageMaker uploads to the same keys when the job ends. Each call returns the object's URI."""

    def file(self, path: Path, key: str) -> str: ...

    def json(self, key: str, document: Any) -> str: ...

    def text(self, key: str, text: str) -> str: ...


class S3Store:
    def __init__(self, bucket: str) -> None:
        self.bucket = bucket

    def file(self, path: Path, key: str) -> str:
        return s3.upload_file(path, self.bucket, key)

    def json(self, key: str, document: Any) -> str:
        return s3.put_json(self.bucket, key, document)

    def text(self, key: str, text: str) -> str:
        return s3.put_text(self.bucket, key, text)


class BeyondReach(Exception):
    """This machine's budget (time, memory, temporary disk) ran out before the data did: not the data's fault, and
    a larger engine may finish it. Raised instead of storing a too_large_to_validate rejection when one exists."""


@dataclass(frozen=True)
class ValidationPlan:
    """Everything a validation needs besides the data and the model, decided before any data is read: the sidecar's
    sections checked against the stack's caps, the merged options, the price table."""

    request: ValidateRequest
    settings: ValidateSettings
    training: TrainingOverrides
    options: ValidationOptions
    pricing: PricingTable

    @property
    def run_prefix(self) -> str:
        return f"{self.settings.runs_prefix}{self.request.run_id}/"


def plan_validation(
    request: ValidateRequest, settings: ValidateSettings, pricing: PricingTable | None = None
) -> ValidationPlan:
    sidecar = f"s3://{request.bucket}/{request.sidecar_key}" if request.sidecar_key else None
    if request.sidecar_error:  # StartRun starts the run even with a broken sidecar file: it is rejected here
        raise InvalidTrainingData(
            f"invalid dataset settings file {sidecar or '(sidecar)'}: {request.sidecar_error}. "
            "Fix the settings file, then upload the dataset again to start a new run."
        )
    training, _ = _sidecar_sections(request, settings, sidecar)
    options = build_options(settings, request.overrides, sidecar, training)
    return ValidationPlan(request, settings, training, options, pricing or _pricing(settings))


def run_validate_stage(
    request: ValidateRequest, settings: ValidateSettings, budget: ResourceBudget | None = None
) -> ValidateSummary:
    """The whole stage on this machine (the CLI, a test): a dataset beyond its budget is rejected as
    too_large_to_validate. The Validate Lambda goes through tuneplane.logic.validation_engine instead, which hands
    such a dataset to a Processing job."""
    plan = plan_validation(request, settings)
    train = _source(request.bucket, request.key, request.version_id)
    evaluation = _source(request.bucket, request.eval_key, request.eval_version_id) if request.eval_key else None
    model = load_model_context(settings.base_model_s3_uri)
    return validate_and_store(plan, train, evaluation, model, S3Store(settings.data_bucket), budget)


def validate_and_store(
    plan: ValidationPlan,
    train: DatasetSource,
    evaluation: DatasetSource | None,
    model: ModelContext,
    store: OutputStore,
    budget: ResourceBudget | None = None,
    *,
    beyond_reach_is_handed_on: bool = False,
) -> ValidateSummary:
    """Validate, then store the report, the summary and (when it passed) the splits under runs/<run-id>/; raises
    InvalidTrainingData with the top problems when it did not pass, or BeyondReach (when
    `beyond_reach_is_handed_on`) when this machine's budget stopped the scan, before anything is stored."""
    request, settings, pricing, run_prefix = plan.request, plan.settings, plan.pricing, plan.run_prefix
    with tempfile.TemporaryDirectory(prefix="validate-") as work:
        result = validate_dataset(
            train,
            plan.options,
            eval_source=evaluation,
            model=model,
            out_dir=Path(work),
            pricing=pricing,
            budget=budget,
        )
        report = result.report
        if beyond_reach_is_handed_on:
            stopped = [c for c in report.errors if c.code is Code.TOO_LARGE_TO_VALIDATE]
            if stopped:
                raise BeyondReach(stopped[0].first_message)
        if report.cost is not None:  # the whole run's estimate, on the run's real settings, checked against the caps
            report.cost = _run_estimate(
                report.cost, plan.training, request, settings, model.parameters, pricing, report
            )
            for warning in report.cost.warnings:
                logger.warning("cost estimate incomplete", run_id=request.run_id, problem=warning)
            if report.cost.over_limits:  # nothing is uploaded for a run that will not train
                report.passed = False
        if report.passed and report.split and report.split.eval_examples == 0:  # the gate could not score it
            report.passed = False
            report.run_problems.append(
                "no evaluation examples: the promotion gate needs some (set validation.eval_fraction above 0, "
                "or an eval_file with examples)"
            )
        digests = {
            "train": _sha256(result.train_path) if report.passed else None,
            "eval": _sha256(result.eval_path) if report.passed else None,
        }
        if report.passed and result.train_path and report.split:
            report.split.train_uri = store.file(result.train_path, f"{run_prefix}data/train.jsonl")
        if report.passed and result.eval_path and report.split:
            report.split.eval_uri = store.file(result.eval_path, f"{run_prefix}data/eval.jsonl")
    report_uri = store.json(f"{run_prefix}validation/report.json", report.model_dump(mode="json"))
    summary_uri = store.text(f"{run_prefix}validation/summary.txt", render_summary(report))
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
        estimated_run_cost_usd=report.cost.total_cost_usd if report.cost else None,
        max_run_cost_usd=settings.max_run_cost_usd,
        cost_warnings=report.cost.warnings if report.cost else [],
        train_sha256=digests["train"],
        eval_sha256=digests["eval"],
        headline=headline(report),
    )
