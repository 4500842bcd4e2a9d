"""How the Evaluate job scores answers: every metric and the graders of graders.json (gate.py decides from them).

Pure Python plus `jsonschema` (no torch), so the control plane's tests and this module's own run without a model.

Every score metric (`SCORE_METRICS`) is in [0, 1], higher is better, and may be the primary metric or a threshold:
- always: exact_match, token_f1, rouge_l (per example, then the mean) and stop_rate (the share of answers that ended
  on an end-of-turn token);
- json_valid, json_schema_match: with `json.schema` in graders.json, the answer parses as JSON and validates against
  that JSON Schema (Draft 2020-12); without one, only when every reference is a JSON object or array, and "matches"
  means the reference's shape (same top-level keys, same value types);
- classification_accuracy, classification_macro_f1 (macro over the labels present in the references, like
  sklearn's `f1_score(average="macro", labels=present labels)`): with explicit labels, or automatically when the
  references look like a small set of short labels (`detect_labels`). Answers and labels are compared after
  guards.normalize_text (NFKC, zero-width characters removed), strip() and casefold(); an answer that is none of the
  labels is the confusion matrix's "(other)";
- pattern_pass_rate (every configured check passes) and one metric per configured check: pattern_regex
  (`re.search`), pattern_must_contain (every phrase present), pattern_must_not_contain (none present). The checks
  read the answer normalised (guards.normalize_text: NFKC without zero-width characters, so a non-breaking or
  zero-width space cannot slip past must_not_contain; phrases are normalised the same way) and without its
  surrounding whitespace (a decoded answer may start with a newline); the regex searches that normalised text too;
- regression_pass_rate: the share of the regression set's prompts (regression.py: stack-level prompts with expected
  behaviours, answered by every model) whose every expectation holds; only with a regression set.

Untrusted patterns run under a time limit (guards.time_limit, guards.TIME_LIMIT_S per check of one answer): a regex
search or a JSON Schema validation that takes longer (catastrophic backtracking) is a ConfigError naming the pattern,
the example and the model. A JSON Schema that fails on one answer in another way (a recursive `$ref`, a `multipleOf`
that overflows on a huge number, ...) scores that answer 0 for json_schema_match and is counted per model in
evaluation.json's graders.json.json_schema_errors (count and first error), instead of failing the job.

graders.json (every key optional; an absent file is `{}`; null is the same as an absent key; an unknown key, at the
top or inside a section, is a ConfigError):

    {"classification": {"labels": ["positive", "negative"]},   {} : automatic, false: off
     "json": {"schema": {...}},                                 {} : the references' shape (when they are JSON)
     "pattern": {"regex": "^[A-Z]", "must_contain": ["Thanks"], "must_not_contain": ["As an AI"]},
     "thresholds": {"classification_accuracy": 0.8},            minima for the candidate
     "primary_metric": "classification_macro_f1"}               overrides --primary_metric
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from containers.common.jobkit import ConfigError
from containers.evaluate import guards

# The JSON metrics live in json_grader.py; re-exported here (graders.parse_json, ...) for evaluate.py and the tests.
from containers.evaluate.json_grader import JsonGrader as JsonGrader
from containers.evaluate.json_grader import SchemaFailure as SchemaFailure
from containers.evaluate.json_grader import is_json_reference as is_json_reference
from containers.evaluate.json_grader import json_schema_match as json_schema_match
from containers.evaluate.json_grader import json_type as json_type
from containers.evaluate.json_grader import json_valid as json_valid
from containers.evaluate.json_grader import parse_json as parse_json

# Metrics in [0, 1] where higher is better: these can be the primary metric or a threshold, and are drawn in the
# chart in this order. The control plane's tuneplane/models/graders.py lists the same names (CONTAINER_METRICS).
SCORE_METRICS = (
    "exact_match",
    "token_f1",
    "rouge_l",
    "json_valid",
    "json_schema_match",
    "classification_accuracy",
    "classification_macro_f1",
    "pattern_pass_rate",
    "pattern_regex",
    "pattern_must_contain",
    "pattern_must_not_contain",
    "stop_rate",
    "regression_pass_rate",
)
JSON_METRICS = ("json_valid", "json_schema_match")
CLASSIFICATION_METRICS = ("classification_accuracy", "classification_macro_f1")
PATTERN_CHECKS = ("regex", "must_contain", "must_not_contain")
OTHER_LABEL = "(other)"
# Automatic classification: short references, few distinct ones, each seen at least twice on average.
AUTO_MAX_REFERENCE_CHARS = 40
AUTO_MIN_LABELS, AUTO_MAX_LABELS = 2, 20
TOP_LEVEL_KEYS = ("classification", "json", "pattern", "thresholds", "primary_metric")


# ---------------------------------------------------------------------------------------------------------------------
# Text metrics


def exact_match(answer: str, reference: str) -> float:
    """1.0 when the answer equals the reference after stripping surrounding whitespace."""
    return 1.0 if answer.strip() == reference.strip() else 0.0


def token_f1(answer: str, reference: str) -> float:
    """SQuAD-style F1 over whitespace tokens (multiset overlap); two empty texts score 1, one empty text 0."""
    pred, ref = answer.split(), reference.split()
    if not pred or not ref:
        return 1.0 if pred == ref else 0.0
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists (O(len(a) * len(b)) time, O(len(b)) memory)."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F1 over whitespace tokens: 2PR/(P+R) with P = LCS/len(answer), R = LCS/len(reference)."""
    pred, ref = answer.split(), reference.split()
    if not pred or not ref:
        return 1.0 if pred == ref else 0.0
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


