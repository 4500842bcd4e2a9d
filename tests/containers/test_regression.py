"""The evaluate container's regression set (containers/evaluate/regression.py), pure Python: reading the *.jsonl
files (each error names file:line), each expectation, the pass rate and report, and the gate's drop rule (through
gate.gate, as evaluate.main calls it). The end-to-end run on a tiny model: test_evaluate.py."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from containers.common.jobkit import ConfigError
from containers.evaluate import gate, guards, regression
from containers.evaluate.regression import Expectation, RegressionSet

USER = [{"role": "user", "content": "say hi"}]


def _line(expect: Any = None, **fields: Any) -> str:
    return json.dumps({"messages": USER, "expect": {"max_words": 5} if expect is None else expect} | fields)


def _write(directory: Path, name: str, *lines: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text("".join(line + "\n" for line in lines))
    return directory


def _read(tmp_path: Path, *lines: str) -> RegressionSet:
    result = regression.read_regression(str(_write(tmp_path / "regression", "general.jsonl", *lines)))
    assert result is not None
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Reading


def test_files_are_read_sorted_with_default_ids_and_blank_lines_skipped(tmp_path: Path) -> None:
    # GIVEN two files written out of name order, a blank line, an explicit id, and a file that is not *.jsonl
    folder = tmp_path / "regression"
    _write(folder, "b_more.jsonl", _line(id="kept"))
    _write(folder, "a_general.jsonl", _line(), "", _line({"must_contain": ["hi"]}))
    (folder / "README.md").write_text("not a prompt")
    # WHEN read
    result = regression.read_regression(str(folder))
    # THEN files in name order, default ids <stem>:<line> (line numbers count the blank line), expect as written
    assert result is not None
    assert result.files == ("a_general.jsonl", "b_more.jsonl")
    assert [p.id for p in result.prompts] == ["a_general:1", "a_general:3", "kept"]
    assert result.prompts[1].expect == {"must_contain": ["hi"]}
    assert result.messages == [USER, USER, USER]


@pytest.mark.parametrize("location", ["", "missing", "empty", "blank"])
def test_no_regression_set(tmp_path: Path, location: str) -> None:
    # GIVEN an empty path, an absent folder, a folder without *.jsonl files, or one whose files hold only blank lines
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text(_line())
    _write(tmp_path / "blank", "general.jsonl", "", "  ")
    # THEN there is no regression set
    assert regression.read_regression(str(tmp_path / location) if location else "") is None


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["{not json"], "general.jsonl:1: not a JSON line"),
        ([_line(), "", "[1, 2"], "general.jsonl:3: not a JSON line"),
        (["[]"], "general.jsonl:1: expected"),
        ([_line(note="x")], "general.jsonl:1: unknown key(s) note"),
        ([_line({"max_words": 3, "contains": ["a"]})], "general.jsonl:1: unknown expect key(s) contains"),
        ([_line(), json.dumps({"messages": USER})], 'general.jsonl:2: "expect" is missing'),
        ([_line({})], 'general.jsonl:1: "expect" must hold at least one of'),
        ([_line({"regex": None})], 'general.jsonl:1: "expect" must hold at least one of'),
        ([_line("short")], 'general.jsonl:1: "expect" must be an object'),
        ([_line({"regex": "("})], "general.jsonl:1: expect.regex '(' is not a valid regular expression"),
        ([_line({"regex": ""})], "general.jsonl:1: expect.regex must be a non-empty string"),
        ([_line({"must_contain": "hi"})], "general.jsonl:1: expect.must_contain must be a non-empty list"),
        ([_line({"must_not_contain": []})], "general.jsonl:1: expect.must_not_contain must be a non-empty list"),
        ([_line({"must_contain": ["ok", ""]})], "general.jsonl:1: expect.must_contain must be a non-empty list"),
        ([_line({"must_not_contain": [" "]})], "general.jsonl:1: expect.must_not_contain must be a non-empty list"),
        ([_line({"must_not_contain": ["\u200b"]})], "general.jsonl:1: expect.must_not_contain must be a non-empty"),
        ([_line({"must_contain": ["ok", "\u00a0"]})], "general.jsonl:1: expect.must_contain must be a non-empty list"),
        ([_line({"stops": "yes"})], "general.jsonl:1: expect.stops must be true or false"),
        ([_line({"max_words": 0})], "general.jsonl:1: expect.max_words must be an integer >= 1"),
        ([_line({"max_words": 2.5})], "general.jsonl:1: expect.max_words must be an integer >= 1"),
        ([_line({"max_words": True})], "general.jsonl:1: expect.max_words must be an integer >= 1"),
        ([_line(id="")], "general.jsonl:1: id must be a non-empty string"),
        ([_line(id=7)], "general.jsonl:1: id must be a non-empty string"),
        ([_line(id="x"), _line(id="x")], "general.jsonl:2: id 'x' is already used at general.jsonl:1"),
        ([_line(), _line(id="general:1")], "general.jsonl:2: id 'general:1' is already used at general.jsonl:1"),
        ([_line(messages=[])], 'general.jsonl:1: "messages" must be a non-empty list'),
        ([_line(messages=[*USER, {"role": "assistant", "content": "hi"}])], "general.jsonl:1: the last message must"),
        ([_line(messages=[{"role": "user"}])], 'general.jsonl:1: every message must have a text "content"'),
        ([_line(messages=["say hi"])], "general.jsonl:1: every message must be an object"),
    ],
)
def test_bad_lines_are_config_errors_naming_file_and_line(tmp_path: Path, lines: list[str], message: str) -> None:
    # GIVEN a regression file with one bad line; WHEN read THEN a ConfigError naming file:line and what is wrong
    with pytest.raises(ConfigError) as raised:
        _read(tmp_path, *lines)
    assert str(raised.value).startswith(message), str(raised.value)


def test_at_most_2000_prompts(tmp_path: Path) -> None:
    # GIVEN exactly the maximum: read; one more (in a second file): a ConfigError naming the line over the limit
    folder = _write(tmp_path / "regression", "a.jsonl", *[_line()] * regression.MAX_PROMPTS)
    result = regression.read_regression(str(folder))
    assert result is not None and len(result.prompts) == regression.MAX_PROMPTS
    _write(folder, "b.jsonl", _line())
    with pytest.raises(ConfigError, match="^b.jsonl:1: the regression set holds more than 2000 prompts"):
        regression.read_regression(str(folder))


# ---------------------------------------------------------------------------------------------------------------------
# Expectations


def _checks(expect: dict[str, Any]) -> Expectation:
    return regression.parse_expect(expect, "t.jsonl:1")


def test_must_contain_needs_every_phrase_case_sensitive() -> None:
    checks = _checks({"must_contain": ["Paris", "France"]})
    assert checks.failures("Paris is in France.", stopped=True) == []
    assert checks.failures("Paris is in Europe.", stopped=True) == ["must_contain"]
    assert checks.failures("paris is in france.", stopped=True) == ["must_contain"]


def test_must_not_contain_refuses_any_phrase() -> None:
    checks = _checks({"must_not_contain": ["As an AI", "sorry"]})
    assert checks.failures("Here it is.", stopped=True) == []
    assert checks.failures("I am sorry.", stopped=True) == ["must_not_contain"]


def test_regex_is_searched_in_the_stripped_answer() -> None:
    checks = _checks({"regex": "^[0-9]+$"})
    assert checks.failures("\n 42 \n", stopped=True) == []  # a decoded answer may start with a newline
    assert checks.failures("about 42", stopped=True) == ["regex"]


def test_a_blank_phrase_is_refused_saying_which_item() -> None:
    # GIVEN must_not_contain with a whitespace-only phrase (it would be in every answer: every answer failing)
    # WHEN parsed THEN a ConfigError names the blank item
    with pytest.raises(ConfigError, match=r"^t.jsonl:1: expect.must_not_contain must be .*: item 1 \(' '\) is blank"):
        _checks({"must_not_contain": ["sorry", " "]})


NFC_CAFE, NFD_CAFE = "caf\u00e9", "cafe\u0301"


@pytest.mark.parametrize(
    "answer",
    ["As\u00a0an AI, no.", "As an\u200b AI, no.", "As an A\u200cI, no.", "As\u2060 an AI, no.", "\uff21s an AI, no."],
)
def test_must_not_contain_cannot_be_dodged_with_invisible_or_compatibility_characters(answer: str) -> None:
    # GIVEN must_not_contain "As an AI"; WHEN the answer spells it with a lookalike THEN it still fails the check
    assert _checks({"must_not_contain": ["As an AI"]}).failures(answer, stopped=True) == ["must_not_contain"]


def test_must_contain_and_regex_compare_normalised_text() -> None:
    # GIVEN an NFD phrase and an NFC regex; WHEN the answers are NFC, and NFD with a zero-width space
    checks = _checks({"must_contain": [NFD_CAFE], "regex": f"^{NFC_CAFE}!$"})
    # THEN both pass (the same text, encoded differently)
    assert checks.failures(f"{NFC_CAFE}!", stopped=True) == []
    assert checks.failures(f"\u200b{NFD_CAFE}!", stopped=True) == []
    assert checks.failures("cafe!", stopped=True) == ["must_contain", "regex"]


class WatchdogFired(Exception):
    """The test's outer timer fired: the regex ran without a time limit."""


