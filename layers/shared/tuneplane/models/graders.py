"""The sidecar's ``evaluation.graders`` and ``evaluation.thresholds``: how answers are scored beyond exact match.

Two places score: the Evaluate job (containers/evaluate, on the GPU, no network) computes the metrics of
``CONTAINER_METRICS`` from the answers it generates; the Grade function (functions/grade, in the control plane,
where Bedrock and Lambda can be called) adds the judge's and a custom Lambda grader's (``CONTROL_PLANE_METRICS``)
from the answers the job wrote. Every metric is in [0, 1], higher is better, so a threshold is always a minimum.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

# Computed by the Evaluate job (containers/evaluate/graders.py names the same ones).
ContainerMetric = Literal[
    "exact_match",
    "token_f1",
    "rouge_l",
    "json_valid",
    "json_schema_match",
    "stop_rate",
    "classification_accuracy",
    "classification_macro_f1",
    "pattern_pass_rate",
    "pattern_regex",
    "pattern_must_contain",
    "pattern_must_not_contain",
    "regression_pass_rate",
]
# Computed by the Grade function (tuneplane/logic/grading.py).
ControlPlaneMetric = Literal["judge_score", "judge_win_rate", "custom_score"]
GraderMetric = Literal[ContainerMetric, ControlPlaneMetric]  # nested Literals are flattened (PEP 586)
CONTAINER_METRICS: tuple[str, ...] = get_args(ContainerMetric)
CONTROL_PLANE_METRICS: tuple[str, ...] = get_args(ControlPlaneMetric)
GRADER_METRICS: tuple[str, ...] = get_args(GraderMetric)
MAX_SCHEMA_CHARS = 20_000
MAX_RUBRIC_CHARS = 4_000
MAX_GRADED_EXAMPLES = 2_000  # per run, for the judge and a custom grader (the caps of the stack may be lower)

# The evaluate job compares texts as NFKC without zero-width characters (containers/evaluate/guards.py): the checks
# here see them the same way, so what passes Validate is what the job accepts.
_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))


def normalized(text: str) -> str:
    return unicodedata.normalize("NFKC", text.translate(_ZERO_WIDTH))


def _visible(text: str) -> str:
    if not normalized(text).strip():
        raise ValueError("must have a visible character (spaces and zero-width characters alone are blank)")
    return text


_Phrase = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(_visible)]
_Label = Annotated[str, StringConstraints(min_length=1, max_length=100), AfterValidator(_visible)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClassificationGrader(_Section):
    """Accuracy, macro-F1 and a confusion matrix over a label set. Without ``labels`` the job decides from the
    references (a small set of short answers); with them it is on, and every reference must be one. ``enabled``
    false turns the automatic decision off."""

    enabled: bool = True
    labels: list[Annotated[str, StringConstraints(min_length=1, max_length=100), AfterValidator(_visible)]] | None = (
        Field(default=None, min_length=2, max_length=50)
    )

    @field_validator("labels")
    @classmethod
    def _distinct(cls, labels: list[str] | None) -> list[str] | None:
        if labels is not None and len({normalized(label).strip().casefold() for label in labels}) != len(labels):
            raise ValueError(
                "labels must be distinct (compared as the job compares them: without case, surrounding "
                "spaces and zero-width characters, in Unicode NFKC)"
            )
        return labels

    @model_validator(mode="after")
    def _labels_only_when_enabled(self) -> ClassificationGrader:
        if not self.enabled and self.labels:
            raise ValueError("labels are given but enabled is false: drop one of them")
        return self


class JsonGrader(_Section):
    """JSON validity, and a match against ``schema`` (a JSON Schema, Draft 2020-12) or, without one, the shape of the
    references."""

    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is None:
            return None
        import json

        if len(json.dumps(schema)) > MAX_SCHEMA_CHARS:
            raise ValueError(f"the schema is longer than {MAX_SCHEMA_CHARS} characters")
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError

        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            where = "/".join(str(part) for part in exc.path) or "(top level)"
            raise ValueError(f"not a valid JSON Schema at {where}: {exc.message}") from exc
        _check_schema_offline(schema)
        return schema


def _schema_nodes(node: Any, path: str = "") -> Any:
    """Every (path, key, value) of a JSON document, depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from _schema_nodes(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _schema_nodes(value, f"{path}/{index}")


def _check_schema_offline(schema: dict[str, Any]) -> None:
    """The evaluate job has no network: a reference must resolve inside the schema; one that leads back to itself
    without a step (``{"$ref": "#"}``) would recurse forever; a ``pattern`` is held to the regex grader's rule."""
    import json

    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError as SchemaValidationError
    from referencing import Registry
    from referencing.exceptions import Unresolvable

    for path, key, value in _schema_nodes(schema):
        if key in ("$ref", "$dynamicRef") and not (isinstance(value, str) and value.startswith("#")):
            raise ValueError(f"{key} at {path or '/'} is {value!r}: only references inside the schema (#...) resolve")
        if key == "pattern" and isinstance(value, str):
            _check_regex(value, f"the pattern at {path or '/'}")
        if key == "patternProperties" and isinstance(value, dict):
            for regex in value:
                _check_regex(regex, f"the patternProperties key at {path or '/'}")
    validator = Draft202012Validator(schema, registry=Registry())
    probes: list[Any] = [None, {}, [], "", 0, json.loads('{"a": [1, "b", {"c": null}]}')]
    for probe in probes:
        try:
            any(True for _ in validator.iter_errors(probe))
        except Unresolvable as exc:
            raise ValueError(f"a reference does not resolve inside the schema: {exc}") from exc
        except RecursionError as exc:
            raise ValueError('the schema refers to itself without end (e.g. {"$ref": "#"})') from exc
        except SchemaValidationError:
            pass


def _check_regex(regex: str, what: str) -> None:
    try:
        re.compile(regex)
    except re.error as exc:
        raise ValueError(f"{what} is not a valid regular expression: {exc}") from exc
    if _NESTED_QUANTIFIER.search(regex):
        # A quantified group that itself ends in a quantifier ((a+)+, (\w*)*) backtracks exponentially on a long
        # answer that almost matches; the job also stops any search that takes more than its time limit.
        raise ValueError(f"{what}: a repeated group that itself repeats (e.g. (a+)+) can take exponential time")


class PatternGrader(_Section):
    """Checks of each answer's text: a regular expression it must match (``re.search``), phrases it must contain,
    phrases it must not contain."""

    regex: str | None = Field(default=None, min_length=1, max_length=500)
    must_contain: list[_Phrase] = Field(default_factory=list, max_length=20)
    must_not_contain: list[_Phrase] = Field(default_factory=list, max_length=20)

    @field_validator("regex")
    @classmethod
    def _compiles(cls, regex: str | None) -> str | None:
        if regex is not None:
            _check_regex(regex, "the regex")
        return regex

    def configured(self) -> bool:
        return bool(self.regex or self.must_contain or self.must_not_contain)


_NESTED_QUANTIFIER = re.compile(r"[+*}]\)[+*{]")


class JudgeGrader(_Section):
    """An LLM judge (the stack's JudgeModelId on Bedrock, or its JudgeEndpointUrl) scores answers against a rubric.

    Each model's answer gets a score from 1 to 10 (``judge_score``, scaled to [0, 1]); with ``pairwise`` the
    candidate is also compared with production (or the base, when nothing is in production) twice, with the two
    answers' positions swapped, so that a judge that prefers the first answer cancels out (``judge_win_rate``)."""

    rubric: str = Field(min_length=10, max_length=MAX_RUBRIC_CHARS)
    pairwise: bool = True
    max_examples: int = Field(default=100, ge=1, le=MAX_GRADED_EXAMPLES)


class CustomGrader(_Section):
    """A Lambda function that scores batches of (prompt, reference, answer); it must be one the stack allows
    (GraderFunctionArns): a sidecar can only choose among them."""

    function: str = Field(
        min_length=1,
        max_length=170,
        pattern=r"^(arn:aws[a-z-]*:lambda:[a-z0-9-]+:\d{12}:function:)?[A-Za-z0-9_-]{1,64}(:[A-Za-z0-9$_-]{1,128})?$",
        description="The function's name or ARN, as listed in the stack's GraderFunctionArns.",
    )
    max_examples: int = Field(default=500, ge=1, le=MAX_GRADED_EXAMPLES)


class Graders(_Section):
    classification: ClassificationGrader | None = None
    json_: JsonGrader | None = Field(default=None, alias="json")
    pattern: PatternGrader | None = None
    judge: JudgeGrader | None = None
    custom: CustomGrader | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def container_config(self) -> dict[str, Any]:
        """The graders.json sections the Evaluate job reads (containers/evaluate/graders.py)."""
        config: dict[str, Any] = {}
        if self.classification is not None and not self.classification.enabled:
            config["classification"] = False
        elif self.classification is not None:
            config["classification"] = self.classification.model_dump(exclude_none=True, exclude={"enabled"})
        if self.json_ is not None:
            config["json"] = self.json_.model_dump(by_alias=True, exclude_none=True)
        if self.pattern is not None and self.pattern.configured():
            config["pattern"] = self.pattern.model_dump(exclude_none=True)
        return config

    def control_plane(self) -> bool:
        """Whether the Grade function has work: a judge or a custom grader."""
        return self.judge is not None or self.custom is not None


def metric_owner(metric: str) -> Literal["job", "grade"]:
    return "grade" if metric in CONTROL_PLANE_METRICS else "job"


def required_grader(metric: str) -> str | None:
    """The grader a metric needs configured in the sidecar (None: always computed or automatic)."""
    if metric.startswith("judge_"):
        return "judge"
    if metric == "custom_score":
        return "custom"
    if metric.startswith("pattern_"):
        return "pattern"
    if metric == "regression_pass_rate":
        return "regression"
    return None
