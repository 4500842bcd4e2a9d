"""Hostile input (issue 15 item 10): gzip bombs, billions of blank lines, giant lines and the machine's own limits.

Every bomb is made here, small, with the limits scaled down through ValidationOptions or a ResourceBudget so the
tests stay fast; bench/validation_bounds.py measures the same shapes at full size.
"""

from __future__ import annotations

import gzip
import io
import json
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuneplane.logic.validation import scanner as scanner_module
from tuneplane.logic.validation.reader import (
    UTF8_BOM,
    BlankLines,
    LongLine,
    UnsupportedLineEndingsError,
    iter_lines,
    open_stream,
)
from tuneplane.logic.validation.scanner import ResourceBudget
from tuneplane.logic.validation.validator import DatasetSource, ValidationResult, validate_dataset
from tuneplane.models.validation import Code, Severity, ValidationOptions

MIB = 1024 * 1024


def chat_line(index: int) -> bytes:
    record = {
        "messages": [{"role": "user", "content": f"Question {index}?"}, {"role": "assistant", "content": "Yes."}]
    }
    return json.dumps(record).encode() + b"\n"


def dataset(count: int = 20, start: int = 0) -> bytes:
    return b"".join(chat_line(i) for i in range(start, start + count))


def validate(path: Path, budget: ResourceBudget | None = None, **options: object) -> ValidationResult:
    return validate_dataset(
        DatasetSource.local(path),
        ValidationOptions.model_validate(options),
        out_dir=path.parent / "out",
        budget=budget,
    )


def errors(result: ValidationResult) -> list[tuple[Code, str]]:
    return [(p.code, p.message) for p in result.report.problems if p.severity is Severity.ERROR]


# ---- decompressed size and expansion ----------------------------------------------------------------------------


def test_a_gzip_bomb_of_blank_lines_is_stopped_by_its_expansion_naming_both_sizes(tmp_path: Path) -> None:
    # GIVEN a few valid lines, then 256 MiB of newlines: about 250 KB of gzip, all of it inside the first read-ahead
    path = tmp_path / "bomb.jsonl.gz"
    with gzip.GzipFile(path, "wb", mtime=0) as out:
        out.write(dataset())
        for _ in range(256):
            out.write(b"\n" * MIB)
    # WHEN validated with the default expansion limit
    started = time.perf_counter()
    result = validate(path)
    elapsed = time.perf_counter() - started
    # THEN one file-level error rejects it, naming the compressed and the decompressed sizes
    ((code, message),) = errors(result)
    assert code is Code.COMPRESSION_RATIO_TOO_HIGH
    assert "gzip expands more than 200 times (max_decompression_ratio)" in message
    compressed = int(message.split(": ")[1].split(" compressed bytes")[0].replace(",", ""))
    decompressed = int(message.split(" gave ")[1].split(" bytes")[0].replace(",", ""))
    assert decompressed > 200 * compressed
    # AND it stopped while streaming, near the point the check starts (the compressed side counts what the
    # decompressor consumed, not the megabyte read ahead), and wrote no splits
    assert decompressed <= scanner_module.RATIO_CHECKED_FROM_BYTES + 2 * MIB
    assert result.report.passed is False and result.train_path is None
    assert elapsed < 10


def test_the_decompressed_size_limit_stops_a_file_that_only_grows_when_decompressed(tmp_path: Path) -> None:
    # GIVEN 20,000 valid lines, gzipped (a few hundred KB on disk, far under max_file_bytes)
    path = tmp_path / "data.jsonl.gz"
    raw = dataset(20_000)
    path.write_bytes(gzip.compress(raw, mtime=0))
    # WHEN the decompressed limit is 1 MiB (and the compressed one would let it through)
    result = validate(path, max_decompressed_bytes=MIB, max_file_bytes=10 * MIB)
    # THEN it is rejected as too large, with the limit, the bytes decompressed and the compressed bytes read
    ((code, message),) = errors(result)
    assert code is Code.FILE_TOO_LARGE
    assert f"more than {MIB:,} bytes of data (max_decompressed_bytes)" in message
    assert f"({path.stat().st_size:,} in all)" in message
    assert len(raw) > MIB  # the file really was over the limit


