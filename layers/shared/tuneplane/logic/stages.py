"""The Stage function's logic: every stage's start, end, skip, rejection or failure is recorded in the run ledger
and published as one ``PipelineEvent``; a job stage's start also returns its SageMaker job request.

The state machine calls this with its whole state (``$``): the run input plus each stage's result so far
(``validation``, ``train``, ``merge``, ``quantize``, ``evaluation``, ``register``; ``error`` on the failure path).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import ValidationError

from tuneplane.adapters import events, ledger, s3, sagemaker
from tuneplane.bounds import bound_text
from tuneplane.config import PipelineSettings
from tuneplane.errors import DatasetNotFound, InvalidConfiguration
from tuneplane.logic import job_requests, retention, run_limits
from tuneplane.logic.registry import registration
from tuneplane.logic.rollback_report import rollback_notes
from tuneplane.models.events import PipelineEvent, Stage, Status
from tuneplane.models.pipeline import EvaluationOverrides, JobSpec, StageOutcome, StageRequest, TrainingOverrides
from tuneplane.observability import logger

CAUSE_MAX = 500
_Overrides = TypeVar("_Overrides", TrainingOverrides, EvaluationOverrides)
_JOB_STAGES = {Stage.TRAIN, Stage.MERGE, Stage.QUANTIZE, Stage.EVALUATE}
_HEADLINE_METRICS = (
    "evaluate.candidate.",
    "train.final_train_loss",
    "train.tokens_per_second",
    "validate.examples",
    "deploy.endpoint_name",
    "deploy.target",
    "deploy.model_name",
    "deploy.smoke_test_answer",
    "deploy.smoke_test_prompt",
)


def handle(request: StageRequest, settings: PipelineSettings) -> dict[str, Any]:
    """Record what the state machine reports and answer with what the next state needs."""
    state = request.state
    run = _RunView(state, request.execution_arn)
    action = request.action
    if action == "start":
        return _start(request.stage, run, settings)
    if action == "finish":
        outcome = outcome_of(request.stage, run, settings)
        if outcome.passed is False:
            # An evaluation below the gate did not succeed: the Gate sends the run to RejectEvaluate, which records
            # and publishes the stage's one outcome (Stage Failed, rejected). Publishing Stage Succeeded here too gave
            # the stage two outcomes.
            return outcome.model_dump(mode="json")
        _record(settings, run, request.stage, Status.SUCCEEDED, outcome)
        return outcome.model_dump(mode="json")
    if action == "skip":
        reason = request.reason or f"{request.stage.value} not configured"
        _record(settings, run, request.stage, Status.SKIPPED, StageOutcome(stage=request.stage, message=reason))
        return {"skipped": True, "reason": reason}
    if action == "complete":
        return _complete(run, settings)
    return _end_badly(request.stage, run, settings, Status.REJECTED if action == "reject" else Status.FAILED)


class _RunView:
    """The parts of the execution state every action uses."""

    def __init__(self, state: dict[str, Any], execution_arn: str | None) -> None:
        try:
            self.run_id = str(state["run_id"])
            self.bucket = str(state["bucket"])
            self.key = str(state["key"])
        except KeyError as exc:
            raise InvalidConfiguration(f"Stage function: the state has no {exc.args[0]!r}") from exc
        self.version_id = state.get("version_id")
        self.execution_arn = execution_arn
        self.state = state

    def result(self, name: str) -> dict[str, Any]:
        value = self.state.get(name)
        return value if isinstance(value, dict) else {}

    @property
    def data(self) -> dict[str, str | None]:
        summary = self.result("validation").get("summary") or {}
        return {"train_uri": summary.get("train_uri"), "eval_uri": summary.get("eval_uri")}

    @property
    def train_attempt(self) -> int:
        """0 for the first training attempt; the state machine counts up on each capacity fallback."""
        return int(self.result("pipeline").get("train_attempt") or 0)

    def training(self) -> TrainingOverrides:
        return _overrides(TrainingOverrides, self.state.get("training"), "training")

    def evaluation(self) -> EvaluationOverrides:
        return _overrides(EvaluationOverrides, self.state.get("evaluation"), "evaluation")


def _overrides(model: type[_Overrides], raw: Any, section: str) -> _Overrides:
    try:
        return model.model_validate(raw or {})
    except ValidationError as exc:
        raise InvalidConfiguration(f"sidecar {section}: {exc}") from exc


def _now() -> datetime:
    return datetime.now(UTC)


def _event(run: _RunView, stage: Stage, status: Status, **fields: Any) -> PipelineEvent:
    """The event, every text in it within its bound (a cut one says so): an event that cannot be built or is
    refused for its size would leave the run without its outcome."""
    return PipelineEvent(
        run_id=run.run_id,
        stage=stage,
        status=status,
        **events.bounded_fields(
            {
                "dataset": run.key,
                "bucket": run.bucket,
                "version_id": run.version_id,
                "execution_arn": run.execution_arn,
                **fields,
            }
        ),
    )


def _published_marker(event: PipelineEvent, occurrence: int | None = None) -> str:
    """The ledger attribute that records ``event`` as published on its (run, stage) item, e.g.
    ``published_stage_failed``; ``occurrence`` tells apart events a stage legitimately publishes more than once (the
    Stage Started of each training attempt)."""
    name = "published_" + event.detail_type.lower().replace(" ", "_")
    return name if occurrence is None else f"{name}_{occurrence}"


def _publish_once(
    settings: PipelineSettings,
    run: _RunView,
    event: PipelineEvent,
    item: dict[str, Any],
    occurrence: int | None = None,
) -> None:
    """Publish ``event`` unless the ledger item of its stage (``item``, read before) records it as published.

    A Lambda task that fails after publishing (the next event refused, a ledger write throttled) is retried by the
    state machine and runs again from the start; EventBridge has no idempotency token (the AWS docs, "PutEvents"), so
    without the record every retry would publish the same event again (and Slack would post it again: the notifier
    deduplicates on the EventBridge event id, which is new for every PutEvents). An event published whose record then
    failed to be written is published again on the retry: at least once, as EventBridge delivers.
    """
    marker = _published_marker(event, occurrence)
    if item.get(marker):
        logger.info("event already published by an earlier attempt", detail_type=event.detail_type, marker=marker)
        return
    event_id = events.publish(settings.event_bus_name, event)
    ledger.put_stage(settings.ledger_table, run.run_id, event.stage.value, {marker: event_id or "published"})


def _item(settings: PipelineSettings, run: _RunView, stage: Stage) -> dict[str, Any]:
    return ledger.get_stage(settings.ledger_table, run.run_id, stage.value) or {}


def _started_at(item: dict[str, Any]) -> datetime | None:
    started = item.get("started_at")
    return datetime.fromisoformat(started) if isinstance(started, str) else None


def _record(
    settings: PipelineSettings,
    run: _RunView,
    stage: Stage,
    status: Status,
    outcome: StageOutcome,
    error: str | None = None,
) -> PipelineEvent:
    finished = _now()
    item = _item(settings, run, stage)
    started = _started_at(item)
    event = _event(
        run,
        stage,
        status,
        started_at=started,
        finished_at=finished,
        duration_s=round((finished - started).total_seconds(), 3) if started else None,
        metrics=outcome.metrics,
        artifacts=outcome.artifacts,
        message=outcome.message,
        error=error,
        notes=outcome.notes,
    )
    ledger.put_stage(
        settings.ledger_table,
        run.run_id,
        stage.value,
        {
            "status": status.value,
            "finished_at": finished,
            "duration_s": event.duration_s,
            "metrics": event.metrics,  # the event's: PII masked (models/events.py)
            "artifacts": outcome.artifacts,
            "message": event.message,
            "error": event.error,
        },
    )
    _publish_once(settings, run, event, item)
    return event


def _start(stage: Stage, run: _RunView, settings: PipelineSettings) -> dict[str, Any]:
    now = _now()
    if stage is Stage.VALIDATE:  # the first stage: the run begins
        ledger.put_stage(
            settings.ledger_table,
            run.run_id,
            Stage.RUN.value,
            {
                "status": Status.STARTED.value,
                "started_at": now,
                "dataset": run.key,
                "bucket": run.bucket,
                "version_id": run.version_id,
                "execution_arn": run.execution_arn,
            },
        )
    if stage is Stage.DEPLOY:  # Validate rejected a target the stack does not allow; never deploy to one anyway
        run_limits.require_deploy_target(run.result("pipeline").get("deploy_target"), settings)
    spec = job_spec(stage, run, settings) if stage in _JOB_STAGES else None
    fields: dict[str, Any] = {"status": Status.STARTED.value, "started_at": now}
    notes: list[str] = []
    if spec is not None:
        fields |= {"job_name": _job_name(spec), "instance_type": spec.instance_type, "attempt": spec.attempt}
        if spec.attempt:
            _, cause = one_line_cause(run.result("error"))
            note = f"attempt {spec.attempt + 1} on {spec.instance_type}: the previous instance type had no capacity"
            notes.append(f"{note} ({cause})")
    if stage is Stage.VALIDATE:
        notes += settings_notes(run.state)
    item = _item(settings, run, stage)  # before this attempt's write: what an earlier attempt published
    ledger.put_stage(settings.ledger_table, run.run_id, stage.value, fields)
    metrics: dict[str, Any] = {"instance_type": spec.instance_type} if spec else {}
    event = _event(run, stage, Status.STARTED, started_at=now, metrics=metrics, notes=notes)
    _publish_once(settings, run, event, item, occurrence=spec.attempt if spec else None)
    if stage is Stage.REGISTER:
        return registration(run.run_id, run.key)
    return spec.model_dump(mode="json") if spec else {}


def settings_notes(state: dict[str, Any]) -> list[str]:
    """The run's first event says which sidecar version (and eval file version) StartRun used, so an uploader who
    changed one just after the dataset sees whether the run has it."""
    sidecar, eval_key = state.get("sidecar_key"), state.get("eval_key")
    if not sidecar:
        return ["settings: no sidecar file, the stack's defaults apply"]
    notes = [f"settings: {sidecar} (version {state.get('sidecar_version_id') or 'unversioned'})"]
    if eval_key:
        notes.append(f"eval file: {eval_key} (version {state.get('eval_version_id') or 'unversioned'})")
    return notes


def _job_name(spec: JobSpec) -> str:
    return str(spec.request.get("TrainingJobName") or spec.request.get("ProcessingJobName"))


def job_spec(stage: Stage, run: _RunView, settings: PipelineSettings) -> JobSpec:
    """The SageMaker request of a job stage, from the results of the stages before it."""
    data = run.data
    if not data["train_uri"]:
        raise InvalidConfiguration(f"{stage.value}: the validation result has no train split")
    if stage is Stage.TRAIN:
        attempt = run.train_attempt
        return job_requests.training_job(settings, run.run_id, data, run.training(), attempt)
    merged = job_requests.run_uri(settings, run.run_id, "merged", "")
    if stage is Stage.MERGE:
        adapter = run.result("train").get("model_artifacts")
        if not adapter:
            raise InvalidConfiguration("merge: the training result has no model artifacts")
        return job_requests.merge_job(settings, run.run_id, str(adapter), data["eval_uri"])
    if stage is Stage.QUANTIZE:
        return job_requests.quantize_job(settings, run.run_id, merged, data)
    if not data["eval_uri"]:
        raise InvalidConfiguration("evaluate: the validation result has no eval split")
    return job_requests.evaluate_job(settings, run.run_id, merged, str(data["eval_uri"]), run.evaluation())


def _read_json(uri: str) -> dict[str, Any]:
    document = s3.read_json_object(uri)
    if document is None:
        raise DatasetNotFound(f"{uri} does not exist")
    return document


def outcome_of(stage: Stage, run: _RunView, settings: PipelineSettings) -> StageOutcome:
    """A finished stage's key numbers and artifacts, from its result in the state (and its report in S3)."""
    if stage is Stage.VALIDATE:
        summary = run.result("validation").get("summary") or {}
        metrics = {
            "examples": summary.get("examples_valid"),
            "train_examples": summary.get("train_examples"),
            "eval_examples": summary.get("eval_examples"),
            "tokens": summary.get("tokens_total"),
            "warnings": summary.get("warnings"),
            "estimated_training_hours": summary.get("estimated_training_hours"),
            "estimated_cost_usd": summary.get("estimated_cost_usd"),
        }
        artifacts = {
            name: summary[f"{name}_uri"]
            for name in ("report", "summary", "train", "eval")
            if summary.get(f"{name}_uri")
        }
        return StageOutcome(
            stage=stage, metrics=_present(metrics), artifacts=artifacts, message=summary.get("headline")
        )
    if stage is Stage.TRAIN:
        train = run.result("train")
        described = sagemaker.describe_training_job(str(train["job_name"])) if train.get("job_name") else {}
        final = {m["MetricName"]: m["Value"] for m in described.get("FinalMetricDataList") or [] if "MetricName" in m}
        metrics = {
            "final_train_loss": final.get("train_loss"),
            "final_eval_loss": final.get("eval_loss"),
            "tokens_per_second": final.get("tokens_per_second"),
            "gpu_memory_gb": final.get("gpu_memory_gb"),
            "instance_type": train.get("instance_type"),
            "billable_seconds": described.get("BillableTimeInSeconds"),
            "attempt": run.train_attempt + 1,
        }
        artifacts = {"adapter": str(train.get("model_artifacts") or "")}
        notes = [f"trained on {train.get('instance_type')} after {run.train_attempt} capacity fallback(s)"]
        return StageOutcome(
            notes=notes if run.train_attempt else [],
            stage=stage,
            metrics=_present(metrics),
            artifacts=_present(artifacts),
            message=train.get("job_name"),
        )
    if stage is Stage.MERGE:
        merged = job_requests.run_uri(settings, run.run_id, "merged", "")
        report = s3.read_json_object(merged + "merge_report.json") or {}
        verdict = report.get("bedrock_custom_model_import") or {}
        metrics = {
            "max_abs_logit_diff": ((report.get("verification") or {}).get("merged_vs_base_plus_adapter") or {}).get(
                "max_abs"
            ),
            "bedrock_importable": verdict.get("compatible"),
            "wall_time_s": report.get("wall_time_s"),
        }
        return StageOutcome(stage=stage, metrics=_present(metrics), artifacts={"merged": merged})
    if stage is Stage.QUANTIZE:
        quantized = job_requests.run_uri(settings, run.run_id, "quantized", "")
        return StageOutcome(stage=stage, artifacts={"quantized": quantized})
    if stage is Stage.EVALUATE:
        return _evaluation_outcome(run, settings)
    if stage is Stage.REGISTER:
        arn = run.result("register").get("ModelPackageArn")
        return StageOutcome(stage=stage, artifacts=_present({"model_package": arn}))
    if stage is Stage.DEPLOY:
        return _deploy_outcome(run)
    return StageOutcome(stage=stage, metrics=_present(run.result(stage.value)))


