"""The evaluate container's graders against an uploader's hostile or careless graders.json (containers/evaluate/
graders.py, json_grader.py, guards.py): patterns that backtrack catastrophically run under a time limit, a JSON Schema
that fails on one answer scores it 0 instead of failing the job, texts are compared NFKC-normalised without
zero-width characters, and blank labels or phrases are refused."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from containers.common.jobkit import ConfigError
from containers.evaluate import graders, guards
from containers.evaluate.graders import Graders, parse_graders

LIMIT_S = 0.2
WATCHDOG_S = 20.0
# Catastrophic backtracking on an answer of 40 "a" and a "!" (no match, so the engine tries every split): without a
# limit each of these runs for far longer than WATCHDOG_S (the brief measured seconds at 30 characters, doubling).
SLOW_REGEXES = [r"(a|a)+$", r"(\w+\s?)+$", r"(.*a){12}$", r"(?:a+b?)+$"]
SLOW_TEXT = "a" * 40 + "!"


class WatchdogFired(Exception):
    """The test's own outer timer fired: the check ran without a time limit."""


@pytest.fixture
def watchdog(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The guards' limit lowered to LIMIT_S, under an outer SIGALRM timer of WATCHDOG_S (so that a missing limit fails
    the test instead of hanging it; the guard must also hand this outer timer back)."""
    monkeypatch.setattr(guards, "TIME_LIMIT_S", LIMIT_S)

    def fire(signum: int, frame: FrameType | None) -> None:
        raise WatchdogFired(f"no time limit: still running after {WATCHDOG_S} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, WATCHDOG_S)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _resolve(raw: dict[str, Any], references: list[str]) -> Graders:
    return Graders.resolve(parse_graders(raw), references)


def _aggregate(grading: Graders, answers: list[str], model: str = "candidate") -> dict[str, float]:
    references = [f"r{i}" for i in range(len(answers))]
    metrics, _ = grading.aggregate(answers, references, [1] * len(answers), [True] * len(answers), model=model)
    return metrics


# ---------------------------------------------------------------------------------------------------------------------
# Time limit


@pytest.mark.parametrize("regex", SLOW_REGEXES)
def test_a_backtracking_pattern_regex_is_stopped_and_named(watchdog: None, regex: str) -> None:
    # GIVEN a pattern.regex that backtracks catastrophically, and a backtracking answer at example 1
    grading = _resolve({"pattern": {"regex": regex}}, ["r0", "r1"])
    started = time.monotonic()
    # WHEN the candidate's answers are scored
    with pytest.raises(ConfigError) as raised:
        _aggregate(grading, ["fine", SLOW_TEXT])
    # THEN a ConfigError names the pattern, the example and the model, soon after the limit
    assert str(raised.value) == (
        f"pattern regex {regex!r} took more than {LIMIT_S:g} s on example 1 (candidate's answer): simplify it"
    )
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("schema", "answer"),
    [
        ({"type": "string", "pattern": r"(a|a)+$"}, json.dumps(SLOW_TEXT)),
        ({"type": "object", "patternProperties": {r"(\w+\s?)+$": {"type": "integer"}}}, json.dumps({SLOW_TEXT: 1})),
        ({"type": "object", "propertyNames": {"pattern": r"(?:a+b?)+$"}}, json.dumps({SLOW_TEXT: 1})),
    ],
    ids=["pattern", "patternProperties", "propertyNames"],
)
def test_a_backtracking_json_schema_is_stopped_and_named(watchdog: None, schema: Any, answer: str) -> None:
    # GIVEN a JSON Schema whose regex backtracks (jsonschema runs it with Python's re)
    grading = _resolve({"json": {"schema": schema}}, ["r0", "r1"])
    # WHEN the base's answers are validated THEN a ConfigError names the schema, the example and the model
    with pytest.raises(ConfigError) as raised:
        _aggregate(grading, ['"ok"', answer], model="base")
    assert (
        str(raised.value) == f"the JSON Schema took more than {LIMIT_S:g} s on example 1 (base's answer): simplify it"
    )


def test_the_guard_restores_the_previous_handler_and_timer(watchdog: None) -> None:
    # GIVEN the watchdog's handler and timer (WATCHDOG_S) in place
    handler = signal.getsignal(signal.SIGALRM)
    grading = _resolve({"pattern": {"regex": "(a|a)+$"}}, ["r0"])
    # WHEN a quick check passes, and a slow one times out
    assert _aggregate(grading, ["aaa"])["pattern_regex"] == 1.0
    with pytest.raises(ConfigError, match="took more than"):
        _aggregate(grading, [SLOW_TEXT])
    # THEN the handler is the watchdog's again and its timer still runs, minus the time spent (not re-armed, not lost)
    assert signal.getsignal(signal.SIGALRM) is handler
    remaining, _ = signal.getitimer(signal.ITIMER_REAL)
    assert WATCHDOG_S - 5 < remaining < WATCHDOG_S - LIMIT_S


def test_without_an_outer_timer_none_is_left_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN no timer and the default SIGALRM action
    monkeypatch.setattr(guards, "TIME_LIMIT_S", LIMIT_S)
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    previous = signal.getsignal(signal.SIGALRM)
    # WHEN a check runs THEN no timer is left armed (it would kill the process later) and the action is restored
    assert _aggregate(_resolve({"pattern": {"regex": r"\d"}}, ["r0"]), ["1"])["pattern_regex"] == 1.0
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) is previous


def test_off_the_main_thread_checks_run_without_a_limit() -> None:
    # GIVEN graders used from a worker thread (signal.signal would raise ValueError there)
    grading = _resolve({"pattern": {"regex": r"^\d+$"}, "json": {"schema": {"type": "integer"}}}, ["r0", "r1"])
    results: list[dict[str, float]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(_aggregate(grading, ["12", "x"]))
        except BaseException as exc:  # handed to the main thread's assertion
            errors.append(exc)

    # WHEN scored there THEN the checks still run (unguarded) and score as on the main thread
    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=30)
    assert errors == []
    assert results[0]["pattern_regex"] == 0.5 and results[0]["json_schema_match"] == 0.5


# ---------------------------------------------------------------------------------------------------------------------
# A JSON Schema that fails on one answer


def test_a_recursive_ref_scores_the_answer_zero_and_is_counted() -> None:
    # GIVEN {"$ref": "#"}: valid for check_schema, but validating any instance recurses forever
    grading = _resolve({"json": {"schema": {"$ref": "#"}}}, ["r0", "r1", "r2"])
    answers = ['{"a": 1}', "2", "not json"]
    # WHEN the candidate's answers are scored THEN no crash: the JSON answers score 0 and are counted
    metrics = _aggregate(grading, answers)
    assert metrics["json_valid"] == pytest.approx(2 / 3)
    assert metrics["json_schema_match"] == 0.0
    errors = grading.report({"candidate": answers}, ["r0", "r1", "r2"])["json"]["json_schema_errors"]
    assert errors["candidate"]["count"] == 2  # "not json" never reaches the schema
    first = errors["candidate"]["first"]
    assert first["answer"] == "example 0 (candidate's answer)" and first["type"] == "RecursionError"
    assert "recursion" in first["message"]


def test_a_multiple_of_that_overflows_on_a_huge_integer_is_counted_per_model() -> None:
    # GIVEN multipleOf 0.1 (a float) and a 400-digit integer answer: int / float overflows
    grading = _resolve({"json": {"schema": {"type": "integer", "multipleOf": 0.1}}}, ["r0", "r1"])
    # WHEN the candidate answers the huge integer and 10, the base 10 and 20
    candidate = _aggregate(grading, ["9" * 400, "10"], model="candidate")
    base = _aggregate(grading, ["10", "20"], model="base")
    # THEN the huge one scores 0 (not a crash), the others validate; only the candidate has an error
    assert candidate["json_schema_match"] == 0.5 and base["json_schema_match"] == 1.0
    report = grading.report({"candidate": [], "base": []}, [])["json"]["json_schema_errors"]
    assert report["base"] == {"count": 0, "first": None}
    assert report["candidate"]["count"] == 1 and report["candidate"]["first"]["type"] == "OverflowError"
    assert report["candidate"]["first"]["answer"] == "example 0 (candidate's answer)"


class _Raises:
    """A validator whose validation raises `error` (for the message cut)."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def is_valid(self, instance: Any) -> bool:
        raise self.error