def test_ordinary_gzip_passes_the_expansion_check(tmp_path: Path) -> None:
    # GIVEN 12 MiB of ordinary, varied examples, gzipped (past the point the expansion is checked from)
    path = tmp_path / "data.jsonl.gz"
    lines = [chat_line(i * 7919 % 1_000_003) for i in range(180_000)]
    raw = b"".join(lines)
    assert len(raw) > scanner_module.RATIO_CHECKED_FROM_BYTES
    path.write_bytes(gzip.compress(raw, mtime=0))
    # WHEN validated with the defaults
    result = validate(path)
    # THEN no size problem is reported and it passes
    assert errors(result) == []
    assert result.report.passed


# ---- lines ----------------------------------------------------------------------------------------------------------


def test_a_giant_line_is_one_problem_and_is_never_held_in_memory(tmp_path: Path) -> None:
    # GIVEN valid lines around one 24 MiB line of a single key, gzipped
    path = tmp_path / "giant.jsonl.gz"
    giant = b'{"' + b"k" * (24 * MIB) + b'": 1}\n'
    path.write_bytes(gzip.compress(dataset(10) + giant + dataset(10, start=10), mtime=0))
    # WHEN validated with a 64 KiB line limit
    tracemalloc.start()
    result = validate(path, max_line_bytes=64 * 1024, max_invalid_fraction=0.1, max_decompression_ratio=1e6)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # THEN that line is one line_too_long problem, the others are kept, and memory stayed far under the line's size
    counts = {c.code: c.count for c in result.report.problem_counts}
    assert counts == {Code.LINE_TOO_LONG: 1}
    (problem,) = result.report.problems
    assert (problem.line, problem.message.split(" bytes")[0]) == (11, f"{len(giant):,}")
    assert result.report.examples_valid == 20
    assert peak < 12 * MIB


def test_millions_of_blank_lines_cost_one_problem_per_run_and_constant_time_each(tmp_path: Path) -> None:
    # GIVEN an uncompressed file (no expansion check applies) with 20 million blank lines between valid ones
    path = tmp_path / "blank.jsonl"
    path.write_bytes(dataset(10) + b"\n" * 20_000_000 + b" \t\r\n" * 1000 + dataset(10, start=10))
    # WHEN validated
    started = time.perf_counter()
    result = validate(path)
    elapsed = time.perf_counter() - started
    # THEN the run is one warning naming its length and first line, the file passes and the line count is exact
    blank = [p for p in result.report.problems if p.code is Code.BLANK_LINE]
    assert [(p.line, p.message) for p in blank] == [(11, "20,001,000 blank lines skipped (to 20,001,010)")]
    assert result.report.passed
    assert result.report.lines_read == 20_001_020
    # AND it took seconds, not the minutes one Python step per line took (1M lines took ~5 s before)
    assert elapsed < 15


# ---- the machine's budget -------------------------------------------------------------------------------------------


def test_running_out_of_time_is_a_clear_platform_rejection_saying_what_was_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a valid file of 3 MiB and a clock that advances 10 s at every look (so the 25 s budget ends mid-file)
    path = tmp_path / "data.jsonl"
    path.write_bytes(dataset(60_000))
    clock = iter(range(0, 10_000_000, 10))
    monkeypatch.setattr(scanner_module, "_now", lambda: float(next(clock)))
    # WHEN validated with a budget of 25 s
    result = validate(path, ResourceBudget(seconds=25))
    # THEN one file-level error says the dataset is too large to validate in that time, that it is the platform's
    # limit and not a data error, and how far it got
    ((code, message),) = errors(result)
    assert code is Code.TOO_LARGE_TO_VALIDATE
    assert message.startswith("dataset too large to validate here: the 25 s this validation may take ran out.")
    assert "a limit of the platform, not an error in the data" in message
    assert "bytes of the file read" in message and f"of {path.stat().st_size:,} bytes" in message
    lines_read = result.report.lines_read
    assert 0 < lines_read < 60_000 and f"at line {lines_read:,}" in message
    # AND no dataset-level verdict is made on the part read (no too_few_examples), no splits are written
    assert not result.report.passed and result.train_path is None


def test_the_budget_stops_before_the_temporary_disk_fills(tmp_path: Path) -> None:
    # GIVEN 2,000 valid lines (~150 KB normalised) and 64 KiB of temporary disk beyond the headroom
    path = tmp_path / "data.jsonl"
    path.write_bytes(dataset(2000))
    budget = ResourceBudget(disk_bytes=scanner_module.DISK_HEADROOM_BYTES + 64 * 1024)
    # WHEN validated with the splits written next to the spill (two copies)
    result = validate(path, budget)
    # THEN it is stopped as too large to validate, naming the disk
    ((code, message),) = errors(result)
    assert code is Code.TOO_LARGE_TO_VALIDATE
    assert "bytes of temporary disk (2 copies of" in message
    assert result.report.examples_valid < 2000


