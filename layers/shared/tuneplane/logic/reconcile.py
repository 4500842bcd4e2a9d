"""Runs whose execution ended without recording an outcome get one.

A pipeline execution records its run's outcome itself (CompleteRun, RecordFailure, RecordStop, RejectValidate). One
stopped by hand (StopExecution, the console), past its time limit, or failed where no state could record it
(FailedUnrecorded, a States.Runtime error) does not: its ledger said "started" for ever, and an upload of the same
content was answered "same content as run X" by a run that never finished. Two ways in:

- ``reconcile_ended_execution``: the Stage function hears Step Functions' "Step Functions Execution Status Change"
  events of the pipeline (rule ExecutionEnded, on the default bus);
- ``sweep_unended_runs``: those events are delivered on a best-effort basis (the EventBridge events reference for
  Step Functions), so an hourly schedule also looks at every run still "started" whose execution has ended.

Either records Run Failed (ExecutionAborted / ExecutionTimedOut / ExecutionFailed), stops the run's jobs and gives
back its deployment lease; a run with an outcome is left alone, so a redelivered event or a second sweep is harmless.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from tuneplane.adapters import ledger, sagemaker, stepfunctions
from tuneplane.config import PipelineSettings
from tuneplane.logic import job_requests, stages
from tuneplane.logic.stage_outcomes import RunView, one_line_cause
from tuneplane.models.events import Stage, Status
from tuneplane.models.pipeline import ExecutionStatusChange
from tuneplane.observability import logger

_EXECUTION_ERRORS = {"ABORTED": "ExecutionAborted", "TIMED_OUT": "ExecutionTimedOut", "FAILED": "ExecutionFailed"}


def reconcile_ended_execution(change: ExecutionStatusChange, settings: PipelineSettings) -> dict[str, Any]:
    """A pipeline execution ended (Step Functions' status-change event): when its run has no outcome recorded (the
    execution was stopped by hand, timed out, or failed where no state could record it), record one: Run Failed
    with what ended it, the run's jobs stopped, its deployment lease given back. Nothing else is touched, and a run
    with an outcome is left alone, so a redelivered event is harmless.

    Without this a stopped run stayed "started" in the ledger for ever, and an upload of the same content was
    answered "same content as run X" by a run that never finished."""
    if change.status not in _EXECUTION_ERRORS:
        return {"reconciled": False, "reason": f"execution {change.status}"}
    state = _execution_input(change)
    run_id = str(state.get("run_id") or change.name)
    item = ledger.get_stage(settings.ledger_table, run_id, Stage.RUN.value)
    if item is None:  # it ended before Init recorded it (StartValidate failed): nothing was started or claimed
        return {"reconciled": False, "reason": "the run was never recorded"}
    if item.get("status") in stages.OUTCOMES:
        return {"reconciled": False, "reason": f"the run already ended {item['status']}"}
    if item.get("execution_arn") and item["execution_arn"] != change.execution_arn:  # a hand-started copy ended
        return {"reconciled": False, "reason": f"the run belongs to execution {item['execution_arn']}"}
    run = RunView(
        {**state, "run_id": run_id, "bucket": item.get("bucket", ""), "key": item.get("dataset", "")},
        change.execution_arn,
    )
    error = _EXECUTION_ERRORS[change.status]
    _, cause = one_line_cause({"Error": change.error or error, "Cause": change.cause or ""})
    how = {
        "ABORTED": "was stopped (StopExecution, e.g. from the Step Functions console)",
        "TIMED_OUT": "ran past its time limit",
        "FAILED": "failed where no state could record it",
    }[change.status]
    stopped = sagemaker.stop_running_jobs(job_requests.job_prefix(run_id))
    open_stages = [
        stage
        for stage in ledger.run_history(settings.ledger_table, run_id)
        if stage.get("stage") != Stage.RUN.value
        and stage.get("status") in (Status.STARTED.value, Status.WAITING.value)
    ]
    for stage in open_stages:
        ledger.put_stage(
            settings.ledger_table, run_id, str(stage["stage"]), {"status": Status.FAILED.value, "error": error}
        )
    notes = [f"stopped {', '.join(stopped)}"] if stopped else []
    where = f" during {', '.join(str(stage['stage']) for stage in open_stages)}" if open_stages else ""
    message = f"the pipeline execution {how}{where}" + (f": {cause}" if change.error or change.cause else "")
    message += "; upload the dataset again to run it again (identical content is trained again)"
    stages.finish_run(settings, run, Status.FAILED, message, error, {}, {}, notes)
    logger.warning("run ended without an outcome: recorded", run_id=run_id, status=change.status, stopped=stopped)
    return {"reconciled": True, "run_id": run_id, "error": error, "stopped_jobs": stopped}


def _execution_input(change: ExecutionStatusChange) -> dict[str, Any]:
    try:
        state = json.loads(change.input) if change.input else {}
    except ValueError:
        return {}
    return state if isinstance(state, dict) else {}


# A run younger than this is not looked at by the sweep: its execution's own events are still on their way.
SWEEP_MIN_AGE = timedelta(minutes=30)


def sweep_unended_runs(settings: PipelineSettings, now: datetime | None = None) -> dict[str, Any]:
    """Reconcile every run still "started" (or waiting) whose execution has ended, in case its status-change event
    was lost (best-effort delivery). Returns what it found and did."""
    now = now or datetime.now(UTC)
    reconciled: list[str] = []
    looked = 0
    for status in (Status.STARTED.value, Status.WAITING.value):
        for item in ledger.runs_with_status(settings.ledger_table, status):
            started = _when(item.get("started_at"))
            if started is not None and now - started < SWEEP_MIN_AGE:
                continue
            arn = item.get("execution_arn")
            if not arn:
                continue
            looked += 1
            described = stepfunctions.describe_execution(str(arn))
            if described is None or described.get("status") == "RUNNING":
                continue
            change = ExecutionStatusChange.model_validate(
                {
                    "executionArn": str(arn),
                    "stateMachineArn": str(described.get("stateMachineArn", "")),
                    "name": str(described.get("name", item["run_id"])),
                    "status": described["status"],
                    "input": described.get("input"),
                    "error": described.get("error"),
                    "cause": described.get("cause"),
                }
            )
            if reconcile_ended_execution(change, settings).get("reconciled"):
                reconciled.append(str(item["run_id"]))
    logger.info("swept runs without an outcome", looked=looked, reconciled=reconciled)
    return {"looked": looked, "reconciled": reconciled}


def _when(value: Any) -> datetime | None:
    """A ledger timestamp (stored as ISO-8601 text) as an aware datetime; None when there is none."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