def _deploy_outcome(run: _RunView) -> StageOutcome:
    """Where the model serves and what it answered to the smoke test's question."""
    deployment = run.result("deploy").get("deployment") or {}
    plan = deployment.get("plan") or {}
    metrics = {
        "target": deployment.get("target"),
        "endpoint_name": deployment.get("endpoint_name"),
        "mode": deployment.get("mode"),
        "served": plan.get("served"),
        "instance_type": plan.get("instance_type"),
        "model_name": deployment.get("imported_model_name") or deployment.get("model_name"),
        "smoke_test_prompt": deployment.get("question"),
        "smoke_test_answer": deployment.get("answer"),
        "smoke_test_expected": deployment.get("expected"),
        "smoke_test_latency_ms": deployment.get("smoke_latency_ms"),
    }
    artifacts = {
        "endpoint": deployment.get("endpoint_name"),
        "endpoint_config": deployment.get("endpoint_config_name"),
        "imported_model": deployment.get("imported_model_arn"),
    }
    where = deployment.get("endpoint_name") or deployment.get("imported_model_name")
    return StageOutcome(
        stage=Stage.DEPLOY,
        metrics=_present(metrics),
        artifacts=_present(artifacts),
        message=f"{where} answered: {deployment.get('answer')}" if deployment.get("answer") else None,
        notes=[str(note) for note in deployment.get("notes") or []],
    )


