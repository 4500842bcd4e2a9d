"""The one event the pipeline publishes on its bus: ``detail`` of every ``Stage *`` and ``Run *`` event.

Source ``tuneplane``; detail types are ``Stage Started``, ``Stage Waiting`` (no capacity or quota for the training
job yet: it is tried again), ``Stage Succeeded``, ``Stage Failed``, ``Stage Skipped``, ``Run Succeeded``, ``Run
Rejected``, ``Run Failed``, ``Run Superseded`` (a newer upload of the dataset replaced the run before it deployed)
and ``Run Skipped`` (the same content as an earlier run). Subscribers (the Slack notifier, dashboards, other teams'
rules) parse ``detail`` with ``PipelineEvent``; docs/events.md documents the fields.

Its free text (``message``, ``error``, ``notes``, text ``metrics``) can quote the data: a validation problem, the
smoke test's question and answer, a job's failure reason. So an event masks the PII in it (``redact``: the run's own
identifiers are left alone) and bounds it instead of refusing it: an event that cannot be built is a stage that
cannot be recorded (a 2,001-character message made a deployed, serving model's run end Failed).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tuneplane.logic.validation.pii import redact
from tuneplane.models.stage import RUN_ID_PATTERN

EVENT_SOURCE = "tuneplane"


class Stage(StrEnum):
    VALIDATE = "validate"
    TRAIN = "train"
    MERGE = "merge"
    QUANTIZE = "quantize"
    EVALUATE = "evaluate"
    REGISTER = "register"
    DEPLOY = "deploy"
    RUN = "run"  # the whole run: Run Succeeded / Rejected / Failed / Superseded / Skipped


class Status(StrEnum):
    STARTED = "started"
    SUCCEEDED = "succeeded"
    SKIPPED = "skipped"
    REJECTED = "rejected"  # the data or the model was not good enough: the uploader acts, not the platform team
    FAILED = "failed"  # something broke: the platform team acts
    WAITING = "waiting"  # a stage only: no capacity or quota now, tried again later (not an outcome)
    SUPERSEDED = "superseded"  # a run only: a newer upload of the dataset replaced this one before it deployed


_STAGE_DETAIL_TYPES = {
    Status.STARTED: "Stage Started",
    Status.WAITING: "Stage Waiting",
    Status.SUCCEEDED: "Stage Succeeded",
    Status.SKIPPED: "Stage Skipped",
    Status.REJECTED: "Stage Failed",
    Status.FAILED: "Stage Failed",
}
_RUN_DETAIL_TYPES = {
    Status.SUCCEEDED: "Run Succeeded",
    Status.REJECTED: "Run Rejected",
    Status.FAILED: "Run Failed",
    Status.SUPERSEDED: "Run Superseded",
    Status.SKIPPED: "Run Skipped",  # the same content as an earlier run: nothing trained
}
DETAIL_TYPES = frozenset({*_STAGE_DETAIL_TYPES.values(), *_RUN_DETAIL_TYPES.values()})

Number = int | float
MetricValue = int | float | str | bool | None
MESSAGE_MAX = 2000
ERROR_MAX = 256
NOTE_MAX = 1000
METRIC_TEXT_MAX = 2000


def run_identifiers(run_id: Any) -> tuple[str, ...]:
    """The run id and the hash every job, model and endpoint config name of the run carries (job_requests.job_prefix):
    hex digits that are no phone number, whatever ``redact`` would think."""
    if not isinstance(run_id, str) or not run_id:
        return ()
    return run_id, hashlib.sha256(run_id.encode()).hexdigest()[:10]


def _redacted(value: Any, limit: int, keep: tuple[str, ...]) -> Any:
    return redact(value, limit, keep) if isinstance(value, str) else value


class PipelineEvent(BaseModel):
    """What happened to one stage of one run (or to the run as a whole, ``stage == "run"``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str = Field(pattern=RUN_ID_PATTERN, description="The execution name; one per uploaded object version.")
    stage: Stage
    status: Status
    dataset: str = Field(description="The uploaded object's key, e.g. incoming/support.jsonl.")
    bucket: str
    version_id: str | None = None
    execution_arn: str | None = Field(default=None, description="For the console link.")
    started_at: datetime | None = Field(default=None, description="When the stage (or run) started.")
    finished_at: datetime | None = Field(default=None, description="Set once the stage (or run) ended.")
    duration_s: float | None = Field(default=None, ge=0)
    metrics: dict[str, MetricValue] = Field(
        default_factory=dict,
        description="The stage's key numbers: examples, tokens, cost estimate; loss, tokens/s; scores vs base.",
    )
    artifacts: dict[str, str] = Field(default_factory=dict, description="Name -> s3:// URI of what the stage wrote.")
    message: str | None = Field(
        default=None, max_length=MESSAGE_MAX, description="One human line: headline or cause (PII masked)."
    )
    error: str | None = Field(default=None, max_length=ERROR_MAX, description="The error name, on failure.")
    notes: list[str] = Field(default_factory=list, description="Things worth knowing, e.g. an instance fallback.")

    @model_validator(mode="before")
    @classmethod
    def _mask_and_bound_text(cls, data: Any) -> Any:
        """PII masked and lengths bounded (with a marker) in every free-text field, before the checks run."""
        if not isinstance(data, dict):
            return data
        keep = run_identifiers(data.get("run_id"))
        data = dict(data)
        for name, limit in (("message", MESSAGE_MAX), ("error", ERROR_MAX)):
            data[name] = _redacted(data.get(name), limit, keep)
        if isinstance(data.get("notes"), list):
            data["notes"] = [_redacted(note, NOTE_MAX, keep) for note in data["notes"]]
        if isinstance(data.get("metrics"), dict):
            data["metrics"] = {name: _redacted(v, METRIC_TEXT_MAX, keep) for name, v in data["metrics"].items()}
        return data

    @property
    def detail_type(self) -> str:
        if self.stage is Stage.RUN:
            if self.status not in _RUN_DETAIL_TYPES:
                raise ValueError(f"a run cannot be {self.status.value}")
            return _RUN_DETAIL_TYPES[self.status]
        return _STAGE_DETAIL_TYPES[self.status]

    def entry(self, bus_name: str) -> dict[str, Any]:
        """The ``PutEvents`` entry for this event."""
        return {
            "EventBusName": bus_name,
            "Source": EVENT_SOURCE,
            "DetailType": self.detail_type,
            "Detail": self.model_dump_json(exclude_none=True),
        }
