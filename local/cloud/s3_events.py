"""S3 -> EventBridge notifications on the default bus only, as on AWS.

With EventBridge notifications on, S3 sends its events (``Object Created``, ``Object Tags Added``, ...) to the
account's *default* event bus. moto 5.2.5 (``moto.s3.notifications._send_event_bridge_message``) offers them to
the rules of every bus, so a rule on a custom bus (our ``tuneplane`` stage-event bus) would see S3 events locally
that it never sees on AWS. ``s3_events_on_default_bus()`` replaces that function with the same event, delivered to
the default bus's rules only, and shaped as S3 shapes it where moto differs: a fresh ``id`` per event, ``etag``
(not ``eTag``), an increasing ``sequencer``, and ``reason`` naming the API call (``PutObject``). As in moto (and
AWS: delivery is asynchronous), a failed delivery never fails the S3 request.
"""

from __future__ import annotations

import copy
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from unittest import mock

from moto.core.utils import unix_time
from moto.events.models import events_backends
from moto.events.utils import _BASE_EVENT_MESSAGE, EventMessageType
from moto.s3 import notifications

LOG = logging.getLogger(__name__)
# The S3 API call behind an event, as S3 reports it in "reason" (moto writes the event name's last part).
_REASONS = {
    "s3:ObjectCreated:Put": "PutObject",
    "s3:ObjectCreated:Post": "POST Object",
    "s3:ObjectCreated:Copy": "CopyObject",
    "s3:ObjectCreated:CompleteMultipartUpload": "CompleteMultipartUpload",
    "s3:ObjectRemoved:Delete": "DeleteObject",
}


def _send_to_default_bus(account_id: str, bucket: Any, event_name: str, key: Any) -> None:
    """The event moto builds in ``_send_event_bridge_message``, offered to the default bus's rules."""
    try:
        event: EventMessageType = copy.deepcopy(_BASE_EVENT_MESSAGE)
        event.update(
            {
                "id": str(uuid.uuid4()),  # moto's template has one fixed id for every event
                "detail-type": notifications._detail_type(event_name),
                "source": "aws.s3",
                "account": account_id,
                "time": unix_time(),
                "region": bucket.region_name,
                "resources": [bucket.arn],
                "detail": {
                    "version": "0",
                    "bucket": {"name": bucket.name},
                    "object": {
                        "key": key.name,
                        "size": key.size,
                        "etag": key.etag.replace('"', ""),  # moto writes "eTag"; S3 writes "etag"
                        "version-id": key.version_id,
                        "sequencer": f"{time.time_ns():018X}",  # increases from one event to the next, as on S3
                    },
                    "request-id": "N4N7GDK58NMKJ12R",
                    "requester": account_id,
                    "source-ip-address": "1.2.3.4",
                    "reason": _REASONS.get(event_name, event_name.split(":")[-1]),
                },
            }
        )
        deliver_to_default_bus(event, account_id, bucket.region_name)
    except Exception:  # asynchronous on AWS: a delivery problem never fails the S3 call
        LOG.exception("S3 -> EventBridge delivery failed for s3://%s/%s", bucket.name, key.name)


def deliver_to_default_bus(event: EventMessageType, account_id: str, region: str) -> None:
    """Offer ``event`` to the rules of the account's default bus, as S3 does (tests also re-deliver events with it).

    moto keeps an event's ``time`` as a Unix timestamp (its SQS target fails on anything else); an event as a
    target received it (ISO-8601 ``time``) is turned back into that form.
    """
    if isinstance(event.get("time"), str):
        event = {**event, "time": datetime.fromisoformat(str(event["time"]).replace("Z", "+00:00")).timestamp()}
    default_bus = events_backends[account_id][region].event_buses["default"]
    for rule in list(default_bus.rules.values()):
        rule.send_to_targets(event, transform_input=False)


@contextmanager
def s3_events_on_default_bus() -> Iterator[None]:
    """Within this block, S3's EventBridge notifications reach the default bus only."""
    with mock.patch.object(notifications, "_send_event_bridge_message", _send_to_default_bus):
        yield