def _exists(uri: str) -> bool:
    bucket, key = s3.parse_s3_uri(uri)
    return s3.read_if_exists(bucket, key, 1) is not None


def _evaluation_outcome(run: _RunView, settings: PipelineSettings) -> StageOutcome:
    folder = job_requests.run_uri(settings, run.run_id, "evaluation", "")
    report = _read_json(folder + "evaluation.json")
    primary = str(report.get("primary_metric") or "exact_match")
    metrics: dict[str, Any] = {
        "primary_metric": primary,
        "passed": bool(report.get("passed")),
        "examples": report.get("examples"),
    }
    for model, scores in (report.get("metrics") or {}).items():
        for name in (primary, "token_f1", "stop_rate"):
            if name in scores:
                metrics[f"{model}.{name}"] = scores[name]
    reasons = [str(reason) for reason in report.get("reasons") or []]
    artifacts = {"evaluation": folder + "evaluation.json"}
    if report.get("chart"):
        artifacts["chart"] = folder + "evaluation.png"
    message = "passed the gate" if report.get("passed") else "did not pass the gate: " + "; ".join(reasons)
    return StageOutcome(
        stage=Stage.EVALUATE, metrics=metrics, artifacts=artifacts, passed=bool(report.get("passed")), message=message
    )


def _present(values: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value not in (None, "")}