def test_a_backtracking_regex_is_stopped_and_names_the_prompt_and_model(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a regression regex that backtracks catastrophically on prompt "slow", the limit lowered to 0.2 s, and an
    # outer 20 s timer (a missing limit fails the test instead of hanging it)
    monkeypatch.setattr(guards, "TIME_LIMIT_S", 0.2)
    prompts = RegressionSet(
        (
            regression.Prompt("fast", USER, {"max_words": 9}, Expectation(max_words=9)),
            regression.Prompt("slow", USER, {"regex": "(a|a)+$"}, _checks({"regex": "(a|a)+$"})),
        )
    )

    def fire(signum: int, frame: FrameType | None) -> None:
        raise WatchdogFired("no time limit")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, 20.0)
    try:
        # WHEN the candidate's answers are checked THEN a ConfigError names the regex, the prompt's id and the model
        with pytest.raises(ConfigError) as raised:
            regression.failures(prompts, ["ok", "a" * 40 + "!"], [True, True], model="candidate")
        # and the outer timer is handed back (still running)
        assert signal.getsignal(signal.SIGALRM) is fire and signal.getitimer(signal.ITIMER_REAL)[0] > 10
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert str(raised.value) == (
        "regression expect.regex '(a|a)+$' took more than 0.2 s on regression prompt 'slow' (candidate's answer): "
        "simplify it"
    )


