"""The stack owns the bill and the gates: what a dataset's sidecar file may change, and how far.

Anyone who may write to ``incoming/`` writes sidecar files, so a sidecar may choose among what the stack allows and
make checks stricter, but never spend more or check less than the stack's parameters say. The rule per setting:

training (TrainingOverrides)
  instance_types        each one among the stack's: TrainingInstanceType, FallbackTrainingInstanceTypes and
                        AllowedTrainingInstanceTypes.
  max_steps             at most MaxTrainingSteps.
  num_train_epochs      at most MaxTrainingEpochs (unset: the container's 3, or MaxTrainingEpochs if lower).
  max_seq_length        at most MaxSeqLength (the stack's default is also its cap).
  lora_r                at most MaxLoraRank when the stack serves adapters (ServeMode=lora) and the run may deploy to
                        vllm (unset: the container's 16): the Deploy stage would refuse the adapter after training.
  the rest              the dataset's choice (learning rate, LoRA shape, batch, ...): the run's cost estimate, checked
                        against MaxRunCostUsd and MaxTrainingRuntimeSeconds, accounts for what changes the bill.
evaluation (EvaluationOverrides): the promotion gate may only get stricter
  min_score, min_improvement_over_base, min_stop_rate     at least the stack's (MinScore, MinImprovementOverBase;
                                                          min_stop_rate: the evaluate container's 0.9).
  max_regression_vs_production                             at most the stack's (the container's 0.0).
  primary_metric, max_examples, max_new_tokens             the dataset's choice (what suits its task).
deploy.target           one of AllowedDeployTargets (default: just DeployTarget); "none" always.
validation (ValidationOptions)
  severity_overrides    per code over the stack's; pii_detected never below PiiSeverity; file-level errors never
                        become warnings (ValidationOptions); other line-level codes are the dataset's choice.
  min_examples          at least MinExamples.      max_invalid_fraction   at most MaxInvalidFraction.
  max_line_bytes, max_file_bytes, max_decompressed_bytes, max_decompression_ratio
                        at most the stack's (the defaults the Validate function is sized for).
  max_seq_length        at most the training max_seq_length; unset: that length (the token check uses what the run
                        trains with, not a separate validation default).
  epochs, instance_type, spot                      not settable: the estimate uses the run's real training settings.
  eval_fraction, max_eval_examples, seed, max_listed_problems   the dataset's choice.

The Validate stage rejects a run that breaks a rule (InvalidTrainingData, naming the sidecar and the setting) before
any job starts; the Stage function checks the same rules again before it builds a job request (defence in depth).
"""

from __future__ import annotations

from typing import Any

from tuneplane.config import RunLimitSettings
from tuneplane.errors import InvalidConfiguration
from tuneplane.logic.cost import DEFAULT_MAX_NEW_TOKENS, RunCaps, RunShape
from tuneplane.logic.grading import judge_tokens
from tuneplane.models.graders import Graders
from tuneplane.models.pipeline import EvaluationOverrides, TrainingOverrides
from tuneplane.models.validation import Code, Severity, ValidationOptions

DEFAULT_EPOCHS = 3.0  # containers/train/train.py num_train_epochs
DEFAULT_LORA_R = 16  # containers/train/train.py lora_r
ROWS_PER_STEP = 4  # containers/train/batch_plan.py: the auto batch, rows per optimizer step per rank
_STACK_ONLY_VALIDATION = {
    "epochs": "training.num_train_epochs",
    "instance_type": "training.instance_types",
    "spot": "the stack's UseSpotTraining",
}
_SEVERITY_RANK = {Severity.WARNING: 0, Severity.ERROR: 1}


def _number(value: float) -> str:
    return f"{value:g}"


def training_problems(
    training: TrainingOverrides, limits: RunLimitSettings, deploy_target: str | None = None
) -> list[str]:
    """Every way ``training`` exceeds the stack's caps (empty: within them). ``deploy_target``: where the run
    deploys, when known; None: any target the stack allows (the LoRA rank check then assumes vllm if allowed)."""
    problems: list[str] = []
    problems += lora_rank_problems(training, limits, deploy_target)
    allowed = limits.allowed_instance_types
    for instance_type in training.instance_types or []:
        if instance_type not in allowed:
            problems.append(
                f"training.instance_types: {instance_type} is not allowed by this stack "
                f"(allowed: {', '.join(allowed)})"
            )
    if training.max_steps is not None and training.max_steps > limits.max_training_steps:
        problems.append(
            f"training.max_steps: {training.max_steps} is over the stack's MaxTrainingSteps "
            f"{limits.max_training_steps}"
        )
    if training.num_train_epochs is not None and training.num_train_epochs > limits.max_training_epochs:
        problems.append(
            f"training.num_train_epochs: {_number(training.num_train_epochs)} is over the stack's MaxTrainingEpochs "
            f"{_number(limits.max_training_epochs)}"
        )
    if training.max_seq_length is not None and training.max_seq_length > limits.max_seq_length:
        problems.append(
            f"training.max_seq_length: {training.max_seq_length} is over the stack's MaxSeqLength "
            f"{limits.max_seq_length}"
        )
    return problems


