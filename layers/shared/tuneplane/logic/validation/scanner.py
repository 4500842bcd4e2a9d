"""Pass one over a file: every line parsed, checked and normalised, usable examples handed on."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tuneplane.logic.validation.formats import (
    CHECKERS,
    Finding,
    Message,
    content_path,
    detect_format,
    type_name,
)
from tuneplane.logic.validation.pii import find_pii
from tuneplane.logic.validation.problems import ProblemLog
from tuneplane.logic.validation.reader import LongLine, Readable, UnsupportedCompressionError, iter_lines, open_stream
from tuneplane.models.validation import Code, DatasetFormat, Severity, Source, ValidationOptions

_FORMAT_KEYS = "chat ('messages'), prompt/completion ('prompt', 'completion') or alpaca ('instruction', 'output')"

# (line, normalised messages, their canonical JSON) for every line with no error
Usable = Callable[[int, list[Message], bytes], None]


@dataclass
class ScanOutcome:
    lines_read: int = 0
    non_blank_lines: int = 0
    examples_valid: int = 0
    format: DatasetFormat | None = None


class FileScanner:
    def __init__(self, options: ValidationOptions, problems: ProblemLog, source: Source) -> None:
        self._options = options
        self._problems = problems
        self._source = source
        self._format_line = 0
        self.outcome = ScanOutcome()

    _line_errors = False

    def scan(self, name: str, raw: Readable, size: int | None, usable: Usable) -> ScanOutcome:
        if size is not None and size > self._options.max_file_bytes:
            self._file_problem(
                Code.FILE_TOO_LARGE, f"{size:,} bytes; the limit is {self._options.max_file_bytes:,} (max_file_bytes)"
            )
            return self.outcome
        try:
            stream = open_stream(raw, name)
        except UnsupportedCompressionError as exc:
            self._file_problem(
                Code.UNSUPPORTED_COMPRESSION, f"{exc.kind} is not supported; upload plain .jsonl or gzip (.jsonl.gz)"
            )
            return self.outcome
        try:
            for line, data in iter_lines(stream, self._options.max_line_bytes):
                self._scan_line(line, data, usable)
        except (OSError, EOFError) as exc:  # gzip: truncated or corrupt stream
            self._file_problem(Code.UNSUPPORTED_COMPRESSION, f"cannot decompress after line {self.outcome.lines_read}: {exc}")
        if self.outcome.non_blank_lines == 0:
            self._file_problem(Code.FILE_EMPTY, "no examples: the file is empty or holds only blank lines")
        return self.outcome

    def _file_problem(self, code: Code, message: str) -> None:
        self._problems.add(code, message, source=self._source)

    def _line_problem(self, line: int, code: Code, message: str, path: str | None = None) -> None:
        self._problems.add(code, message, source=self._source, line=line, path=path)
        self._problems.drop_line(self._source, line, had_error=True)

    def _scan_line(self, line: int, data: bytes | LongLine, usable: Usable) -> None:
        outcome = self.outcome
        outcome.lines_read = line
        if isinstance(data, LongLine):
            outcome.non_blank_lines += 1
            limit = self._options.max_line_bytes
            self._line_problem(line, Code.LINE_TOO_LONG, f"{data.size:,} bytes; the limit is {limit:,} (max_line_bytes)")
            return
        if not data or data.isspace():
            self._problems.add(Code.BLANK_LINE, "blank line skipped", source=self._source, line=line)
            return
        outcome.non_blank_lines += 1
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            byte = data[exc.start : exc.start + 1].hex()
            self._line_problem(line, Code.NOT_UTF8, f"invalid UTF-8 byte 0x{byte} at byte {exc.start + 1}")
            return
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            self._line_problem(line, Code.INVALID_JSON, f"{exc.msg} at column {exc.colno}")
            return
        if not isinstance(record, dict):
            self._line_problem(line, Code.NOT_AN_OBJECT, f"expected a JSON object, got {type_name(record)}")
            return
        messages = self._check_record(line, record)
        if messages is not None:
            self._check_pii(line, messages)
        if messages is None or self._line_errors:
            return
        outcome.examples_valid += 1
        usable(line, messages, json.dumps(messages, ensure_ascii=False).encode())

    def _check_record(self, line: int, record: dict[str, Any]) -> list[Message] | None:
        found = detect_format(record)
        if found is None:
            keys = ", ".join(repr(k) for k in list(record)[:5]) or "none"
            self._line_problem(line, Code.UNKNOWN_FORMAT, f"keys {keys} match no accepted format: {_FORMAT_KEYS}")
            return None
        if self.outcome.format is None:
            self.outcome.format, self._format_line = found, line
        elif found is not self.outcome.format:
            self._line_problem(
                line,
                Code.MIXED_FORMATS,
                f"a {found.value} example in a {self.outcome.format.value} file (format set by line {self._format_line})",
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