def test_stops_needs_the_end_of_turn_token_and_false_checks_nothing() -> None:
    assert _checks({"stops": True}).failures("done", stopped=True) == []
    assert _checks({"stops": True}).failures("done", stopped=False) == ["stops"]
    assert _checks({"stops": False}).failures("done", stopped=False) == []


def test_max_words_counts_whitespace_separated_words() -> None:
    checks = _checks({"max_words": 3})
    assert checks.failures(" one two\nthree ", stopped=True) == []
    assert checks.failures("one two three four", stopped=True) == ["max_words"]


def test_every_failed_expectation_is_named() -> None:
    # GIVEN all five checks; WHEN an answer breaks all of them THEN each is named, in the documented order
    checks = _checks(
        {"must_contain": ["yes"], "must_not_contain": ["no"], "regex": "^Y", "stops": True, "max_words": 1}
    )
    assert checks.failures("no no no", stopped=False) == list(regression.EXPECT_KEYS)
    assert checks.failures("Yes yes", stopped=True) == ["max_words"]


# ---------------------------------------------------------------------------------------------------------------------
# Pass rate and outputs


def _set(*ids: str) -> RegressionSet:
    return RegressionSet(
        tuple(regression.Prompt(i, USER, {"max_words": 1}, Expectation(max_words=1)) for i in ids), ("g.jsonl",)
    )


def test_pass_rate_report_and_answer_records() -> None:
    # GIVEN four prompts that each accept one word; base answers two wrong, the candidate three
    prompts = _set("a", "b", "c", "d")
    answers = {"candidate": ["x", "x y", "x y", "x y"], "base": ["x y", "x", "x", "x y"]}
    stopped = {"candidate": [True, True, False, True], "base": [True] * 4}
    failed = {model: regression.failures(prompts, answers[model], stopped[model]) for model in answers}
    # THEN the rates, the failed ids and the ids the base passed and the candidate failed
    assert regression.pass_rate(failed["candidate"]) == 0.25 and regression.pass_rate(failed["base"]) == 0.5
    assert regression.report(prompts, failed) == {
        "examples": 4,
        "files": ["g.jsonl"],
        "per_model": {
            "candidate": {"pass_rate": 0.25, "failed": ["b", "c", "d"]},
            "base": {"pass_rate": 0.5, "failed": ["a", "d"]},
        },
        "lost": ["b", "c"],
    }
    # and one record per prompt with each model's answer, stop flag, verdict and failed checks
    records = regression.answer_records(prompts, answers, stopped, failed)
    assert records[2] == {
        "id": "c",
        "messages": USER,
        "expect": {"max_words": 1},
        "answers": {"candidate": "x y", "base": "x"},
        "stopped": {"candidate": False, "base": True},
        "passed": {"candidate": False, "base": True},
        "failed": {"candidate": ["max_words"], "base": []},
    }


