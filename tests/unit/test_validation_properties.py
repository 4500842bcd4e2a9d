"""Property tests of the validator: any valid generated dataset passes, and any single corruption of one line of it
is reported with the right code at exactly that line.

Generated text has no decimal digits and no '@' so that it cannot contain an email address, phone or card
number; the assertions are on errors only (PII is a warning anyway).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuneplane.logic.validation.validator import DatasetSource, ValidationResult, validate_dataset
from tuneplane.models.validation import Code, Severity, ValidationOptions

# 11 is the smallest dataset that passes by default: one example is held out for eval and min_examples is 10.
MIN_VALID_EXAMPLES = 11

Record = dict[str, Any]

# Pieces of text: any character but digits, '@' and lone surrogates, or a piece that tends to break escaping
# (quotes, backslashes, JSON punctuation, line breaks) or is several code points (emoji with modifiers, ZWJ).
_pieces = st.one_of(
    st.characters(exclude_categories=("Cs", "Nd"), exclude_characters="@"),
    st.sampled_from(['"', "\\", "\\n", "'", '\\"', "{", "}]", "\n", "\r\n", "\t", "\u2028"]),
    st.sampled_from(["é", "中文", "🎉", "👍🏽", "🏳️‍🌈"]),
)
TEXT = st.lists(_pieces, min_size=1, max_size=12).map("".join).filter(lambda s: bool(s.strip()))
# Alpaca's optional input: absent, empty, or text.
OPTIONAL_INPUT = st.one_of(st.none(), st.just(""), TEXT)


@st.composite
def chat_records(draw: st.DrawFn) -> Record:
    messages = [{"role": "system", "content": draw(TEXT)}] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 3))):
        messages += [{"role": "user", "content": draw(TEXT)}, {"role": "assistant", "content": draw(TEXT)}]
    return {"messages": messages}


@st.composite
def alpaca_records(draw: st.DrawFn) -> Record:
    record = {"instruction": draw(TEXT)}
    extra = draw(OPTIONAL_INPUT)
    if extra is not None:
        record["input"] = extra
    record["output"] = draw(TEXT)
    return record


RECORDS: dict[str, st.SearchStrategy[Record]] = {
    "chat": chat_records(),
    "prompt_completion": st.fixed_dictionaries({"prompt": TEXT, "completion": TEXT}),
    "alpaca": alpaca_records(),
}


def normalise(record: Record) -> list[dict[str, str]]:
    if "messages" in record:
        return list(record["messages"])
    if "prompt" in record:
        return [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["completion"]}]
    extra = record.get("input") or ""
    prompt = f"{record['instruction']}\n\n{extra}" if extra.strip() else record["instruction"]
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]


def prompt_key(record: Record) -> str:
    """Distinct prompts once normalised, so examples are distinct and the held-out split takes exactly one."""
    return json.dumps(normalise(record)[:-1], sort_keys=True)


@st.composite
def datasets(
    draw: st.DrawFn, min_size: int = MIN_VALID_EXAMPLES, formats: tuple[str, ...] = tuple(RECORDS)
) -> tuple[str, list[Record]]:
    fmt = draw(st.sampled_from(sorted(formats)))
    records = draw(st.lists(RECORDS[fmt], min_size=min_size, max_size=min_size + 8, unique_by=prompt_key))
    return fmt, records


def encode(record: Record) -> bytes:
    return json.dumps(record, ensure_ascii=False).encode("utf-8")


def validate_lines(lines: list[bytes]) -> tuple[ValidationResult, int]:
    """Validate the lines as one file; return the result and how many examples the splits hold."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.jsonl"
        path.write_bytes(b"".join(line + b"\n" for line in lines))
        result = validate_dataset(DatasetSource.local(path), ValidationOptions(), out_dir=Path(tmp) / "out")
        written = sum(len(p.read_bytes().splitlines()) for p in (result.train_path, result.eval_path) if p)
    return result, written


