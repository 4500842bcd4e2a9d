"""Step Functions -> EventBridge: "Step Functions Execution Status Change" events on the default bus, as on AWS.

Step Functions sends an event to the account's default bus each time a standard workflow's execution changes
status (RUNNING, SUCCEEDED, FAILED, TIMED_OUT, ABORTED), with ``source`` ``aws.states``, the execution as the
event's resource, and a ``detail`` of ``executionArn``, ``stateMachineArn``, ``name``, ``status``, ``startDate`` and
``stopDate`` (epoch milliseconds), ``input``/``output`` (JSON strings, with ``inputDetails``/``outputDetails``),
``error`` and ``cause`` (the Step Functions developer guide, "Automating Step Functions event delivery with
EventBridge"; the schema registry's ``aws.states@StepFunctionsExecutionStatusChange``). moto's interpreter sends
nothing, so a rule on these events never fired locally. ``execution_status_events()`` sends them when an execution
starts and when it ends. As on AWS (delivery is asynchronous), a failed delivery never fails the execution.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, cast
from unittest import mock

from moto.events.utils import EventMessageType
from moto.stepfunctions.parser.backend.execution import BaseExecutionWorkerCommunication, Execution

from local.cloud.s3_events import deliver_to_default_bus

LOG = logging.getLogger(__name__)
DETAIL_TYPE = "Step Functions Execution Status Change"


def _millis(value: datetime | None) -> int | None:
    return int(value.timestamp() * 1000) if value else None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value)


def send_status_change(execution: Execution) -> None:
    """The status change event of `execution` as it is now, offered to the default bus's rules."""
    try:
        status = str(getattr(execution.exec_status, "value", execution.exec_status))
        ended = status != "RUNNING"
        event: dict[str, Any] = {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": DETAIL_TYPE,
            "source": "aws.states",
            "account": execution.account_id,
            "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),  # ISO-8601, as EventBridge writes it
            "region": execution.region_name,
            "resources": [execution.exec_arn],
            "detail": {
                "executionArn": execution.exec_arn,
                "stateMachineArn": execution.state_machine_arn,
                "name": execution.name,
                "status": status,
                "startDate": _millis(execution.start_date),
                "stopDate": _millis(execution.stop_date) if ended else None,
                "input": execution.execution_input,
                "output": _text(execution.output) if status == "SUCCEEDED" else None,
                "inputDetails": {"included": True},
                "outputDetails": {"included": True} if status == "SUCCEEDED" else None,
                "error": execution.error if ended else None,
                "cause": execution.cause if ended else None,
            },
        }
        deliver_to_default_bus(cast(EventMessageType, event), execution.account_id, execution.region_name)
    except Exception:  # asynchronous on AWS: a delivery problem never fails the execution
        LOG.exception("Step Functions -> EventBridge delivery failed for %s", execution.exec_arn)


@contextmanager
def execution_status_events() -> Iterator[None]:
    """Within this block, every execution's start and end are sent to the default bus."""
    original_start, original_terminated = Execution.start, BaseExecutionWorkerCommunication.terminated

    def start(self: Execution) -> None:
        original_start(self)
        send_status_change(self)

    def terminated(self: BaseExecutionWorkerCommunication) -> None:
        original_terminated(self)
        send_status_change(self.execution)

    with (
        mock.patch.object(Execution, "start", start),
        mock.patch.object(BaseExecutionWorkerCommunication, "terminated", terminated),
    ):
        yield