def test_a_schema_failure_message_is_cut_to_200_characters() -> None:
    # GIVEN a schema validator that fails with a 500-character message
    json_grader = graders.JsonGrader(schema={}, validator=_Raises(ValueError("x" * 500)))
    grading = Graders(json_grader=json_grader)
    # WHEN scored THEN the answer scores 0 and the reported message keeps 200 characters
    assert _aggregate(grading, ["{}"])["json_schema_match"] == 0.0
    first = grading.report({"candidate": ["{}"]}, ["r0"])["json"]["json_schema_errors"]["candidate"]["first"]
    assert first == {"answer": "example 0 (candidate's answer)", "type": "ValueError", "message": "x" * 200}


def test_an_unexpected_exception_from_the_validator_is_not_hidden() -> None:
    # GIVEN a validator failing with an error no schema causes (a bug): WHEN scored THEN it propagates
    grading = Graders(json_grader=graders.JsonGrader(schema={}, validator=_Raises(RuntimeError("bug"))))
    with pytest.raises(RuntimeError, match="bug"):
        _aggregate(grading, ["{}"])


def test_a_deeply_nested_json_answer_is_invalid_json_not_a_crash() -> None:
    # GIVEN an answer nested deeper than the JSON parser's recursion limit, and JSON references (shape inferred)
    answer = "[" * 5000 + "]" * 5000
    # WHEN parsed / scored THEN it is not valid JSON here (json.loads raises RecursionError on it)
    assert graders.parse_json(answer) == (False, None)
    grading = _resolve({}, ["[1]", "[2]"])
    assert _aggregate(grading, [answer, "[3]"])["json_valid"] == 0.5


