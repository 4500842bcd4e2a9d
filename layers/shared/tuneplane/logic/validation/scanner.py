"""Pass one over a file: every line parsed, checked and normalised, usable examples handed on.

The scan stops early, with one file-level problem that names what was read so far, when the data breaks a limit the
options set (decompressed size, gzip expansion) or when the machine's budget (time, memory, temporary disk: see
:class:`ResourceBudget`) would not last to the end. A failure that is not the data's is never reported as a problem
with the data: a source that cannot be read after retries raises StorageError, a full disk PlatformLimitExceeded.
"""

from __future__ import annotations

import errno
import gzip
import io
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tuneplane.errors import DatasetNotFound, PermissionDenied, PlatformLimitExceeded, StorageError
from tuneplane.logic.validation.formats import (
    CHECKERS,
    Finding,
    Message,
    content_path,
    detect_format,
    key_label,
    preview,
    type_name,
)
from tuneplane.logic.validation.pii import find_pii, may_contain_pii
from tuneplane.logic.validation.problems import ProblemLog
from tuneplane.logic.validation.reader import (
    CORRUPT_GZIP_ERRORS,
    BlankLines,
    LongLine,
    Readable,
    ReadProgress,
    Reopen,
    SourceReadError,
    UnsupportedCompressionError,
    UnsupportedEncodingError,
    UnsupportedLineEndingsError,
    iter_lines,
    open_stream,
)
from tuneplane.models.validation import Code, DatasetFormat, Severity, Source, ValidationOptions

_FORMAT_KEYS = "chat ('messages'), prompt/completion ('prompt', 'completion') or alpaca ('instruction', 'output')"
# The gzip expansion is judged only once this much has been decompressed: a small file may expand a lot harmlessly.
# The compressed side is what the decompressor has consumed (ReadProgress.consumed), not what was read ahead.
RATIO_CHECKED_FROM_BYTES = 8 * 1024 * 1024
# What is left to do after pass one (copy the spilled examples into the splits, upload them to S3) is reserved out of
# the time budget at this rate per spilled byte: an assumption meant to be conservative, not a measurement of the
# deployment (nothing here measured a Lambda's upload rate).
FINISH_BYTES_PER_SECOND = 50 * 1024 * 1024
# Memory one usable example costs until the end: the ledger's 28 bytes in growing arrays and the numpy copies the
# dataset-wide checks make. bench/validation_bounds.py measured 82-91 bytes of peak RSS per example (1.3M and 4.6M
# examples); about 20% is added for a tokenizer stage's batches. With a 1 GB Lambda: (1024 - 448) MiB / 112 B, about
# 5.4 million examples.
MEMORY_PER_EXAMPLE_BYTES = 112
# Memory the process needs besides the examples: the interpreter and its libraries (about 70 MiB without a tokenizer,
# measured by bench/validation_bounds.py), a loaded tokenizer (not measured here: a large vocabulary takes tens to
# hundreds of MiB), one line's parse, a tokenizer batch. A fixed figure, not a reading of the process's size, so that
# the same dataset gets the same verdict in a cold and in a warm Lambda (whose allocator may still hold a previous
# invocation's memory).
MEMORY_HEADROOM_BYTES = 448 * 1024 * 1024
# Temporary disk kept free (the splits' upload, logs, other writers).
DISK_HEADROOM_BYTES = 256 * 1024 * 1024

# (line, normalised messages, their canonical JSON) for every line with no error
Usable = Callable[[int, list[Message], bytes], None]


def _now() -> float:
    """The clock of the time budget (a function of its own, so a test can stand in for it)."""
    return time.monotonic()


