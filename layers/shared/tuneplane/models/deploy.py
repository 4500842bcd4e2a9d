"""What the Deploy function receives from the state machine and the deployment it hands back between its steps.

The state machine drives a bounded loop: ``begin`` -> (Wait -> ``poll``)* -> ``smoke``; any failure after ``begin``
goes through ``rollback``. The ``Deployment`` travels in the execution state (``$.deployment``) from one step to
the next, so every step is a pure function of its input plus what AWS reports.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Target = Literal["vllm", "bedrock"]


class ServingPlan(BaseModel):
    """How a model is served by vLLM on SageMaker: what is mounted and the ``SM_VLLM_*`` settings."""

    model_config = ConfigDict(frozen=True)

    served: Literal["merged", "quantized", "lora"]
    model_data_uri: str = Field(description="S3 prefix mounted at /opt/ml/model.")
    adapter_uri: str | None = Field(default=None, description="LoRA serving: the adapter's S3 prefix.")
    environment: dict[str, str]
    instance_type: str
    tensor_parallel_size: int = Field(ge=1)


class Deployment(BaseModel):
    """One deployment in progress: the names it created and where it stands."""

    model_config = ConfigDict(extra="forbid")

    target: Target
    status: Literal["pending", "ready"] = "pending"
    polls: int = Field(default=0, ge=0)
    max_polls: int = Field(ge=1)
    notes: list[str] = Field(default_factory=list)
    # vLLM on a SageMaker endpoint
    endpoint_name: str | None = None
    endpoint_config_name: str | None = None
    model_name: str | None = None
    mode: Literal["create", "update"] | None = None
    previous_endpoint_config_name: str | None = None
    plan: ServingPlan | None = None
    # Bedrock Custom Model Import
    import_job_arn: str | None = None
    imported_model_name: str | None = None
    imported_model_arn: str | None = None
    # the smoke test
    question: str | None = None
    expected: str | None = None
    answer: str | None = None
    smoke_latency_ms: float | None = None
    removed_models: list[str] = Field(default_factory=list, description="Older imported models deleted.")


class DeployRequest(BaseModel):
    """One call of the Deploy function."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["begin", "poll", "smoke", "rollback"]
    target: Target
    deployment: Deployment | None = None
    state: dict[str, Any] = Field(description="The execution's state ($): the run input and every stage's result.")