# ---------------------------------------------------------------------------------------------------------------------
# Unicode


NFC_CAFE, NFD_CAFE = "caf\u00e9", "cafe\u0301"


def test_labels_answers_and_references_are_compared_nfkc_without_zero_width_characters() -> None:
    # GIVEN an NFC label "café" and references spelled NFD, with a zero-width space, and full-width
    labels = [NFC_CAFE, "tea"]
    references = [NFD_CAFE, "t\u200bea", "\uff54\uff45\uff41", NFC_CAFE]
    grading = _resolve({"classification": {"labels": labels}}, references)  # every reference is a label
    # WHEN answered with the same label in other encodings (and one real miss)
    answers = [NFC_CAFE, "TEA\u00a0", "te\u2060a", "coffee"]
    metrics, _ = grading.aggregate(answers, references, [1] * 4, [True] * 4)
    # THEN they match: 3 of 4 right
    assert metrics["classification_accuracy"] == 0.75
    assert graders.label_key(NFD_CAFE) == graders.label_key(NFC_CAFE) == NFC_CAFE
    assert grading.classification is not None
    matrix = grading.classification.confusion_matrix(answers, references)["matrix"]
    assert matrix == [[1, 0, 1], [0, 2, 0], [0, 0, 0]]


def test_an_nfd_label_matches_nfc_references() -> None:
    # GIVEN labels written NFD and references NFC: WHEN resolved THEN accepted (no "not one of the labels")
    grading = _resolve({"classification": {"labels": [NFD_CAFE, "tea"]}}, [NFC_CAFE, "tea"])
    assert grading.classification is not None and grading.classification.column(NFC_CAFE) == 0


def test_labels_equal_once_normalised_are_not_distinct() -> None:
    with pytest.raises(ConfigError, match="distinct"):
        parse_graders({"classification": {"labels": [NFC_CAFE, NFD_CAFE]}})


