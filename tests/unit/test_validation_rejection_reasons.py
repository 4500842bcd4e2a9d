"""A rejected file always says why: lines left out by a code that severity_overrides made a warning still count
against max_invalid_fraction, and the rejection names it (too_many_invalid); junk after the end of a gzip file is
reported after the lines really read and at the compressed byte where it starts, not "after line 0"."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tuneplane.logic.validation.summary import headline
from tuneplane.logic.validation.validator import DatasetSource, validate_dataset
from tuneplane.models.validation import Code, ValidationOptions, ValidationReport


def example(i: int, pad: int = 0) -> str:
    user = {"role": "user", "content": f"Question {i}?" + " pad" * pad}
    return json.dumps({"messages": [user, {"role": "assistant", "content": f"Answer {i}."}]})


def validate(path: Path, **options: object) -> ValidationReport:
    return validate_dataset(DatasetSource.local(path), ValidationOptions.model_validate(options)).report


# ---- 4: a downgraded code still leaves its lines out; the rejection names the reason -----------------------------


@pytest.mark.parametrize(
    ("options", "also"),
    [
        pytest.param({}, set(), id="max_invalid_fraction-0"),
        pytest.param({"max_invalid_fraction": 0.1}, set(), id="max_invalid_fraction-0.1"),
        pytest.param({"min_examples": 25}, {Code.TOO_FEW_EXAMPLES}, id="too-few-examples-too"),
    ],
)
def test_a_rejection_caused_by_downgraded_lines_names_too_many_invalid(
    tmp_path: Path, options: dict[str, object], also: set[Code]
) -> None:
    # GIVEN 20 good examples and 10 lines of broken JSON, with invalid_json made a warning by the sidecar
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join([example(i) for i in range(20)] + ["{broken"] * 10) + "\n")
    # WHEN validated
    report = validate(path, severity_overrides={"invalid_json": "warning"}, **options)
    # THEN it is rejected, and an error says why: the 10 lines left out (naming the downgraded code) are over
    # max_invalid_fraction
    assert not report.passed
    errors = {count.code: count for count in report.errors}
    assert set(errors) == {Code.TOO_MANY_INVALID} | also
    message = errors[Code.TOO_MANY_INVALID].first_message
    assert message.startswith("10 of 30 lines (33.3%) cannot be used") and "invalid_json x10" in message
    assert "1 error" in headline(report) or "2 errors" in headline(report)


def test_downgraded_lines_within_max_invalid_fraction_pass(tmp_path: Path) -> None:
    # GIVEN 2 broken lines in 30, invalid_json a warning, and max_invalid_fraction 0.1
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join([example(i) for i in range(28)] + ["{broken"] * 2) + "\n")
    # WHEN validated THEN it passes with the lines left out and no too_many_invalid
    report = validate(path, severity_overrides={"invalid_json": "warning"}, max_invalid_fraction=0.1)
    assert report.passed and report.errors == [] and report.lines_dropped_count == 2


def test_line_errors_at_max_invalid_fraction_0_are_their_own_reason(tmp_path: Path) -> None:
    # GIVEN broken JSON lines that stay errors (the default)
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join([example(i) for i in range(20)] + ["{broken"] * 10) + "\n")
    # WHEN validated THEN invalid_json is the reason named (no extra too_many_invalid: the errors say it already)
    report = validate(path)
    assert not report.passed and [count.code for count in report.errors] == [Code.INVALID_JSON]


# ---- 5: junk after the end of the gzip data ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "pad", "members"),
    [
        pytest.param(30, 0, 1, id="smaller-than-a-chunk"),
        pytest.param(6000, 60, 1, id="several-chunks"),
        pytest.param(6000, 60, 3, id="several-members"),
    ],
)
@pytest.mark.parametrize("junk", [b"garbage!", b"x", b"\x00\x00\x00junk"], ids=["text", "one-byte", "nul-padded"])
def test_junk_after_the_gzip_data_is_reported_where_it_starts(
    tmp_path: Path, lines: int, pad: int, members: int, junk: bytes
) -> None:
    # GIVEN a gzip file (one or several members) of `lines` examples with bytes that are not gzip appended
    text = [example(i, pad) + "\n" for i in range(lines)]
    step = -(-lines // members)
    gz = b"".join(gzip.compress("".join(text[i : i + step]).encode(), mtime=0) for i in range(0, lines, step))
    path = tmp_path / "data.jsonl.gz"
    path.write_bytes(gz + junk)
    # WHEN validated
    report = validate(path)
    # THEN one unsupported_compression error says the junk starts at the end of the gzip data (NUL padding, which
    # gzip allows, skipped), after every line and every decompressed byte
    assert not report.passed
    (error,) = report.errors
    assert error.code is Code.UNSUPPORTED_COMPRESSION
    padding = len(junk) - len(junk.lstrip(b"\x00"))
    decompressed = sum(len(line.encode()) for line in text)
    assert f"at compressed byte {len(gz) + padding:,} (after line {lines:,}, {decompressed:,} bytes" in (
        error.first_message
    )
    assert "trailing garbage" in error.first_message
    assert report.lines_read == lines


def test_a_clean_multi_member_gzip_still_passes(tmp_path: Path) -> None:
    # GIVEN two gzip members back to back (what `cat a.gz b.gz` makes), nothing after them
    path = tmp_path / "data.jsonl.gz"
    first = "".join(example(i) + "\n" for i in range(20))
    second = "".join(example(i) + "\n" for i in range(20, 40))
    path.write_bytes(gzip.compress(first.encode()) + gzip.compress(second.encode()))
    # WHEN validated THEN every line of both is read and it passes
    report = validate(path)
    assert report.passed and report.lines_read == 40


def test_a_truncated_gzip_is_still_corrupt_or_truncated(tmp_path: Path) -> None:
    # GIVEN a gzip file cut short (no junk after it: its end is missing)
    data = gzip.compress("".join(example(i) + "\n" for i in range(3000)).encode())
    path = tmp_path / "data.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    # WHEN validated THEN it is the "corrupt or truncated" problem, not junk after the data
    report = validate(path)
    (error,) = report.errors
    assert error.first_message.startswith("corrupt or truncated gzip")