def lora_rank_problems(
    training: TrainingOverrides, limits: RunLimitSettings, deploy_target: str | None = None
) -> list[str]:
    """An adapter rank the stack's vLLM server would refuse: with ServeMode=lora, the Deploy stage serves the base
    model plus the run's adapter and refuses a rank above MaxLoraRank (tuneplane.logic.deploy.serving), after the
    training, merge and evaluation were paid for; so it is refused here, before any job. Only when the run may be
    served that way: ServeMode=lora, MaxLoraRank known (the function's environment has it) and a vllm target."""
    if limits.serve_mode != "lora" or limits.max_lora_rank is None:
        return []
    may_serve = deploy_target == "vllm" if deploy_target is not None else "vllm" in limits.allowed_targets
    rank = training.lora_r or DEFAULT_LORA_R
    if not may_serve or rank <= limits.max_lora_rank:
        return []
    asked = f"{rank}" if training.lora_r else f"unset (the training container's default {rank})"
    return [
        f"training.lora_r: {asked} is over the stack's MaxLoraRank {limits.max_lora_rank}: with ServeMode=lora the "
        f"vllm endpoint would refuse the adapter after training (set lora_r <= {limits.max_lora_rank})"
    ]


def evaluation_problems(evaluation: EvaluationOverrides, limits: RunLimitSettings) -> list[str]:
    """Every threshold of ``evaluation`` that would loosen the stack's promotion gate."""
    # (setting, the sidecar's value, the stack's, the stack's name for it, whether the stack's is a floor or a ceiling)
    bounds = (
        ("min_score", evaluation.min_score, limits.min_score, "MinScore", "floor"),
        (
            "min_improvement_over_base",
            evaluation.min_improvement_over_base,
            limits.min_improvement_over_base,
            "MinImprovementOverBase",
            "floor",
        ),
        ("min_stop_rate", evaluation.min_stop_rate, limits.min_stop_rate, "min_stop_rate", "floor"),
        (
            "max_regression_drop",
            evaluation.max_regression_drop,
            limits.max_regression_drop,
            "MaxRegressionDrop",
            "ceiling",
        ),
        (
            "max_quantization_drop",
            evaluation.max_quantization_drop,
            limits.max_quantization_drop,
            "MaxQuantizationDrop",
            "ceiling",
        ),
        (
            "max_regression_vs_production",
            evaluation.max_regression_vs_production,
            limits.max_regression_vs_production,
            "max_regression_vs_production",
            "ceiling",
        ),
    )
    problems: list[str] = []
    for name, value, stack_value, stack_name, kind in bounds:
        if value is None or (value >= stack_value if kind == "floor" else value <= stack_value):
            continue
        problems.append(
            f"evaluation.{name}: {_number(value)} would loosen the stack's {stack_name} {_number(stack_value)} "
            f"(a sidecar may only {'raise' if kind == 'floor' else 'lower'} it)"
        )
    return problems + grader_problems(evaluation, limits)


def grader_problems(evaluation: EvaluationOverrides, limits: RunLimitSettings) -> list[str]:
    """What the stack does not allow or cannot do of the sidecar's graders and thresholds: a judge without a judge
    model, a Lambda grader the stack does not list, a threshold on a metric no grader computes."""
    graders = evaluation.graders or Graders()
    problems: list[str] = []
    if graders.judge is not None and not limits.judge_configured:
        problems.append("evaluation.graders.judge: this stack has no judge (JudgeModelId or JudgeEndpointUrl)")
    if graders.custom is not None and limits.allowed_grader_function(graders.custom.function) is None:
        allowed = ", ".join(limits.allowed_grader_functions) or "none"
        problems.append(
            f"evaluation.graders.custom.function: {graders.custom.function} is not one of this stack's "
            f"GraderFunctionArns ({allowed})"
        )
    chosen = limits.allowed_grader_function(graders.custom.function) if graders.custom is not None else None
    region = chosen.split(":")[3] if chosen and chosen.startswith("arn:") else None
    if region and limits.aws_region and region != limits.aws_region:
        problems.append(
            f"evaluation.graders.custom.function: {chosen} is in {region}, this stack in {limits.aws_region}: Lambda "
            "invokes functions of its own Region only"
        )
    for metric in evaluation.thresholds or {}:
        if (problem := metric_problem(metric, graders, limits)) is not None:
            problems.append(f"evaluation.thresholds.{metric}: {problem}")
    primary = evaluation.primary_metric
    if primary is not None and (problem := metric_problem(primary, graders, limits)) is not None:
        problems.append(f"evaluation.primary_metric: {primary} {problem}")
    if primary is not None and primary.startswith("pattern_"):
        problems.append(
            f"evaluation.primary_metric: {primary} measures checks the sidecar itself defines, so it cannot carry the "
            "stack's MinScore and MinImprovementOverBase; use it in evaluation.thresholds"
        )
    return problems


