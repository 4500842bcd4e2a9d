"""The line reader: constant memory whatever the line lengths, gzip by content, unsupported compressions."""

from __future__ import annotations

import bz2
import gzip
import io
import tracemalloc

import pytest

from tuneplane.logic.validation.reader import (
    BlankLines,
    LongLine,
    UnsupportedCompressionError,
    iter_lines,
    open_stream,
)


class _Generated:
    """A read(n) source that produces `size` bytes of one endless line without holding them."""

    def __init__(self, size: int, tail: bytes) -> None:
        self._left = size
        self._tail = tail

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            tail, self._tail = self._tail, b""
            return tail
        chunk = min(size if size > 0 else 1 << 16, self._left)
        self._left -= chunk
        return b"x" * chunk


def test_an_over_long_line_is_skipped_in_constant_memory() -> None:
    # GIVEN a 64 MB line followed by a normal one, read through a streaming source
    source = _Generated(64 * 1024 * 1024, b"\n{}\n")
    # WHEN the lines are read with a 1 MB limit
    tracemalloc.start()
    lines = list(iter_lines(open_stream(source, "big.jsonl"), max_line_bytes=1024 * 1024))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # THEN the long line is reported by size only, the next line still arrives, and memory stayed small
    assert lines == [(1, LongLine(64 * 1024 * 1024 + 1)), (2, b"{}")]
    assert peak < 8 * 1024 * 1024


def test_gzip_is_recognised_by_content_and_line_endings_are_normalised() -> None:
    # GIVEN gzip content under a plain .jsonl name, with a BOM and CRLF line endings
    body = gzip.compress(b'\xef\xbb\xbf{"a": 1}\r\n\r\n{"b": 2}')
    # WHEN read
    lines = list(iter_lines(open_stream(io.BytesIO(body), "data.jsonl"), max_line_bytes=100))
    # THEN BOM and CR are gone, the blank line keeps its number and the last line needs no newline
    assert lines == [(1, b'{"a": 1}'), (2, BlankLines(1)), (3, b'{"b": 2}')]


@pytest.mark.parametrize(
    ("body", "name", "kind"),
    [
        (bz2.compress(b"{}\n"), "data.jsonl", "bzip2"),
        (b"PK\x03\x04rest", "data.jsonl", "zip"),
        (b"{}\n", "data.jsonl.zst", "zstd"),
    ],
)
def test_unsupported_compression_is_named(body: bytes, name: str, kind: str) -> None:
    with pytest.raises(UnsupportedCompressionError) as raised:
        open_stream(io.BytesIO(body), name)
    assert raised.value.kind == kind


def test_a_utf16_file_gets_one_file_level_error(tmp_path) -> None:
    from pathlib import Path

    from tuneplane.logic.validation.validator import DatasetSource, validate_dataset
    from tuneplane.models.validation import Code, ValidationOptions

    # GIVEN a dataset saved as UTF-16 (what some Windows editors do)
    path: Path = tmp_path / "utf16.jsonl"
    path.write_bytes('{"prompt": "a", "completion": "b"}\n'.encode("utf-16"))
    # WHEN validated
    report = validate_dataset(DatasetSource.local(path), ValidationOptions()).report
    # THEN one file-level error says what the encoding is and what to do, instead of an error per line
    assert not report.passed
    assert [(p.code, p.line, p.message) for p in report.problems] == [
        (
            Code.UNSUPPORTED_ENCODING,
            None,
            "the file is UTF-16LE; save it as UTF-8, e.g. `iconv -f UTF-16LE -t UTF-8 in.jsonl > out.jsonl`",
        )
    ]