def one_line_cause(error: dict[str, Any] | None) -> tuple[str, str]:
    """``(error name, one-line cause)`` from a Catch's ``{Error, Cause}``: a job's FailureReason or ExitMessage, a
    Lambda's errorMessage, or the cause as given."""
    error = error or {}
    name = str(error.get("Error") or "UnknownError")
    cause: Any = error.get("Cause") or ""
    try:
        parsed = json.loads(cause) if isinstance(cause, str) and cause.lstrip().startswith("{") else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        cause = _job_cause(parsed) or parsed.get("errorMessage") or parsed.get("Cause") or cause
        name = str(parsed.get("errorType") or name)
    line = " ".join(str(cause).split()) or name
    return bound_text(name, events.ERROR_MAX), bound_text(line, CAUSE_MAX)


def _job_cause(description: dict[str, Any]) -> str | None:
    """Why a job (a ``Describe*Job`` answer) ended. A failed processing job's FailureReason is generic on AWS
    ("AlgorithmError: See job logs for more information"): the container's own reason is its ExitMessage. A stopped
    job (e.g. at MaxRuntimeInSeconds) may have neither: then its status says what happened."""
    reason, message = description.get("FailureReason"), description.get("ExitMessage")
    if reason and message and str(message).strip() not in str(reason):
        return f"{reason}: {message}"
    if reason or message:
        return str(reason or message)
    status = description.get("TrainingJobStatus") or description.get("ProcessingJobStatus")
    if not status:
        return None
    job = description.get("TrainingJobName") or description.get("ProcessingJobName") or "the job"
    secondary = description.get("SecondaryStatus")
    return f"{job} {str(status).lower()}" + (f" ({secondary})" if secondary and secondary != status else "")


