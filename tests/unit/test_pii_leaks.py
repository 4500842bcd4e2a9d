"""No PII drawn from a dataset leaves the pipeline unmasked: property tests of the validator's report, its summary and
the Slack messages of the Validate stage's events, plus the masking itself (``pii.redact``) and the smoke test's
texts (``deploy.context.ask_smoke_question``).

Secrets (email addresses, Luhn-valid card numbers, phone numbers, AWS access keys) are planted in every position of
a record that the validator may quote: a message's role, a record key, a message key, a content, a nested value or
key, an invalid JSON line, a key next to an unpaired surrogate, a long or unprintable key. Each is separated from
the text around it by spaces, as ``find_pii`` defines them (a phone number glued to a word is not one).
"""

from __future__ import annotations

import json
import string
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuneplane.errors import SmokeTestFailed
from tuneplane.logic.base_model import load_model_context
from tuneplane.logic.deploy import context
from tuneplane.logic.job_requests import job_prefix
from tuneplane.logic.notify.render import render
from tuneplane.logic.validate_stage import _rejection
from tuneplane.logic.validation.formats import key_label, preview
from tuneplane.logic.validation.pii import find_pii, mask_pii, redact
from tuneplane.logic.validation.summary import headline, render_summary
from tuneplane.logic.validation.validator import DatasetSource, validate_dataset
from tuneplane.models.events import MESSAGE_MAX, PipelineEvent, Stage, Status
from tuneplane.models.validation import Code, Severity, ValidationOptions, ValidationReport

VALID_LINES = 11  # the smallest dataset that passes: one example is held out, min_examples is 10


def _luhn_digit(body: str) -> str:
    """The check digit that makes ``body`` + it pass the Luhn check."""
    total = 0
    for index, char in enumerate(reversed(body)):
        value = int(char)
        if index % 2 == 0:  # doubled: the check digit will be at index 0
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return str((10 - total % 10) % 10)


@st.composite
def cards(draw: st.DrawFn) -> str:
    body = draw(st.sampled_from("3456")) + draw(st.text("0123456789", min_size=14, max_size=14))
    number = body + _luhn_digit(body)
    separator = draw(st.sampled_from(["", " ", "-"]))
    return separator.join(number[i : i + 4] for i in range(0, 16, 4))


@st.composite
def phones(draw: st.DrawFn) -> str:
    area, exchange, line = (draw(st.text("0123456789", min_size=n, max_size=n)) for n in (3, 3, 4))
    shape = draw(st.sampled_from(["{a}-{e}-{l}", "({a}) {e}-{l}", "{a}.{e}.{l}", "+1 {a} {e} {l}", "{a}{e}{l}"]))
    return shape.format(a=area, e=exchange, l=line)


_LOCAL = string.ascii_lowercase + string.digits + "._"
EMAILS = st.builds(
    "{}{}@{}.{}".format,
    st.sampled_from(string.ascii_lowercase),
    st.text(_LOCAL, min_size=2, max_size=15),
    st.text(string.ascii_lowercase + string.digits, min_size=2, max_size=12),
    st.sampled_from(["com", "org", "co.uk", "example"]),
)
AWS_KEYS = st.builds(
    "{}{}".format,
    st.sampled_from(["AKIA", "ASIA"]),
    st.text(string.ascii_uppercase + string.digits, min_size=16, max_size=16),
)
SECRETS = st.one_of(EMAILS, cards(), phones(), AWS_KEYS)


def _chat(user: str = "reverse abc", assistant: str = "cba") -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def _json(record: Any) -> str:
    return json.dumps(record, ensure_ascii=False)


