"""The Stage function's logic: every stage's start, end, skip, rejection or failure is recorded in the run ledger
and published as one ``PipelineEvent``; a job stage's start also returns its SageMaker job request.

The state machine calls this with its whole state (``$``): the run input plus each stage's result so far
(``validation``, ``train``, ``merge``, ``quantize``, ``evaluation``, ``register``; ``error`` on the failure path).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from tuneplane.adapters import events, ledger, s3, sagemaker
from tuneplane.config import PipelineSettings
from tuneplane.errors import CapacityUnavailable, ForeignExecution, InvalidConfiguration, RunAlreadyEnded
from tuneplane.logic import dataset_runs, job_requests, retention, run_limits
from tuneplane.logic.grading import job_graders
from tuneplane.logic.registry import registration
from tuneplane.logic.rollback_report import rollback_notes
from tuneplane.logic.stage_outcomes import (
    RunView,
    evaluation_outcome,
    exists,
    one_line_cause,
    outcome_of,
)
from tuneplane.models.events import PipelineEvent, Stage, Status, run_identifiers
from tuneplane.models.pipeline import JobSpec, StageOutcome, StageRequest
from tuneplane.models.stage import ValidateHandoff
from tuneplane.observability import logger

_JOB_STAGES = {Stage.TRAIN, Stage.MERGE, Stage.QUANTIZE, Stage.EVALUATE}
_NEWEST_ONLY = {Stage.TRAIN, Stage.REGISTER, Stage.DEPLOY}  # what an upload superseded by a newer one must not do
_STOPS = {"RunSuperseded": Status.SUPERSEDED, "SameContent": Status.SKIPPED}
# The run outcomes: a run that has one is over (the reconciler leaves it alone, a redriven execution stops).
OUTCOMES = frozenset(
    {Status.SUCCEEDED.value, Status.FAILED.value, Status.REJECTED.value, Status.SUPERSEDED.value, Status.SKIPPED.value}
)
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
    run = RunView(state, request.execution_arn)
    action = request.action
    if action == "start" and request.stage is Stage.DEPLOY:  # never deploy where the stack does not allow
        run_limits.require_deploy_target(run.result("pipeline").get("deploy_target"), settings)
    ignored = _refuse_a_foreign_execution(action, run, settings)
    if ignored is not None:
        return ignored
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
        if request.stage is Stage.VALIDATE:  # SameContent (Run Skipped) first: a skipped upload supersedes nothing
            sequencer = run.state.get("sequencer")
            _claim_content(run, settings, sequencer)
            dataset_runs.record_upload(settings.ledger_table, run.bucket, run.key, run.run_id, sequencer)
        return outcome.model_dump(mode="json")
    if action == "skip":
        reason = request.reason or f"{request.stage.value} not configured"
        _record(settings, run, request.stage, Status.SKIPPED, StageOutcome(stage=request.stage, message=reason))
        return {"skipped": True, "reason": reason}
    if action == "complete":
        return _complete(run, settings)
    if action == "stop":
        return _stop(run, settings)
    if action == "queue":
        return _queue_for_capacity(run, settings)
    if action == "hand_off":
        return _hand_off(run, settings)
    return _end_badly(request.stage, run, settings, Status.REJECTED if action == "reject" else Status.FAILED)


def _refuse_a_foreign_execution(action: str, run: RunView, settings: PipelineSettings) -> dict[str, Any] | None:
    """A copy of a run's input started by hand must not train, deploy or end a run another execution owns: its
    starts are refused (ForeignExecution), its other calls answered "ignored"; None for the run's own execution."""
    owner = _owner(settings, run)
    if not owner or not run.execution_arn or owner == run.execution_arn:
        return None
    if action == "start":
        raise ForeignExecution(
            f"run {run.run_id} belongs to execution {owner}; this execution ({run.execution_arn}) does nothing. "
            "To run the dataset again, upload it again"
        )
    logger.warning("ignored a call of an execution that does not own the run", run_id=run.run_id, owner=owner)
    return {"status": "ignored", "reason": f"run {run.run_id} belongs to execution {owner}"}