def metric_problem(metric: str, graders: Graders, limits: RunLimitSettings) -> str | None:
    """Why no grader of this run would compute ``metric`` (None: one does, or the job always does): the gate would
    otherwise fail on it only after training."""
    pattern = graders.pattern
    classification = graders.classification
    needs: dict[str, tuple[bool, str]] = {
        "judge_score": (graders.judge is not None, "needs evaluation.graders.judge"),
        "judge_win_rate": (
            graders.judge is not None and graders.judge.pairwise,
            "needs evaluation.graders.judge with pairwise comparisons (pairwise: true)",
        ),
        "custom_score": (graders.custom is not None, "needs evaluation.graders.custom"),
        "pattern_pass_rate": (pattern is not None and pattern.configured(), "needs evaluation.graders.pattern"),
        "pattern_regex": (pattern is not None and pattern.regex is not None, "needs evaluation.graders.pattern.regex"),
        "pattern_must_contain": (
            pattern is not None and bool(pattern.must_contain),
            "needs evaluation.graders.pattern.must_contain",
        ),
        "pattern_must_not_contain": (
            pattern is not None and bool(pattern.must_not_contain),
            "needs evaluation.graders.pattern.must_not_contain",
        ),
        "regression_pass_rate": (
            bool(limits.regression_set_s3_uri),
            "needs a regression set, and this stack has none (RegressionSetS3Uri)",
        ),
    }
    labelled = classification is not None and classification.enabled and bool(classification.labels)
    for name in ("classification_accuracy", "classification_macro_f1"):
        needs[name] = (
            labelled,
            "needs evaluation.graders.classification.labels (without them the job decides from the references "
            "whether they are labels)",
        )
    computed, why = needs.get(metric, (True, ""))
    return None if computed else why


def deploy_problems(target: str | None, limits: RunLimitSettings) -> list[str]:
    if target is None or target in limits.allowed_targets:
        return []
    return [f"deploy.target: {target} is not allowed by this stack (allowed: {', '.join(limits.allowed_targets)})"]


def effective_seq_len(training: TrainingOverrides, limits: RunLimitSettings) -> int:
    """The max_seq_length the training job runs with (job_requests passes it as a hyperparameter)."""
    return training.max_seq_length or limits.max_seq_length


def effective_epochs(training: TrainingOverrides, limits: RunLimitSettings) -> float:
    """The epochs the training job runs (when max_steps is unset): the sidecar's, else the container's default,
    never above MaxTrainingEpochs."""
    return training.num_train_epochs or min(DEFAULT_EPOCHS, limits.max_training_epochs)