# Every way a secret can sit in a line: each makes the line (as JSON text) from the secret.
PLANTINGS: dict[str, Callable[[str], str]] = {
    "role": lambda s: _json({"messages": [{"role": s, "content": "hi"}, {"role": "assistant", "content": "ok"}]}),
    "role_in_text": lambda s: _json(
        {"messages": [{"role": "user", "content": "hi"}, {"role": f"assistent {s} x", "content": "ok"}]}
    ),
    "record_key": lambda s: _json({**_chat(), s: 1}),
    "record_key_no_format": lambda s: _json({s: "x", "prompts": "y"}),
    "record_key_typo_of_messages": lambda s: _json({"message": [], s: 1}),
    "message_key": lambda s: _json({"messages": [{"role": "user", "content": "hi", s: "v"}, _chat()["messages"][1]]}),
    "long_key": lambda s: _json({"messages": [{"role": "user", "content": "hi", s + " " + "y" * 60: "v"}]}),
    "unprintable_key": lambda s: _json({"messages": [{"role": "user", "content": "hi", s + "\x00": "v"}]}),
    "content": lambda s: _json(_chat(user=f"my details: {s} thanks")),
    "answer": lambda s: _json(_chat(assistant=f"call {s} now")),
    "system": lambda s: _json(
        {"messages": [{"role": "system", "content": s}, *_chat()["messages"]]},
    ),
    "nested_value": lambda s: _json({"messages": [{"role": "user", "content": {"text": s}}]}),
    "nested_list": lambda s: _json({"messages": [{"role": "user", "content": [{"type": "text", "text": s}]}]}),
    "nested_key": lambda s: _json({"messages": [{"role": "user", "content": {s: 1}}]}),
    "tools": lambda s: _json({**_chat(), "tools": [{"name": s}]}),
    "tool_calls": lambda s: _json({"messages": [{"role": "assistant", "content": "x", "tool_calls": [{"id": s}]}]}),
    "prompt_completion": lambda s: _json({"prompt": s, "completion": {"k": s}}),
    "alpaca": lambda s: _json({"instruction": "hi", "input": s, "output": 3}),
    "invalid_json": lambda s: '{"messages": [' + s + "]",
    "invalid_json_string": lambda s: '{"messages": "' + s,
    "surrogate_next_to_key": lambda s: '{"messages": [{"' + s + '": "\\ud800"}]}',
    "not_an_object": lambda s: _json([s]),
    "role_not_string": lambda s: _json({"messages": [{"role": {"name": s}, "content": "hi"}]}),
}


@st.composite
def planted_datasets(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """(the dataset's lines, the secrets planted in them): valid lines plus one to four planted ones."""
    lines = [
        _json(_chat(user=f"reverse word{chr(97 + i)}", assistant=f"{chr(97 + i)}drow")) for i in range(VALID_LINES)
    ]
    secrets: list[str] = []
    for _ in range(draw(st.integers(1, 4))):
        secret = draw(SECRETS)
        planting = draw(st.sampled_from(sorted(PLANTINGS)))
        lines.insert(draw(st.integers(0, len(lines))), PLANTINGS[planting](secret))
        secrets.append(secret)
    return lines, secrets


def _validate(tmp_path: Path, lines: list[str], severity: Severity, fraction: float = 0.0) -> ValidationReport:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    options = ValidationOptions(severity_overrides={Code.PII_DETECTED: severity}, max_invalid_fraction=fraction)
    return validate_dataset(DatasetSource.local(path), options).report


def _slack_messages(report: ValidationReport) -> list[str]:
    """The Slack messages of the Validate stage's events for this report, as the Stage function makes them: the
    stage's end (headline) and, when rejected, the run's rejection with the cause the Validate Lambda raised."""
    common = {"run_id": "data-0123456789abcdef", "dataset": "incoming/data.jsonl", "bucket": "bucket"}
    events = [PipelineEvent(stage=Stage.VALIDATE, status=Status.SUCCEEDED, message=headline(report), **common)]
    if not report.passed:
        cause = _rejection(report, "s3://bucket/runs/data-0123456789abcdef/validation/report.json")
        events += [
            PipelineEvent(stage=Stage.VALIDATE, status=Status.REJECTED, message=cause, **common),
            PipelineEvent(stage=Stage.RUN, status=Status.REJECTED, message=f"validate: {cause}", **common),
        ]
    return [json.dumps(render(event), ensure_ascii=False) for event in events]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    dataset=planted_datasets(),
    severity=st.sampled_from([Severity.WARNING, Severity.ERROR]),
    fraction=st.sampled_from([0.0, 0.5]),
)
def test_no_planted_secret_reaches_the_report_its_summary_or_slack(
    tmp_path: Path, dataset: tuple[list[str], list[str]], severity: Severity, fraction: float
) -> None:
    # GIVEN a dataset with secrets planted anywhere the validator may quote a line
    lines, secrets = dataset
    # WHEN it is validated (PII a warning or an error; bad lines rejecting the file or dropped)
    report = _validate(tmp_path, lines, severity, fraction)
    # THEN no secret is in the report, the summary or any Slack message of the stage
    outputs = {"report": report.model_dump_json(), "summary": render_summary(report)}
    outputs |= {f"slack {i}": message for i, message in enumerate(_slack_messages(report))}
    for secret in secrets:
        leaks = [name for name, text in outputs.items() if secret in text]
        assert not leaks, f"{secret!r} in {leaks}"


