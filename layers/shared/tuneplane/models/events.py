"""The one event the pipeline publishes on its bus: ``detail`` of every ``Stage *`` and ``Run *`` event.

Source ``tuneplane``; detail types are ``Stage Started``, ``Stage Succeeded``, ``Stage Failed``, ``Stage Skipped``,
``Run Succeeded``, ``Run Rejected`` and ``Run Failed``. Subscribers (the Slack notifier, dashboards, other teams'
rules) parse ``detail`` with ``PipelineEvent``; the README documents the fields.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

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
    RUN = "run"  # the whole run: Run Succeeded / Rejected / Failed


class Status(StrEnum):
    STARTED = "started"
    SUCCEEDED = "succeeded"
    SKIPPED = "skipped"
    REJECTED = "rejected"  # the data or the model was not good enough: the uploader acts, not the platform team
    FAILED = "failed"  # something broke: the platform team acts


_STAGE_DETAIL_TYPES = {
    Status.STARTED: "Stage Started",
    Status.SUCCEEDED: "Stage Succeeded",
    Status.SKIPPED: "Stage Skipped",
    Status.REJECTED: "Stage Failed",
    Status.FAILED: "Stage Failed",
}
_RUN_DETAIL_TYPES = {
    Status.SUCCEEDED: "Run Succeeded",
    Status.REJECTED: "Run Rejected",
    Status.FAILED: "Run Failed",
}
DETAIL_TYPES = frozenset({*_STAGE_DETAIL_TYPES.values(), *_RUN_DETAIL_TYPES.values()})

Number = int | float
MetricValue = int | float | str | bool | None


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
    message: str | None = Field(default=None, max_length=2000, description="One human line: headline or cause.")
    error: str | None = Field(default=None, max_length=256, description="The error name, on failure.")
    notes: list[str] = Field(default_factory=list, description="Things worth knowing, e.g. an instance fallback.")

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