def rows_per_device_step(training: TrainingOverrides) -> int:
    """Packed rows per optimizer step on one GPU: per-device batch x accumulation. Auto (unset) resolves on the GPU
    (containers/train/batch_plan.py) to at most ROWS_PER_STEP rows; the estimate takes that upper bound."""
    batch = training.per_device_batch_size or ROWS_PER_STEP
    return batch * (training.gradient_accumulation_steps or max(1, ROWS_PER_STEP // batch))


def validation_options(
    stack: dict[str, Any], sidecar: dict[str, Any], training_seq_len: int
) -> tuple[dict[str, Any], list[str]]:
    """The ValidationOptions fields of a run (``stack`` first, the sidecar's on top as far as the rules allow) and
    every sidecar setting that breaks a rule. ``sidecar`` must already be valid ValidationOptions fields."""
    problems = [
        f"validation.{name}: set by the stack from the run's settings, not by a sidecar (use {instead})"
        for name, instead in _STACK_ONLY_VALIDATION.items()
        if name in sidecar
    ]
    parsed = ValidationOptions.model_validate(sidecar)
    if "min_examples" in sidecar and parsed.min_examples < stack["min_examples"]:
        problems.append(
            f"validation.min_examples: {parsed.min_examples} would loosen the stack's MinExamples "
            f"{stack['min_examples']} (a sidecar may only raise it)"
        )
    ceilings = {
        "max_invalid_fraction": "MaxInvalidFraction",
        "max_line_bytes": "max_line_bytes",
        "max_file_bytes": "max_file_bytes",
        "max_decompressed_bytes": "max_decompressed_bytes",
        "max_decompression_ratio": "max_decompression_ratio",
    }
    defaults = ValidationOptions()
    for name, stack_name in ceilings.items():
        ceiling = stack.get(name, getattr(defaults, name))
        if name in sidecar and getattr(parsed, name) > ceiling:
            problems.append(
                f"validation.{name}: {_number(getattr(parsed, name))} would loosen the stack's {stack_name} "
                f"{_number(ceiling)} (a sidecar may only lower it)"
            )
    if "max_seq_length" in sidecar and parsed.max_seq_length > training_seq_len:
        problems.append(
            f"validation.max_seq_length: {parsed.max_seq_length} is over the training max_seq_length "
            f"{training_seq_len} the run uses (set training.max_seq_length; the token check follows it)"
        )
    stack_severity: dict[Code, Severity] = {
        Code(k): Severity(v) for k, v in stack.get("severity_overrides", {}).items()
    }
    severities = dict(stack_severity)
    for code, severity in parsed.severity_overrides.items():
        floor = stack_severity.get(code)
        if code is Code.PII_DETECTED and floor is not None and _SEVERITY_RANK[severity] < _SEVERITY_RANK[floor]:
            problems.append(
                f"validation.severity_overrides.{code.value}: {severity.value} would loosen the stack's PiiSeverity "
                f"{floor.value} (a sidecar may only make it stricter)"
            )
            continue
        severities[code] = severity
    merged = {**stack, **{name: sidecar[name] for name in sidecar if name not in _STACK_ONLY_VALIDATION}}
    merged["severity_overrides"] = severities
    merged["max_seq_length"] = parsed.max_seq_length if "max_seq_length" in sidecar else training_seq_len
    return merged, problems


def run_shape(
    training: TrainingOverrides,
    limits: RunLimitSettings,
    *,
    tokens_per_epoch: int,
    parameters: int | None,
    deploy_target: str,
    endpoint_instance_type: str,
    endpoint_instances: int,
    bake_time_s: int,
    evaluation: EvaluationOverrides | None = None,
    eval_examples: int | None = None,
    eval_tokens_per_example: float | None = None,
) -> RunShape:
    """What the run will do, from the stack's settings and the sidecar's training and evaluation sections.

    ``eval_examples`` (the eval split's size) and ``eval_tokens_per_example`` (its mean tokens, an upper bound of a
    prompt's), when given, price the evaluate stage from the data: the evaluate job generates for at most
    ``evaluation.max_examples`` of them (0 or unset: all), up to ``evaluation.max_new_tokens`` each."""
    evaluation = evaluation or EvaluationOverrides()
    if eval_examples is not None and evaluation.max_examples:
        eval_examples = min(eval_examples, evaluation.max_examples)
    return RunShape(
        tokens_per_epoch=tokens_per_epoch,
        parameters=parameters,
        instance_type=(training.instance_types or limits.instance_types)[0],
        spot=limits.use_spot,
        epochs=effective_epochs(training, limits),
        max_steps=training.max_steps,
        rows_per_device_step=rows_per_device_step(training),
        seq_len=effective_seq_len(training, limits),
        processing_instance_type=limits.processing_instance_type,
        # The Quantize stage runs only where its AWQ model would be served (pipeline.asl.json's QuantizeWanted).
        quantize=limits.quantize and not (deploy_target == "vllm" and limits.serve_mode == "lora"),
        deploy_target=deploy_target,
        endpoint_instance_type=endpoint_instance_type,
        endpoint_instances=endpoint_instances,
        bake_time_s=bake_time_s,
        eval_examples=eval_examples,
        eval_tokens_per_example=eval_tokens_per_example,
        max_new_tokens=evaluation.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
        max_processing_runtime_s=limits.max_processing_runtime_s,
        judge_tokens=judge_tokens(evaluation, eval_examples),
        judge_price_per_million_tokens=limits.judge_price_per_million_tokens,
    )


def run_caps(limits: RunLimitSettings) -> RunCaps:
    return RunCaps(max_run_cost_usd=limits.max_run_cost_usd, max_training_runtime_s=limits.max_training_runtime_s)


def require_deploy_target(target: object, limits: RunLimitSettings) -> None:
    """The Stage function's check before a deployment starts: the target the run resolved to is one the stack
    allows (defence in depth behind the Validate stage)."""
    if not isinstance(target, str) or target not in limits.allowed_targets:
        allowed = ", ".join(limits.allowed_targets)
        raise InvalidConfiguration(f"deploy target {target!r} is not allowed by this stack (allowed: {allowed})")
