"""How a run starts: the dataset's sidecar settings, the execution input StartRun builds, and what it returns."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tuneplane.models.pipeline import DeployOverrides, EvaluationOverrides, TrainingOverrides
from tuneplane.models.stage import RUN_ID_PATTERN

SIDECAR_SUFFIX = ".tuneplane.json"
DATASET_SUFFIXES = (".jsonl.gz", ".jsonl")  # longest first: "x.jsonl.gz" is dataset "x", not "x.jsonl"


class DatasetSettings(BaseModel):
    """The sidecar file ``incoming/<dataset>.tuneplane.json``: per-dataset settings. Unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    validation: dict[str, Any] = Field(
        default_factory=dict,
        description="ValidationOptions fields (min_examples, max_seq_length, ...); the Validate stage checks them.",
    )
    eval_file: str | None = Field(
        default=None,
        pattern=r"^incoming/[^/].*\.jsonl(\.gz)?$",
        max_length=1024,
        description="Key of a separate evaluation set under incoming/, e.g. incoming/support.eval.jsonl.",
    )
    training: TrainingOverrides = Field(
        default_factory=TrainingOverrides, description="Training hyperparameters and instance types for this dataset."
    )
    evaluation: EvaluationOverrides = Field(
        default_factory=EvaluationOverrides, description="The promotion gate's thresholds for this dataset."
    )
    deploy: DeployOverrides = Field(
        default_factory=DeployOverrides, description="Where this dataset's model is deployed (the stack's default)."
    )
    rerun: bool = Field(
        default=False,
        description="Train again even when an earlier run had the same examples and settings (otherwise the run "
        "ends 'Run Skipped: same content as run X').",
    )


class ObjectVersion(BaseModel):
    """The uploaded object an S3 ``Object Created`` event names."""

    model_config = ConfigDict(frozen=True)

    bucket: str
    key: str
    version_id: str | None = None
    etag: str = ""
    sequencer: str | None = None


class RunInput(BaseModel):
    """The pipeline execution's input (statemachines/pipeline.asl.json reads it; ValidateRequest is its view).

    Every field is always present (``null`` when unset) so that JSONPath references in the ASL never fail.
    """

    model_config = ConfigDict(frozen=True)

    run_id: str = Field(pattern=RUN_ID_PATTERN)
    bucket: str
    key: str
    version_id: str | None
    eval_key: str | None = None
    eval_version_id: str | None = Field(
        default=None, description="The eval file's version current at run start: the one the run evaluates on."
    )
    overrides: dict[str, Any] = Field(default_factory=dict, description="The sidecar's validation settings.")
    training: dict[str, Any] = Field(default_factory=dict, description="The sidecar's training settings.")
    evaluation: dict[str, Any] = Field(default_factory=dict, description="The sidecar's evaluation settings.")
    deploy_target: Literal["none", "vllm", "bedrock"] | None = Field(
        default=None, description="The sidecar's deploy.target; null: the stack's DeployTarget."
    )
    sidecar_key: str | None = Field(default=None, description="The sidecar file that applied, if any.")
    sidecar_version_id: str | None = None
    sequencer: str | None = Field(
        default=None, description="The upload's S3 event sequencer: orders the uploads of one dataset (newest wins)."
    )
    rerun: bool = Field(default=False, description="The sidecar's rerun: train even the same content again.")
    sidecar_error: str | None = Field(
        default=None, description="Why the sidecar file is unusable; the Validate stage rejects the run with it."
    )


class StartRunResult(BaseModel):
    """What the StartRun function did with one event."""

    status: Literal["started", "duplicate", "ignored", "rejected"]
    run_id: str | None = None
    execution_arn: str | None = None
    key: str
    version_id: str | None = None
    sidecar_error: str | None = None
    problem: str | None = Field(default=None, description="Why an upload started no run (status rejected).")