def _end_badly(stage: Stage, run: _RunView, settings: PipelineSettings, status: Status) -> dict[str, Any]:
    if status is Status.REJECTED and stage is Stage.EVALUATE:
        outcome = _evaluation_outcome(run, settings)
        error, cause = "GateFailed", outcome.message or "did not pass the gate"
    else:
        error, cause = one_line_cause(run.result("error"))
        outcome = StageOutcome(stage=stage, message=cause)
        if stage is Stage.VALIDATE and status is Status.REJECTED:
            summary = _validation_report_uris(run, settings)
            outcome = StageOutcome(stage=stage, message=cause, artifacts=summary)
    if stage is Stage.DEPLOY:
        outcome = outcome.model_copy(update={"notes": [*outcome.notes, *rollback_notes(run.state, one_line_cause)]})
    stopped = sagemaker.stop_running_jobs(job_requests.job_prefix(run.run_id)) if status is Status.FAILED else []
    if stopped:
        logger.warning("stopped jobs of the failed run", run_id=run.run_id, jobs=stopped)
        outcome = outcome.model_copy(update={"notes": [*outcome.notes, f"stopped {', '.join(stopped)}"]})
    _record(settings, run, stage, status, outcome, error=error)
    _finish_run(
        settings, run, status, f"{stage.value}: {cause}", error, outcome.metrics, outcome.artifacts, outcome.notes
    )
    return {"status": status.value, "stage": stage.value, "error": error, "cause": cause, "stopped_jobs": stopped}


