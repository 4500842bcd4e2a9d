"""Environment configuration, validated once per cold start with pydantic-settings."""

from __future__ import annotations

from functools import cache
from typing import Literal, TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from tuneplane.errors import InvalidConfiguration
from tuneplane.models.validation import Severity

_Settings = TypeVar("_Settings", bound=BaseSettings)


_INSTANCE_TYPE = r"ml\.[a-z0-9-]+\.[a-z0-9]+"
_INSTANCE_TYPES = rf"^{_INSTANCE_TYPE}(,{_INSTANCE_TYPE})*$"
_DEPLOY_TARGET = r"(none|vllm|bedrock)"
# A secret's full ARN, random suffix included: a role may read only that ARN (template.yaml's AllowedPattern).
_SECRET_ARN = r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:[A-Za-z0-9/_+=.@-]+-[A-Za-z0-9]{6}$"


class RunLimitSettings(BaseSettings):
    """The stack's policy for one run, which a dataset's sidecar file may tighten but never loosen (see
    tuneplane.logic.run_limits): read by the Validate function, which enforces it before any job starts, and by the
    Stage function, which refuses to build a job request outside it (defence in depth). The template gives both
    functions the same values (template.yaml, ValidateFunction and StageFunction environments)."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    training_instance_types: str = Field(
        default="ml.g5.2xlarge",
        pattern=_INSTANCE_TYPES,
        description="TrainingInstanceType then FallbackTrainingInstanceTypes: the default list, tried in order.",
    )
    allowed_training_instance_types: str = Field(
        default="",
        pattern=rf"^$|{_INSTANCE_TYPES}",
        description="AllowedTrainingInstanceTypes: more types a sidecar may choose (the default list always may).",
    )
    max_training_steps: int = Field(default=20_000, ge=1, description="MaxTrainingSteps: cap on training.max_steps.")
    max_training_epochs: float = Field(
        default=10.0, gt=0, description="MaxTrainingEpochs: cap on training.num_train_epochs."
    )
    max_run_cost_usd: float = Field(default=100.0, gt=0, description="MaxRunCostUsd: the estimate's budget per run.")
    processing_instance_type: str = Field(default="ml.g5.2xlarge", pattern=rf"^{_INSTANCE_TYPE}$")
    use_spot: bool = True
    max_training_runtime_s: int = Field(default=24 * 3600, ge=1, le=28 * 24 * 3600)
    max_processing_runtime_s: int = Field(default=4 * 3600, ge=1, le=5 * 24 * 3600)
    max_seq_length: int = Field(default=2048, ge=16, description="MaxSeqLength: cap on training.max_seq_length.")
    quantize: bool = False
    min_improvement_over_base: float = 0.0
    min_score: float = Field(default=0.0, ge=0, le=1)
    # No template parameter (yet): the evaluate container's own defaults, the floor a sidecar may only tighten.
    max_regression_vs_production: float = Field(default=0.0, ge=0)
    min_stop_rate: float = Field(default=0.9, ge=0, le=1)
    deploy_target: str = Field(default="none", pattern=rf"^{_DEPLOY_TARGET}$")
    allowed_deploy_targets: str = Field(
        default="",
        pattern=rf"^$|^{_DEPLOY_TARGET}(,{_DEPLOY_TARGET})*$",
        description="AllowedDeployTargets: targets a sidecar may choose; empty: DeployTarget (none always may).",
    )
    # The Deploy function's ServeMode and MaxLoraRank (DeploySettings.serve_mode / max_lora_rank), so that an adapter
    # the vLLM server would refuse is rejected before training is paid for. None: the function's environment does
    # not have them (SERVE_MODE, MAX_LORA_RANK), and the rank is then checked at Deploy only.
    serve_mode: Literal["merged", "lora"] | None = Field(default=None, description="ServeMode (the Deploy side's).")
    max_lora_rank: int | None = Field(
        default=None, ge=1, le=512, description="MaxLoraRank: the server's max_lora_rank when ServeMode=lora."
    )

    # The evaluate job's regression set (RegressionSetS3Uri) and how far below the base a candidate may fall on it.
    regression_set_s3_uri: str = Field(default="", pattern=r"^$|^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/([^/]+/)+$")
    max_regression_drop: float = Field(default=0.1, ge=0, le=1, description="MaxRegressionDrop.")
    # How much of the primary metric a quantized candidate may lose against the merged model it came from.
    max_quantization_drop: float = Field(default=0.05, ge=0, le=1, description="MaxQuantizationDrop.")
    # The evaluation's control-plane graders (tuneplane/logic/grading.py): a judge on Bedrock (JudgeModelId) or
    # behind an OpenAI-compatible URL (JudgeEndpointUrl), and the Lambda graders a sidecar may name.
    judge_model_id: str = Field(
        default="",
        pattern=r"^$|^[a-z0-9-]+(\.[a-z0-9-]+)+(:[0-9]+)?$",
        description="JudgeModelId: a Bedrock foundation model or system inference profile id.",
    )
    judge_endpoint_url: str = Field(
        default="",
        pattern=r"^$|^https://[^\s@?#]+$|^http://(127\.0\.0\.1|localhost)(:\d+)?(/[^\s@?#]*)?$",
        description="JudgeEndpointUrl: an OpenAI-compatible base URL (https; plain http only on loopback).",
    )
    judge_price_per_million_tokens: float = Field(
        default=15.0, ge=0, description="JudgePricePerMillionTokens: input and output tokens alike (an upper bound)."
    )
    grader_function_arns: str = Field(default="", description="GraderFunctionArns: Lambda graders, comma-separated.")

    aws_region: str | None = Field(default=None, description="AWS_REGION, which Lambda sets: where the stack runs.")

    @property
    def judge_configured(self) -> bool:
        return bool(self.judge_model_id or self.judge_endpoint_url)

    @property
    def allowed_grader_functions(self) -> list[str]:
        return [arn.strip() for arn in self.grader_function_arns.split(",") if arn.strip()]

    def allowed_grader_function(self, function: str) -> str | None:
        """The entry of GraderFunctionArns that a sidecar's name or ARN designates (the one called: never the
        sidecar's own string), or None when the stack does not list it."""
        for allowed in self.allowed_grader_functions:
            if function == allowed or allowed.endswith(f":function:{function}"):
                return allowed
        return None

    @property
    def instance_types(self) -> list[str]:
        """The stack's default training instance types, in the order they are tried."""
        return self.training_instance_types.split(",")

    @property
    def allowed_instance_types(self) -> list[str]:
        """Every training instance type a run may use: the default list, then AllowedTrainingInstanceTypes."""
        extra = [t for t in self.allowed_training_instance_types.split(",") if t]
        return list(dict.fromkeys(self.instance_types + extra))

    @property
    def allowed_targets(self) -> list[str]:
        """Deploy targets a run may use: AllowedDeployTargets (default: DeployTarget), and "none" always."""
        listed = [t for t in self.allowed_deploy_targets.split(",") if t] or [self.deploy_target]
        return list(dict.fromkeys([*listed, "none"]))


