"""One ``PipelineEvent`` -> one Slack Block Kit message (``{"text": fallback, "blocks": [...]}``).

The message says what happened (header with the stage and a status emoji), to which upload (dataset, run id,
duration), the stage's key numbers from ``metrics``, the ``notes``, and links to the Step Functions execution and,
for an evaluation, the score chart. A rejection or failure says at which stage, the cause in one line and what to do
about it: a rejection is the uploader's to fix (the data, with the report's URI), a failure the platform team's.

Every metric is optional: a missing, ``None`` or non-numeric value leaves its field out instead of failing, so an
event from an older or newer pipeline still renders. Text from the event is escaped for Slack's mrkdwn and cut to
Block Kit's limits (header 150 characters, section text 3000, 10 fields per section). It arrives with its PII masked:
``PipelineEvent`` masks every free-text field (message, error, notes, text metrics such as the smoke test's question
and answer) when it is built or parsed, so what the data said is never posted as it was.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tuneplane.models.events import MetricValue, PipelineEvent, Stage, Status

HEADER_MAX = 150
TEXT_MAX = 3000
FIELD_MAX = 1000
FIELDS_PER_SECTION = 10
URL_MAX = 3000  # a button's url
NOTES_MAX = 10
NOTE_MAX = 250  # 10 notes and the "more" line stay within a section's 3000 characters
CAUSE_MAX = 500
ANSWER_MAX = 600
SCORES_MAX = 10

STATUS_EMOJI = {
    Status.STARTED: ":hourglass_flowing_sand:",
    Status.SUCCEEDED: ":white_check_mark:",
    Status.SKIPPED: ":fast_forward:",
    Status.REJECTED: ":no_entry:",
    Status.FAILED: ":x:",
    Status.SUPERSEDED: ":arrows_counterclockwise:",
    Status.WAITING: ":hourglass:",
}
RUN_SUCCEEDED_EMOJI = ":tada:"
_RUN_DETAIL_TYPES = {
    Status.SUCCEEDED: "Run Succeeded",
    Status.REJECTED: "Run Rejected",
    Status.FAILED: "Run Failed",
    Status.SUPERSEDED: "Run Superseded",
    Status.SKIPPED: "Run Skipped",
}
_CONSOLE_HOSTS = {"aws": "{region}.console.aws.amazon.com", "aws-us-gov": "console.amazonaws-us-gov.com"}
# The evaluation's score metrics (higher is better), after the primary one: the graders a sidecar chose first, then
# the text metrics every evaluation has.
_SCORE_ORDER = (
    "judge_score",
    "judge_win_rate",
    "custom_score",
    "classification_accuracy",
    "classification_macro_f1",
    "json_schema_match",
    "pattern_pass_rate",
    "exact_match",
    "token_f1",
    "rouge_l",
    "json_valid",
    "stop_rate",
)
_MODELS = ("candidate", "base", "production")
_STAGE_NAMES = frozenset(stage.value for stage in Stage if stage is not Stage.RUN)
_STAGE_PREFIX = re.compile(r"^(?P<stage>[a-z]+):\s*(?P<rest>.*)$", re.DOTALL)


# ---------------------------------------------------------------------------------------------------------------------
# Text helpers


def escape(text: str) -> str:
    """Slack's three control characters as HTML entities (all that mrkdwn needs)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _one_line(text: str, limit: int) -> str:
    return _cut(" ".join(text.split()), limit)


def _code(text: str) -> str:
    return "`" + escape(text.replace("`", "'")) + "`"


def _number(value: MetricValue) -> float | None:
    """A metric as a finite number, or None (missing, a flag, text that is no number, NaN)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _count(value: float) -> str:
    return f"{round(value):,}"


def _decimal(value: float) -> str:
    return f"{value:.4g}"


def _rate(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}"


def _usd(value: float) -> str:
    return f"${value:,.2f}"


def _score(value: float) -> str:
    return f"{value:.3f}"


def duration(seconds: float) -> str:
    """``4.2 s``, ``45 s``, ``12 min 03 s``, ``3 h 02 min``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def _utc(moment: datetime) -> str:
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def console_url(execution_arn: str, region: str | None = None) -> str | None:
    """The execution's page in the Step Functions console, or None for something that is no execution ARN."""
    parts = execution_arn.split(":")
    if len(parts) < 8 or parts[0] != "arn" or parts[2] != "states" or parts[5] != "execution":
        return None
    partition, region = parts[1], region or parts[3]
    host = _CONSOLE_HOSTS.get(partition, "console.amazonaws.cn" if partition == "aws-cn" else None)
    if host is None:
        return None
    return f"https://{host.format(region=region)}/states/home?region={region}#/v2/executions/details/{execution_arn}"


