"""One definition of a JSONL line, everywhere: the bytes up to b"\\n" (issue 15, "validated data that training
cannot read").

JSON allows U+2028, U+2029 and U+0085 raw inside a string and "\\r" raw between tokens; str.splitlines() ends a line
at each of them (and at "\\v", "\\f", "\\x1c"-"\\x1e"), so a file the validator accepted crashed the containers,
which read with it. Two belts, each tested on its own:

- every container reads with jobkit.iter_jsonl (split on b"\\n" only, as the validator's reader.py), so the file the
  validator accepted is read back record for record, whatever it holds;
- the Validate stage's train.jsonl / eval.jsonl hold no line break but the b"\\n" that ends each line, so even a
  reader that uses str.splitlines() reads the same records.

Generated text has no decimal digits and no '@' (no PII warnings), as in tests/unit/test_validation_properties.py.
"""

from __future__ import annotations

import codecs
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from containers.common import jobkit
from containers.evaluate import evaluate
from containers.merge import merge
from containers.quantize import quantize
from containers.train import train
from hypothesis import given, settings
from hypothesis import strategies as st

from tuneplane.logic.validation.ledger import one_line
from tuneplane.logic.validation.validator import DatasetSource, ValidationResult, validate_dataset
from tuneplane.models.validation import Severity, ValidationOptions

Messages = list[dict[str, Any]]
# Every character str.splitlines() ends a line at besides "\n" (the Python docs' table), and CRLF.
SPLITLINES_BREAKS = ["\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]

_pieces = st.one_of(
    st.characters(exclude_categories=("Cs", "Nd"), exclude_characters="@"),
    st.sampled_from(SPLITLINES_BREAKS + ["\n", '"', "\\", "{", "}]"]),
)
TEXT = st.lists(_pieces, min_size=1, max_size=8).map("".join).filter(lambda s: bool(s.strip()))
WITH_BREAK = st.tuples(TEXT, st.sampled_from(SPLITLINES_BREAKS), TEXT).map("".join)


@st.composite
def conversations(draw: st.DrawFn) -> Messages:
    """A chat conversation; its first user message always holds a line break, so every example is affected."""
    messages = [{"role": "system", "content": draw(TEXT)}] if draw(st.booleans()) else []
    for turn in range(draw(st.integers(1, 2))):
        user = draw(WITH_BREAK) if turn == 0 else draw(TEXT)
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": draw(TEXT)}]
    return messages


@st.composite
def jsonl_files(draw: st.DrawFn) -> tuple[bytes, list[Messages]]:
    """A chat JSONL file (11 to 16 distinct examples: the smallest that passes is 11) as a user may write it: UTF-8
    with the breaks raw where JSON allows it (U+0085, U+2028, U+2029 in strings, "\\r" between tokens), the others
    escaped; LF or CRLF endings, maybe a BOM, maybe blank lines."""
    examples = draw(
        st.lists(conversations(), min_size=11, max_size=16, unique_by=lambda m: json.dumps(m[:-1], sort_keys=True))
    )
    item_separator = draw(st.sampled_from([",", ", ", ",\r", "\r,", " ,\r "]))
    key_separator = draw(st.sampled_from([":", ": ", ":\r", "\r:\r"]))
    ending = draw(st.sampled_from([b"\n", b"\r\n"]))
    lines = [
        json.dumps({"messages": m}, ensure_ascii=False, separators=(item_separator, key_separator)).encode()
        for m in examples
    ]
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), b" \r")
    bom = codecs.BOM_UTF8 if draw(st.booleans()) else b""
    return bom + b"".join(line + ending for line in lines), examples


def canonical(conversations: list[Messages]) -> list[str]:
    """The conversations as an order-free, comparable list (the held-out split reorders them)."""
    return sorted(json.dumps(m, sort_keys=True) for m in conversations)


def read_eval_conversations(location: str) -> list[Messages]:
    prompts, references = evaluate.read_eval(location, 0)
    return [
        prompt + [{"role": "assistant", "content": answer}] for prompt, answer in zip(prompts, references, strict=True)
    ]


