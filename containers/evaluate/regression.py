"""The Evaluate job's regression set: general prompts with expected behaviours, answered by every model evaluated.

Why: a fine-tune can raise its task metric while forgetting how to follow a plain instruction or how to stop. The
eval split only measures the task; these stack-level prompts (the same for every run) catch the rest, and the gate
fails a candidate that passes clearly fewer of them than its base.

Pure Python (no torch), so its tests and the control plane's run without a model.

Input: every `*.jsonl` file of the regression input's folder (sorted by name; a single .jsonl file works too); an
absent folder, an empty path, no *.jsonl files, or files holding only blank lines mean no regression set. Each
non-blank line (a line as `jobkit.iter_jsonl` reads it) is

    {"id": "optional string", "messages": [chat messages ending with a user turn], "expect": {...}}

`id` defaults to `<file stem>:<line>` and must be unique across the set. `expect` holds at least one of (null is the
same as an absent key):
- must_contain: non-empty list of non-empty strings (not blank: whitespace or zero-width characters only), every one
  present in the answer (case-sensitive);
- must_not_contain: the same shape, none present;
- regex: a regular expression `re.search` must find in the answer (compiled once; re.error is a ConfigError; a
  search that takes more than guards.TIME_LIMIT_S on one answer is a ConfigError naming the prompt's id and model);
- stops: true: the answer ended on an end-of-turn token instead of running to max_new_tokens (false checks nothing);
- max_words: an int >= 1, the most whitespace-separated words the answer may have.
The text checks read the answer normalised (guards.normalize_text: NFKC without zero-width characters; phrases
normalised alike, so a non-breaking or zero-width space cannot slip past must_not_contain) and without its surrounding
whitespace, like graders.py's pattern checks; the regex searches that normalised text. Bad JSON, an
unknown key (in the record or in `expect`), a wrong type, a line whose last message is not the user's, a duplicate id
or more than MAX_PROMPTS prompts are ConfigErrors naming `file:line`.

Metric: `regression_pass_rate`, the share of prompts whose every expectation holds, per model. Gate (`drop_reason`,
called by gate.gate): the candidate's rate may be at most `max_regression_drop` below the base's; the reason names
the prompts the base passed and the candidate failed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from containers.common import jobkit
from containers.common.jobkit import ConfigError
from containers.evaluate import guards

METRIC = "regression_pass_rate"
EXPECT_KEYS = ("must_contain", "must_not_contain", "regex", "stops", "max_words")
RECORD_KEYS = ("id", "messages", "expect")
MAX_PROMPTS = 2000
FAILED_IDS_KEPT = 20  # per model, in evaluation.json (regression_answers.jsonl has every one)
LOST_IDS_IN_REASON = 5


@dataclass(frozen=True)
class Expectation:
    """The checks of one prompt's answer; only the configured ones are checked."""

    must_contain: tuple[str, ...] = ()
    must_not_contain: tuple[str, ...] = ()
    regex: re.Pattern[str] | None = None
    stops: bool = False
    max_words: int | None = None

    def failures(self, answer: str, stopped: bool, where: str = "an answer") -> list[str]:
        """The names (EXPECT_KEYS) of the checks the answer fails, in EXPECT_KEYS order; [] when it passes. `where`
        names the answer in the regex's timeout ConfigError."""
        text = guards.normalize_text(answer).strip()
        must_contain = [guards.normalize_text(s) for s in self.must_contain]
        failed = {
            "must_contain": bool(must_contain) and not all(s in text for s in must_contain),
            "must_not_contain": any(guards.normalize_text(s) in text for s in self.must_not_contain),
            "regex": self.regex is not None
            and not guards.search(self.regex, text, what="regression expect.regex", where=where),
            "stops": self.stops and not stopped,
            "max_words": self.max_words is not None and len(text.split()) > self.max_words,
        }
        return [name for name in EXPECT_KEYS if failed[name]]


@dataclass(frozen=True)
class Prompt:
    """One regression prompt: `expect` is the line's expect object as written (for regression_answers.jsonl)."""

    id: str
    messages: list[dict[str, Any]]
    expect: dict[str, Any]
    checks: Expectation