# ---------------------------------------------------------------------------------------------------------------------
# Classification


def label_key(text: str) -> str:
    """How answers, references and labels are compared: normalised (guards.normalize_text: NFKC, no zero-width
    characters), stripped and casefolded, then NFKC again (casefolding can leave a text unnormalised, "ǰ")."""
    return unicodedata.normalize("NFKC", guards.normalize_text(text).strip().casefold())


def detect_labels(references: Sequence[str]) -> tuple[str, ...] | None:
    """The label set when the references look like classification, else None: every reference at most 40 characters
    (stripped), 2..20 distinct ones (casefolded), and at most half as many distinct ones as examples. Labels are
    spelled as first seen (stripped), sorted by their compared form so that the eval order does not change them."""
    if not references or any(len(r.strip()) > AUTO_MAX_REFERENCE_CHARS for r in references):
        return None
    spelling: dict[str, str] = {}
    for reference in references:
        spelling.setdefault(label_key(reference), reference.strip())
    if not AUTO_MIN_LABELS <= len(spelling) <= AUTO_MAX_LABELS or len(spelling) > len(references) / 2:
        return None
    return tuple(spelling[key] for key in sorted(spelling))


@dataclass(frozen=True)
class Classification:
    """Accuracy, macro-F1 and the confusion matrix over `labels`."""

    labels: tuple[str, ...]
    automatic: bool

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(label_key(label) for label in self.labels)

    def check_references(self, references: Sequence[str]) -> None:
        """With explicit labels every reference must be one (else accuracy and F1 would count a right answer wrong)."""
        keys = set(self.keys)
        for index, reference in enumerate(references):
            if label_key(reference) not in keys:
                raise ConfigError(
                    f"graders.json classification: the reference of eval example {index} ({reference.strip()[:60]!r}) "
                    f"is not one of the labels: {', '.join(self.labels)}"
                )

    def accuracy(self, answer: str, reference: str) -> float:
        return 1.0 if label_key(answer) == label_key(reference) else 0.0

    def column(self, text: str) -> int:
        """Index of the text's label; len(labels) (the "(other)" column) when it is none of them."""
        key = label_key(text)
        return self.keys.index(key) if key in self.keys else len(self.labels)

    def macro_f1(self, answers: Sequence[str], references: Sequence[str]) -> float:
        """Mean F1 over the labels present in the references; F1 = 2TP / (2TP + FP + FN), 0 when TP is 0 (sklearn's
        value with zero_division=0). A predicted label absent from the references only adds false positives."""
        pairs = [(label_key(a), label_key(r)) for a, r in zip(answers, references, strict=True)]
        present = sorted({ref for _, ref in pairs})
        if not present:
            return 0.0
        total = 0.0
        for label in present:
            tp = sum(1 for a, r in pairs if a == label and r == label)
            fp = sum(1 for a, r in pairs if a == label and r != label)
            fn = sum(1 for a, r in pairs if a != label and r == label)
            total += 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        return total / len(present)

    def confusion_matrix(self, answers: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
        """Square over labels + "(other)": matrix[i][j] counts the examples whose reference is label i and whose answer
        is label j. The "(other)" row stays 0 (a reference is always a label)."""
        size = len(self.labels) + 1
        matrix = [[0] * size for _ in range(size)]
        for answer, reference in zip(answers, references, strict=True):
            matrix[self.column(reference)][self.column(answer)] += 1
        return {"labels": [*self.labels, OTHER_LABEL], "matrix": matrix}


# ---------------------------------------------------------------------------------------------------------------------
# Pattern


@dataclass(frozen=True)
class PatternGrader:
    """Checks of the (stripped) answer text; only the configured ones are scored and reported."""

    regex: re.Pattern[str] | None = None
    must_contain: tuple[str, ...] = ()
    must_not_contain: tuple[str, ...] = ()

    def configured(self) -> bool:
        return bool(self.regex or self.must_contain or self.must_not_contain)

    def metric_names(self) -> list[str]:
        checks = {"regex": self.regex, "must_contain": self.must_contain, "must_not_contain": self.must_not_contain}
        return ["pattern_pass_rate", *(f"pattern_{name}" for name, value in checks.items() if value)]

    def scores(self, answer: str, where: str = "an answer") -> dict[str, float]:
        """The configured checks on the normalised, stripped answer (phrases normalised alike); the regex search runs
        under guards' time limit, `where` naming the answer in its ConfigError."""
        text = guards.normalize_text(answer).strip()
        checks: dict[str, bool] = {}
        if self.regex is not None:
            checks["pattern_regex"] = guards.search(self.regex, text, what="pattern regex", where=where)
        if self.must_contain:
            checks["pattern_must_contain"] = all(guards.normalize_text(p) in text for p in self.must_contain)
        if self.must_not_contain:
            checks["pattern_must_not_contain"] = not any(
                guards.normalize_text(p) in text for p in self.must_not_contain
            )
        return {"pattern_pass_rate": 1.0 if all(checks.values()) else 0.0} | {k: float(v) for k, v in checks.items()}

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.regex is not None:
            out["regex"] = self.regex.pattern
        if self.must_contain:
            out["must_contain"] = list(self.must_contain)
        if self.must_not_contain:
            out["must_not_contain"] = list(self.must_not_contain)
        return out


# ---------------------------------------------------------------------------------------------------------------------
# graders.json


@dataclass(frozen=True)
class GradersConfig:
    """graders.json, checked. `classification`: None automatic, False off, a tuple the explicit labels. `json_schema`:
    None inferred from the references, else the schema's grader."""

    classification: tuple[str, ...] | bool | None = None
    json_schema: JsonGrader | None = None
    pattern: PatternGrader = field(default_factory=PatternGrader)
    thresholds: dict[str, float] = field(default_factory=dict)
    primary_metric: str | None = None


def _section(raw: Mapping[str, Any], name: str, keys: Sequence[str]) -> dict[str, Any]:
    value = raw.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"graders.json {name} must be an object, not {json_type(value)}")
    unknown = sorted(set(value) - set(keys))
    if unknown:
        raise ConfigError(f"graders.json {name}: unknown key(s) {', '.join(unknown)} (known: {', '.join(keys)})")
    return {k: v for k, v in value.items() if v is not None}