@pytest.mark.parametrize(
    ("line", "secret", "shown"),
    [
        (PLANTINGS["role"]("john.doe@example.com"), "john.doe@example.com", "'j***@e***.com'"),
        (PLANTINGS["record_key_no_format"]("4111111111111111"), "4111111111111111", "'**** 1111'"),
        (PLANTINGS["message_key"]("AKIAIOSFODNN7EXAMPLE"), "AKIAIOSFODNN7EXAMPLE", "AKIA************MPLE"),
        (PLANTINGS["surrogate_next_to_key"]("415-555-0132"), "415-555-0132", "***0132"),
    ],
)
def test_the_break_test_findings_are_reported_masked(tmp_path: Path, line: str, secret: str, shown: str) -> None:
    # GIVEN the break test's lines: PII in a role value and in keys
    # WHEN the file is validated
    report = _validate(tmp_path, [line], Severity.WARNING)
    # THEN the problem still says what it is about, masked, and the secret is nowhere
    texts = [f"{problem.path} {problem.message}" for problem in report.problems]
    assert any(shown in text for text in texts), texts
    assert secret not in report.model_dump_json() and secret not in render_summary(report)


def test_a_chat_template_error_quoting_a_message_is_masked(
    tmp_path: Path, base_model_factory: Callable[..., Path]
) -> None:
    # GIVEN a chat template that refuses a message by quoting it, and a line it refuses
    template = (
        "{% for m in messages %}{% if '@' in m['content'] %}{{ raise_exception('cannot render: ' + m['content']) }}"
        "{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    )
    model = load_model_context(str(base_model_factory(chat_template=template)))
    path = tmp_path / "data.jsonl"
    path.write_text(_json(_chat(user="write to jane.roe@example.org please")) + "\n", encoding="utf-8")
    # WHEN the file is validated with the tokenizer
    report = validate_dataset(DatasetSource.local(path), ValidationOptions(), model=model).report
    # THEN the template's error is reported, the address masked
    [problem] = [p for p in report.problems if p.code is Code.CHAT_TEMPLATE_ERROR]
    assert "cannot render: write to j***@e***.org please" in problem.message
    assert "jane.roe@example.org" not in report.model_dump_json()


@given(secret=SECRETS, before=st.text(" abc,;:", max_size=5), after=st.text(" abc,;:", max_size=5))
def test_redact_masks_what_find_pii_finds_wherever_it_is(secret: str, before: str, after: str) -> None:
    # GIVEN a text with a secret in it, apart from the words around it
    text = f"{before} {secret} {after}"
    # WHEN it is redacted
    masked = redact(text)
    # THEN the secret is gone, the detector finds nothing left, and masking again changes nothing
    assert find_pii(text) and secret not in masked
    assert find_pii(masked) == []
    assert mask_pii(masked) == masked


def test_redact_masks_every_occurrence_and_cards_among_other_digits() -> None:
    # GIVEN two addresses, and a card followed by more digits (no card as a whole run)
    text = "a@example.com and b@example.com; 4111 1111 1111 1111 555 and AKIAIOSFODNN7EXAMPLE2"
    # WHEN redacted
    masked = redact(text)
    # THEN each is masked
    assert masked == "a***@e***.com and b***@e***.com; **** 1111 555 and AKIA************MPLE2"


def test_redact_masks_before_cutting_and_keeps_the_run_identifiers() -> None:
    # GIVEN an address that a cut at 40 characters would halve, and a job name whose hash is all digits
    text = "x" * 30 + " john.doe@example.com"
    job = "data-1234567890-train0"
    # WHEN redacted and bounded, and redacted keeping the run's identifiers
    cut = redact(text, 40)
    named = redact(f"{job} failed; call 555-867-5309", keep=("1234567890",))
    # THEN no part of the address survives the cut, and the job name is left whole
    assert len(cut) <= 40 and "john" not in cut and "example" not in cut
    assert named == f"{job} failed; call ***5309"


def test_a_megabyte_of_hostile_text_is_masked_as_far_as_it_is_shown_and_quickly() -> None:
    # GIVEN a megabyte of digit groups (masked whole, every run is searched for a card: seconds), and of cards
    digits, cards_ = "1 " * 500_000, "4111 1111 1111 1111 " * 50_000
    # WHEN quoted as a key, a preview and a bounded text
    started = time.perf_counter()
    shown = [key_label(digits), preview(digits), redact(digits, 1000), key_label(cards_), redact(cards_, 1000)]
    elapsed = time.perf_counter() - started
    # THEN each is within its bound, the cards masked, in a fraction of the time masking it all takes (> 10 s)
    assert elapsed < 2.0, elapsed
    assert [len(text) <= limit for text, limit in zip(shown, [40, 40, 1000, 40, 1000], strict=True)] == [True] * 5
    assert "4111 1111 1111 1111" not in "".join(shown) and "**** 1111" in shown[4]


def test_an_event_masks_and_bounds_its_text_instead_of_refusing_it() -> None:
    # GIVEN an event whose message is longer than 2,000 characters and quotes an address, a card in its metrics
    answer = "write to john.doe@example.com " * 100
    # WHEN it is built, as FinishDeploy builds the deploy stage's event
    event = PipelineEvent(
        run_id="data-1234567890abcdef",
        stage=Stage.DEPLOY,
        status=Status.SUCCEEDED,
        dataset="incoming/data.jsonl",
        bucket="bucket",
        message=f"endpoint answered: {answer}",
        metrics={"smoke_test_answer": "card 4111 1111 1111 1111", "examples": 3},
        notes=["job data-1234567890abcdef-train0 ran"],
    )
    # THEN it is valid, bounded with a marker, masked, and the run's own names are untouched
    assert event.message is not None and len(event.message) <= MESSAGE_MAX and "[truncated:" in event.message
    assert "john.doe@example.com" not in event.model_dump_json()
    assert event.metrics == {"smoke_test_answer": "card **** 1111", "examples": 3}
    assert event.notes == ["job data-1234567890abcdef-train0 ran"]
    # AND a subscriber parsing the published event gets the same event back
    assert PipelineEvent.model_validate_json(event.model_dump_json()) == event


def test_an_event_leaves_the_runs_job_names_alone_even_when_their_hash_looks_like_a_phone_number() -> None:
    # GIVEN a run whose job names carry a hash of ten decimal digits (job_requests.job_prefix), which redact alone
    # would take for a phone number
    run_id = "support-000000000000002d"
    job = f"{job_prefix(run_id)}-train0"
    assert job == "support-000000000000002d-8502521505-train0" and redact(job) != job
    # WHEN an event of that run names the job next to a real phone number
    event = PipelineEvent(
        run_id=run_id,
        stage=Stage.TRAIN,
        status=Status.FAILED,
        dataset="incoming/support.jsonl",
        bucket="bucket",
        message=f"{job} failed: cannot call 415-555-0132",
        notes=[f"stopped {job}"],
    )
    # THEN the job name is intact and the phone number masked
    assert event.message == f"{job} failed: cannot call ***0132"
    assert event.notes == [f"stopped {job}"]


def _eval_file(monkeypatch: pytest.MonkeyPatch, lines: list[str]) -> None:
    """The smoke test's eval split, read from S3, replaced by ``lines``."""
    data = "".join(line + "\n" for line in lines).encode()
    monkeypatch.setattr(context.s3, "read_if_exists", lambda bucket, key, limit: (data[:limit], len(data)))


def test_the_smoke_test_keeps_its_texts_masked_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN an eval split whose first question and answer hold PII, and a model that repeats it at length
    _eval_file(monkeypatch, [_json(_chat(user="mail john.doe@example.com", assistant="call 415-555-0132"))])
    reply = "Sure: john.doe@example.com, card 4111-1111-1111-1111. " + "blah " * 1000
    # WHEN the smoke test asks the model
    answered = context.ask_smoke_question("s3://bucket/runs/r/data/eval.jsonl", lambda messages: reply, "endpoint e")
    # THEN what the Deployment keeps is masked and at most SMOKE_TEXT_MAX characters, with a marker where cut
    assert answered["question"] == "mail j***@e***.com"
    assert answered["expected"] == "call ***0132"
    answer = answered["answer"]
    assert answer.startswith("Sure: j***@e***.com, card **** 1111.") and answer.endswith("more characters]")
    assert len(answer) <= context.SMOKE_TEXT_MAX
    assert "4111-1111-1111-1111" not in json.dumps(answered)


def test_a_failed_smoke_test_does_not_quote_the_pii_in_its_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a model whose malformed answer (quoted in the error) repeats the question's PII
    _eval_file(monkeypatch, [_json(_chat(user="mail john.doe@example.com", assistant="ok"))])

    def ask(messages: list[dict[str, str]]) -> str:
        raise SmokeTestFailed(f"endpoint e answered without choices[0].message.content: {messages}")

    # WHEN the smoke test runs
    with pytest.raises(SmokeTestFailed) as raised:
        context.ask_smoke_question("s3://bucket/runs/r/data/eval.jsonl", ask, "endpoint e")
    # THEN the error (the Catch's cause, the Run Failed event's message) keeps its type and says what went wrong,
    # masked
    assert "answered without choices[0].message.content" in str(raised.value)
    assert "john.doe@example.com" not in str(raised.value) and "j***@e***.com" in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
