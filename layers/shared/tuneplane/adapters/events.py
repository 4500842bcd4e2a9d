"""Publishing pipeline events on the stack's EventBridge bus."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

import boto3
from botocore.exceptions import ClientError

from tuneplane.errors import OrchestrationError
from tuneplane.models.events import PipelineEvent

if TYPE_CHECKING:
    from mypy_boto3_events import EventBridgeClient


@cache
def events_client() -> EventBridgeClient:
    """Created lazily so tests start moto first; call events_client.cache_clear() between tests."""
    return boto3.client("events")


def publish(bus_name: str, event: PipelineEvent) -> None:
    """Put one event on the bus; a rejected entry is an error (PutEvents reports those in its answer, not raised)."""
    try:
        answer = events_client().put_events(Entries=[event.entry(bus_name)])  # type: ignore[list-item]
    except ClientError as exc:
        raise OrchestrationError(f"put {event.detail_type} on {bus_name}: {exc}") from exc
    if answer.get("FailedEntryCount"):
        failed = answer["Entries"][0]
        raise OrchestrationError(
            f"put {event.detail_type} on {bus_name}: {failed.get('ErrorCode')}: {failed.get('ErrorMessage')}"
        )