@dataclass(frozen=True)
class ResourceBudget:
    """What the machine running validation can give it: these are the platform's limits, not the data's.

    ``seconds``: wall-clock time for the whole validation (None: no limit); ``memory_bytes``: the process's memory
    limit, which caps the number of usable examples (each costs MEMORY_PER_EXAMPLE_BYTES until the end);
    ``disk_bytes``: temporary disk for the spilled examples and the splits (None: the free space measured when
    validation starts).
    """

    seconds: float | None = None
    memory_bytes: int | None = None
    disk_bytes: int | None = None

    @classmethod
    def for_lambda(cls, context: object, margin_s: float = 30.0, tmp_bytes: int | None = None) -> ResourceBudget:
        """The Lambda's remaining time less `margin_s` (for the report's upload), its memory size and its /tmp (the
        free space measured, but never more than `tmp_bytes`, its EphemeralStorage); anything the context does not
        tell (a test's stand-in) is left unlimited."""
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        memory_mb = getattr(context, "memory_limit_in_mb", None)
        disk = None if tmp_bytes is None else min(tmp_bytes, shutil.disk_usage(tempfile.gettempdir()).free)
        return cls(
            seconds=max(remaining() / 1000 - margin_s, 1.0) if callable(remaining) else None,
            memory_bytes=int(memory_mb) * 1024 * 1024 if memory_mb else None,
            disk_bytes=disk,
        )