def errors(result: ValidationResult) -> list[tuple[int | None, Code, str | None]]:
    return [(p.line, p.code, p.path) for p in result.report.problems if p.severity is Severity.ERROR]


# ---------------------------------------------------------------------------------------------------------------
# (a) valid datasets pass


@settings(max_examples=50, deadline=None)
@given(datasets(), st.booleans())
def test_any_valid_dataset_passes(dataset: tuple[str, list[Record]], ascii_only: bool) -> None:
    # GIVEN a generated dataset of one format, distinct examples with unicode, quotes and backslashes, written
    # as UTF-8 or as ASCII with \u escapes (emoji then become escaped surrogate pairs, which are valid)
    fmt, records = dataset
    lines = [json.dumps(r, ensure_ascii=ascii_only).encode("utf-8") for r in records]
    # WHEN it is validated
    result, written = validate_lines(lines)
    # THEN it passes without a single error, in the generated format, and every example reaches a split
    assert errors(result) == [], [p.render() for p in result.report.problems]
    assert result.report.passed
    assert result.report.format == fmt
    assert result.report.examples_valid == len(records)
    assert written == len(records)


# ---------------------------------------------------------------------------------------------------------------
# (b) any single corruption is found at its line


@dataclass(frozen=True)
class Corruption:
    """A corrupted line and the one error it must cause (path None: the problem has no field path)."""

    line: bytes
    code: Code
    path: str | None


Corrupter = Callable[[st.DrawFn, str, Record], Corruption]
MISSPELLINGS = {
    "system": ["sytem", "System", "systen", "sys"],
    "user": ["usr", "User", "uesr", "users", "human"],
    "assistant": ["assitant", "Assistant", "asistant", "assistent", "gpt"],
}
# per format: the fields a user writes, and which of them holds the answer
FIELDS = {
    "prompt_completion": (["prompt", "completion"], "completion"),
    "alpaca": (["instruction", "output"], "output"),
}


def truncate(draw: st.DrawFn, fmt: str, record: Record) -> Corruption:
    text = encode(record).decode("utf-8")
    cut = draw(st.integers(1, len(text) - 1))
    return Corruption(text[:cut].encode("utf-8"), Code.INVALID_JSON, None)


def json_array(draw: st.DrawFn, fmt: str, record: Record) -> Corruption:
    value = record["messages"] if fmt == "chat" else list(record.values())
    return Corruption(json.dumps(value).encode(), Code.NOT_AN_OBJECT, None)


def invalid_utf8(draw: st.DrawFn, fmt: str, record: Record) -> Corruption:
    data = encode(record)
    at = draw(st.integers(0, len(data)))
    bad = draw(st.sampled_from([b"\xff", b"\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf", b"\xe9"]))
    return Corruption(data[:at] + bad + data[at:], Code.NOT_UTF8, None)


def misspell_role(draw: st.DrawFn, fmt: str, record: Record) -> Corruption:
    messages = [dict(m) for m in record["messages"]]
    index = draw(st.integers(0, len(messages) - 1))
    messages[index]["role"] = draw(st.sampled_from(MISSPELLINGS[messages[index]["role"]]))
    return Corruption(encode({"messages": messages}), Code.UNRECOGNIZED_ROLE, f"messages[{index}].role")


def empty_answer(draw: st.DrawFn, fmt: str, record: Record) -> Corruption:
    empty = draw(st.sampled_from(["", " ", "\n", "\t \n"]))
    if fmt != "chat":
        answer = FIELDS[fmt][1]
        return Corruption(encode({**record, answer: empty}), Code.EMPTY_CONTENT, answer)
    messages = [dict(m) for m in record["messages"]]
    index = draw(st.sampled_from([i for i, m in enumerate(messages) if m["role"] == "assistant"]))
    messages[index]["content"] = empty
    return Corruption(encode({"messages": messages}), Code.EMPTY_CONTENT, f"messages[{index}].content")