def parse_graders(raw: Any) -> GradersConfig:
    """graders.json's content, checked: unknown keys, wrong types, a bad regex or schema are ConfigErrors."""
    if not isinstance(raw, dict):
        raise ConfigError(f"graders.json must hold a JSON object, not {json_type(raw)}")
    unknown = sorted(set(raw) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ConfigError(f"graders.json: unknown key(s) {', '.join(unknown)} (known: {', '.join(TOP_LEVEL_KEYS)})")

    classification: tuple[str, ...] | bool | None = None
    if raw.get("classification") is False:
        classification = False
    else:
        section = _section(raw, "classification", ("labels",))
        if "labels" in section:
            classification = tuple(
                s.strip()
                for s in guards.visible_strings(section["labels"], "graders.json classification.labels", minimum=2)
            )
            if len({label_key(label) for label in classification}) != len(classification):
                raise ConfigError("graders.json classification.labels must be distinct (compared casefolded)")

    schema_section = _section(raw, "json", ("schema",))
    json_schema = JsonGrader.with_schema(schema_section["schema"]) if "schema" in schema_section else None

    pattern_section = _section(raw, "pattern", PATTERN_CHECKS)
    regex = pattern_section.get("regex")
    if regex is not None and not isinstance(regex, str):
        raise ConfigError("graders.json pattern.regex must be a string")
    try:
        compiled = re.compile(regex) if regex else None
    except re.error as exc:
        raise ConfigError(f"graders.json pattern.regex {regex!r} is not a valid regular expression: {exc}") from exc
    pattern = PatternGrader(
        regex=compiled,
        must_contain=guards.visible_strings(
            pattern_section.get("must_contain", []), "graders.json pattern.must_contain"
        ),
        must_not_contain=guards.visible_strings(
            pattern_section.get("must_not_contain", []), "graders.json pattern.must_not_contain"
        ),
    )

    thresholds_raw = raw.get("thresholds") or {}
    if not isinstance(thresholds_raw, dict):
        raise ConfigError("graders.json thresholds must be an object of metric name: minimum")
    thresholds: dict[str, float] = {}
    for name, minimum in thresholds_raw.items():
        if isinstance(minimum, bool) or not isinstance(minimum, int | float) or not 0.0 <= minimum <= 1.0:
            raise ConfigError(f"graders.json threshold {name} must be a number in [0, 1], not {minimum!r}")
        thresholds[name] = float(minimum)

    primary = raw.get("primary_metric")
    if primary is not None and primary not in SCORE_METRICS:
        raise ConfigError(f"graders.json primary_metric {primary!r} is not one of {', '.join(SCORE_METRICS)}")
    return GradersConfig(classification, json_schema, pattern, thresholds, primary)


def read_graders(path: str) -> GradersConfig:
    """The graders.json at `path`; an absent file (or an empty path) is `{}`."""
    if not path or not Path(path).is_file():
        return GradersConfig()
    try:
        raw = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"graders.json ({path}) is not JSON: {exc}") from exc
    except RecursionError:  # json.loads on arrays/objects nested deeper than the recursion limit
        raise ConfigError(f"graders.json ({path}) is nested too deeply to read") from None
    return parse_graders(raw)


