"""What a finished stage reports: its key numbers, artifacts and message, from its result in the execution state (and
its report in S3), and the one-line cause of a failure. The Stage function (``logic/stages.py``) records and publishes
them."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import ValidationError

from tuneplane.adapters import events, s3, sagemaker
from tuneplane.bounds import bound_text
from tuneplane.config import PipelineSettings
from tuneplane.errors import DatasetNotFound, InvalidConfiguration
from tuneplane.logic import job_requests
from tuneplane.logic.grading import masked_worst
from tuneplane.models.events import Stage
from tuneplane.models.pipeline import EvaluationOverrides, StageOutcome, TrainingOverrides

CAUSE_MAX = 500
# Shown for every model when computed (the gate's thresholds are shown too): the graders beyond exact match.
SHOWN_GRADER_METRICS: tuple[str, ...] = ("classification_accuracy", "classification_macro_f1", "json_schema_match")
SHOWN_GRADER_METRICS += ("pattern_pass_rate", "judge_score", "judge_win_rate", "custom_score")
_Overrides = TypeVar("_Overrides", TrainingOverrides, EvaluationOverrides)


class RunView:
    """The parts of the execution state every action uses."""

    def __init__(self, state: dict[str, Any], execution_arn: str | None) -> None:
        try:
            self.run_id = str(state["run_id"])
            self.bucket = str(state["bucket"])
            self.key = str(state["key"])
        except KeyError as exc:
            raise InvalidConfiguration(f"Stage function: the state has no {exc.args[0]!r}") from exc
        self.version_id = state.get("version_id")
        self.execution_arn = execution_arn
        self.state = state

    def result(self, name: str) -> dict[str, Any]:
        value = self.state.get(name)
        return value if isinstance(value, dict) else {}

    def outcome(self, stage: str) -> dict[str, Any]:
        """What the Stage function recorded for a finished stage (``recorded.<stage>.outcome``), or {}."""
        recorded = (self.result("recorded").get(stage) or {}) if isinstance(self.result("recorded"), dict) else {}
        value = recorded.get("outcome") if isinstance(recorded, dict) else None
        return value if isinstance(value, dict) else {}

    @property
    def data(self) -> dict[str, str | None]:
        summary = self.result("validation").get("summary") or {}
        return {"train_uri": summary.get("train_uri"), "eval_uri": summary.get("eval_uri")}

    @property
    def train_attempt(self) -> int:
        """0 for the first training attempt; the state machine counts up on each capacity fallback."""
        return int(self.result("pipeline").get("train_attempt") or 0)

    def training(self) -> TrainingOverrides:
        return _overrides(TrainingOverrides, self.state.get("training"), "training")

    def evaluation(self) -> EvaluationOverrides:
        return _overrides(EvaluationOverrides, self.state.get("evaluation"), "evaluation")


def _overrides(model: type[_Overrides], raw: Any, section: str) -> _Overrides:
    try:
        return model.model_validate(raw or {})
    except ValidationError as exc:
        raise InvalidConfiguration(f"sidecar {section}: {exc}") from exc


def read_json(uri: str) -> dict[str, Any]:
    document = s3.read_json_object(uri)
    if document is None:
        raise DatasetNotFound(f"{uri} does not exist")
    return document


def outcome_of(stage: Stage, run: RunView, settings: PipelineSettings) -> StageOutcome:
    """A finished stage's key numbers and artifacts, from its result in the state (and its report in S3)."""
    if stage is Stage.VALIDATE:
        summary = run.result("validation").get("summary") or {}
        metrics = {
            "examples": summary.get("examples_valid"),
            "train_examples": summary.get("train_examples"),
            "eval_examples": summary.get("eval_examples"),
            "tokens": summary.get("tokens_total"),
            "warnings": summary.get("warnings"),
            "estimated_training_hours": summary.get("estimated_training_hours"),
            "estimated_cost_usd": summary.get("estimated_cost_usd"),
        }
        artifacts = {
            name: summary[f"{name}_uri"]
            for name in ("report", "summary", "train", "eval")
            if summary.get(f"{name}_uri")
        }
        notes = [f"cost estimate incomplete: {warning}" for warning in summary.get("cost_warnings") or []]
        if summary.get("engine") == "processing":
            notes.append("validated by a SageMaker Processing job: the dataset was beyond the Validate Lambda")
        return StageOutcome(
            stage=stage, metrics=present(metrics), artifacts=artifacts, message=summary.get("headline"), notes=notes
        )
    if stage is Stage.TRAIN:
        train = run.result("train")
        described = sagemaker.describe_training_job(str(train["job_name"])) if train.get("job_name") else {}
        final = {m["MetricName"]: m["Value"] for m in described.get("FinalMetricDataList") or [] if "MetricName" in m}
        metrics = {
            "final_train_loss": final.get("train_loss"),
            # the adapter handed on: the best step's eval loss when the job chose one, else the last evaluation's
            "final_eval_loss": final.get("best_eval_loss", final.get("eval_loss")),
            "tokens_per_second": final.get("tokens_per_second"),
            "gpu_memory_gb": final.get("gpu_memory_gb"),
            "best_step": final.get("best_step"),
            "last_step": final.get("last_step"),
            "steps_saved": final.get("steps_saved"),
            "instance_type": train.get("instance_type"),
            "billable_seconds": described.get("BillableTimeInSeconds"),
            "attempt": run.train_attempt + 1,
        }
        artifacts = {"adapter": str(train.get("model_artifacts") or "")}
        notes = [f"trained on {train.get('instance_type')} after {run.train_attempt} capacity fallback(s)"]
        notes = (notes if run.train_attempt else []) + training_choice_notes(final)
        return StageOutcome(
            notes=notes,
            stage=stage,
            metrics=present(metrics),
            artifacts=present(artifacts),
            message=train.get("job_name"),
        )
    if stage is Stage.MERGE:
        merged = job_requests.run_uri(settings, run.run_id, "merged", "")
        report = s3.read_json_object(merged + "merge_report.json") or {}
        verdict = report.get("bedrock_custom_model_import") or {}
        metrics = {
            "max_abs_logit_diff": ((report.get("verification") or {}).get("merged_vs_base_plus_adapter") or {}).get(
                "max_abs"
            ),
            "bedrock_importable": verdict.get("compatible"),
            "wall_time_s": report.get("wall_time_s"),
        }
        return StageOutcome(stage=stage, metrics=present(metrics), artifacts={"merged": merged})
    if stage is Stage.QUANTIZE:
        quantized = job_requests.run_uri(settings, run.run_id, "quantized", "")
        return StageOutcome(stage=stage, artifacts={"quantized": quantized})
    if stage is Stage.EVALUATE:
        return evaluation_outcome(run, settings)
    if stage is Stage.REGISTER:
        arn = run.result("register").get("ModelPackageArn")
        return StageOutcome(stage=stage, artifacts=present({"model_package": arn}))
    if stage is Stage.DEPLOY:
        return deploy_outcome(run)
    return StageOutcome(stage=stage, metrics=present(run.result(stage.value)))


