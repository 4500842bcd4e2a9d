"""Bounds on what the pipeline publishes and raises (``tuneplane.bounds``, the events and ledger adapters): a huge
cause is cut with a visible marker, a Lambda's error keeps its name (the state machine's Retry/Catch match it) with
a bounded message and stack trace, an event fits EventBridge's entry limit and a ledger item DynamoDB's."""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from tuneplane.adapters import events, ledger
from tuneplane.bounds import (
    ERROR_MESSAGE_MAX,
    ERROR_TRACE_FRAMES,
    bound_text,
    bound_utf8,
    bounded_errors,
)
from tuneplane.errors import InvalidTrainingData, SlackDeliveryFailed
from tuneplane.models.events import MetricValue, PipelineEvent, Stage, Status

MB = 1_000_000


@pytest.mark.parametrize("size", [0, 10, 1999, 2000, 2001, 5000, MB])
def test_bound_text_keeps_short_text_and_marks_what_it_cuts(size: int) -> None:
    # GIVEN a text of `size` characters WHEN it is bounded to 2000
    text = "x" * size
    cut = bound_text(text, 2000)
    # THEN it is at most 2000 characters, unchanged when it fitted, else its start and the count cut
    assert len(cut) <= 2000
    if size <= 2000:
        assert cut == text
    else:
        kept = cut.index(" [truncated")
        assert kept > 1900 and cut.startswith("x" * kept)
        assert cut.endswith(f"[truncated: {size - kept} more characters]")


def test_bound_utf8_counts_bytes() -> None:
    # GIVEN a text of 4-byte characters WHEN it is bounded to 1000 bytes THEN its UTF-8 encoding fits
    cut = bound_utf8("\N{GRINNING FACE}" * 1000, 1000)
    assert len(cut.encode()) <= 1000 and "[truncated:" in cut


def _lambda_error_payload(exc: BaseException) -> dict[str, Any]:
    """What the Python Lambda runtime returns for an unhandled exception (awslambdaric: type name, str(), frames)."""
    frames = traceback.extract_tb(exc.__traceback__)
    return {"errorMessage": str(exc), "errorType": type(exc).__name__, "stackTrace": traceback.format_list(frames)}


@pytest.mark.parametrize(
    "error",
    [
        InvalidTrainingData("k" * 3 * MB),
        RuntimeError("r" * MB),
        SlackDeliveryFailed("s" * MB, attempts=3),
    ],
    ids=type,
)
def test_a_handler_error_keeps_its_name_with_a_bounded_message(error: Exception) -> None:
    # GIVEN a handler that raises an error of megabytes
    @bounded_errors
    def handler(event: dict[str, Any], context: object) -> None:
        raise error

    # WHEN it runs
    with pytest.raises(Exception) as raised:
        handler({}, None)
    # THEN the error has the same name (what Retry and Catch match), a message cut with a marker, and it is small
    payload = _lambda_error_payload(raised.value)
    assert payload["errorType"] == type(error).__name__
    assert len(payload["errorMessage"]) <= ERROR_MESSAGE_MAX and "[truncated:" in payload["errorMessage"]
    assert len(json.dumps(payload)) < 32 * 1024


class LoudError(Exception):
    """An exception whose message is not its args (as pydantic's ValidationError builds its own)."""

    def __str__(self) -> str:
        return "l" * MB


def test_an_error_with_its_own_message_is_bounded_under_its_name() -> None:
    # GIVEN a handler raising an exception whose str() is computed, not taken from its args
    @bounded_errors
    def handler(event: dict[str, Any], context: object) -> None:
        raise LoudError("short args")

    # WHEN it runs THEN the error is still named LoudError (a class of that name), with a bounded message
    with pytest.raises(Exception) as raised:
        handler({}, None)
    payload = _lambda_error_payload(raised.value)
    assert payload["errorType"] == "LoudError"
    assert len(payload["errorMessage"]) <= ERROR_MESSAGE_MAX and "[truncated:" in payload["errorMessage"]


def test_a_deep_recursion_error_keeps_its_innermost_frames_only() -> None:
    # GIVEN a handler that recurses until Python gives up (a thousand frames)
    def deep(n: int) -> int:
        return deep(n + 1) + 1

    @bounded_errors
    def handler(event: dict[str, Any], context: object) -> int:
        return deep(0)

    # WHEN it runs THEN the RecursionError's trace is cut to its innermost frames
    limit = sys.getrecursionlimit()
    with pytest.raises(RecursionError) as raised:
        handler({}, None)
    frames = traceback.extract_tb(raised.value.__traceback__)
    assert limit > 100 and len(frames) <= ERROR_TRACE_FRAMES + 2  # + the wrapper and this test
    assert frames[-1].name == "deep"


def test_a_small_error_passes_unchanged() -> None:
    # GIVEN a handler raising an ordinary error WHEN it runs THEN the very same exception comes out
    error = InvalidTrainingData("line 3: bad role")

    @bounded_errors
    def handler(event: dict[str, Any], context: object) -> None:
        raise error

    with pytest.raises(InvalidTrainingData) as raised:
        handler({}, None)
    assert raised.value is error and str(raised.value) == "line 3: bad role"


