"""Pass one over a file: every line parsed, checked and normalised, usable examples handed on."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

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
    LongLine,
    Readable,
    UnsupportedCompressionError,
    UnsupportedEncodingError,
    iter_lines,
    open_stream,
)
from tuneplane.models.validation import Code, DatasetFormat, Severity, Source, ValidationOptions

_FORMAT_KEYS = "chat ('messages'), prompt/completion ('prompt', 'completion') or alpaca ('instruction', 'output')"

# (line, normalised messages, their canonical JSON) for every line with no error
Usable = Callable[[int, list[Message], bytes], None]


@dataclass
class ScanOutcome:
    lines_read: int = 0
    non_blank_lines: int = 0
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
        except UnsupportedEncodingError as exc:
            self._file_problem(Code.UNSUPPORTED_ENCODING, f"the file is {exc.encoding}; save it as UTF-8")
            return self.outcome
        try:
            for line, data in iter_lines(stream, self._options.max_line_bytes):
                self._scan_line(line, data, usable)
        except (OSError, EOFError) as exc:  # gzip: truncated or corrupt stream
            read = self.outcome.lines_read
            self._file_problem(Code.UNSUPPORTED_COMPRESSION, f"cannot decompress after line {read}: {exc}")
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
            message = f"{data.size:,} bytes; the limit is {limit:,} (max_line_bytes)"
            self._line_problem(line, Code.LINE_TOO_LONG, message)
            return
        if not data or data.isspace():
            self._problems.add(Code.BLANK_LINE, "blank line skipped", source=self._source, line=line)
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
