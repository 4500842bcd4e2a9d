"""What `tuneplane doctor` reports: findings (level, check, subject, message, fix), the report of one run with its
exit code, and the two ways of printing it (text for a person, JSON for a script)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import StrEnum

EXIT_OK, EXIT_ERRORS = 0, 1


class Level(StrEnum):
    OK = "OK"
    WARN = "WARN"
    ERROR = "ERROR"


@dataclass(frozen=True, slots=True)
class Finding:
    level: Level
    check: str  # stack | quota | image | bedrock | slack | judge | base-model
    subject: str  # what was looked at: a quota name, an image, a secret, an S3 URI
    message: str  # what was found
    fix: str = ""  # what to do ("" when nothing)


@dataclass(frozen=True, slots=True)
class DoctorReport:
    stack_name: str
    region: str
    stack_status: str | None  # None: the stack could not be read
    findings: tuple[Finding, ...]

    @property
    def errors(self) -> int:
        return sum(f.level is Level.ERROR for f in self.findings)

    @property
    def warnings(self) -> int:
        return sum(f.level is Level.WARN for f in self.findings)

    @property
    def exit_code(self) -> int:
        return EXIT_ERRORS if self.errors else EXIT_OK


def render_text(report: DoctorReport) -> str:
    """One line per finding (level, check, subject: what was found; what to do), then the counts."""
    status = f" ({report.stack_status})" if report.stack_status else ""
    lines = [f"tuneplane doctor: stack {report.stack_name} in {report.region}{status}"]
    for finding in report.findings:
        fix = f" -> {finding.fix}" if finding.fix else ""
        lines.append(f"{finding.level.value:<5}  {finding.check:<10}  {finding.subject}: {finding.message}{fix}")
    lines.append(f"{report.errors} error(s), {report.warnings} warning(s)")
    return "\n".join(lines)


def render_json(report: DoctorReport) -> str:
    document = {
        "stack": report.stack_name,
        "region": report.region,
        "stack_status": report.stack_status,
        "errors": report.errors,
        "warnings": report.warnings,
        "findings": [asdict(f) | {"level": f.level.value} for f in report.findings],
    }
    return json.dumps(document, indent=2)