def training_choice_notes(final: dict[str, float]) -> list[str]:
    """What the training job chose (its best_step, last_step and steps_saved metric lines), said in words."""
    notes = []
    best, last, saved = final.get("best_step"), final.get("last_step"), final.get("steps_saved")
    if best is not None and last is not None:
        which = "the last step" if best == last else f"not the last step ({last:.0f})"
        notes.append(f"handed on the adapter of step {best:.0f}, the lowest eval loss: {which}")
    if saved and last is not None:
        notes.append(f"early stopping ended training after step {last:.0f}: {saved:.0f} planned steps not paid for")
    return notes


def deploy_outcome(run: RunView) -> StageOutcome:
    """Where the model serves and what it answered to the smoke test's question."""
    deployment = run.result("deploy").get("deployment") or {}
    plan = deployment.get("plan") or {}
    metrics = {
        "target": deployment.get("target"),
        "endpoint_name": deployment.get("endpoint_name"),
        "mode": deployment.get("mode"),
        "served": plan.get("served"),
        "instance_type": plan.get("instance_type"),
        "model_name": deployment.get("imported_model_name") or deployment.get("model_name"),
        "smoke_test_prompt": deployment.get("question"),
        "smoke_test_answer": deployment.get("answer"),
        "smoke_test_expected": deployment.get("expected"),
        "smoke_test_latency_ms": deployment.get("smoke_latency_ms"),
    }
    artifacts = {
        "endpoint": deployment.get("endpoint_name"),
        "endpoint_config": deployment.get("endpoint_config_name"),
        "imported_model": deployment.get("imported_model_arn"),
    }
    where = deployment.get("endpoint_name") or deployment.get("imported_model_name")
    return StageOutcome(
        stage=Stage.DEPLOY,
        metrics=present(metrics),
        artifacts=present(artifacts),
        message=f"{where} answered: {deployment.get('answer')}" if deployment.get("answer") else None,
        notes=[str(note) for note in deployment.get("notes") or []],
    )