def drop_answer(draw: st.DrawFn, fmt: str, record: Record) -> Corruption:
    if fmt != "chat":
        answer = FIELDS[fmt][1]
        rest = {k: v for k, v in record.items() if k != answer}
        return Corruption(encode(rest), Code.MESSAGE_MISSING_KEY, answer)
    messages = record["messages"][:-1]
    if any(m["role"] == "assistant" for m in messages):
        code, path = Code.LAST_MESSAGE_NOT_ASSISTANT, f"messages[{len(messages) - 1}].role"
    else:
        code, path = Code.NO_ASSISTANT_MESSAGE, "messages"
    return Corruption(encode({"messages": messages}), code, path)


def number_content(draw: st.DrawFn, fmt: str, record: Record) -> Corruption:
    number = draw(st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False)))
    if fmt != "chat":
        field = draw(st.sampled_from(FIELDS[fmt][0] + (["input"] if "input" in record else [])))
        return Corruption(encode({**record, field: number}), Code.CONTENT_NOT_STRING, field)
    messages: list[dict[str, Any]] = [dict(m) for m in record["messages"]]
    index = draw(st.integers(0, len(messages) - 1))
    messages[index]["content"] = number
    return Corruption(encode({"messages": messages}), Code.CONTENT_NOT_STRING, f"messages[{index}].content")


def lone_surrogate(draw: st.DrawFn, fmt: str, record: Record) -> Corruption:
    """Half of a surrogate pair in one text, written as a JSON escape: valid JSON, but not Unicode text."""
    half = chr(draw(st.integers(0xD800, 0xDFFF)))
    if fmt == "chat":
        fields = [(i, "content") for i in range(len(record["messages"]))]
    else:
        fields = [(0, key) for key in FIELDS[fmt][0] + (["input"] if "input" in record else [])]
    index, key = draw(st.sampled_from(fields))
    corrupted = json.loads(json.dumps(record))
    target = corrupted["messages"][index] if fmt == "chat" else corrupted
    at = draw(st.integers(0, len(target[key])))
    target[key] = target[key][:at] + half + target[key][at:]
    if fmt == "chat":
        path = f"messages[{index}].content"
    else:
        path = key  # the field the user wrote (for alpaca, not the combined "instruction/input")
    return Corruption(json.dumps(corrupted, ensure_ascii=True).encode(), Code.NOT_UTF8, path)


ALL_FORMATS = tuple(RECORDS)
# every kind of corruption, with the formats it applies to; each kind gets its own test run
CORRUPTIONS: dict[str, tuple[Corrupter, tuple[str, ...]]] = {
    "truncate": (truncate, ALL_FORMATS),
    "json_array": (json_array, ALL_FORMATS),
    "invalid_utf8": (invalid_utf8, ALL_FORMATS),
    "lone_surrogate": (lone_surrogate, ALL_FORMATS),
    "empty_answer": (empty_answer, ALL_FORMATS),
    "drop_answer": (drop_answer, ALL_FORMATS),
    "number_content": (number_content, ALL_FORMATS),
    "misspell_role": (misspell_role, ("chat",)),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_any_single_corruption_is_reported_at_its_line(kind: str, data: st.DataObject) -> None:
    corrupt, formats = CORRUPTIONS[kind]
    # GIVEN a valid dataset (one more example than needed, so losing one still leaves enough)
    fmt, records = data.draw(datasets(min_size=MIN_VALID_EXAMPLES + 1, formats=formats), label="dataset")
    lines = [encode(r) for r in records]
    # AND one of its lines corrupted in this way
    index = data.draw(st.integers(0, len(lines) - 1), label="line index")
    corruption = corrupt(data.draw, fmt, records[index])
    lines[index] = corruption.line
    # WHEN it is validated
    result, written = validate_lines(lines)
    # THEN exactly one error is reported: the expected code, at that 1-based line and field path
    assert errors(result) == [(index + 1, corruption.code, corruption.path)], [
        p.render() for p in result.report.problems
    ]
    # AND the file is rejected, nothing written
    assert not result.report.passed and written == 0