# Each container's own data loading, as its entrypoint calls it on a channel / input (a file or a directory).
CONTAINER_READERS: dict[str, Callable[[str], list[Messages]]] = {
    "jobkit.iter_jsonl": lambda location: [
        record["messages"] for file in jobkit.jsonl_files(location) for _, record in jobkit.iter_jsonl(file)
    ],
    "train.read_chat_rows": lambda location: [row["messages"] for row in train.read_chat_rows(location)],
    "evaluate.read_eval": read_eval_conversations,
    "merge.read_chat_jsonl": lambda location: merge.read_chat_jsonl(location),
    "quantize.read_chat_jsonl": lambda location: quantize.read_chat_jsonl(location),
}


def validate(data: bytes, root: Path) -> ValidationResult:
    path = root / "data.jsonl"
    path.write_bytes(data)
    return validate_dataset(DatasetSource.local(path), ValidationOptions(), out_dir=root / "out")


@settings(max_examples=40, deadline=None)
@given(jsonl_files())
def test_any_file_the_validator_accepts_every_container_reads_back_identically(
    file: tuple[bytes, list[Messages]],
) -> None:
    data, examples = file
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # GIVEN a chat file whose strings hold every character str.splitlines() splits on, some raw
        # WHEN it is validated
        result = validate(data, root)
        # THEN it is accepted, every example kept
        errors = [p.render() for p in result.report.problems if p.severity is Severity.ERROR]
        assert errors == [] and result.report.passed, errors
        assert result.report.examples_valid == len(examples)
        # AND every container's loader reads the accepted file itself record for record, in order
        for name, read in CONTAINER_READERS.items():
            assert read(str(root / "data.jsonl")) == examples, name
        # AND the normalised splits it wrote are read back, together, as the same records by every container
        splits = [path for path in (result.train_path, result.eval_path) if path is not None]
        for name, read in CONTAINER_READERS.items():
            assert canonical([m for path in splits for m in read(str(path))]) == canonical(examples), name
        # AND, the second belt, even str.splitlines() reads the same records from them: one line per example
        split_lines = [line for path in splits for line in path.read_text(encoding="utf-8").splitlines()]
        assert len(split_lines) == len(examples)
        assert canonical([json.loads(line)["messages"] for line in split_lines]) == canonical(examples)


def test_one_line_escapes_what_splitlines_splits_on_and_keeps_the_value() -> None:
    # GIVEN a JSON line with raw CR whitespace and raw U+0085 / U+2028 / U+2029 in a string, and a clean one
    raw = '{"messages":\r[{"role":"user","content":"a\x85b\u2028c\u2029d\\u000be"}]}'.encode()
    clean = b'{"messages": [{"role": "user", "content": "plain"}]}'
    # WHEN it is made one line
    line = one_line(raw)
    # THEN str.splitlines() sees one line, which parses to the same value
    assert len(line.decode().splitlines()) == 1
    assert json.loads(line) == json.loads(raw)
    assert b"\\u2028" in line and b"\\u2029" in line and b"\\u0085" in line
    # AND a line with none of them keeps the user's bytes as they are
    assert one_line(clean) is clean


def test_iter_jsonl_splits_on_lf_only_and_names_the_bad_line(tmp_path: Path) -> None:
    # GIVEN a BOM, a CRLF line whose string holds U+2028, a blank line and a broken line
    path = tmp_path / "data.jsonl"
    path.write_bytes(codecs.BOM_UTF8 + '{"a": "x\u2028y"}\r\n \r\n{"a": "z\x85"}\n{"a": \n'.encode())
    reader = jobkit.iter_jsonl(path)
    # WHEN it is read THEN the records come back whole, numbered by physical line, blank lines skipped
    assert next(reader) == (1, {"a": "x\u2028y"})
    assert next(reader) == (3, {"a": "z\x85"})
    # AND the broken one is named by file and line
    try:
        next(reader)
    except ValueError as exc:
        assert str(exc).startswith("data.jsonl line 4: not a JSON line")
    else:
        raise AssertionError("a broken line was read")