def _owner(settings: PipelineSettings, run: RunView) -> str | None:
    """The execution that began the run (recorded by StartValidate), if it began."""
    owner = _item(settings, run, Stage.RUN).get("execution_arn")
    return str(owner) if owner else None


def _now() -> datetime:
    return datetime.now(UTC)


def _event(run: RunView, stage: Stage, status: Status, **fields: Any) -> PipelineEvent:
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
            },
            keep=run_identifiers(run.run_id),
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
    run: RunView,
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


def _item(settings: PipelineSettings, run: RunView, stage: Stage) -> dict[str, Any]:
    return ledger.get_stage(settings.ledger_table, run.run_id, stage.value) or {}


def _started_at(item: dict[str, Any]) -> datetime | None:
    started = item.get("started_at")
    return datetime.fromisoformat(started) if isinstance(started, str) else None


def _record(
    settings: PipelineSettings,
    run: RunView,
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


def _start(stage: Stage, run: RunView, settings: PipelineSettings) -> dict[str, Any]:
    now = _now()
    ended = (_item(settings, run, Stage.RUN).get("status") or "") if stage is not Stage.VALIDATE else ""
    if ended in OUTCOMES:  # a redriven execution (RedriveExecution) must not train or deploy a run that ended
        raise RunAlreadyEnded(
            f"run {run.run_id} ended {ended} already: a redriven execution does not run it again; upload the dataset "
            "again to start a new run"
        )
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
    if stage in _NEWEST_ONLY:  # an older upload's run stops before it spends or deploys (RunSuperseded)
        dataset_runs.ensure_newest(settings.ledger_table, run.bucket, run.key, run.run_id, run.state.get("sequencer"))
    if stage is Stage.DEPLOY:
        dataset_runs.take_deploy_lease(
            settings.ledger_table, run.bucket, run.key, run.run_id, settings.deploy_lease_s
        )  # DeploymentInProgress: the state machine waits and asks again
    spec = job_spec(stage, run, settings) if stage in _JOB_STAGES else None
    if stage is Stage.EVALUATE:
        bucket, key = s3.parse_s3_uri(job_requests.graders_input_uri(settings, run.run_id) + "graders.json")
        s3.put_json(bucket, key, job_graders(run.evaluation()))
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
        # The package holds the weights its quality metrics were measured on, as the endpoint serves them: the AWQ
        # model when the run made one, else the merged model.
        quantized = (run.outcome("quantize").get("artifacts") or {}).get("quantized")
        merged = (run.outcome("merge").get("artifacts") or {}).get("merged")
        return registration(run.run_id, run.key) | {"model_data": quantized or merged}
    return spec.model_dump(mode="json") if spec else {}


def _hand_off(run: RunView, settings: PipelineSettings) -> dict[str, Any]:
    """The Processing job that validates a dataset the Validate Lambda handed on (logic/validation_engine.py); the
    ledger's validate item says so, with why."""
    try:
        handoff = ValidateHandoff.model_validate(run.result("validation").get("summary"))
    except ValidationError as exc:
        raise InvalidConfiguration(
            f"hand_off: the Validate result is not a hand-off ({exc.error_count()} errors)"
        ) from exc
    spec = job_requests.validate_job(
        settings, run.run_id, handoff.input_uri, handoff.data_bytes, handoff.gzip, handoff.max_data_bytes
    )
    fields = {
        "engine": "processing",
        "job_name": _job_name(spec),
        "instance_type": spec.instance_type,
        "handed_on_because": handoff.reason,
    }
    ledger.put_stage(settings.ledger_table, run.run_id, Stage.VALIDATE.value, fields)
    logger.info("validation job requested", run_id=run.run_id, job_name=fields["job_name"], reason=handoff.reason)
    return spec.model_dump(mode="json")


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


def job_spec(stage: Stage, run: RunView, settings: PipelineSettings) -> JobSpec:
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
    # The candidate in the form the endpoint will serve (deploy/serving.py): with ServeMode=lora on a vLLM endpoint,
    # the base model with the run's adapter applied at request time; else the quantized model when the run made one,
    # judged against the merged model it came from too; else the merged model.
    if settings.serve_mode == "lora" and _deploy_target(run) == "vllm":
        adapter = run.result("train").get("model_artifacts")
        if not adapter:
            raise InvalidConfiguration("evaluate: ServeMode=lora, but the training result has no model artifacts")
        return job_requests.evaluate_job(
            settings, run.run_id, None, str(data["eval_uri"]), run.evaluation(), adapter_uri=str(adapter)
        )
    quantized = (run.outcome("quantize").get("artifacts") or {}).get("quantized")
    return job_requests.evaluate_job(
        settings,
        run.run_id,
        str(quantized or merged),
        str(data["eval_uri"]),
        run.evaluation(),
        unquantized_uri=merged if quantized else None,
    )


def _deploy_target(run: RunView) -> Any:
    """Where the run deploys: the sidecar's deploy.target (the execution input's, as QuantizeWanted and Deploy read
    it), else the stack's (``$.pipeline``; UseDatasetDeployTarget copies the sidecar's there only at Deploy)."""
    return run.state.get("deploy_target") or run.result("pipeline").get("deploy_target")


def _end_badly(stage: Stage, run: RunView, settings: PipelineSettings, status: Status) -> dict[str, Any]:
    if one_line_cause(run.result("error"))[0] == RunAlreadyEnded.__name__:  # its outcome stands: record nothing
        return {"status": "ended", "stage": stage.value, "error": RunAlreadyEnded.__name__}
    if status is Status.REJECTED and stage is Stage.EVALUATE:
        outcome = evaluation_outcome(run, settings)
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
    finish_run(
        settings, run, status, f"{stage.value}: {cause}", error, outcome.metrics, outcome.artifacts, outcome.notes
    )
    return {"status": status.value, "stage": stage.value, "error": error, "cause": cause, "stopped_jobs": stopped}


def _validation_report_uris(run: RunView, settings: PipelineSettings) -> dict[str, str]:
    """The validation report and summary, where written: a run rejected before its data was read (an unusable
    sidecar file, a missing object) has none, and its event must not link to them."""
    base = job_requests.run_uri(settings, run.run_id, "validation", "")
    uris = {"report": base + "report.json", "summary": base + "summary.txt"}
    return {name: uri for name, uri in uris.items() if exists(uri)}


def finish_run(
    settings: PipelineSettings,
    run: RunView,
    status: Status,
    message: str | None,
    error: str | None,
    metrics: dict[str, Any],
    artifacts: dict[str, str],
    notes: list[str] | None = None,
) -> PipelineEvent:
    retention.mark_intermediates(settings, run.run_id)
    dataset_runs.release_deploy_lease(settings.ledger_table, run.bucket, run.key, run.run_id)
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
    recorded = ledger.record_outcome(
        settings.ledger_table,
        run.run_id,
        {
            "status": status.value,
            "finished_at": finished,
            "duration_s": event.duration_s,
            "message": event.message,
            "error": event.error,
        },
        OUTCOMES,
    )
    if not recorded:  # another path ended the run first (a stop racing the run's last state): its outcome stands
        logger.warning("the run ended already: this outcome is not published", run_id=run.run_id, status=status.value)
        return event
    _publish_once(settings, run, event, item)
    return event


def _run_outcome_line(run: RunView, settings: PipelineSettings) -> str:
    """Where the model went: the endpoint or imported model that answered, or why it was not deployed."""
    deployment = run.result("deploy").get("deployment") or {}
    if deployment.get("status") == "ready" and deployment.get("endpoint_name"):
        return f"deployed to endpoint {deployment['endpoint_name']} ({deployment.get('mode') or 'create'}d)"
    if deployment.get("status") == "ready" and deployment.get("imported_model_name"):
        return f"imported into Bedrock as {deployment['imported_model_name']}"
    skipped = ledger.get_stage(settings.ledger_table, run.run_id, Stage.DEPLOY.value) or {}
    reason = skipped.get("message")
    return f"model evaluated and registered; {reason}" if reason else "model evaluated and registered"


def _complete(run: RunView, settings: PipelineSettings) -> dict[str, Any]:
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
    event = finish_run(settings, run, Status.SUCCEEDED, message, None, metrics, artifacts)
    return {"status": event.status.value, "metrics": metrics, "artifacts": artifacts}


def _claim_content(run: RunView, settings: PipelineSettings, sequencer: str | None) -> None:
    """Raise ``SameContent`` when an earlier run trained the same examples with the same settings (and is serving
    or still running): what this run would produce exists already."""
    summary = run.result("validation").get("summary") or {}
    if not summary.get("train_sha256"):
        return
    identity = {
        "base_model": settings.base_model_s3_uri,
        "training": run.state.get("training") or {},
        "evaluation": run.state.get("evaluation") or {},
        "deploy_target": _deploy_target(run),
        "quantize": run.result("pipeline").get("quantize"),
    }
    digest = dataset_runs.content_digest(
        {"train": summary.get("train_sha256"), "eval": summary.get("eval_sha256")}, identity
    )
    dataset_runs.claim_content(
        settings.ledger_table, run.bucket, run.key, run.run_id, digest, bool(run.state.get("rerun")), sequencer
    )


def _stop(run: RunView, settings: PipelineSettings) -> dict[str, Any]:
    """End the run cleanly, without a model of its own: superseded by a newer upload of the dataset (Run
    Superseded) or the same content as an earlier run (Run Skipped). Nothing failed, so nothing is stopped or
    blamed; the cause says which run to look at instead."""
    error, cause = one_line_cause(run.result("error"))
    status = _STOPS.get(error)
    if status is None:
        raise InvalidConfiguration(f"Stage function: stop is for {', '.join(_STOPS)}, not {error}")
    event = finish_run(settings, run, status, cause, None, {}, {})
    return {"status": event.status.value, "cause": cause}


def _queue_for_capacity(run: RunView, settings: PipelineSettings) -> dict[str, Any]:
    """Every training instance type of the run had no capacity or quota (the account's SageMaker quota is shared by
    all runs): wait and try the list again, visibly (Stage Waiting, the ledger's train item), as long as the stack's
    MaxCapacityWaitMinutes allows in all; then ``CapacityUnavailable`` fails the run for the platform team. The
    waits are counted (interval x waits), not read off a clock, so a retried call cannot stretch the bound.
    """
    _, cause = one_line_cause(run.result("error"))
    item = _item(settings, run, Stage.TRAIN)
    waits = int(item.get("capacity_waits") or 0)
    interval = settings.capacity_retry_interval_s
    allowed_s = settings.max_capacity_wait_minutes * 60
    if (waits + 1) * interval > allowed_s:
        raise CapacityUnavailable(
            f"no capacity or quota for any of the run's training instance types after waiting "
            f"{waits * interval / 60:.0f} min, as long as the stack's MaxCapacityWaitMinutes "
            f"{settings.max_capacity_wait_minutes} allows; last: {cause}"
        )
    now = _now()
    since = item.get("waiting_since") or now
    ledger.put_stage(
        settings.ledger_table,
        run.run_id,
        Stage.TRAIN.value,
        {"status": Status.WAITING.value, "waiting_since": since, "capacity_waits": waits + 1, "waiting_for": cause},
    )
    left_min = (allowed_s - (waits + 1) * interval) / 60
    message = (
        f"no capacity or quota for the run's training instance types now; trying them again in {interval / 60:.0f} "
        f"min (wait {waits + 1}; up to {left_min:.0f} min more): {cause}"
    )
    event = _event(run, Stage.TRAIN, Status.WAITING, started_at=_started_at(item), message=message)
    _publish_once(settings, run, event, item, occurrence=waits)
    return {"wait_s": interval, "waits": waits + 1}
