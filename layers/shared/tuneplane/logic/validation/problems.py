"""Collects problems in constant memory: exact counts per code, the first lines of each, a capped list.

Every problem's message and path pass through ``redact`` here, the one way into the report: they quote values from
the data (a role, a key, a template's error about a message), and the report's messages travel on to the summary,
the Run Rejected event, the run ledger, Slack and the logs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tuneplane.logic.validation.pii import redact
from tuneplane.models.validation import (
    DEFAULT_SEVERITY,
    Code,
    CodeCount,
    Problem,
    Severity,
    Source,
    ValidationOptions,
)

FIRST_LINES_KEPT = 5
MESSAGE_MAX = 1000  # characters of a problem's message (a chat template's error may quote a whole conversation)
PATH_MAX = 300
DROPPED_LINES_KEPT = 1000


@dataclass
class _Tally:
    severity: Severity
    count: int = 0
    first_lines: list[int] = field(default_factory=list)
    first_message: str = ""


class ProblemLog:
    def __init__(self, options: ValidationOptions) -> None:
        self._options = options
        self._listed: list[Problem] = []
        self._tallies: dict[tuple[Source, Code], _Tally] = {}
        self.error_lines: dict[Source, int] = {"train": 0, "eval": 0}
        self.dropped_lines: dict[Source, list[int]] = {"train": [], "eval": []}
        self.dropped_count: dict[Source, int] = {"train": 0, "eval": 0}
        # The order key of the last problem kept once the list is full: a problem that sorts after it would be
        # trimmed anyway, so it is only counted (a file of millions of bad lines costs a count each, not a Problem).
        self._cutoff: tuple[bool, int, str] | None = _EVERYTHING if options.max_listed_problems == 0 else None

    def add(
        self, code: Code, message: str, *, source: Source, line: int | None = None, path: str | None = None
    ) -> Severity:
        severity = self._options.severity(code)
        tally = self._tallies.get((source, code))
        if tally is None:
            message = redact(message, MESSAGE_MAX)
            tally = self._tallies[(source, code)] = _Tally(severity, first_message=message)
            redacted = True
        else:
            redacted = False
        tally.count += 1
        if line is not None and len(tally.first_lines) < FIRST_LINES_KEPT:
            tally.first_lines.append(line)
        if self._cutoff is not None and (source == "eval", line or 0, code.value) >= self._cutoff:
            return severity
        if not redacted:
            message = redact(message, MESSAGE_MAX)
        path = redact(path, PATH_MAX) if path is not None else None
        self._listed.append(
            Problem(code=code, severity=severity, message=message, line=line, path=path, source=source)
        )
        if len(self._listed) > 2 * self._options.max_listed_problems:
            self._trim()
        return severity

    def drop_line(self, source: Source, line: int, *, had_error: bool) -> None:
        """Record a line left out of the splits; lines with errors count against max_invalid_fraction."""
        if had_error:
            self.error_lines[source] += 1
        self.dropped_count[source] += 1
        if len(self.dropped_lines[source]) < DROPPED_LINES_KEPT:
            self.dropped_lines[source].append(line)

    def has_errors(self, *, file_level_only: frozenset[Code] | None = None) -> bool:
        return any(
            t.severity is Severity.ERROR and (file_level_only is None or code in file_level_only)
            for (_, code), t in self._tallies.items()
        )

    def has_line_errors(self, source: Source, file_level: frozenset[Code]) -> bool:
        """Whether ``source`` has a line-level problem of error severity: one that names why its lines were left out.
        A code downgraded to a warning (severity_overrides) still leaves its line out, but names no error."""
        return any(
            t.severity is Severity.ERROR and s == source and code not in file_level
            for (s, code), t in self._tallies.items()
        )

    def downgraded(self, source: Source) -> list[str]:
        """``code xN`` of each code of ``source`` that severity_overrides turned from an error into a warning."""
        return [
            f"{code.value} x{t.count:,}"
            for (s, code), t in sorted(self._tallies.items(), key=lambda kv: -kv[1].count)
            if s == source and t.severity is Severity.WARNING and DEFAULT_SEVERITY[code] is Severity.ERROR
        ]

    def _trim(self) -> None:
        self._listed.sort(key=_order)
        del self._listed[self._options.max_listed_problems :]
        if self._listed and len(self._listed) == self._options.max_listed_problems:
            self._cutoff = _order(self._listed[-1])

    def listed(self) -> list[Problem]:
        self._trim()
        return list(self._listed)

    def counts(self) -> list[CodeCount]:
        ordered = sorted(
            self._tallies.items(), key=lambda kv: (kv[1].severity is not Severity.ERROR, -kv[1].count, kv[0][1])
        )
        return [
            CodeCount(
                code=code,
                severity=tally.severity,
                count=tally.count,
                first_lines=sorted(tally.first_lines),
                first_message=tally.first_message,
                source=source,
            )
            for (source, code), tally in ordered
        ]


_EVERYTHING = (False, -1, "")  # sorts before every problem: with max_listed_problems 0 none is listed


def _order(problem: Problem) -> tuple[bool, int, str]:
    return (problem.source == "eval", problem.line or 0, problem.code.value)