def _validation_report_uris(run: _RunView, settings: PipelineSettings) -> dict[str, str]:
    """The validation report and summary, where written: a run rejected before its data was read (an unusable
    sidecar file, a missing object) has none, and its event must not link to them."""
    base = job_requests.run_uri(settings, run.run_id, "validation", "")
    uris = {"report": base + "report.json", "summary": base + "summary.txt"}
    return {name: uri for name, uri in uris.items() if _exists(uri)}


def _finish_run(
    settings: PipelineSettings,
    run: _RunView,
    status: Status,
    message: str | None,
    error: str | None,
    metrics: dict[str, Any],
    artifacts: dict[str, str],
    notes: list[str] | None = None,
) -> PipelineEvent:
    retention.mark_intermediates(settings, run.run_id)
    finished = _now()
    item = _item(settings, run, Stage.RUN)
    started = _started_at(item)
    event = _event(
        run,
        Stage.RUN,
        status,
        started_at=started,
        finished_at=finished,
        duration_s=round((finished - started).total_seconds(), 3) if started else None,
        metrics=metrics,
        artifacts=artifacts,
        message=message,
        error=error,
        notes=notes or [],
    )
    ledger.put_stage(
        settings.ledger_table,
        run.run_id,
        Stage.RUN.value,
        {
            "status": status.value,
            "finished_at": finished,
            "duration_s": event.duration_s,
            "message": event.message,
            "error": event.error,
        },
    )
    _publish_once(settings, run, event, item)
    return event


def _run_outcome_line(run: _RunView, settings: PipelineSettings) -> str:
    """Where the model went: the endpoint or imported model that answered, or why it was not deployed."""
    deployment = run.result("deploy").get("deployment") or {}
    if deployment.get("status") == "ready" and deployment.get("endpoint_name"):
        return f"deployed to endpoint {deployment['endpoint_name']} ({deployment.get('mode') or 'create'}d)"
    if deployment.get("status") == "ready" and deployment.get("imported_model_name"):
        return f"imported into Bedrock as {deployment['imported_model_name']}"
    skipped = ledger.get_stage(settings.ledger_table, run.run_id, Stage.DEPLOY.value) or {}
    reason = skipped.get("message")
    return f"model evaluated and registered; {reason}" if reason else "model evaluated and registered"


def _complete(run: _RunView, settings: PipelineSettings) -> dict[str, Any]:
    """Run Succeeded, with the headline numbers of every stage and every artifact, from the ledger."""
    metrics: dict[str, Any] = {}
    artifacts: dict[str, str] = {}
    for item in ledger.run_history(settings.ledger_table, run.run_id):
        stage = item.get("stage")
        if stage == Stage.RUN.value:
            continue
        for name, value in (item.get("metrics") or {}).items():
            key = f"{stage}.{name}"
            if isinstance(value, int | float | str | bool) and key.startswith(_HEADLINE_METRICS):
                metrics[key] = value
        artifacts |= {f"{stage}.{name}": uri for name, uri in (item.get("artifacts") or {}).items()}
    message = _run_outcome_line(run, settings)
    event = _finish_run(settings, run, Status.SUCCEEDED, message, None, metrics, artifacts)
    return {"status": event.status.value, "metrics": metrics, "artifacts": artifacts}