class LimitReached(Exception):
    """The scan was stopped: `code` and `message` are the file-level problem that says why."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Meter:
    """Counts what validation has used so far, across both files, and stops it before a budget runs out.

    `disk_copies` is how many copies of the spilled examples the temporary disk holds at the end: two when the
    splits are written to the same filesystem as the spill (the Lambda's /tmp), else one.
    """

    budget: ResourceBudget = field(default_factory=ResourceBudget)
    disk_copies: int = 2
    spill_dir: Path | None = None
    started: float = field(default_factory=lambda: _now())
    spilled_bytes: int = 0
    examples: int = 0

    def __post_init__(self) -> None:
        disk = self.budget.disk_bytes
        if disk is None and self.spill_dir is not None:
            disk = shutil.disk_usage(self.spill_dir).free
        self.disk_limit = None if disk is None else max(disk - DISK_HEADROOM_BYTES, 0) // max(self.disk_copies, 1)
        self.example_limit: int | None = None
        if self.budget.memory_bytes is not None:
            free = self.budget.memory_bytes - MEMORY_HEADROOM_BYTES
            self.example_limit = max(free, 0) // MEMORY_PER_EXAMPLE_BYTES
        self.deadline = None if self.budget.seconds is None else self.started + self.budget.seconds

    def elapsed(self) -> float:
        return _now() - self.started

    def out_of_time(self) -> bool:
        """Would finishing (the rest of pass two included) overrun the time budget if we stopped reading now?"""
        finish = self.spilled_bytes / FINISH_BYTES_PER_SECOND
        return self.deadline is not None and _now() + finish > self.deadline

    def add_example(self, example_bytes: int) -> str | None:
        """Count one spilled example; the reason why validation cannot go on, or None."""
        self.examples += 1
        self.spilled_bytes += example_bytes + 1
        if self.disk_limit is not None and self.spilled_bytes > self.disk_limit:
            return (
                f"the normalised examples need more than {self.disk_limit * self.disk_copies:,} bytes of temporary "
                f"disk ({self.disk_copies} cop{'ies' if self.disk_copies > 1 else 'y'} of {self.spilled_bytes:,} "
                "bytes so far)"
            )
        if self.example_limit is not None and self.examples > self.example_limit:
            assert self.budget.memory_bytes is not None
            return (
                f"more than {self.example_limit:,} usable examples do not fit the "
                f"{self.budget.memory_bytes // 1024**2:,} MiB of memory (about {MEMORY_PER_EXAMPLE_BYTES} bytes each)"
            )
        return None


@dataclass
class ScanOutcome:
    lines_read: int = 0
    non_blank_lines: int = 0
    format: DatasetFormat | None = None
    complete: bool = True  # False: stopped early by a limit; counts cover lines_read only
    compressed_bytes: int = 0
    decompressed_bytes: int = 0


class FileScanner:
    def __init__(
        self, options: ValidationOptions, problems: ProblemLog, source: Source, meter: Meter | None = None
    ) -> None:
        self._options = options
        self._problems = problems
        self._source = source
        self._meter = meter or Meter()
        self._format_line = 0
        self._progress = ReadProgress()
        self._size: int | None = None
        self._gzip = False
        self.outcome = ScanOutcome()

    _line_errors = False

    def scan(
        self, name: str, raw: Readable, size: int | None, usable: Usable, *, reopen: Reopen | None = None
    ) -> ScanOutcome:
        """Scan one file. `reopen(offset)`, when the source has it, lets a transient read failure be retried from
        the byte reached; a failure that outlasts the retries raises StorageError (the platform's fault)."""
        self._size = size
        if size is not None and size > self._options.max_file_bytes:
            self._file_problem(
                Code.FILE_TOO_LARGE, f"{size:,} bytes; the limit is {self._options.max_file_bytes:,} (max_file_bytes)"
            )
            self.outcome.complete = False
            return self.outcome
        try:
            stream = open_stream(raw, name, progress=self._progress, reopen=reopen)
        except UnsupportedCompressionError as exc:
            self._file_problem(
                Code.UNSUPPORTED_COMPRESSION, f"{exc.kind} is not supported; upload plain .jsonl or gzip (.jsonl.gz)"
            )
            return self.outcome
        except SourceReadError as exc:
            raise StorageError(f"cannot read {name}: {exc}") from exc
        self._gzip = isinstance(stream, gzip.GzipFile)
        try:
            with stream:
                self._read(stream, self._counted(usable))
        except SourceReadError as exc:  # the transport's fault, retried already: never the data's
            raise StorageError(f"cannot read {name} after line {self.outcome.lines_read:,}: {exc}") from exc
        except (DatasetNotFound, PermissionDenied) as exc:  # a resumed read refused for good: named by its cause
            exc.args = (f"cannot read {name} after line {self.outcome.lines_read:,}: {exc}",)
            raise
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise PlatformLimitExceeded(
                    f"the validator's temporary disk is full after line {self.outcome.lines_read:,} of {name} "
                    f"({self._meter.spilled_bytes:,} bytes of examples spilled): a limit of the platform, not an "
                    "error in the data"
                ) from exc
            raise
        finally:
            self.outcome.compressed_bytes = self._progress.compressed
        if self.outcome.non_blank_lines == 0 and self.outcome.complete:
            self._file_problem(Code.FILE_EMPTY, "no examples: the file is empty or holds only blank lines")
        return self.outcome

    def _read(self, stream: io.BufferedIOBase, usable: Usable) -> None:
        """Every line through _scan_line; what stops the read because of the data becomes a file-level problem."""
        try:
            for line, data in iter_lines(stream, self._options.max_line_bytes, self._on_chunk):
                self._scan_line(line, data, usable)
        except LimitReached as exc:
            self.outcome.complete = False
            self._file_problem(exc.code, exc.message)
        except UnsupportedEncodingError as exc:
            self.outcome.complete = False
            self._file_problem(
                Code.UNSUPPORTED_ENCODING,
                f"the file is {exc.encoding}; save it as UTF-8, e.g. `{exc.how_to_convert}`",
            )
        except UnsupportedLineEndingsError:
            self.outcome.complete = False
            self._file_problem(
                Code.UNSUPPORTED_LINE_ENDINGS,
                "lines end with a lone CR (old Mac line endings), so the file reads as one line; convert them "
                "to LF, e.g. `tr '\\r' '\\n' < in.jsonl > out.jsonl`",
            )
        except CORRUPT_GZIP_ERRORS as exc:
            self.outcome.complete = False
            where = f"after line {self.outcome.lines_read:,}, {self.outcome.decompressed_bytes:,} bytes decompressed"
            junk_at = getattr(stream, "junk_at", None)
            if junk_at is not None:
                self._file_problem(
                    Code.UNSUPPORTED_COMPRESSION,
                    f"bytes that are not gzip follow the end of the compressed data at compressed byte {junk_at:,} "
                    f"({where}; trailing garbage, e.g. from a concatenation or a broken upload): {exc}. Compress "
                    "the file again, e.g. `gunzip -c in.jsonl.gz | gzip > out.jsonl.gz`",
                )
                return
            self._file_problem(
                Code.UNSUPPORTED_COMPRESSION,
                f"corrupt or truncated gzip at or before compressed byte {self._progress.compressed:,} "
                f"({where}): {exc or type(exc).__name__}",
            )

    def _counted(self, usable: Usable) -> Usable:
        meter = self._meter

        def counted(line: int, messages: list[Message], example_json: bytes) -> None:
            reason = meter.add_example(len(example_json))
            if reason is not None:
                raise LimitReached(Code.TOO_LARGE_TO_VALIDATE, self._platform_stop(reason))
            usable(line, messages, example_json)

        return counted

    def _on_chunk(self, size: int) -> None:
        """Checked before each decompressed chunk is split into lines: the data's size limits, then the time."""
        outcome = self.outcome
        outcome.decompressed_bytes += size
        decompressed, compressed = outcome.decompressed_bytes, self._progress.consumed()
        limit = self._options.max_decompressed_bytes
        if decompressed > limit:
            raise LimitReached(
                Code.FILE_TOO_LARGE,
                f"more than {limit:,} bytes of data (max_decompressed_bytes): {decompressed:,} bytes from the first "
                f"{compressed:,} bytes of the file" + (f" ({self._size:,} in all)" if self._size else ""),
            )
        ratio = self._options.max_decompression_ratio
        if self._gzip and decompressed >= RATIO_CHECKED_FROM_BYTES and decompressed > ratio * compressed:
            raise LimitReached(
                Code.COMPRESSION_RATIO_TOO_HIGH,
                f"gzip expands more than {ratio:g} times (max_decompression_ratio): {compressed:,} compressed bytes "
                f"gave {decompressed:,} bytes; real JSONL compresses far less, so this looks like padding or a "
                "decompression bomb",
            )
        if self._meter.out_of_time():
            budget = self._meter.budget.seconds
            raise LimitReached(
                Code.TOO_LARGE_TO_VALIDATE, self._platform_stop(f"the {budget:.0f} s this validation may take ran out")
            )

    def _platform_stop(self, reason: str) -> str:
        outcome = self.outcome
        read = f"{self._progress.compressed:,}" + (f" of {self._size:,}" if self._size else "")
        errors = self._problems.error_lines[self._source]
        return (
            f"dataset too large to validate here: {reason}. This is a limit of the platform, not an error in the "
            f"data. Stopped after {self._meter.elapsed():.0f} s at line {outcome.lines_read:,}: {read} bytes of the "
            f"file read ({outcome.decompressed_bytes:,} bytes of data), {self._meter.examples:,} usable examples, "
            f"{errors:,} lines with errors so far. Upload a smaller dataset, or check the whole file with "
            "`tuneplane validate` (no such limits)"
        )

    def _file_problem(self, code: Code, message: str) -> None:
        self._problems.add(code, message, source=self._source)

    def _line_problem(self, line: int, code: Code, message: str, path: str | None = None) -> None:
        self._problems.add(code, message, source=self._source, line=line, path=path)
        self._problems.drop_line(self._source, line, had_error=True)

    def _scan_line(self, line: int, data: bytes | LongLine | BlankLines, usable: Usable) -> None:
        outcome = self.outcome
        outcome.lines_read = line
        if isinstance(data, BlankLines):
            outcome.lines_read = line + data.count - 1
            # One problem per run of blank lines: a few KB of gzip can hold a billion of them.
            last = outcome.lines_read
            message = "blank line skipped" if data.count == 1 else f"{data.count:,} blank lines skipped (to {last:,})"
            self._problems.add(Code.BLANK_LINE, message, source=self._source, line=line)
            return
        if isinstance(data, LongLine):
            outcome.non_blank_lines += 1
            limit = self._options.max_line_bytes
            message = f"{data.size:,} bytes; the limit is {limit:,} (max_line_bytes)"
            self._line_problem(line, Code.LINE_TOO_LONG, message)
            return
        outcome.non_blank_lines += 1
        try:
            record = orjson.loads(data)  # also rejects invalid UTF-8 and unpaired surrogate escapes
        except orjson.JSONDecodeError as exc:
            self._unparsable(line, data, exc)
            return
        if not isinstance(record, dict):
            self._line_problem(line, Code.NOT_AN_OBJECT, f"expected a JSON object, got {type_name(record)}")
            return
        messages = self._check_record(line, record)
        if messages is not None and may_contain_pii(data):
            self._check_pii(line, messages)
        if messages is None or self._line_errors:
            return
        # A clean chat record is already {"messages": [{role, content}...]}: keep the user's bytes as they are.
        reuse_raw = len(record) == 1 and record.get("messages") is messages
        usable(line, messages, data if reuse_raw else orjson.dumps({"messages": messages}))

    def _unparsable(self, line: int, data: bytes, exc: orjson.JSONDecodeError) -> None:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as bad:
            byte = data[bad.start : bad.start + 1].hex()
            self._line_problem(line, Code.NOT_UTF8, f"invalid UTF-8 byte 0x{byte} at byte {bad.start + 1}")
            return
        if "surrogate" in exc.msg:  # "\ud83d" alone: valid JSON syntax, but half a character
            path, char = _unpaired_surrogate(json.loads(data))
            self._line_problem(line, Code.NOT_UTF8, f"unpaired surrogate {char!r}: half of a character", path)
            return
        self._line_problem(line, Code.INVALID_JSON, f"{exc.msg} at column {exc.colno}")

    def _check_record(self, line: int, record: dict[str, Any]) -> list[Message] | None:
        found = detect_format(record)
        if found is None:
            keys = ", ".join(preview(k) for k in list(record)[:5]) or "none"
            if self.outcome.format is DatasetFormat.CHAT:  # e.g. a 'message' typo in a chat file
                self._line_problem(
                    line,
                    Code.MISSING_MESSAGES_LIST,
                    f"no 'messages' key (keys: {keys}) in a chat file (format set by line {self._format_line})",
                    "messages",
                )
                return None
            self._line_problem(line, Code.UNKNOWN_FORMAT, f"keys {keys} match no accepted format: {_FORMAT_KEYS}")
            return None
        if self.outcome.format is None:
            self.outcome.format, self._format_line = found, line
        elif found is not self.outcome.format:
            self._line_problem(
                line,
                Code.MIXED_FORMATS,
                f"a {found.value} example in a {self.outcome.format.value} file "
                f"(format set by line {self._format_line})",
            )
            return None
        messages, findings = CHECKERS[found](record)
        self._line_errors = False
        for finding in findings:
            self._report(line, finding)
        if not messages:
            if not self._line_errors:  # unusable but every finding was loosened to a warning
                self._problems.drop_line(self._source, line, had_error=False)
            return None
        return messages

    def _report(self, line: int, finding: Finding) -> None:
        severity = self._problems.add(finding.code, finding.message, source=self._source, line=line, path=finding.path)
        if severity is Severity.ERROR and not self._line_errors:
            self._line_errors = True
            self._problems.drop_line(self._source, line, had_error=True)

    def _check_pii(self, line: int, messages: list[Message]) -> None:
        for index, message in enumerate(messages):
            for hit in find_pii(message["content"]):
                path = content_path(self.outcome.format, index)
                self._report(line, Finding(Code.PII_DETECTED, path, f"{hit.kind} {hit.masked!r}"))


def _unpaired_surrogate(value: Any, path: str = "") -> tuple[str | None, str]:
    """Where in a (stdlib-parsed) record the first string holding an unpaired surrogate is."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            return path or None, value[exc.start]
    elif isinstance(value, dict):
        for key, item in value.items():
            found = _unpaired_surrogate(item, f"{path}.{key_label(str(key))}" if path else key_label(str(key)))
            if found[0] is not None or found[1]:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _unpaired_surrogate(item, f"{path}[{index}]")
            if found[0] is not None or found[1]:
                return found
    return None, ""