def test_event_fields_are_bounded_before_the_event_is_built() -> None:
    # GIVEN a failure whose cause, notes and metrics are megabytes
    fields = events.bounded_fields(
        {
            "dataset": "incoming/" + "k" * MB,
            "bucket": "data",
            "message": "m" * 3 * MB,
            "error": "E" * 1000,
            "notes": ["n" * MB] * 100,
            "metrics": {"answer": "a" * MB, "loss": 0.5},
            "artifacts": {"report": "s3://data/" + "r" * MB},
        }
    )
    # WHEN the event is built THEN it is valid, its texts cut with markers, and its entry within EventBridge's limit
    event = PipelineEvent(run_id="run-1", stage=Stage.VALIDATE, status=Status.FAILED, **fields)
    assert event.message is not None and "[truncated:" in event.message and len(event.message) <= 2000
    assert len(event.notes) == events.NOTES_MAX and event.notes[-1].startswith("[truncated: 81 more notes")
    assert event.metrics["loss"] == 0.5
    entry = events.entry("bus", event)
    assert len(json.dumps(entry).encode()) <= events.ENTRY_MAX_BYTES


@pytest.mark.parametrize("offset", range(-20, 4))
def test_a_secret_across_the_cut_is_masked_before_it_is_cut(offset: int) -> None:
    # GIVEN a long cause with a card number placed so that the message's cut falls anywhere across it
    card = "4111 1111 1111 1111"
    head = "x" * (events.MESSAGE_MAX - 40 + offset)
    fields = events.bounded_fields({"dataset": "d", "bucket": "b", "message": head + " " + card + " " + "y" * 5000})
    # WHEN the event is built
    event = PipelineEvent(run_id="run-1", stage=Stage.TRAIN, status=Status.FAILED, **fields)
    # THEN no run of the card's digits is left, not even the part before the cut
    assert event.message is not None
    assert "4111 1111" not in event.message and "1111 1111" not in event.message


@pytest.fixture
def bus() -> Iterator[str]:
    with mock_aws():
        events.events_client.cache_clear()
        boto3.client("events").create_event_bus(Name="tuneplane-test")
        yield "tuneplane-test"
    events.events_client.cache_clear()


def test_an_event_too_large_for_eventbridge_loses_its_metrics_and_says_so(bus: str) -> None:
    # GIVEN an event with hundreds of long metrics (each within its own bound, together over 256 KB)
    metrics: dict[str, MetricValue] = {f"metric_{i}": "v" * events.FIELD_TEXT_MAX for i in range(400)}
    event = PipelineEvent(
        run_id="run-1", stage=Stage.RUN, status=Status.FAILED, dataset="incoming/a.jsonl", bucket="b", metrics=metrics
    )
    # WHEN it is published THEN it is accepted, without its metrics, with a note saying why
    event_id = events.publish(bus, event)
    entry = events.entry(bus, event)
    detail = json.loads(entry["Detail"])
    assert event_id and not detail.get("metrics") and "256 KB" in detail["notes"][-1]


@pytest.fixture
def table() -> Iterator[str]:
    with mock_aws():
        ledger.dynamodb.cache_clear()
        boto3.client("dynamodb").create_table(
            TableName="runs",
            KeySchema=[{"AttributeName": "run_id", "KeyType": "HASH"}, {"AttributeName": "stage", "KeyType": "RANGE"}],
            AttributeDefinitions=[
                {"AttributeName": "run_id", "AttributeType": "S"},
                {"AttributeName": "stage", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        yield "runs"
    ledger.dynamodb.cache_clear()


def test_the_ledger_stores_a_huge_cause_cut_with_a_marker(table: str) -> None:
    # GIVEN a failure message of 3 MB (a DynamoDB item holds at most 400 KB)
    # WHEN it is recorded
    ledger.put_stage(table, "run-1", "run", {"status": "failed", "message": "m" * 3 * MB, "metrics": {"a": "x" * MB}})
    # THEN the item is written, final, with the message's start and a marker
    item = ledger.get_stage(table, "run-1", "run")
    assert item is not None and item["status"] == "failed"
    assert item["message"].startswith("mmm") and "[truncated:" in item["message"]
    assert len(item["message"]) <= ledger.TEXT_MAX and len(item["metrics"]["a"]) <= ledger.TEXT_MAX


def test_the_training_jobs_choice_of_checkpoint_is_said_in_words() -> None:
    from tuneplane.logic.stage_outcomes import training_choice_notes

    # GIVEN the training job's final metric lines: an earlier step handed on, early stopping having saved steps
    notes = training_choice_notes({"best_step": 12.0, "last_step": 18.0, "steps_saved": 42.0, "eval_loss": 0.3})
    # THEN both are said, with the steps
    assert notes == [
        "handed on the adapter of step 12, the lowest eval loss: not the last step (18)",
        "early stopping ended training after step 18: 42 planned steps not paid for",
    ]
    # AND the last step as the best is said so; nothing when the job chose nothing (no eval split)
    assert training_choice_notes({"best_step": 60.0, "last_step": 60.0}) == [
        "handed on the adapter of step 60, the lowest eval loss: the last step"
    ]
    assert training_choice_notes({"train_loss": 0.1}) == []
