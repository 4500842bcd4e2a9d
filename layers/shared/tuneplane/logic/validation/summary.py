"""The human-readable summary of a validation report: printed by the CLI, stored next to the report,
and quoted by Slack."""

from __future__ import annotations

from tuneplane.logic.cost import render_estimate
from tuneplane.models.validation import CodeCount, ValidationReport

_MAX_LINES_SHOWN = 5


def headline(report: ValidationReport) -> str:
    verdict = "PASSED" if report.passed else "REJECTED"
    errors = sum(c.count for c in report.errors)
    warnings = sum(c.count for c in report.warnings)
    split = report.split
    kept = f", {split.train_examples:,} train / {split.eval_examples:,} eval" if split and report.passed else ""
    return (
        f"{verdict}: {report.dataset} ({report.format.value if report.format else 'unknown format'}, "
        f"{_counted(report.lines_read, 'line')}, {_counted(errors, 'error')}, {_counted(warnings, 'warning')}{kept})"
    )


def _counted(number: int, noun: str) -> str:
    return f"{number:,} {noun}" + ("" if number == 1 else "s")


def _group(count: CodeCount, report: ValidationReport) -> list[str]:
    where = ", ".join(str(n) for n in count.first_lines[:_MAX_LINES_SHOWN])
    more = "" if count.count <= len(count.first_lines[:_MAX_LINES_SHOWN]) else ", ..."
    prefix = "eval file " if count.source == "eval" else ""
    noun = "line" if len(count.first_lines) == 1 and not more else "lines"
    lines = f" ({prefix}{noun} {where}{more})" if where else f" ({prefix.strip() or 'file'})"
    out = [f"  {count.code.value} x{count.count:,}{lines}"]
    examples = [p for p in report.problems if p.code is count.code and p.source == count.source][:2]
    out += [f"      {p.render()}" for p in examples] or [f"      {count.first_message}"]
    return out


def render_summary(report: ValidationReport) -> str:
    out = [headline(report)]
    if report.errors:
        out.append("Errors:" if not report.passed else "Errors (lines left out, within max_invalid_fraction):")
        for count in report.errors:
            out += _group(count, report)
    if report.warnings:
        out.append("Warnings:")
        for count in report.warnings:
            out += _group(count, report)
    out.append(
        f"Examples: {report.examples_valid:,} valid, {report.lines_dropped_count:,} lines left out, "
        f"{report.duplicates_dropped:,} duplicates removed"
    )
    if report.tokens:
        t = report.tokens
        out.append(
            f"Tokens: {t.total:,} in {t.examples:,} examples (min {t.min:,} / p50 {t.p50:,} / p95 {t.p95:,} / "
            f"max {t.max:,}); {t.trained_total:,} trained; {t.over_max_seq_length:,} over max_seq_length "
            f"{report.options.max_seq_length:,}"
        )
    else:
        out.append("Tokens: not checked (no base model tokenizer given)")
    if report.template:
        ok = "trained" if report.template.end_of_turn_trained else "NOT trained"
        out.append(f"Chat template: end-of-turn {', '.join(report.template.end_of_turn_tokens)} {ok}")
    if report.split and report.passed:
        s = report.split
        out.append(f"Split: {s.train_examples:,} train / {s.eval_examples:,} eval ({s.eval_source.replace('_', ' ')})")
    if report.cost:
        out += render_estimate(report.cost)
    return "\n".join(out)