def test_the_budget_caps_the_examples_held_in_memory(tmp_path: Path) -> None:
    # GIVEN 500 valid lines and a memory budget with room for 100 examples beyond the process's own needs
    path = tmp_path / "data.jsonl"
    path.write_bytes(dataset(500))
    headroom, per_example = scanner_module.MEMORY_HEADROOM_BYTES, scanner_module.MEMORY_PER_EXAMPLE_BYTES
    budget = ResourceBudget(memory_bytes=headroom + 100 * per_example + 50)
    # WHEN validated
    result = validate(path, budget)
    # THEN it stops at the 101st usable example with a platform rejection
    ((code, message),) = errors(result)
    assert code is Code.TOO_LARGE_TO_VALIDATE
    assert "more than 100 usable examples do not fit" in message
    assert result.report.examples_valid == 100


def test_a_lambda_context_becomes_its_remaining_time_less_a_margin_and_its_memory() -> None:
    # GIVEN what the Lambda runtime passes: 900 s left, 1024 MB
    class Context:
        memory_limit_in_mb = "1024"

        def get_remaining_time_in_millis(self) -> int:
            return 900_000

    # WHEN turned into a budget
    budget = ResourceBudget.for_lambda(Context(), margin_s=30)
    # THEN the time is what is left less the margin, and the memory is the function's
    assert budget == ResourceBudget(seconds=870.0, memory_bytes=1024 * MIB)
    # AND a stand-in without those attributes leaves everything unlimited
    assert ResourceBudget.for_lambda(object()) == ResourceBudget()


# ---- the line splitter against a plain reference -----------------------------------------------------------------


def reference_lines(data: bytes, limit: int) -> list[tuple[int, object]]:
    """What iter_lines must yield, computed the obvious way: whole file in memory, one step per line."""
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM) :]
    pieces = data.split(b"\n")
    ends_with_newline = data.endswith(b"\n")
    if ends_with_newline or not pieces[-1]:
        pieces.pop()
    out: list[tuple[int, object]] = []
    run_start, run = 0, 0
    for number, piece in enumerate(pieces, 1):
        if not piece or piece.isspace():
            run_start, run = (run_start, run + 1) if run else (number, 1)
            continue
        if run:
            out.append((run_start, BlankLines(run)))
            run = 0
        has_newline = number < len(pieces) or ends_with_newline
        if len(piece) > limit:
            out.append((number, LongLine(len(piece) + has_newline)))
        else:
            out.append((number, piece[:-1] if piece.endswith(b"\r") else piece))
    if run:
        out.append((run_start, BlankLines(run)))
    return out


@settings(max_examples=300, deadline=None)
@given(
    data=st.lists(
        st.sampled_from([b"a", b"{}", b" ", b"\t", b"\r", b"\n", b"\n", b"\n\n", b"xyz" * 5]), max_size=80
    ).map(b"".join),
    limit=st.integers(1, 20),
    chunk=st.integers(1, 17),
)
def test_lines_match_a_plain_reference_whatever_the_chunk_boundaries(data: bytes, limit: int, chunk: int) -> None:
    # GIVEN any mix of short lines, blank and whitespace lines, CRs and over-long lines
    # WHEN split with a tiny chunk size (so that lines, CRLFs and blank runs straddle chunks)
    lines = iter_lines(open_stream(io.BytesIO(data), "x.jsonl"), limit, chunk_bytes=chunk)
    # THEN the result is exactly the reference's, unless the first chunk shows CRs and no line feed (CR-only)
    first = data[:chunk]
    if b"\r" in first and b"\n" not in first:
        with pytest.raises(UnsupportedLineEndingsError):
            list(lines)
    else:
        assert list(lines) == reference_lines(data, limit)


def test_a_first_chunk_with_carriage_returns_and_no_line_feed_is_cr_only() -> None:
    # GIVEN lines ended by lone CRs
    # WHEN read
    # THEN the read is refused as CR-only instead of yielding one long line
    with pytest.raises(UnsupportedLineEndingsError):
        list(iter_lines(open_stream(io.BytesIO(b"{}\r{}\r"), "x.jsonl"), 100))