def exists(uri: str) -> bool:
    bucket, key = s3.parse_s3_uri(uri)
    return s3.read_if_exists(bucket, key, 1) is not None


def evaluation_outcome(run: RunView, settings: PipelineSettings) -> StageOutcome:
    """The gate's verdict: the evaluate job's (its metrics and thresholds) joined with the Grade function's (the
    judge's and a custom grader's, grading.json) when the run has such graders."""
    folder = job_requests.run_uri(settings, run.run_id, "evaluation", "")
    report = read_json(folder + "evaluation.json")
    graders = run.evaluation().graders
    graded = graders is not None and graders.control_plane()
    grading = read_json(folder + "grading.json") if graded else {}
    primary = str(report.get("primary_metric") or "exact_match")
    passed = bool(report.get("passed")) and (not graded or grading.get("passed") is True)
    metrics: dict[str, Any] = {"primary_metric": primary, "passed": passed, "examples": report.get("examples")}
    scores: dict[str, dict[str, Any]] = {}
    for source in (report.get("metrics") or {}, grading.get("metrics") or {}):
        for model, values in source.items():
            scores.setdefault(model, {}).update(values)
    shown = (primary, "token_f1", "stop_rate", *SHOWN_GRADER_METRICS, *(run.evaluation().thresholds or {}))
    for model, values in scores.items():
        for name in dict.fromkeys(shown):
            if values.get(name) is not None:
                metrics[f"{model}.{name}"] = values[name]
    reasons = [str(reason) for reason in [*(report.get("reasons") or []), *(grading.get("reasons") or [])]]
    artifacts = {"evaluation": folder + "evaluation.json"}
    if grading:
        artifacts["grading"] = folder + "grading.json"
        judge = (grading.get("graders") or {}).get("judge") or {}
        if judge.get("cost_usd") is not None:
            metrics["judge_cost_usd"] = judge["cost_usd"]
    if report.get("chart"):
        artifacts["chart"] = folder + "evaluation.png"
    message = "passed the gate" if passed else "did not pass the gate: " + "; ".join(reasons)
    # The job's own warnings: what quantization cost in each grader's terms, a model that does not stop.
    notes = [str(warning) for warning in report.get("warnings") or []]
    notes += [f"worst by the judge: {line}" for line in masked_worst(grading)] if grading else []
    notes += [f"judge: {warning}" for warning in grading.get("warnings") or []]
    return StageOutcome(
        stage=Stage.EVALUATE, metrics=metrics, artifacts=artifacts, passed=passed, message=message, notes=notes
    )


def present(values: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value not in (None, "")}


def one_line_cause(error: dict[str, Any] | None) -> tuple[str, str]:
    """``(error name, one-line cause)`` from a Catch's ``{Error, Cause}``: a job's FailureReason or ExitMessage, a
    Lambda's errorMessage, or the cause as given."""
    error = error or {}
    name = str(error.get("Error") or "UnknownError")
    cause: Any = error.get("Cause") or ""
    try:
        parsed = json.loads(cause) if isinstance(cause, str) and cause.lstrip().startswith("{") else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        cause = job_cause(parsed) or parsed.get("errorMessage") or parsed.get("Cause") or cause
        name = str(parsed.get("errorType") or name)
    line = " ".join(str(cause).split()) or name
    return bound_text(name, events.ERROR_MAX), bound_text(line, CAUSE_MAX)


def job_cause(description: dict[str, Any]) -> str | None:
    """Why a job (a ``Describe*Job`` answer) ended. A failed processing job's FailureReason is generic on AWS
    ("AlgorithmError: See job logs for more information"): the container's own reason is its ExitMessage. A stopped
    job (e.g. at MaxRuntimeInSeconds) may have neither: then its status says what happened."""
    reason, message = description.get("FailureReason"), description.get("ExitMessage")
    if reason and message and str(message).strip() not in str(reason):
        return f"{reason}: {message}"
    if reason or message:
        return str(reason or message)
    status = description.get("TrainingJobStatus") or description.get("ProcessingJobStatus")
    if not status:
        return None
    job = description.get("TrainingJobName") or description.get("ProcessingJobName") or "the job"
    secondary = description.get("SecondaryStatus")
    return f"{job} {str(status).lower()}" + (f" ({secondary})" if secondary and secondary != status else "")