@dataclass(frozen=True)
class RegressionSet:
    prompts: tuple[Prompt, ...]
    files: tuple[str, ...] = field(default=())

    @property
    def messages(self) -> list[list[dict[str, Any]]]:
        return [prompt.messages for prompt in self.prompts]


# ---------------------------------------------------------------------------------------------------------------------
# Reading


def parse_expect(raw: Any, where: str) -> Expectation:
    """`expect`, checked; `where` ("file:line") starts every error."""
    if not isinstance(raw, dict):
        raise ConfigError(f'{where}: "expect" must be an object with at least one of {", ".join(EXPECT_KEYS)}')
    unknown = sorted(set(raw) - set(EXPECT_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown expect key(s) {', '.join(unknown)} (known: {', '.join(EXPECT_KEYS)})")
    given = {k: v for k, v in raw.items() if v is not None}
    if not given:
        raise ConfigError(f'{where}: "expect" must hold at least one of {", ".join(EXPECT_KEYS)}')
    regex = given.get("regex")
    compiled = None
    if regex is not None:
        if not isinstance(regex, str) or not regex:
            raise ConfigError(f"{where}: expect.regex must be a non-empty string")
        try:
            compiled = re.compile(regex)
        except re.error as exc:
            raise ConfigError(f"{where}: expect.regex {regex!r} is not a valid regular expression: {exc}") from exc
    stops = given.get("stops", False)
    if not isinstance(stops, bool):
        raise ConfigError(f"{where}: expect.stops must be true or false")
    max_words = given.get("max_words")
    if max_words is not None and (isinstance(max_words, bool) or not isinstance(max_words, int) or max_words < 1):
        raise ConfigError(f"{where}: expect.max_words must be an integer >= 1, not {max_words!r}")
    phrases = {
        key: guards.visible_strings(given[key], f"{where}: expect.{key}", minimum=1) if key in given else ()
        for key in ("must_contain", "must_not_contain")
    }
    return Expectation(
        must_contain=phrases["must_contain"],
        must_not_contain=phrases["must_not_contain"],
        regex=compiled,
        stops=stops,
        max_words=max_words,
    )


def parse_prompt(record: Any, file: Path, line: int) -> Prompt:
    """One line's record, checked (ConfigError naming `file:line`)."""
    where = f"{file.name}:{line}"
    if not isinstance(record, dict):
        raise ConfigError(f'{where}: expected {{"messages": [...], "expect": {{...}}}}, not {type(record).__name__}')
    unknown = sorted(set(record) - set(RECORD_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(RECORD_KEYS)})")
    prompt_id = record.get("id")
    if prompt_id is None:
        prompt_id = f"{file.stem}:{line}"
    elif not isinstance(prompt_id, str) or not prompt_id.strip():
        raise ConfigError(f"{where}: id must be a non-empty string")
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ConfigError(f'{where}: "messages" must be a non-empty list of chat messages')
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ConfigError(f'{where}: every message must be an object with a "role" and a "content"')
        if not isinstance(message.get("content"), str):
            raise ConfigError(f'{where}: every message must have a text "content"')
    if messages[-1]["role"] != "user":
        raise ConfigError(f"{where}: the last message must be the user's (the prompt the model answers)")
    if "expect" not in record:
        raise ConfigError(f'{where}: "expect" is missing')
    checks = parse_expect(record["expect"], where)
    return Prompt(id=prompt_id, messages=messages, expect=record["expect"], checks=checks)


_JSONL_LINE = re.compile(r" line (\d+): ")


def _records(file: Path) -> Iterator[tuple[int, Any]]:
    """jobkit.iter_jsonl's (line, record) pairs (its definition of a line, the one every container reads with); its
    "name line N: not a JSON line" ValueError becomes a ConfigError naming `file:line`."""
    try:
        yield from jobkit.iter_jsonl(file)
    except ValueError as exc:
        match = _JSONL_LINE.search(str(exc))
        where = f"{file.name}:{match.group(1)}" if match else file.name
        raise ConfigError(f"{where}: not a JSON line ({str(exc).split(': ', 1)[-1]})") from None


def read_regression(location: str) -> RegressionSet | None:
    """The regression set at `location` (a folder of *.jsonl files, or one file); None when there is none."""
    if not location:
        return None
    files = jobkit.jsonl_files(location)
    prompts: list[Prompt] = []
    lines_of: dict[str, str] = {}
    for file in files:
        for line, record in _records(file):
            where = f"{file.name}:{line}"
            if len(prompts) >= MAX_PROMPTS:
                raise ConfigError(f"{where}: the regression set holds more than {MAX_PROMPTS} prompts")
            prompt = parse_prompt(record, file, line)
            if prompt.id in lines_of:
                raise ConfigError(f"{where}: id {prompt.id!r} is already used at {lines_of[prompt.id]}")
            lines_of[prompt.id] = where
            prompts.append(prompt)
    if not prompts:
        return None
    return RegressionSet(tuple(prompts), tuple(file.name for file in files))


# ---------------------------------------------------------------------------------------------------------------------
# Scoring and reporting


def failures(
    regression: RegressionSet, answers: Sequence[str], stopped: Sequence[bool], *, model: str = "model"
) -> list[list[str]]:
    """Per prompt, the expectations its answer fails ([] when it passes); `model` names the answers in errors."""
    if not len(answers) == len(stopped) == len(regression.prompts):
        raise ValueError("one answer and one stop flag per regression prompt")
    return [
        p.checks.failures(a, s, where=f"regression prompt {p.id!r} ({model}'s answer)")
        for p, a, s in zip(regression.prompts, answers, stopped, strict=True)
    ]


def pass_rate(failed: Sequence[Sequence[str]]) -> float:
    return sum(1 for f in failed if not f) / len(failed) if failed else 0.0


def lost_ids(regression: RegressionSet, failed: Mapping[str, Sequence[Sequence[str]]]) -> list[str]:
    """Ids of the prompts the base passed and the candidate failed, in set order."""
    return [
        prompt.id
        for prompt, base, candidate in zip(regression.prompts, failed["base"], failed["candidate"], strict=True)
        if not base and candidate
    ]


def report(regression: RegressionSet, failed: Mapping[str, Sequence[Sequence[str]]]) -> dict[str, Any]:
    """evaluation.json's "regression" section."""
    return {
        "examples": len(regression.prompts),
        "files": list(regression.files),
        "per_model": {
            model: {
                "pass_rate": pass_rate(model_failed),
                "failed": [p.id for p, f in zip(regression.prompts, model_failed, strict=True) if f][:FAILED_IDS_KEPT],
            }
            for model, model_failed in failed.items()
        },
        "lost": lost_ids(regression, failed),
    }


def answer_records(
    regression: RegressionSet,
    answers: Mapping[str, Sequence[str]],
    stopped: Mapping[str, Sequence[bool]],
    failed: Mapping[str, Sequence[Sequence[str]]],
) -> list[dict[str, Any]]:
    """regression_answers.jsonl's lines, in set order: the prompt, and per model its answer, stop flag, whether it
    passed and the expectations it failed."""
    return [
        {
            "id": prompt.id,
            "messages": prompt.messages,
            "expect": prompt.expect,
            "answers": {model: answers[model][i] for model in failed},
            "stopped": {model: stopped[model][i] for model in failed},
            "passed": {model: not failed[model][i] for model in failed},
            "failed": {model: list(failed[model][i]) for model in failed},
        }
        for i, prompt in enumerate(regression.prompts)
    ]


# ---------------------------------------------------------------------------------------------------------------------
# Gate


def drop_reason(candidate: float, base: float, max_drop: float, lost: Sequence[str]) -> str | None:
    """The gate's sentence when the candidate's pass rate is more than `max_drop` below the base's (inf: never),
    else None. A float tolerance keeps a drop of exactly `max_drop` a pass (0.8 - 0.7 is 0.10000000000000009)."""
    drop = base - candidate
    if not drop > max_drop or math.isclose(drop, max_drop, abs_tol=1e-12):
        return None
    reason = (
        f"candidate {METRIC} {candidate:.4f} is {drop:.4f} below the base's {base:.4f} (allowed drop {max_drop:.4f})"
    )
    if lost:
        more = len(lost) - LOST_IDS_IN_REASON
        reason += f": it no longer passes {', '.join(lost[:LOST_IDS_IN_REASON])}" + (
            f" (and {more} more)" if more > 0 else ""
        )
    return reason