def test_report_keeps_the_first_20_failed_ids() -> None:
    prompts = _set(*(f"p{i}" for i in range(25)))
    failed: dict[str, list[list[str]]] = {"candidate": [["stops"]] * 25, "base": [[]] * 25}
    section = regression.report(prompts, failed)
    assert section["per_model"]["candidate"]["failed"] == [f"p{i}" for i in range(20)]
    assert len(section["lost"]) == 25


def test_answers_of_another_length_are_refused() -> None:
    with pytest.raises(ValueError, match="one answer and one stop flag per regression prompt"):
        regression.failures(_set("a", "b"), ["x"], [True])


# ---------------------------------------------------------------------------------------------------------------------
# The gate's drop rule


def _gate(candidate: float | None, base: float | None, **options: Any) -> tuple[bool, list[str]]:
    metrics: dict[str, dict[str, float]] = {
        "candidate": {"exact_match": 0.5, "stop_rate": 1.0},
        "base": {"exact_match": 0.4, "stop_rate": 1.0},
    }
    if candidate is not None and base is not None:
        metrics["candidate"][regression.METRIC] = candidate
        metrics["base"][regression.METRIC] = base
    return gate.gate(
        metrics,
        primary_metric="exact_match",
        min_score=0.0,
        max_regression_vs_production=0.0,
        min_improvement_over_base=0.0,
        min_stop_rate=0.0,
        **options,
    )


def test_a_drop_within_the_allowance_passes() -> None:
    # GIVEN the default allowance 0.1: a drop of 0.08, of exactly 0.1 (0.8 - 0.7 is 0.10000000000000009), a rise
    assert _gate(0.74, 0.82, regression_lost=["a"]) == (True, [])
    assert _gate(0.7, 0.8, regression_lost=["a"]) == (True, [])
    assert _gate(0.9, 0.5) == (True, [])


def test_a_larger_drop_fails_naming_up_to_five_lost_ids() -> None:
    # GIVEN the candidate 0.2 below the base, having lost two prompts
    passed, reasons = _gate(0.62, 0.82, regression_lost=["follow-format", "general:4"])
    # THEN the reason has both rates, the drop, the allowance and the ids
    assert not passed
    assert reasons == [
        "candidate regression_pass_rate 0.6200 is 0.2000 below the base's 0.8200 (allowed drop 0.1000): it no longer "
        "passes follow-format, general:4"
    ]
    # and with seven lost ids only five are named
    _, reasons = _gate(0.1, 0.8, max_regression_drop=0.5, regression_lost=[f"p{i}" for i in range(7)])
    assert reasons[0].endswith("(allowed drop 0.5000): it no longer passes p0, p1, p2, p3, p4 (and 2 more)")


def test_the_allowance_is_configurable_and_inf_disables_the_rule() -> None:
    assert not _gate(0.62, 0.82, max_regression_drop=0.0, regression_lost=["a"])[0]
    assert _gate(0.62, 0.82, max_regression_drop=0.25, regression_lost=["a"]) == (True, [])
    assert _gate(0.0, 1.0, max_regression_drop=math.inf, regression_lost=["a"]) == (True, [])


def test_without_a_regression_set_there_is_no_rule() -> None:
    # GIVEN no regression_pass_rate in the metrics (no set), even with a strict allowance and lost ids
    assert _gate(None, None, max_regression_drop=0.0, regression_lost=["a"]) == (True, [])


def test_the_config_refuses_a_negative_allowance_and_parses_inf() -> None:
    from containers.evaluate.evaluate import EvaluateConfig, load_config

    with pytest.raises(ConfigError, match="max_regression_drop must be >= 0"):
        EvaluateConfig(max_regression_drop=-0.1)
    cfg = load_config(["--max_regression_drop", "inf", "--regression_dir", ""])
    assert cfg.max_regression_drop == math.inf and cfg.regression_dir == ""
    assert load_config([]).regression_dir == "/opt/ml/processing/input/regression"
    assert load_config([]).max_regression_drop == 0.1
