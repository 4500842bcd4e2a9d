"""State-machine payloads of the Validate stage: what it receives and the small summary it returns."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$"


class ValidateRequest(BaseModel):
    """The execution input (or the part the state machine passes on)."""

    model_config = ConfigDict(extra="ignore")

    run_id: str = Field(pattern=RUN_ID_PATTERN)
    bucket: str = Field(min_length=3)
    key: str = Field(min_length=1)
    version_id: str | None = None
    eval_key: str | None = Field(default=None, description="Optional eval file in the same bucket.")
    eval_version_id: str | None = Field(default=None, description="The eval file's version pinned at run start.")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="ValidationOptions fields from the dataset's sidecar file."
    )
    training: dict[str, Any] | None = Field(
        default=None, description="The sidecar's training settings: checked against the stack's caps."
    )
    evaluation: dict[str, Any] | None = Field(
        default=None, description="The sidecar's evaluation thresholds: they may only tighten the gate."
    )
    deploy_target: str | None = Field(default=None, description="The sidecar's deploy.target: one the stack allows.")
    sidecar_key: str | None = Field(default=None, description="The dataset's sidecar file, if it has one.")
    sidecar_error: str | None = Field(
        default=None, description="Set by StartRun when the sidecar file is unusable: the run is rejected."
    )


class ValidateHandoff(BaseModel):
    """What the Validate Lambda answers for a dataset beyond its reach: the state machine's ValidateEngine choice then
    runs the same validation on a SageMaker Processing job (containers/validate) over the copy under `input_uri`."""

    run_id: str
    engine: Literal["processing"] = "processing"
    reason: str = Field(description="Why the Lambda could not: its disk, memory or time, with the numbers.")
    input_uri: str = Field(description="s3:// prefix holding job.json and the pinned copies (train/, eval/, model/).")
    data_bytes: int = Field(ge=0, description="The dataset files' sizes as stored (compressed when gzip).")
    gzip: bool = False
    max_data_bytes: int | None = Field(
        default=None, ge=0, description="max_decompressed_bytes: the most data a gzip file may expand to."
    )


class PrepareValidationRequest(BaseModel):
    """The Validate function's call that pins a handed-off dataset's inputs for its Processing job."""

    model_config = ConfigDict(extra="forbid")

    prepare: Literal[True]
    state: ValidateRequest


class CollectValidationRequest(BaseModel):
    """The Validate function's second call for a handed-off dataset, once its Processing job has ended."""

    model_config = ConfigDict(extra="forbid")

    collect: Literal[True]
    state: ValidateRequest


class ValidateSummary(BaseModel):
    """Small by design: Step Functions payloads are capped at 256 KB; the full report lives in S3."""

    run_id: str
    engine: Literal["lambda", "processing"] = Field(
        default="lambda", description="What validated it: the Validate Lambda, or a Processing job (a large dataset)."
    )
    passed: bool
    dataset_uri: str
    format: str | None
    lines_read: int
    examples_valid: int
    train_examples: int
    eval_examples: int
    eval_source: Literal["eval_file", "held_out", "none"]
    train_uri: str | None
    eval_uri: str | None
    report_uri: str
    summary_uri: str
    errors: int
    warnings: int
    tokens_total: int | None = None
    estimated_training_hours: float | None = None
    estimated_cost_usd: float | None = Field(default=None, description="Training only.")
    estimated_run_cost_usd: float | None = Field(
        default=None, description="Training, merge, (quantize,) evaluate and deploy; priced stages only."
    )
    max_run_cost_usd: float | None = Field(
        default=None, description="The stack's MaxRunCostUsd it was checked against."
    )
    cost_warnings: list[str] = Field(
        default_factory=list, description="What the estimate could not price (an instance type not in the table)."
    )
    train_sha256: str | None = Field(default=None, description="Of train.jsonl as written: the run's content.")
    eval_sha256: str | None = Field(default=None, description="Of eval.jsonl as written.")
    headline: str