# ---------------------------------------------------------------------------------------------------------------------
# Scoring


@dataclass(frozen=True)
class Graders:
    """The graders that apply to one eval split (graders.json resolved against its references)."""

    json_grader: JsonGrader | None = None
    classification: Classification | None = None
    pattern: PatternGrader = field(default_factory=PatternGrader)
    # Per model (aggregate's `model`), the JSON Schema's failures on its answers, for report().
    schema_failures: dict[str, list[SchemaFailure]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def resolve(cls, config: GradersConfig, references: Sequence[str]) -> Graders:
        """JSON: with a schema always, else when every reference is JSON. Classification: explicit labels (every
        reference must be one: ConfigError naming the example), automatic detection, or off."""
        json_grader = config.json_schema
        if json_grader is None and references and all(is_json_reference(r) for r in references):
            json_grader = JsonGrader()
        classification = None
        if isinstance(config.classification, tuple):
            classification = Classification(config.classification, automatic=False)
            classification.check_references(references)
        elif config.classification is None:
            labels = detect_labels(references)
            classification = Classification(labels, automatic=True) if labels else None
        return cls(json_grader, classification, config.pattern)

    def metric_names(self) -> list[str]:
        """The score metrics this evaluation computes, in SCORE_METRICS order."""
        names = {"exact_match", "token_f1", "rouge_l", "stop_rate"}
        if self.json_grader is not None:
            names.update(JSON_METRICS)
        if self.classification is not None:
            names.update(CLASSIFICATION_METRICS)
        if self.pattern.configured():
            names.update(self.pattern.metric_names())
        return [name for name in SCORE_METRICS if name in names]

    def score(
        self, answer: str, reference: str, *, where: str = "an answer", errors: list[SchemaFailure] | None = None
    ) -> dict[str, float]:
        """One example's scores (every computed metric but the set-level macro-F1 and stop_rate). `where` names the
        answer in a timeout's ConfigError; the JSON Schema's failures on it are appended to `errors`."""
        scores = {
            "exact_match": exact_match(answer, reference),
            "token_f1": token_f1(answer, reference),
            "rouge_l": rouge_l(answer, reference),
        }
        if self.json_grader is not None:
            scores |= self.json_grader.scores(answer, reference, where=where, errors=errors)
        if self.classification is not None:
            scores["classification_accuracy"] = self.classification.accuracy(answer, reference)
        if self.pattern.configured():
            scores |= self.pattern.scores(answer, where)
        return scores

    def aggregate(
        self,
        answers: list[str],
        references: list[str],
        lengths: list[int],
        stopped: list[bool],
        *,
        model: str = "model",
    ) -> tuple[dict[str, float], list[dict[str, float]]]:
        """Mean of each per-example metric, macro-F1, mean generated tokens and stop rate; plus the per-example
        scores. `model` names the answers in errors and in report()'s json_schema_errors."""
        if not (len(answers) == len(references) == len(lengths) == len(stopped)) or not answers:
            raise ValueError("answers, references, lengths and stop flags must be non-empty lists of the same length")
        failures: list[SchemaFailure] = []
        per_example = [
            self.score(a, r, where=f"example {i} ({model}'s answer)", errors=failures)
            for i, (a, r) in enumerate(zip(answers, references, strict=True))
        ]
        self.schema_failures[model] = failures
        metrics = {name: sum(s[name] for s in per_example) / len(per_example) for name in per_example[0]}
        if self.classification is not None:
            metrics["classification_macro_f1"] = self.classification.macro_f1(answers, references)
        metrics["mean_generated_tokens"] = sum(lengths) / len(lengths)
        metrics["stop_rate"] = sum(1 for s in stopped if s) / len(stopped)
        return metrics, per_example

    def report(self, answers: Mapping[str, list[str]], references: list[str]) -> dict[str, Any]:
        """evaluation.json's "graders": what was configured or detected, and each model's confusion matrix."""
        classification = None
        if self.classification is not None:
            classification = {
                "labels": list(self.classification.labels),
                "automatic": self.classification.automatic,
                "confusion_matrix": {
                    model: self.classification.confusion_matrix(model_answers, references)
                    for model, model_answers in answers.items()
                },
            }
        json_section = None
        if self.json_grader is not None:
            json_section = self.json_grader.report()
            if self.json_grader.validator is not None:
                json_section["json_schema_errors"] = {
                    model: _failures_report(self.schema_failures.get(model, [])) for model in answers
                }
        return {
            "classification": classification,
            "json": json_section,
            "pattern": self.pattern.report() if self.pattern.configured() else None,
        }


def _failures_report(failures: Sequence[SchemaFailure]) -> dict[str, Any]:
    """One model's json_schema_errors: how many answers the schema failed on, and the first failure."""
    first = failures[0] if failures else None
    return {
        "count": len(failures),
        "first": {"answer": first.where, "type": first.type, "message": first.message} if first else None,
    }


def per_example_key(primary_metric: str) -> str:
    """The per-example score that ranks examples for a set-level metric (macro-F1 has no per-example value)."""
    return "classification_accuracy" if primary_metric == "classification_macro_f1" else primary_metric