# ---------------------------------------------------------------------------------------------------------------------
# The stage's key numbers


@dataclass(frozen=True)
class _Metrics:
    """Lookups in ``metrics`` that tolerate anything missing; ``prefix`` reads a stage's numbers in a run event."""

    values: Mapping[str, MetricValue]
    prefix: str = ""

    def get(self, *names: str) -> MetricValue:
        for name in names:
            value = self.values.get(self.prefix + name)
            if value is not None and value != "":
                return value
        return None

    def number(self, *names: str) -> float | None:
        for name in names:
            if (number := _number(self.values.get(self.prefix + name))) is not None:
                return number
        return None

    def text(self, *names: str) -> str | None:
        value = self.get(*names)
        return None if value is None or isinstance(value, bool) else str(value)

    def flag(self, *names: str) -> bool | None:
        value = self.get(*names)
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        return None

    def keys(self) -> list[str]:
        return [key[len(self.prefix) :] for key in self.values if key.startswith(self.prefix)]


@dataclass
class _Facts:
    fields: list[tuple[str, str]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def add(self, label: str, value: float | str | None, fmt: Callable[[float], str] = _count) -> None:
        if value is None:
            return
        self.fields.append((label, fmt(value) if isinstance(value, float) else value))


def _validate_facts(m: _Metrics) -> _Facts:
    facts = _Facts()
    facts.add("Examples", m.number("examples", "examples_valid"))
    train, held_out = m.number("train_examples"), m.number("eval_examples")
    if train is not None and held_out is not None:
        facts.add("Train / eval", f"{_count(train)} / {_count(held_out)}")
    facts.add("Tokens", m.number("tokens", "tokens_total"))
    cost, hours = m.number("estimated_cost_usd", "cost_estimate_usd"), m.number("estimated_training_hours")
    if cost is not None:
        facts.add("Cost estimate", f"≈ {_usd(cost)}" + (f" ({hours:.1f} h of training)" if hours is not None else ""))
    elif hours is not None:
        facts.add("Training time estimate", f"≈ {hours:.1f} h")
    facts.add("Warnings", m.number("warnings"))
    return facts


def _train_facts(m: _Metrics) -> _Facts:
    facts = _Facts()
    facts.add("Train loss", m.number("final_train_loss", "train_loss", "loss"), _decimal)
    facts.add("Eval loss", m.number("final_eval_loss", "eval_loss"), _decimal)
    facts.add("Tokens/s", m.number("tokens_per_second", "tokens_per_s", "throughput_tokens_per_second"), _rate)
    instance = m.text("instance_type", "instance")
    if instance is not None:
        facts.add("Instance", _code(instance) + (" (spot)" if m.flag("spot", "use_spot") else ""))
    facts.add("Billable time", m.number("billable_seconds", "billable_s"), duration)
    facts.add("GPU memory", m.number("gpu_memory_gb"), lambda gb: f"{gb:.1f} GB")
    attempt = m.number("attempt")
    if attempt is not None and attempt > 1:
        facts.add("Attempt", attempt)
    return facts


def _score_names(m: _Metrics) -> list[str]:
    names: set[str] = set()
    for key in m.keys():
        model, _, name = key.partition(".")
        if model in _MODELS and name:
            names.add(name)
    primary = m.text("primary_metric")
    ordered = sorted(names, key=lambda n: (n != primary, _SCORE_ORDER.index(n) if n in _SCORE_ORDER else 99, n))
    return ordered[:SCORES_MAX]


def _score_line(m: _Metrics, name: str, primary: str | None) -> str:
    candidate = m.number(f"candidate.{name}")
    parts = [f"candidate *{_score(candidate)}*" if candidate is not None else "candidate –"]
    for model in _MODELS[1:]:
        other = m.number(f"{model}.{name}")
        if other is not None:
            delta = f" ({candidate - other:+.3f})" if candidate is not None else ""
            parts.append(f"{model} {_score(other)}{delta}")
    label = _code(name) + (" (primary)" if name == primary else "")
    return f"{label}: " + " · ".join(parts)


def _evaluate_facts(m: _Metrics) -> _Facts:
    facts = _Facts()
    passed = m.flag("passed")
    if passed is not None:
        facts.add("Gate", ":white_check_mark: passed" if passed else ":no_entry: did not pass")
    facts.add("Eval examples", m.number("examples", "eval_examples"))
    facts.add("Judge cost", m.number("judge_cost_usd"), _usd)
    primary = m.text("primary_metric")
    facts.lines = [_score_line(m, name, primary) for name in _score_names(m)]
    return facts


def _merge_facts(m: _Metrics) -> _Facts:
    facts = _Facts()
    facts.add("Max logit difference", m.number("max_abs_logit_diff"), lambda v: f"{v:.3g}")
    importable = m.flag("bedrock_importable")
    if importable is not None:
        facts.add("Bedrock import", "compatible" if importable else "not compatible")
    facts.add("Wall time", m.number("wall_time_s"), duration)
    return facts


def _deploy_facts(m: _Metrics) -> _Facts:
    facts = _Facts()
    endpoint = m.text("endpoint_name", "endpoint")
    facts.add("Endpoint", _code(endpoint) if endpoint else None)
    target = m.text("target", "deploy_target")
    facts.add("Target", escape(target) if target else None)
    model = m.text("model_id", "model_name", "model_package")
    facts.add("Model", _code(_cut(model, 200)) if model else None)
    facts.add("Smoke test latency", m.number("smoke_test_latency_ms"), lambda ms: f"{ms:,.0f} ms")
    answer = m.text("smoke_test_answer", "smoke_test")
    if answer:
        quoted = "\n".join("> " + escape(line) for line in _cut(answer.strip(), ANSWER_MAX).splitlines() or [""])
        prompt = m.text("smoke_test_prompt")
        asked = f" to {_code(_one_line(prompt, 200))}" if prompt else ""
        facts.lines.append(f"*Smoke test answer*{asked}\n{quoted}")
    return facts


def _generic_facts(m: _Metrics) -> _Facts:
    facts = _Facts()
    for key in m.keys():
        value = m.get(key)
        if value is None:
            continue
        number = _number(value)
        if isinstance(value, bool):
            text = "yes" if value else "no"
        elif number is not None and not isinstance(value, str):
            text = _count(number) if isinstance(value, int) else _decimal(number)
        else:
            text = escape(_one_line(str(value), 200))
        facts.add(key.replace("_", " ").capitalize(), text)
    return facts


_STAGE_FACTS: dict[Stage, Callable[[_Metrics], _Facts]] = {
    Stage.VALIDATE: _validate_facts,
    Stage.TRAIN: _train_facts,
    Stage.MERGE: _merge_facts,
    Stage.EVALUATE: _evaluate_facts,
    Stage.DEPLOY: _deploy_facts,
}
# A Run Succeeded event carries the headline numbers of every stage as "<stage>.<metric>".
_RUN_STAGES = (Stage.VALIDATE, Stage.TRAIN, Stage.MERGE, Stage.EVALUATE, Stage.DEPLOY)


def _stage_facts(event: PipelineEvent) -> list[_Facts]:
    if event.stage is not Stage.RUN:
        facts = _STAGE_FACTS.get(event.stage, _generic_facts)(_Metrics(event.metrics))
        if not facts.fields and not facts.lines and event.metrics:
            facts = _generic_facts(_Metrics(event.metrics))
        return [facts]
    found = [_STAGE_FACTS[stage](_Metrics(event.metrics, prefix=f"{stage.value}.")) for stage in _RUN_STAGES]
    found = [facts for facts in found if facts.fields or facts.lines]
    prefixes = tuple(f"{stage.value}." for stage in Stage)
    rest = {key: value for key, value in event.metrics.items() if not key.startswith(prefixes)}
    if rest:
        found.append(_generic_facts(_Metrics(rest)))
    return found


# ---------------------------------------------------------------------------------------------------------------------
# Blocks


def _text(text: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": _cut(text, TEXT_MAX)}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": _text(text)}


def _field_sections(fields: list[tuple[str, str]]) -> list[dict[str, Any]]:
    items = [{"type": "mrkdwn", "text": _cut(f"*{label}*\n{value}", FIELD_MAX)} for label, value in fields]
    return [
        {"type": "section", "fields": items[start : start + FIELDS_PER_SECTION]}
        for start in range(0, len(items), FIELDS_PER_SECTION)
    ]


def _detail_type(event: PipelineEvent) -> str:
    if event.stage is Stage.RUN:
        return _RUN_DETAIL_TYPES.get(event.status, f"Run {event.status.value.capitalize()}")
    return event.detail_type


def _failed_stage(event: PipelineEvent) -> tuple[str | None, str | None]:
    """Which stage a rejection or failure happened at, and the cause without a ``<stage>:`` prefix.

    A Run Rejected/Failed event says the stage in its message, as ``"<stage>: <cause>"``."""
    message = event.message
    if event.stage is not Stage.RUN:
        return event.stage.value, message
    if message and (match := _STAGE_PREFIX.match(message.strip())) and match["stage"] in _STAGE_NAMES:
        return match["stage"], match["rest"]
    stage = event.metrics.get("failed_stage") or event.metrics.get("stage")
    return (str(stage) if isinstance(stage, str) and stage else None), message


def _title(event: PipelineEvent) -> str:
    status = event.status.value
    if event.stage is not Stage.RUN:
        return f"{event.stage.value.capitalize()} {status}"
    stage, _ = _failed_stage(event) if event.status in (Status.REJECTED, Status.FAILED) else (None, None)
    return f"Run {status}" + (f" at {stage}" if stage else "")


def _emoji(event: PipelineEvent) -> str:
    if event.stage is Stage.RUN and event.status is Status.SUCCEEDED:
        return RUN_SUCCEEDED_EMOJI
    return STATUS_EMOJI[event.status]


def _duration_s(event: PipelineEvent) -> float | None:
    if event.duration_s is not None:
        return event.duration_s
    if event.started_at and event.finished_at:
        try:
            return max((event.finished_at - event.started_at).total_seconds(), 0.0)
        except TypeError:  # one with a time zone, one without
            return None
    return None


def _overview(event: PipelineEvent) -> list[dict[str, Any]]:
    fields = [("Dataset", _code(_cut(event.dataset, 300))), ("Run", _code(event.run_id))]
    seconds = _duration_s(event)
    if seconds is not None:
        fields.append(("Duration", duration(seconds)))
    elif event.started_at is not None:
        fields.append(("Started", _utc(event.started_at)))
    return _field_sections(fields)


def _artifact(event: PipelineEvent, *names: str) -> str | None:
    """An artifact by name, also as ``<stage>.<name>`` (how a run event carries its stages' artifacts)."""
    for name in names:
        if event.artifacts.get(name):
            return event.artifacts[name]
        for key, uri in event.artifacts.items():
            if key.endswith("." + name) and uri:
                return uri
    return None


def chart_uri(event: PipelineEvent) -> str | None:
    """The evaluation chart's s3:// URI, if the event has one (``chart`` or ``evaluate.chart``)."""
    return _artifact(event, "chart")


def _what_to_do(event: PipelineEvent, stage: str | None) -> str:
    if event.status is Status.FAILED:
        where = " (button below)" if event.execution_arn else ""
        return (
            "*What to do:* nothing to fix in your data as far as the pipeline can tell: this one is for the platform "
            f"team. Check the execution in the Step Functions console{where} and send them the run id."
        )
    if stage == Stage.EVALUATE.value:
        report = _artifact(event, "evaluation", "report")
        where = f" The evaluation report shows where the model falls short: {_code(report)}" if report else ""
        return (
            "*What to do:* the fine-tuned model did not pass the evaluation gate. Improve the data (more, cleaner or "
            f"more representative examples), then upload it again to `incoming/`.{where}"
        )
    report = _artifact(event, "report")
    where = f" The report lists every problem with its line: {_code(report)}" if report else ""
    return "*What to do:* fix the data and upload it again to `incoming/` (every upload starts a new run)." + where


def _outcome(event: PipelineEvent) -> list[dict[str, Any]]:
    if event.status not in (Status.REJECTED, Status.FAILED):
        return [_section(escape(_one_line(event.message, CAUSE_MAX)))] if event.message else []
    stage, cause = _failed_stage(event)
    lines = [f"*Stage:* {escape(stage) if stage else 'unknown'}"]
    lines.append(f"*Cause:* {escape(_one_line(cause, CAUSE_MAX)) if cause else 'not given'}")
    if event.error:
        lines.append(f"*Error:* {_code(event.error)}")
    return [_section("\n".join(lines)), _section(_what_to_do(event, stage))]


def _notes(event: PipelineEvent) -> list[dict[str, Any]]:
    notes = [note for note in event.notes if note.strip()]
    if not notes:
        return []
    shown = [f"• {escape(_one_line(note, NOTE_MAX))}" for note in notes[:NOTES_MAX]]
    if len(notes) > NOTES_MAX:
        shown.append(f"• … and {len(notes) - NOTES_MAX} more")
    return [_section("*Notes*\n" + "\n".join(shown))]


def _button(text: str, url: str, action_id: str) -> dict[str, Any]:
    return {"type": "button", "text": {"type": "plain_text", "text": text}, "url": url, "action_id": action_id}


def _links(event: PipelineEvent, console_region: str | None, chart_url: str | None) -> list[dict[str, Any]]:
    buttons = []
    console = console_url(event.execution_arn, console_region) if event.execution_arn else None
    if console and len(console) <= URL_MAX:
        buttons.append(_button("Open execution", console, "open_execution"))
    if chart_url and len(chart_url) <= URL_MAX:
        buttons.append(_button("Score chart", chart_url, "open_chart"))
    blocks: list[dict[str, Any]] = [{"type": "actions", "elements": buttons}] if buttons else []
    chart = chart_uri(event)
    if chart and not (chart_url and len(chart_url) <= URL_MAX):
        blocks.append(_section(f"*Score chart:* {_code(chart)}"))
    return blocks


def _context(event: PipelineEvent, detail_type: str) -> dict[str, Any]:
    parts = [escape(detail_type), f"bucket {_code(event.bucket)}"]
    if event.version_id:
        parts.append(f"version {_code(event.version_id)}")
    if event.finished_at is not None:
        parts.append(f"finished {_utc(event.finished_at)}")
    elif event.started_at is not None:
        parts.append(f"started {_utc(event.started_at)}")
    return {"type": "context", "elements": [_text(" · ".join(parts))]}


def _fallback(event: PipelineEvent, emoji: str, title: str) -> str:
    text = f"{emoji} {title}: {event.dataset} (run {event.run_id})"
    if event.status in (Status.REJECTED, Status.FAILED):
        _, cause = _failed_stage(event)
        if cause:
            text += f": {_one_line(cause, 200)}"
    return escape(_cut(text, 500))


def _facts_blocks(all_facts: Iterable[_Facts]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for facts in all_facts:
        blocks += _field_sections(facts.fields)
        if facts.lines:
            blocks.append(_section("\n".join(facts.lines)))
    return blocks


def render(
    event: PipelineEvent,
    detail_type: str | None = None,
    *,
    console_region: str | None = None,
    chart_url: str | None = None,
) -> dict[str, Any]:
    """The Slack message for one pipeline event.

    ``detail_type`` is the EventBridge ``detail-type`` (default: the one the event's stage and status imply);
    ``console_region`` overrides the region of the console link (default: the execution ARN's); ``chart_url`` is a
    presigned https link to the evaluation chart (without it the chart's s3:// URI is shown instead).
    """
    detail_type = detail_type or _detail_type(event)
    emoji, title = _emoji(event), _title(event)
    header = _cut(f"{emoji} {title} · {event.dataset.rsplit('/', 1)[-1]}", HEADER_MAX)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": header, "emoji": True}},
        *_overview(event),
        *_facts_blocks(_stage_facts(event)),
        *_outcome(event),
        *_notes(event),
        *_links(event, console_region, chart_url),
        _context(event, detail_type),
    ]
    return {"text": _fallback(event, emoji, title), "blocks": blocks}
