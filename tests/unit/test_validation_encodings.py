"""Files in the wrong encoding or with old-Mac line endings are named as such, with the command that converts them
(issue 15 item 12), instead of one bad line or a column of "unexpected character" errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tuneplane.logic.validation.validator import DatasetSource, ValidationResult, validate_dataset
from tuneplane.models.validation import Code, ValidationOptions

TEXT = "".join(
    json.dumps(
        {"messages": [{"role": "user", "content": f"Héllo {i} 中文?"}, {"role": "assistant", "content": "Oui."}]},
        ensure_ascii=False,  # non-ASCII text: fewer NULs in UTF-16 than plain ASCII would have
    )
    + "\n"
    for i in range(12)
)


def validate(tmp_path: Path, name: str, body: bytes) -> ValidationResult:
    path = tmp_path / name
    path.write_bytes(body)
    return validate_dataset(DatasetSource.local(path), ValidationOptions(), out_dir=tmp_path / "out")


def only_problem(result: ValidationResult) -> tuple[Code, int | None, str]:
    (problem,) = result.report.problems
    assert not result.report.passed and result.train_path is None
    return problem.code, problem.line, problem.message


@pytest.mark.parametrize(
    ("codec", "bom", "named"),
    [
        ("utf-16-le", b"", "UTF-16LE"),
        ("utf-16-be", b"", "UTF-16BE"),
        ("utf-16-le", b"\xff\xfe", "UTF-16LE"),
        ("utf-16-be", b"\xfe\xff", "UTF-16BE"),
        ("utf-32-le", b"", "UTF-32LE"),
        ("utf-32-be", b"", "UTF-32BE"),
        ("utf-32-le", b"\xff\xfe\x00\x00", "UTF-32LE"),
        ("utf-32-be", b"\x00\x00\xfe\xff", "UTF-32BE"),
    ],
)
@pytest.mark.parametrize("compressed", [False, True])
def test_utf16_and_utf32_are_named_with_or_without_a_byte_order_mark(
    tmp_path: Path, codec: str, bom: bytes, named: str, compressed: bool
) -> None:
    # GIVEN the dataset saved in another Unicode encoding, with or without its byte order mark, maybe gzipped
    body = bom + TEXT.encode(codec)
    # WHEN validated
    result = validate(tmp_path, "data.jsonl", gzip.compress(body) if compressed else body)
    # THEN one file-level error names the encoding and the command that converts it
    assert only_problem(result) == (
        Code.UNSUPPORTED_ENCODING,
        None,
        f"the file is {named}; save it as UTF-8, e.g. `iconv -f {named} -t UTF-8 in.jsonl > out.jsonl`",
    )


def test_the_named_conversion_really_gives_a_valid_file(tmp_path: Path) -> None:
    # GIVEN a BOM-less UTF-16BE file and the encoding the validator names
    body = TEXT.encode("utf-16-be")
    code, _, message = only_problem(validate(tmp_path, "data.jsonl", body))
    named = message.split("the file is ")[1].split(";")[0]
    # WHEN converted the way the message says (iconv -f NAMED -t UTF-8)
    converted = body.decode(named).encode("utf-8")
    # THEN the result passes
    assert code is Code.UNSUPPORTED_ENCODING
    assert validate(tmp_path, "fixed.jsonl", converted).report.passed


@pytest.mark.parametrize("compressed", [False, True])
def test_cr_only_line_endings_are_named_with_the_conversion(tmp_path: Path, compressed: bool) -> None:
    # GIVEN a file whose lines end with a lone CR (classic Mac OS)
    body = TEXT.replace("\n", "\r").encode()
    # WHEN validated
    result = validate(tmp_path, "data.jsonl", gzip.compress(body) if compressed else body)
    # THEN one file-level error names the line endings and how to convert them, not one over-long or bad line
    code, line, message = only_problem(result)
    assert (code, line) == (Code.UNSUPPORTED_LINE_ENDINGS, None)
    assert "lone CR (old Mac line endings)" in message
    assert "tr '\\r' '\\n' < in.jsonl > out.jsonl" in message
    # AND the conversion it names gives a file that passes
    assert validate(tmp_path, "fixed.jsonl", body.replace(b"\r", b"\n")).report.passed


def test_crlf_and_a_utf8_bom_are_still_fine(tmp_path: Path) -> None:
    # GIVEN a Windows file: UTF-8 with a BOM and CRLF line endings
    body = b"\xef\xbb\xbf" + TEXT.replace("\n", "\r\n").encode()
    # WHEN validated
    result = validate(tmp_path, "data.jsonl", body)
    # THEN it passes without a problem
    assert result.report.passed and result.report.problems == []


def test_a_utf8_file_with_a_stray_nul_is_not_called_utf16(tmp_path: Path) -> None:
    # GIVEN a UTF-8 file where one line holds a raw NUL byte
    lines = TEXT.encode().splitlines(keepends=True)
    lines[3] = lines[3].replace(b"Oui", b"O\x00i")
    # WHEN validated
    result = validate(tmp_path, "data.jsonl", b"".join(lines))
    # THEN that line is the problem (invalid JSON), not the file's encoding
    codes = [(p.code, p.line) for p in result.report.problems]
    assert codes == [(Code.INVALID_JSON, 4)]


@pytest.mark.parametrize("body", [b"\x00", b"\x00\n", b"{\x00\n"])
def test_a_tiny_file_with_nul_bytes_is_an_ordinary_bad_line(tmp_path: Path, body: bytes) -> None:
    # GIVEN a file of a few bytes holding a NUL (too short to tell an encoding from)
    # WHEN validated
    result = validate(tmp_path, "data.jsonl", body)
    # THEN its line is reported (invalid JSON), and nothing crashes or claims an encoding
    assert [(p.code, p.line) for p in result.report.problems if p.code is not Code.TOO_FEW_EXAMPLES] == [
        (Code.INVALID_JSON, 1)
    ]