class ValidateSettings(RunLimitSettings):
    """What the Validate Lambda reads from its environment (see template.yaml ValidateFunction)."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    data_bucket: str = Field(min_length=3)
    base_model_s3_uri: str = Field(pattern=r"^s3://[^/]+/.*$", description="Prefix holding tokenizer.json etc.")
    runs_prefix: str = "runs/"
    min_examples: int = Field(default=10, ge=1)
    max_invalid_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    pii_severity: Severity = Severity.WARNING
    pricing_table_s3_uri: str | None = Field(default=None, pattern=r"^s3://[^/]+/.+$")
    # For the deploy part of the cost estimate (the Deploy function reads the same variables).
    endpoint_instance_type: str = Field(default="ml.g5.2xlarge", pattern=rf"^{_INSTANCE_TYPE}$")
    endpoint_min_instances: int = Field(default=1, ge=1, le=100)
    bake_time_s: int = Field(default=300, ge=0, le=3600)
    lambda_tmp_bytes: int | None = Field(
        default=None,
        ge=512 * 1024 * 1024,
        description="The function's EphemeralStorage (its /tmp) in bytes: validation never counts on more, even where "
        "the disk has more free (the local cloud shares the host's).",
    )


def _from_environment(settings: type[_Settings], function: str) -> _Settings:
    try:
        return settings()
    except ValidationError as exc:
        raise InvalidConfiguration(f"{function} function environment: {exc}") from exc


@cache
def validate_settings() -> ValidateSettings:
    return _from_environment(ValidateSettings, "Validate")


class PipelineSettings(RunLimitSettings):
    """What the Stage Lambda reads from its environment (see template.yaml StageFunction): where runs live, the
    images and instance types of the SageMaker stages, and the stack's defaults that a sidecar file may override."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    stack_name: str = Field(min_length=1, description="Tags every job: the stack's IAM policies key on it.")
    data_bucket: str = Field(min_length=3)
    runs_prefix: str = "runs/"
    event_bus_name: str = Field(min_length=1)
    ledger_table: str = Field(min_length=3)
    base_model_s3_uri: str = Field(pattern=r"^s3://[^/]+/.*$")
    sagemaker_role_arn: str = Field(pattern=r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$")
    kms_key_arn: str | None = None
    train_image_uri: str = Field(min_length=1)
    merge_image_uri: str = Field(min_length=1)
    evaluate_image_uri: str = Field(min_length=1)
    quantize_image_uri: str | None = None
    validate_image_uri: str | None = Field(
        default=None, description="The validation job's image: datasets beyond the Validate Lambda go to it."
    )
    validation_instance_type: str = Field(default="ml.m5.2xlarge", pattern=rf"^{_INSTANCE_TYPE}$")
    max_validation_runtime_s: int = Field(
        default=6 * 3600, ge=3600, le=5 * 24 * 3600, description="The validation job's MaxRuntimeInSeconds."
    )
    job_wait_margin_s: int = Field(
        default=15 * 60, ge=0, description="The state machine waits this much longer than a job may run."
    )
    volume_size_gb: int = Field(default=100, ge=1, le=16384)
    primary_metric: str = "exact_match"
    max_capacity_wait_minutes: int = Field(
        default=360,
        ge=0,
        le=24 * 60,  # each round adds about 70 events to the execution's history, whose quota is 25,000
        description="How long a run waits, in all, when every training instance type it may use has no capacity or "
        "quota; 0: it fails at once.",
    )
    capacity_retry_interval_s: int = Field(
        default=900, ge=1, description="The wait between two rounds of the training instance types."
    )
    deploy_max_polls: int = Field(default=120, ge=1, description="DeployMaxPolls: Deploy's checks, 30 s apart.")
    deploy_bake_time_s: int = Field(default=300, ge=0, description="DeployBakeTimeSeconds.")

    @property
    def deploy_lease_s(self) -> int:
        """How long a run's hold on its dataset's deployment lasts unless the run ends first (it gives it back then):
        longer than the longest deployment (every poll, the bake, the smoke test and a rollback), so that a live
        deployment never loses it; only a run that died holding it keeps another waiting this long."""
        return self.deploy_max_polls * 30 + 2 * self.deploy_bake_time_s + 3600


@cache
def pipeline_settings() -> PipelineSettings:
    return _from_environment(PipelineSettings, "Stage")


class DeploySettings(BaseSettings):
    """What the Deploy Lambda reads from its environment (see template.yaml DeployFunction): how a passing model is
    served (vLLM on a SageMaker endpoint, or Bedrock Custom Model Import) and the guardrails of that deployment."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    stack_name: str = Field(min_length=1, description="Tags every resource: the stack's IAM policies key on it.")
    data_bucket: str = Field(min_length=3)
    runs_prefix: str = "runs/"
    base_model_s3_uri: str = Field(pattern=r"^s3://[^/]+/.*$")
    sagemaker_role_arn: str = Field(pattern=r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$")
    kms_key_arn: str | None = None
    serve_image_uri: str | None = Field(default=None, description="The vLLM SageMaker image (containers/serve).")
    serve_mode: Literal["merged", "lora"] = Field(
        default="merged", description="merged: the merged (or quantized) model; lora: the base model + the adapter."
    )
    endpoint_instance_type: str = Field(default="ml.g5.2xlarge", pattern=r"^ml\.[a-z0-9-]+\.[a-z0-9]+$")
    endpoint_min_instances: int = Field(default=1, ge=1, le=100)
    endpoint_max_instances: int = Field(default=2, ge=1, le=100)
    invocations_per_instance_target: float = Field(
        default=60.0, gt=0, description="Target tracking: SageMakerVariantInvocationsPerInstance (per minute)."
    )
    max_model_len: int = Field(default=2048, ge=16, description="The training sequence length, unless overridden.")
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    max_lora_rank: int = Field(default=64, ge=1, le=512, description="The server's max_lora_rank (vLLM LoRA).")
    canary_percent: int = Field(default=20, ge=1, le=50, description="Blue/green canary: share of capacity first.")
    bake_time_s: int = Field(default=300, ge=0, le=3600, description="Blue/green: watch the alarms this long.")
    latency_alarm_ms: int = Field(default=20_000, ge=1, description="Roll back when p90 model latency exceeds it.")
    max_polls: int = Field(default=120, ge=1, description="Wait/Describe rounds before giving up (30 s apart).")
    smoke_max_tokens: int = Field(default=64, ge=1, le=4096)
    bedrock_role_arn: str | None = Field(default=None, pattern=r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$")
    alarm_topic_arn: str | None = Field(
        default=None, description="The stack's alarm topic: the endpoint alarms' actions (Slack, email)."
    )
    bedrock_keep_models: int = Field(default=3, ge=1, le=100, description="Imported models kept per dataset.")
    tensor_parallel_size: int | None = Field(
        default=None, ge=1, le=64, description="GPUs per replica; default: every GPU of the endpoint instance."
    )


@cache
def deploy_settings() -> DeploySettings:
    return _from_environment(DeploySettings, "Deploy")


class StartRunSettings(BaseSettings):
    """What the StartRun Lambda reads from its environment (see template.yaml StartRunFunction)."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    state_machine_arn: str = Field(pattern=r"^arn:aws[a-z-]*:states:[a-z0-9-]+:[0-9]{12}:stateMachine:[A-Za-z0-9_-]+$")
    incoming_prefix: str = Field(default="incoming/", pattern=r"^[^/].*/$")
    max_sidecar_bytes: int = Field(default=64 * 1024, ge=1)
    event_bus_name: str | None = Field(
        default=None, description="Where an upload that starts nothing is answered with Run Rejected; None: logged."
    )
    sidecar_wait_s: float = Field(
        default=10.0, ge=0, le=20, description="How long a fresh dataset without a sidecar waits for one to arrive."
    )


@cache
def start_run_settings() -> StartRunSettings:
    return _from_environment(StartRunSettings, "StartRun")


class NotifySettings(BaseSettings):
    """What the Notify Lambda reads from its environment (see template.yaml NotifyFunction)."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    slack_webhook_secret_arn: str = Field(pattern=_SECRET_ARN)
    secret_max_age_s: int = Field(default=300, ge=0, description="How long the webhook URL is cached (Powertools).")
    console_region: str | None = Field(
        default=None,
        pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]+$",
        description="Region of the console links; default: the region in the execution ARN.",
    )
    slack_max_attempts: int = Field(default=3, ge=1, le=10, description="POSTs per message, the first included.")
    slack_max_wait_s: float = Field(default=30.0, ge=0, le=300, description="Total wait between attempts, at most.")
    slack_backoff_s: float = Field(default=1.0, ge=0, le=60, description="First backoff; doubles per attempt.")
    slack_timeout_s: float = Field(default=10.0, gt=0, le=60, description="Connect and read timeout of one POST.")
    chart_url_expiry_s: int = Field(
        default=12 * 3600,
        ge=60,
        le=7 * 24 * 3600,
        description="Lifetime of the presigned chart link (it also ends when the function's role session does).",
    )
    idempotency_table: str = Field(
        min_length=3,
        max_length=255,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="DynamoDB table of the idempotency records (Powertools): one per EventBridge event id.",
    )
    idempotency_expiry_s: int = Field(
        default=24 * 3600,
        ge=6 * 3600,
        le=7 * 24 * 3600,
        description="How long an event id stays posted; at least the 6 h EventBridge and Lambda may still retry for.",
    )


@cache
def notify_settings() -> NotifySettings:
    return _from_environment(NotifySettings, "Notify")


class GradeSettings(RunLimitSettings):
    """What the Grade Lambda reads from its environment (see template.yaml GradeFunction): where runs live, and the
    stack's judge and grader functions (RunLimitSettings)."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    data_bucket: str = Field(min_length=3)
    runs_prefix: str = "runs/"
    judge_endpoint_model: str = Field(
        default="",
        max_length=256,
        description="JudgeEndpointModel: the model name the JudgeEndpointUrl server serves.",
    )
    judge_endpoint_secret_arn: str = Field(
        default="",
        pattern=rf"^$|{_SECRET_ARN}",
        description="JudgeEndpointSecretArn: the secret holding the API key sent to JudgeEndpointUrl; empty: none.",
    )


@cache
def grade_settings() -> GradeSettings:
    return _from_environment(GradeSettings, "Grade")