@pytest.mark.parametrize(
    "answer",
    [
        "As\u00a0an AI, I cannot.",  # non-breaking space
        "As an\u200b AI, I cannot.",  # zero-width space
        "As an A\u200dI, I cannot.",  # zero-width joiner inside the word
        "\ufeffAs an AI, I cannot.",  # BOM
        "\uff21s an AI, I cannot.",  # full-width A
    ],
)
def test_must_not_contain_cannot_be_dodged_with_invisible_or_compatibility_characters(answer: str) -> None:
    # GIVEN must_not_contain "As an AI"; WHEN the answer spells it with a lookalike THEN the check still fails it
    grading = _resolve({"pattern": {"must_not_contain": ["As an AI"]}}, ["r0"])
    assert _aggregate(grading, [answer])["pattern_must_not_contain"] == 0.0


def test_must_contain_and_regex_read_the_normalised_answer() -> None:
    # GIVEN an NFD phrase and a regex written NFC
    grading = _resolve({"pattern": {"must_contain": [NFD_CAFE], "regex": f"^{NFC_CAFE} au lait$"}}, ["r0", "r1"])
    # WHEN the answers are NFC / NFD (with a zero-width space) THEN both pass both checks
    metrics = _aggregate(grading, [f"{NFC_CAFE} au lait", f"\u200b{NFD_CAFE} au\u00a0lait"])
    assert metrics["pattern_must_contain"] == 1.0 and metrics["pattern_regex"] == 1.0


# ---------------------------------------------------------------------------------------------------------------------
# Blank labels and phrases


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"classification": {"labels": ["pos", " "]}}, "classification.labels must be a list of at least 2 non-empty"),
        ({"classification": {"labels": ["pos", "\u200b"]}}, "classification.labels must be a list of at least 2 non"),
        ({"pattern": {"must_not_contain": [" "]}}, "pattern.must_not_contain must be a list of non-empty strings"),
        ({"pattern": {"must_not_contain": ["\u00a0"]}}, "pattern.must_not_contain must be a list of non-empty"),
        ({"pattern": {"must_contain": ["ok", "\ufeff\t"]}}, "pattern.must_contain must be a list of non-empty"),
    ],
)
def test_blank_labels_and_phrases_are_refused(section: dict[str, Any], message: str) -> None:
    # GIVEN a label or phrase with nothing visible; WHEN parsed THEN a ConfigError saying which item is blank
    with pytest.raises(ConfigError) as raised:
        parse_graders(section)
    assert str(raised.value).startswith(f"graders.json {message}"), str(raised.value)
    assert "is blank" in str(raised.value)


def test_the_list_message_does_not_mention_a_minimum_of_zero() -> None:
    # GIVEN must_contain that is not a list; WHEN parsed THEN the message has no "at least 0"
    with pytest.raises(ConfigError) as raised:
        parse_graders({"pattern": {"must_contain": "Thanks"}})
    assert str(raised.value) == "graders.json pattern.must_contain must be a list of non-empty strings"
    with pytest.raises(
        ConfigError, match=r"^graders.json classification.labels must be a list of at least 2 non-empty"
    ):
        parse_graders({"classification": {"labels": ["only"]}})


# ---------------------------------------------------------------------------------------------------------------------
# A graders.json nested too deeply


def test_a_graders_file_or_schema_nested_too_deeply_is_a_config_error(tmp_path: Path) -> None:
    # GIVEN a graders.json of 5000 nested arrays (json.loads raises RecursionError), and a schema nested 3000 deep
    # (check_schema recurses); WHEN read / parsed THEN ConfigErrors, not a crash
    deep_file = tmp_path / "graders.json"
    deep_file.write_text('{"json": {"schema": ' + "[" * 5000 + "]" * 5000 + "}}")
    with pytest.raises(ConfigError, match="is nested too deeply to read"):
        graders.read_graders(str(deep_file))
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(3000):
        schema = {"items": schema}
    with pytest.raises(ConfigError, match="json.schema is nested too deeply to check"):
        parse_graders({"json": {"schema": schema}})
