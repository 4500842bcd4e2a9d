"""Publishing pipeline events on the stack's EventBridge bus, every text in them bounded.

The AWS docs ("Amazon EventBridge quotas") limit a ``PutEvents`` entry to 256 KB, and ``PipelineEvent`` limits its
``message`` to 2,000 characters and its ``error`` to 256: an event built from a huge cause (a dataset key, a model's
answer, an AWS error) would fail to build or be refused, and the run would end without its outcome event. So every
text field is cut here, where events are made and published, with a visible marker (``tuneplane.bounds``).

``PutEvents`` reports refused entries in its answer rather than raising (the AWS docs, "PutEvents": check
``FailedEntryCount``); a refusal is an ``OrchestrationError``, which the state machine's Retry takes. EventBridge has
no idempotency token, so a retried task must not publish again what it published before: the Stage function records
each published event in the run ledger and skips it on a retry (``logic/stages.py``).
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

import boto3
from botocore.exceptions import ClientError

from tuneplane.bounds import bound_text, bound_utf8, bounded_json_value
from tuneplane.errors import OrchestrationError
from tuneplane.logic.validation.pii import redact
from tuneplane.models.events import PipelineEvent

if TYPE_CHECKING:
    from mypy_boto3_events import EventBridgeClient

MESSAGE_MAX = 2000  # PipelineEvent.message's max_length
ERROR_MAX = 256  # PipelineEvent.error's max_length
NOTE_MAX = 1000  # characters of one note
NOTES_MAX = 20  # notes kept (the first ones; the last says how many were left out)
FIELD_TEXT_MAX = 1000  # characters of any other string (dataset key, a metric's text, an artifact URI)
ENTRY_MAX_BYTES = 256 * 1024  # the PutEvents entry limit (the AWS docs, "Amazon EventBridge quotas")
_ENTRY_MARGIN = 4096  # room for the entry's other fields (source, detail type, bus name)


@cache
def events_client() -> EventBridgeClient:
    """Created lazily so tests start moto first; call events_client.cache_clear() between tests."""
    return boto3.client("events")


def bounded_fields(fields: dict[str, Any], keep: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of a ``PipelineEvent`` with every text within its bound, each cut one marked. The free texts are
    masked before they are cut (``redact``): a secret cut in half would no longer be recognised, and half a card
    number is still too much; ``keep`` are the run's own identifiers (``run_identifiers``)."""
    bounded = dict(fields)
    if isinstance(bounded.get("message"), str):
        bounded["message"] = redact(bounded["message"], MESSAGE_MAX, keep)
    if isinstance(bounded.get("error"), str):
        bounded["error"] = redact(bounded["error"], ERROR_MAX, keep)
    notes = [redact(str(note), NOTE_MAX, keep) for note in bounded.get("notes") or []]
    if len(notes) > NOTES_MAX:
        notes = [*notes[: NOTES_MAX - 1], f"[truncated: {len(notes) - NOTES_MAX + 1} more notes]"]
    if "notes" in bounded:
        bounded["notes"] = notes
    for name in ("metrics", "artifacts"):
        if isinstance(bounded.get(name), dict):
            bounded[name] = bounded_json_value(bounded[name], FIELD_TEXT_MAX)
    for name in ("dataset", "bucket", "version_id", "execution_arn"):
        if isinstance(bounded.get(name), str):
            bounded[name] = bound_text(bounded[name], FIELD_TEXT_MAX)
    return bounded


def entry(bus_name: str, event: PipelineEvent) -> dict[str, Any]:
    """The ``PutEvents`` entry of ``event``, within the entry size limit: an event still too large (many metrics or
    artifacts) loses them, saying so in a note, rather than being refused."""
    made = event.entry(bus_name)
    if len(made["Detail"].encode()) <= ENTRY_MAX_BYTES - _ENTRY_MARGIN:
        return made
    note = "[truncated: metrics and artifacts left out: the event exceeded EventBridge's 256 KB entry limit]"
    smaller = event.model_copy(update={"metrics": {}, "artifacts": {}, "notes": [*event.notes[: NOTES_MAX - 1], note]})
    made = smaller.entry(bus_name)
    if len(made["Detail"].encode()) > ENTRY_MAX_BYTES - _ENTRY_MARGIN:  # cannot happen with bounded fields
        made["Detail"] = bound_utf8(made["Detail"], ENTRY_MAX_BYTES - _ENTRY_MARGIN)
    return made


def publish(bus_name: str, event: PipelineEvent) -> str | None:
    """Put one event on the bus; its EventBridge event id. A refused entry is an error (PutEvents reports those in
    its answer, not raised)."""
    try:
        answer = events_client().put_events(Entries=[entry(bus_name, event)])  # type: ignore[list-item]
    except ClientError as exc:
        raise OrchestrationError(bound_text(f"put {event.detail_type} on {bus_name}: {exc}", NOTE_MAX)) from exc
    if answer.get("FailedEntryCount"):
        failed = answer["Entries"][0]
        raise OrchestrationError(
            bound_text(
                f"put {event.detail_type} on {bus_name}: {failed.get('ErrorCode')}: {failed.get('ErrorMessage')}",
                NOTE_MAX,
            )
        )
    entries = answer.get("Entries") or [{}]
    return entries[0].get("EventId")
