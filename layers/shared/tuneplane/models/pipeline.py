"""The pipeline's per-dataset training and evaluation settings, and what the Stage function receives and returns."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from tuneplane.models.events import Stage
from tuneplane.models.graders import ContainerMetric, GraderMetric, Graders

INSTANCE_TYPE_PATTERN = r"^ml\.[a-z0-9-]+\.[a-z0-9]+$"


class TrainingOverrides(BaseModel):
    """The sidecar's ``training`` section: hyperparameters of the training container (containers/train/train.py),
    and the instance types to try in order. Anything unset keeps the stack's default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_train_epochs: float | None = Field(default=None, gt=0, le=100)
    max_steps: int | None = Field(default=None, ge=1, le=1_000_000)
    learning_rate: float | None = Field(default=None, gt=0, lt=1)
    lora_r: int | None = Field(default=None, ge=1, le=512)
    lora_alpha: int | None = Field(default=None, ge=1, le=4096)
    lora_dropout: float | None = Field(default=None, ge=0, lt=1)
    per_device_batch_size: int | None = Field(default=None, ge=1, le=1024)
    gradient_accumulation_steps: int | None = Field(default=None, ge=1, le=1024)
    max_seq_length: int | None = Field(default=None, ge=16, le=131072)
    warmup_ratio: float | None = Field(default=None, ge=0, lt=1)
    qlora: bool | None = None
    gradient_checkpointing: bool | None = None
    seed: int | None = Field(default=None, ge=0)
    save_steps: int | None = Field(default=None, ge=1)
    logging_steps: int | None = Field(default=None, ge=1)
    keep_best: bool | None = None
    early_stopping_patience: int | None = Field(default=None, ge=0, le=1000)
    instance_types: list[Annotated[str, StringConstraints(pattern=INSTANCE_TYPE_PATTERN)]] | None = Field(
        default=None,
        min_length=1,
        max_length=5,
        description="Training instance types, tried in order when one has no capacity.",
    )

    @model_validator(mode="after")
    def _early_stopping_keeps_the_best(self) -> TrainingOverrides:
        if self.early_stopping_patience and self.keep_best is False:
            raise ValueError(
                "early_stopping_patience needs keep_best: early stopping hands on the best checkpoint, not the last"
            )
        return self

    def hyperparameters(self) -> dict[str, str]:
        """SageMaker hyperparameters are strings; the container parses them back into its typed config."""
        values = self.model_dump(exclude_none=True, exclude={"instance_types"})
        return {name: str(value).lower() if isinstance(value, bool) else str(value) for name, value in values.items()}


class EvaluationOverrides(BaseModel):
    """The sidecar's ``evaluation`` section: the promotion gate's thresholds (containers/evaluate/evaluate.py), the
    graders that score answers beyond exact match and thresholds on any of their metrics (models/graders.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    primary_metric: ContainerMetric | None = None
    min_score: float | None = Field(default=None, ge=0, le=1)
    min_improvement_over_base: float | None = Field(default=None, ge=-1, le=1)
    max_regression_vs_production: float | None = Field(default=None, ge=0, le=1)
    min_stop_rate: float | None = Field(default=None, ge=0, le=1)
    max_examples: int | None = Field(default=None, ge=0)
    max_new_tokens: int | None = Field(default=None, ge=1, le=8192)
    max_regression_drop: float | None = Field(default=None, ge=0, le=1)
    max_quantization_drop: float | None = Field(default=None, ge=0, le=1)
    graders: Graders | None = None
    thresholds: dict[GraderMetric, Annotated[float, Field(ge=0, le=1)]] | None = Field(
        default=None, max_length=20, description="A minimum for the candidate on each metric named."
    )

    def arguments(self) -> dict[str, str]:
        """The evaluate job's arguments; graders and thresholds go to it as a file (graders.json: a job argument
        holds at most 256 characters)."""
        values = self.model_dump(exclude_none=True, exclude={"graders", "thresholds"})
        return {name: str(value) for name, value in values.items()}


class DeployOverrides(BaseModel):
    """The sidecar's ``deploy`` section: where this dataset's model goes, instead of the stack's DeployTarget."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: Literal["none", "vllm", "bedrock"] | None = Field(
        default=None, description="none: register only; vllm: a SageMaker endpoint; bedrock: Custom Model Import."
    )


class StageRequest(BaseModel):
    """One call of the Stage function from the state machine: record a stage's start, end, skip or failure, the
    run's completion, its clean stop (``stop``: superseded by a newer upload, or the same content as before), a
    wait for training capacity (``queue``), or the validation job of a dataset beyond the Validate Lambda
    (``hand_off``)."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["start", "finish", "skip", "reject", "fail", "complete", "stop", "queue", "hand_off"]
    stage: Stage
    execution_arn: str | None = None
    reason: str | None = Field(default=None, max_length=500, description="Why a stage is skipped.")
    state: dict[str, Any] = Field(description="The execution's state ($): the run input and every stage's result.")


class GradeRequest(BaseModel):
    """One grading pass of the Grade function (logic/grading.py): the execution state, and the example to resume at
    (``next`` of the previous pass's answer; 0 at first)."""

    model_config = ConfigDict(extra="forbid")

    execution_arn: str | None = None
    state: dict[str, Any] = Field(description="The execution's state ($): the run input and every stage's result.")
    next: int = Field(default=0, ge=0)


class GradeProgress(BaseModel):
    """What a grading pass returns: whether every example is graded (then grading.json is written), and where the
    next pass starts."""

    done: bool
    next: int = Field(ge=0)
    graded: int = Field(ge=0, description="Examples graded by this pass.")


class JobSpec(BaseModel):
    """What ``start`` returns for a SageMaker job stage: the Create*Job request and how long to wait for it."""

    request: dict[str, Any]
    timeout_s: int = Field(ge=1)
    attempt: int = Field(default=0, ge=0)
    instance_type: str
    has_fallback: bool = False


class StageOutcome(BaseModel):
    """What ``finish`` returns: the stage's key numbers and artifacts (and, for evaluate, the gate's verdict)."""

    stage: Stage
    metrics: dict[str, Any] = Field(default_factory=dict)
    artifacts: dict[str, str] = Field(default_factory=dict)
    passed: bool | None = None
    message: str | None = None
    notes: list[str] = Field(default_factory=list)


class ExecutionStatusChange(BaseModel):
    """The ``detail`` of Step Functions' "Step Functions Execution Status Change" event (on the default bus) that
    the Stage function hears for a pipeline execution that ended without its own outcome (aborted, timed out)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    execution_arn: str = Field(alias="executionArn")
    state_machine_arn: str = Field(alias="stateMachineArn")
    name: str
    status: Literal["RUNNING", "SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED", "PENDING_REDRIVE"]
    input: str | None = Field(default=None, description="The execution input (JSON), when small enough to include.")
    error: str | None = None
    cause: str | None = None
