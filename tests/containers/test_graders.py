"""The evaluate container's graders (containers/evaluate/graders.py), pure Python: the text, JSON, classification and
pattern metrics, graders.json parsing, and the gate with its thresholds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from containers.common.jobkit import ConfigError
from containers.evaluate import gate, graders
from containers.evaluate.graders import Graders, parse_graders


def _resolve(raw: dict[str, Any], references: list[str]) -> Graders:
    return Graders.resolve(parse_graders(raw), references)


def _aggregate(grading: Graders, answers: list[str], references: list[str]) -> dict[str, float]:
    metrics, _ = grading.aggregate(answers, references, [1] * len(answers), [True] * len(answers))
    return metrics


# ---------------------------------------------------------------------------------------------------------------------
# Text metrics


def test_exact_match_ignores_surrounding_whitespace_only() -> None:
    assert graders.exact_match("  Paris\n", "Paris") == 1.0
    assert graders.exact_match("paris", "Paris") == 0.0


def test_token_f1_is_squad_style_overlap() -> None:
    # GIVEN 2 common tokens of 3 predicted and 4 reference: P=2/3, R=1/2 -> F1 = 4/7
    assert graders.token_f1("the cat sat", "the cat is here") == pytest.approx(4 / 7)
    # multiset overlap: "a a" vs "a": P=1/2, R=1 -> 2/3
    assert graders.token_f1("a a", "a") == pytest.approx(2 / 3)
    assert graders.token_f1("x", "y") == 0.0
    assert graders.token_f1("", "") == 1.0
    assert graders.token_f1("", "y") == 0.0


def test_rouge_l_uses_the_longest_common_subsequence() -> None:
    # LCS("a b c d", "a c d e") = "a c d" = 3: P = R = 3/4
    assert graders.lcs_length("a b c d".split(), "a c d e".split()) == 3
    assert graders.rouge_l("a b c d", "a c d e") == pytest.approx(0.75)
    # order matters (unlike F1): LCS("c b a", "a b c") = 1 -> 1/3
    assert graders.rouge_l("c b a", "a b c") == pytest.approx(1 / 3)
    assert graders.rouge_l("same words", "same words") == 1.0
    assert graders.rouge_l("", "x") == 0.0


def test_aggregate_means_lengths_and_stop_rate() -> None:
    # GIVEN two free-text references (no JSON, no classification: 2 distinct of 2 examples, more than half)
    grading = _resolve({}, ["a b", "a"])
    metrics, per_example = grading.aggregate(["a b", "x"], ["a b", "a"], [2, 5], [True, False])
    assert metrics == {
        "exact_match": 0.5,
        "token_f1": 0.5,
        "rouge_l": 0.5,
        "mean_generated_tokens": 3.5,
        "stop_rate": 0.5,
    }
    assert per_example[1] == {"exact_match": 0.0, "token_f1": 0.0, "rouge_l": 0.0}


# ---------------------------------------------------------------------------------------------------------------------
# JSON


def test_inferred_json_shape_match() -> None:
    reference = '{"name": "Ann", "age": 3, "tags": ["x"]}'
    assert graders.is_json_reference(reference)
    assert not graders.is_json_reference("42")
    assert graders.json_valid(' {"a": 1} ') == 1.0
    assert graders.json_valid("{'a': 1}") == 0.0
    # same keys and value types (int vs float are both numbers)
    assert graders.json_schema_match('{"age": 4.5, "name": "Bo", "tags": []}', reference) == 1.0
    assert graders.json_schema_match('{"name": "Bo", "age": "4", "tags": []}', reference) == 0.0  # wrong type
    assert graders.json_schema_match('{"name": "Bo", "age": 4}', reference) == 0.0  # missing key
    assert graders.json_schema_match('{"name": "Bo", "age": true, "tags": []}', reference) == 0.0  # bool != number
    assert graders.json_schema_match("[1, 2]", "[3]") == 1.0
    assert graders.json_schema_match("not json", reference) == 0.0


def test_json_metrics_are_inferred_only_from_json_references() -> None:
    # GIVEN no json section; WHEN every reference is JSON THEN the shape of each reference is the schema
    grading = _resolve({}, ['{"a": 2}', '{"a": 3}'])
    assert grading.json_grader is not None and grading.json_grader.report() == {"schema": "inferred"}
    metrics = _aggregate(grading, ['{"a": 1}', "{"], ['{"a": 2}', '{"a": 3}'])
    assert metrics["json_valid"] == 0.5 and metrics["json_schema_match"] == 0.5
    # WHEN one reference is not JSON THEN no JSON metric is computed
    plain = _resolve({"json": {}}, ['{"a": 2}', "plain text"])
    assert plain.json_grader is None
    assert "json_valid" not in _aggregate(plain, ["{}", "x"], ['{"a": 2}', "plain text"])
    assert plain.report({}, [])["json"] is None


def test_json_schema_validates_answers_even_when_references_are_not_json() -> None:
    # GIVEN a schema requiring an object with a string "name", and free-text references
    schema = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
    grading = _resolve({"json": {"schema": schema}}, ["Ann", "Bo", "Cy", "Di"])
    answers = ['{"name": "Ann"}', '{"name": 3}', '{"nom": "Cy"}', "not json"]
    # WHEN scored: valid JSON 3/4; matching the schema only the first (name is a number, name missing, no JSON): 1/4
    metrics = _aggregate(grading, answers, ["Ann", "Bo", "Cy", "Di"])
    assert metrics["json_valid"] == 0.75
    assert metrics["json_schema_match"] == 0.25
    # THEN the report echoes the schema, and no answer made the schema itself fail
    assert grading.report({"model": answers}, ["Ann", "Bo", "Cy", "Di"])["json"] == {
        "schema": schema,
        "json_schema_errors": {"model": {"count": 0, "first": None}},
    }


def test_invalid_json_schema_is_a_config_error() -> None:
    # GIVEN a schema whose "type" is not a JSON Schema type; WHEN parsed THEN ConfigError saying where
    with pytest.raises(ConfigError, match=r"not a valid JSON Schema at properties/name/type"):
        parse_graders({"json": {"schema": {"properties": {"name": {"type": "text"}}}}})
    with pytest.raises(ConfigError, match="must be a JSON Schema"):
        parse_graders({"json": {"schema": "object"}})


def test_json_schema_ref_to_another_document_is_never_fetched() -> None:
    # GIVEN a schema that refers to a remote document (processing jobs have no network)
    grading = _resolve({"json": {"schema": {"$ref": "https://example.com/schema.json"}}}, ["x"])
    # WHEN an answer is validated THEN a ConfigError, not a network call
    with pytest.raises(ConfigError, match="cannot be resolved offline"):
        grading.score('{"a": 1}', "x")


# ---------------------------------------------------------------------------------------------------------------------
# Classification


REFERENCES = ["pos", "pos", "pos", "neg", "neg", "neu"]
ANSWERS = [" POS\n", "neg", "pos", "Neg", "maybe", "pos"]


def test_classification_accuracy_macro_f1_and_confusion_matrix() -> None:
    # GIVEN explicit labels and hand-made answers (compared after strip and casefold; "maybe" is none of the labels)
    grading = _resolve({"classification": {"labels": ["pos", "neg", "neu"]}}, REFERENCES)
    metrics = _aggregate(grading, ANSWERS, REFERENCES)
    # THEN accuracy: examples 0, 2, 3 right -> 3/6
    assert metrics["classification_accuracy"] == 0.5
    # macro-F1 over the present labels, F1 = 2TP / (2TP + FP + FN):
    #   pos: TP 2 (0, 2), FP 1 (5: neu answered pos), FN 1 (1) -> 4/6 = 2/3
    #   neg: TP 1 (3), FP 1 (1: pos answered neg), FN 1 (4: answered "maybe") -> 2/4 = 1/2
    #   neu: TP 0 -> 0
    #   mean = (2/3 + 1/2 + 0) / 3 = 7/18
    assert metrics["classification_macro_f1"] == pytest.approx(7 / 18)
    # rows: reference label, columns: answer label (+ "(other)")
    section = grading.report({"candidate": ANSWERS}, REFERENCES)["classification"]
    assert section["labels"] == ["pos", "neg", "neu"] and section["automatic"] is False
    assert section["confusion_matrix"]["candidate"] == {
        "labels": ["pos", "neg", "neu", "(other)"],
        "matrix": [
            [2, 1, 0, 0],  # pos: answered pos (0, 2), neg (1)
            [0, 1, 0, 1],  # neg: answered neg (3), "maybe" (4)
            [1, 0, 0, 0],  # neu: answered pos (5)
            [0, 0, 0, 0],  # a reference is never "(other)"
        ],
    }


def test_macro_f1_averages_only_labels_present_in_the_references() -> None:
    # GIVEN a label "mixed" that no reference has, answered once (for a "pos" example)
    grading = _resolve({"classification": {"labels": ["pos", "neg", "mixed"]}}, ["pos", "pos", "neg", "neg"])
    metrics = _aggregate(grading, ["pos", "mixed", "neg", "neg"], ["pos", "pos", "neg", "neg"])
    # THEN pos: TP 1, FN 1 -> 2/3; neg: TP 2 -> 1; "mixed" is not averaged: (2/3 + 1) / 2 = 5/6
    assert metrics["classification_macro_f1"] == pytest.approx(5 / 6)
    assert metrics["classification_accuracy"] == 0.75


def test_classification_is_detected_automatically_and_can_be_turned_off() -> None:
    # GIVEN 6 short references with 3 distinct labels (3 <= 6 / 2), differing only in case and spaces
    references = ["Yes", "no", " yes", "NO", "maybe", "yes"]
    # WHEN graders.json says nothing THEN classification is on, labels spelled as first seen, sorted
    automatic = _resolve({}, references)
    assert automatic.classification is not None
    assert automatic.classification.labels == ("maybe", "no", "Yes") and automatic.classification.automatic
    assert "classification_macro_f1" in automatic.metric_names()
    assert _resolve({"classification": {}}, references).classification == automatic.classification
    # WHEN graders.json says false THEN it is off
    assert _resolve({"classification": False}, references).classification is None
    assert "classification_accuracy" not in _resolve({"classification": False}, references).metric_names()


@pytest.mark.parametrize(
    ("references", "why"),
    [
        (["red", "green", "blue", "red", "green"], "3 distinct of 5 examples: more than half"),
        (["yes"] * 6, "one distinct reference"),
        (["yes", "no"] * 3 + ["x" * 41], "a reference longer than 40 characters"),
        ([f"label {i}" for i in range(21)] * 2, "21 distinct references"),
    ],
)
def test_automatic_classification_stays_off_for_free_text(references: list[str], why: str) -> None:
    assert _resolve({}, references).classification is None, why


def test_explicit_labels_refuse_a_reference_that_is_not_one() -> None:
    # GIVEN labels pos/neg and example 2's reference "unsure"; WHEN resolved THEN ConfigError naming example 2
    expected = r"reference of eval example 2 \('unsure'\) is not one of the labels: pos, neg"
    with pytest.raises(ConfigError, match=expected):
        _resolve({"classification": {"labels": ["pos", "neg"]}}, ["pos", "NEG ", "unsure", "pos"])


def test_explicit_labels_must_be_distinct() -> None:
    with pytest.raises(ConfigError, match="distinct"):
        parse_graders({"classification": {"labels": ["Yes", "yes "]}})


# ---------------------------------------------------------------------------------------------------------------------
# Pattern


def test_pattern_checks_each_configured_rule_and_their_conjunction() -> None:
    pattern = {"regex": "^[A-Z]", "must_contain": ["Thanks"], "must_not_contain": ["As an AI"]}
    references = ["r1", "r2", "r3", "r4"]
    grading = _resolve({"pattern": pattern}, references)
    answers = [
        "\nThanks for asking.",  # regex on the stripped text: passes all three
        "thanks, no.",  # lowercase start; "Thanks" is case-sensitive: fails regex and must_contain
        "Sure. Thanks! As an AI I cannot.",  # fails must_not_contain
        "Thanks. As an AI...",  # fails must_not_contain
    ]
    metrics = _aggregate(grading, answers, references)
    assert metrics["pattern_regex"] == 0.75
    assert metrics["pattern_must_contain"] == 0.75
    assert metrics["pattern_must_not_contain"] == 0.5
    assert metrics["pattern_pass_rate"] == 0.25  # only the first answer passes every check
    assert grading.report({}, [])["pattern"] == pattern


def test_pattern_reports_only_the_configured_checks() -> None:
    # GIVEN only a regex (the control plane may send empty phrase lists)
    grading = _resolve({"pattern": {"regex": r"\d", "must_contain": [], "must_not_contain": None}}, ["a", "b"])
    metrics = _aggregate(grading, ["1", "x"], ["a", "b"])
    assert metrics["pattern_regex"] == metrics["pattern_pass_rate"] == 0.5
    assert "pattern_must_contain" not in metrics and "pattern_must_not_contain" not in metrics
    assert grading.report({}, [])["pattern"] == {"regex": r"\d"}
    # WHEN nothing is configured THEN no pattern metric at all
    assert _resolve({"pattern": {}}, ["a", "b"]).report({}, [])["pattern"] is None


def test_bad_regex_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"pattern.regex '\(unclosed' is not a valid regular expression"):
        parse_graders({"pattern": {"regex": "(unclosed"}})


# ---------------------------------------------------------------------------------------------------------------------
# graders.json


def test_unknown_keys_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="graders.json: unknown key"):
        parse_graders({"judge": {"rubric": "be fair"}})
    with pytest.raises(ConfigError, match="pattern: unknown key"):
        parse_graders({"pattern": {"regexp": "x"}})
    with pytest.raises(ConfigError, match="must be an object"):
        parse_graders({"classification": True})


def test_thresholds_and_primary_metric_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"threshold token_f1 must be a number in \[0, 1\]"):
        parse_graders({"thresholds": {"token_f1": 1.5}})
    with pytest.raises(ConfigError, match="primary_metric 'bleu' is not one of"):
        parse_graders({"primary_metric": "bleu"})
    config = parse_graders({"thresholds": {"token_f1": 1}, "primary_metric": "classification_macro_f1"})
    assert config.thresholds == {"token_f1": 1.0} and config.primary_metric == "classification_macro_f1"


def test_read_graders_treats_an_absent_file_as_empty(tmp_path: Path) -> None:
    assert graders.read_graders(str(tmp_path / "absent.json")) == graders.GradersConfig()
    assert graders.read_graders("") == graders.GradersConfig()
    bad = tmp_path / "graders.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="is not JSON"):
        graders.read_graders(str(bad))
    bad.write_text(json.dumps({"thresholds": {"rouge_l": 0.25}}))
    assert graders.read_graders(str(bad)).thresholds == {"rouge_l": 0.25}


# ---------------------------------------------------------------------------------------------------------------------
# Gate


def _metrics(
    candidate: float, base: float, production: float | None = None, stop: float = 1.0
) -> dict[str, dict[str, float]]:
    out = {"candidate": {"exact_match": candidate, "stop_rate": stop}, "base": {"exact_match": base, "stop_rate": 1.0}}
    if production is not None:
        out["production"] = {"exact_match": production, "stop_rate": 1.0}
    return out


def _gate(
    metrics: dict[str, dict[str, float]],
    *,
    primary_metric: str = "exact_match",
    min_score: float = 0.0,
    max_regression_vs_production: float = 0.0,
    min_improvement_over_base: float = 0.0,
    min_stop_rate: float = 0.0,
    thresholds: dict[str, float] | None = None,
) -> tuple[bool, list[str]]:
    return gate.gate(
        metrics,
        primary_metric=primary_metric,
        min_score=min_score,
        max_regression_vs_production=max_regression_vs_production,
        min_improvement_over_base=min_improvement_over_base,
        min_stop_rate=min_stop_rate,
        thresholds=thresholds,
    )


def test_gate_passes_when_every_threshold_holds() -> None:
    assert _gate(_metrics(0.6, 0.4, 0.6), min_score=0.5) == (True, [])


def test_gate_fails_below_min_score() -> None:
    passed, reasons = _gate(_metrics(0.3, 0.1), min_score=0.5)
    assert not passed
    assert reasons == ["candidate exact_match 0.3000 is below the minimum score 0.5000"]


def test_gate_fails_without_enough_improvement_over_base() -> None:
    passed, reasons = _gate(_metrics(0.45, 0.4), min_improvement_over_base=0.1)
    assert not passed and len(reasons) == 1
    assert "improves on the base's 0.4000 by +0.0500, less than the required +0.1000" in reasons[0]


def test_gate_fails_on_regression_vs_production_and_skips_it_without_production() -> None:
    thresholds: dict[str, Any] = {"max_regression_vs_production": 0.05}
    passed, reasons = _gate(_metrics(0.5, 0.4, 0.6), **thresholds)
    assert not passed and len(reasons) == 1
    assert "regresses from production's 0.6000 by 0.1000, more than the allowed 0.0500" in reasons[0]
    assert _gate(_metrics(0.5, 0.4, 0.54), **thresholds) == (True, [])
    assert _gate(_metrics(0.5, 0.4), **thresholds) == (True, [])


def test_gate_flags_a_model_that_never_stops() -> None:
    passed, reasons = _gate(_metrics(0.5, 0.4, stop=0.0), min_stop_rate=0.9)
    assert not passed and len(reasons) == 1
    assert "EOS problem" in reasons[0]


def test_gate_lists_every_failed_threshold() -> None:
    thresholds: dict[str, Any] = {"min_score": 0.9, "min_improvement_over_base": 0.0, "min_stop_rate": 0.5}
    passed, reasons = _gate(_metrics(0.2, 0.3, 0.8, stop=0.1), **thresholds)
    assert not passed and len(reasons) == 4


def test_metric_thresholds_are_minima_for_the_candidate_with_the_shortfall() -> None:
    # GIVEN candidate accuracy 0.72 and token F1 0.9 (the base is far lower: thresholds only read the candidate)
    metrics = _metrics(0.5, 0.5)
    metrics["candidate"] |= {"classification_accuracy": 0.72, "token_f1": 0.9}
    metrics["base"] |= {"classification_accuracy": 0.1, "token_f1": 0.1}
    # WHEN accuracy must be >= 0.8 and token F1 >= 0.9 (met exactly)
    passed, reasons = _gate(metrics, thresholds={"classification_accuracy": 0.8, "token_f1": 0.9})
    # THEN only accuracy fails, short by 0.08
    assert not passed
    assert reasons == ["candidate classification_accuracy 0.7200 is below its threshold 0.8000 (short by 0.0800)"]
    assert _gate(metrics, thresholds={"classification_accuracy": 0.72}) == (True, [])


def test_a_float_sum_just_under_the_threshold_still_meets_it() -> None:
    # GIVEN a mean that lands on 0.7999999999999999 for "8 of 10"
    metrics = _metrics(0.5, 0.5)
    metrics["candidate"]["token_f1"] = sum([0.1] * 8)
    assert metrics["candidate"]["token_f1"] < 0.8
    assert _gate(metrics, thresholds={"token_f1": 0.8}) == (True, [])


def test_threshold_or_primary_metric_not_computed_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="threshold classification_accuracy: not computed; computed: exact_match"):
        _gate(_metrics(0.5, 0.4), thresholds={"classification_accuracy": 0.8})
    with pytest.raises(ConfigError, match="primary_metric json_valid: not computed"):
        _gate(_metrics(0.5, 0.4), primary_metric="json_valid")


def test_primary_metric_override_decides_the_gate() -> None:
    # GIVEN graders.json naming macro-F1 the primary metric, with exact match 0 but macro-F1 0.75
    config = parse_graders({"primary_metric": "classification_macro_f1"})
    assert config.primary_metric is not None
    metrics = {
        "candidate": {"exact_match": 0.0, "classification_macro_f1": 0.75, "stop_rate": 1.0},
        "base": {"exact_match": 0.0, "classification_macro_f1": 0.25, "stop_rate": 1.0},
    }
    # WHEN gated with min_score 0.5 THEN the minimum applies to macro-F1 (passes), not to exact match (would fail)
    assert _gate(metrics, primary_metric=config.primary_metric, min_score=0.5) == (True, [])
    assert not _gate(metrics, primary_metric="exact_match", min_score=0.5)[0]


def test_metrics_are_checked_before_any_model_runs() -> None:
    # GIVEN free-text references (no classification detected) and a threshold on accuracy
    grading = _resolve({}, ["one answer", "another answer"])
    # THEN require_computed (what main() calls before generating) refuses it, listing what is computed
    with pytest.raises(ConfigError, match="computed: exact_match, token_f1, rouge_l, stop_rate"):
        gate.require_computed(grading.metric_names(), "exact_match", {"classification_accuracy": 0.5})
    gate.require_computed(grading.metric_names(), "rouge_l", {"stop_rate": 0.9})


def test_regression_pass_rate_is_a_known_metric_computed_only_with_a_regression_set() -> None:
    # GIVEN graders.json naming regression_pass_rate as primary metric and threshold: accepted (a known metric)
    config = parse_graders({"primary_metric": "regression_pass_rate", "thresholds": {"regression_pass_rate": 0.9}})
    assert config.primary_metric == "regression_pass_rate"
    computed = _resolve({}, ["one answer", "another answer"]).metric_names()
    # WHEN there is no regression set (main() adds the metric only with one) THEN not computed, saying what it needs
    with pytest.raises(ConfigError, match="primary_metric regression_pass_rate: not computed.*a regression set"):
        gate.require_computed(computed, "regression_pass_rate", {})
    with pytest.raises(ConfigError, match="threshold regression_pass_rate: not computed"):
        gate.require_computed(computed, "exact_match", config.thresholds)
    gate.require_computed([*computed, "regression_pass_rate"], "regression_pass_rate", config.thresholds)
    # and with one, its threshold is a minimum for the candidate like any other
    metrics = {
        "candidate": {"exact_match": 0.5, "stop_rate": 1.0, "regression_pass_rate": 0.85},
        "base": {"exact_match": 0.5, "stop_rate": 1.0, "regression_pass_rate": 0.85},
    }
    assert _gate(metrics, thresholds=config.thresholds) == (
        False,
        ["candidate regression_pass_rate 0.8500 is below its threshold 0.9000 (short by 0.0500)"],
    )


def test_quantization_cost_is_said_in_each_graders_terms() -> None:
    from containers.evaluate.evaluate import quantization_cost

    # GIVEN the quantized candidate's and the merged model's scores
    metrics = {
        "candidate": {"classification_accuracy": 0.88, "token_f1": 0.70},
        "base": {"classification_accuracy": 0.5, "token_f1": 0.4},
        "unquantized": {"classification_accuracy": 0.91, "token_f1": 0.69},
    }
    cost = quantization_cost(metrics, ["classification_accuracy", "token_f1"])
    # THEN each metric's loss is kept, and only the losses are said
    assert cost is not None
    assert cost["lost"] == pytest.approx({"classification_accuracy": 0.03, "token_f1": -0.01})
    assert cost["said"] == ["quantization lost 0.0300 of classification_accuracy (0.9100 -> 0.8800)"]
    # AND only losses of a point or more are said, largest first, three at most (the rest stay in `lost`)
    many = {
        "candidate": {"a": 0.50, "b": 0.80, "c": 0.60, "d": 0.70, "e": 0.995},
        "unquantized": {"a": 0.52, "b": 0.90, "c": 0.65, "d": 0.74, "e": 1.0},
    }
    said = quantization_cost(many, list("abcde"))
    assert said is not None and len(said["lost"]) == 5
    assert [line.split(" of ")[1].split(" ")[0] for line in said["said"]] == ["b", "c", "d"]
    # AND without the merged model there is nothing to say
    assert quantization_cost({k: v for k, v in metrics.items() if k != "unquantized"}, ["token_f1"]) is None
