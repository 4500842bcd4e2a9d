"""The sidecar's evaluation graders and thresholds are checked at Validate, before anything is paid for: what the
settings themselves get wrong (models/graders.py), what the stack does not allow (run_limits.grader_problems), and
what the judge may cost (run_limits.judge_tokens, counted against MaxRunCostUsd)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from tuneplane.config import ValidateSettings
from tuneplane.logic import run_limits
from tuneplane.logic.cost import EVALUATED_MODELS, PricingTable, RunCaps, estimate_run
from tuneplane.logic.grading import judge_token_bound
from tuneplane.models.graders import JudgeGrader
from tuneplane.models.pipeline import EvaluationOverrides, TrainingOverrides

GRADER_ARN = "arn:aws:lambda:us-east-1:123456789012:function:my-grader"


def _settings(**values: Any) -> ValidateSettings:
    return ValidateSettings(data_bucket="bucket", base_model_s3_uri="s3://bucket/m/", **values)


def _problems(evaluation: dict[str, Any], **stack: Any) -> list[str]:
    return run_limits.evaluation_problems(EvaluationOverrides.model_validate(evaluation), _settings(**stack))


@pytest.mark.parametrize(
    ("graders", "where", "why"),
    [
        ({"pattern": {"regex": "(unclosed"}}, "graders.pattern.regex", "not a valid regular expression"),
        ({"pattern": {"regex": "^(a+)+$"}}, "graders.pattern.regex", "exponential time"),
        ({"pattern": {"regex": r"(\w*)*@"}}, "graders.pattern.regex", "exponential time"),
        ({"json": {"schema": {"type": "objekt"}}}, "graders.json.schema", "not a valid JSON Schema at type"),
        ({"classification": {"labels": ["Yes", " yes"]}}, "graders.classification.labels", "must be distinct"),
        ({"classification": {"labels": ["only"]}}, "graders.classification.labels", "at least 2"),
        ({"judge": {"rubric": "short"}}, "graders.judge.rubric", "at least 10"),
        ({"judge": {"rubric": "Is it right?", "max_examples": 5000}}, "graders.judge.max_examples", "less than"),
        ({"custom": {"function": "not a name!"}}, "graders.custom.function", "pattern"),
        ({"llm": {}}, "graders.llm", "Extra inputs"),
    ],
)
def test_graders_that_cannot_work_are_refused_with_where_and_why(
    graders: dict[str, Any], where: str, why: str
) -> None:
    # GIVEN a sidecar evaluation section with one broken grader WHEN parsed THEN the error names its place and cause
    with pytest.raises(ValidationError) as raised:
        EvaluationOverrides.model_validate({"graders": graders})
    found = [(".".join(map(str, e["loc"])), e["msg"]) for e in raised.value.errors()]
    assert any(loc.startswith(where) and why in msg for loc, msg in found), found


def test_a_threshold_outside_the_unit_interval_or_on_an_unknown_metric_is_refused() -> None:
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        EvaluationOverrides.model_validate({"thresholds": {"token_f1": 1.5}})
    with pytest.raises(ValidationError, match="thresholds.bleu"):
        EvaluationOverrides.model_validate({"thresholds": {"bleu": 0.5}})


def test_a_valid_json_schema_and_a_safe_regex_pass() -> None:
    evaluation = EvaluationOverrides.model_validate(
        {
            "graders": {
                "json": {"schema": {"type": "object", "required": ["intent"]}},
                "pattern": {"regex": r"^[A-Z][^.]*\.$", "must_not_contain": ["As an AI"]},
            },
            "thresholds": {"json_schema_match": 0.9, "pattern_pass_rate": 1.0},
        }
    )
    assert _problems(evaluation.model_dump(by_alias=True, exclude_none=True)) == []


def test_the_stack_decides_whether_a_judge_or_a_lambda_grader_may_run() -> None:
    judge = {"graders": {"judge": {"rubric": "Correct and polite?"}}}
    custom = {"graders": {"custom": {"function": "my-grader"}}}
    # GIVEN a stack without a judge or grader functions THEN a sidecar asking for them is refused, saying why
    assert _problems(judge) == ["evaluation.graders.judge: this stack has no judge (JudgeModelId or JudgeEndpointUrl)"]
    assert _problems(custom) == [
        "evaluation.graders.custom.function: my-grader is not one of this stack's GraderFunctionArns (none)"
    ]
    # GIVEN a stack with a Bedrock judge and the grader listed THEN both are allowed, by name or by ARN
    assert _problems(judge, judge_model_id="anthropic.claude-judge") == []
    assert _problems(custom, grader_function_arns=GRADER_ARN) == []
    assert _problems({"graders": {"custom": {"function": GRADER_ARN}}}, grader_function_arns=GRADER_ARN) == []
    # AND another function of the same account is not, nor one whose name merely ends the same
    other = {"graders": {"custom": {"function": "grader"}}}
    assert _problems(other, grader_function_arns=GRADER_ARN)
    # AND the function called is the stack's entry, never the sidecar's own string
    assert _settings(grader_function_arns=GRADER_ARN).allowed_grader_function("my-grader") == GRADER_ARN


def test_a_threshold_needs_the_grader_that_computes_it() -> None:
    problems = _problems(
        {
            "graders": {"classification": {}},
            "thresholds": {"judge_score": 0.5, "pattern_pass_rate": 1.0, "classification_accuracy": 0.8},
        }
    )
    assert problems == [
        "evaluation.thresholds.judge_score: needs evaluation.graders.judge",
        "evaluation.thresholds.pattern_pass_rate: needs evaluation.graders.pattern",
        "evaluation.thresholds.classification_accuracy: needs evaluation.graders.classification.labels (without "
        "them the job decides from the references whether they are labels)",
    ]


def test_the_judges_most_tokens_are_priced_into_the_run_and_can_exceed_its_budget() -> None:
    # GIVEN a judge over 100 examples with a long rubric, and a stack whose judge costs $15 per million tokens
    evaluation = EvaluationOverrides.model_validate(
        {"graders": {"judge": {"rubric": "r" * 4000, "max_examples": 100}}, "max_new_tokens": 512}
    )
    settings = _settings(judge_model_id="anthropic.judge-v1:0", judge_price_per_million_tokens=15.0)

    def estimate(eval_examples: int, budget: float) -> Any:
        shape = run_limits.run_shape(
            TrainingOverrides(max_steps=1),
            settings,
            tokens_per_epoch=1000,
            parameters=7_000_000_000,
            deploy_target="none",
            endpoint_instance_type="ml.g5.2xlarge",
            endpoint_instances=1,
            bake_time_s=0,
            evaluation=evaluation,
            eval_examples=eval_examples,
            eval_tokens_per_example=100,
        )
        return estimate_run(
            shape, RunCaps(max_run_cost_usd=budget, max_training_runtime_s=86400), PricingTable.bundled()
        )

    # WHEN estimated with a 40-example eval split THEN the judge stage prices 40 examples (not 100) at the bound
    judge_grader = evaluation.graders.judge if evaluation.graders else None
    assert isinstance(judge_grader, JudgeGrader)
    per_example = judge_token_bound(judge_grader, 512, EVALUATED_MODELS)
    small = estimate(40, 1e6)
    [judge_stage] = [s for s in small.stages if s.stage == "judge"]
    assert judge_stage.cost_usd == pytest.approx(round(40 * per_example * 15.0 / 1e6, 2))
    assert small.over_limits == []
    # AND the bound covers what the judge can be shown: the rubric alone is 4000 characters per call
    assert per_example > (EVALUATED_MODELS + 2) * 4000 // 3
    # WHEN the budget is a cent short of the run with its judge THEN the run is over its limits, naming the judge
    over = estimate(40, small.total_cost_usd - 0.01)
    assert over.over_limits and "judge $" in over.over_limits[0]


@pytest.mark.parametrize(
    ("evaluation", "problem"),
    [
        (
            {
                "graders": {"judge": {"rubric": "Is it right?", "pairwise": False}},
                "thresholds": {"judge_win_rate": 0.5},
            },
            "evaluation.thresholds.judge_win_rate: needs evaluation.graders.judge with pairwise comparisons",
        ),
        (
            {"graders": {"pattern": {"must_contain": ["x"]}}, "thresholds": {"pattern_regex": 1.0}},
            "evaluation.thresholds.pattern_regex: needs evaluation.graders.pattern.regex",
        ),
        (
            {"graders": {"pattern": {"regex": "^A"}}, "thresholds": {"pattern_must_not_contain": 1.0}},
            "evaluation.thresholds.pattern_must_not_contain: needs evaluation.graders.pattern.must_not_contain",
        ),
        (
            {"primary_metric": "classification_accuracy"},
            "evaluation.primary_metric: classification_accuracy needs evaluation.graders.classification.labels",
        ),
        (
            {"primary_metric": "regression_pass_rate"},
            "evaluation.primary_metric: regression_pass_rate needs a regression set, and this stack has none",
        ),
        (
            {"graders": {"pattern": {"must_not_contain": ["zzzz"]}}, "primary_metric": "pattern_must_not_contain"},
            "evaluation.primary_metric: pattern_must_not_contain measures checks the sidecar itself defines",
        ),
    ],
)
def test_a_metric_no_grader_of_the_run_computes_is_refused_before_training(
    evaluation: dict[str, Any], problem: str
) -> None:
    # GIVEN settings whose gate would fail on a metric never computed (or one the uploader controls entirely)
    # WHEN checked at Validate THEN the problem names the setting and what it needs
    problems = _problems(evaluation, judge_model_id="anthropic.judge-v1:0")
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_a_grader_function_of_another_region_is_refused() -> None:
    other = "arn:aws:lambda:eu-west-1:123456789012:function:my-grader"
    problems = _problems(
        {"graders": {"custom": {"function": "my-grader"}}}, grader_function_arns=other, aws_region="us-east-1"
    )
    assert problems == [
        f"evaluation.graders.custom.function: {other} is in eu-west-1, this stack in us-east-1: Lambda invokes "
        "functions of its own Region only"
    ]


@pytest.mark.parametrize(
    ("schema", "why"),
    [
        ({"$ref": "#"}, "refers to itself without end"),
        ({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}, "without end"),
        ({"$ref": "https://example.com/schema.json"}, "only references inside the schema"),
        ({"$ref": "#/$defs/nope"}, "does not resolve inside the schema"),
        ({"type": "string", "pattern": "^(a+)+$"}, "the pattern at /: a repeated group"),
        ({"type": "object", "patternProperties": {"(x*)*": {}}}, "the patternProperties key at /"),
    ],
)
def test_a_json_schema_the_offline_job_cannot_use_is_refused(schema: dict[str, Any], why: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(why)):
        EvaluationOverrides.model_validate({"graders": {"json": {"schema": schema}}})
