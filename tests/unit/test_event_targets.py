"""local/cloud/event_targets: a Lambda target that cannot be reached is a delivery failure with Lambda's own error;
a fault anywhere else is not disguised as one."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from local.cloud import event_targets
from moto import mock_aws

RULE = SimpleNamespace(arn="arn:aws:events:us-east-1:123456789012:rule/app")
ARN = "arn:aws:lambda:us-east-1:123456789012:function:gone"


def test_a_missing_function_is_a_delivery_failure_with_lambdas_code_and_message() -> None:
    # GIVEN a rule whose Lambda target does not exist
    with mock_aws():
        # WHEN the event is delivered, THEN the failure (what the DLQ receives) is Lambda's not-found, naming the ARN
        with pytest.raises(event_targets.DeliveryError) as raised:
            event_targets._invoke_function(RULE, {"Id": "t", "Arn": ARN}, {})  # type: ignore[arg-type]
    assert raised.value.code == "ResourceNotFoundException" and ARN in str(raised.value)


def test_a_fault_that_is_not_lambdas_answer_is_raised_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a Lambda backend that fails for a reason of its own (a bug, not an answer Lambda would give)
    class Broken:
        def get_function(self, arn: str) -> Any:
            raise RuntimeError("backend bug")

    monkeypatch.setattr(event_targets, "lambda_backends", {"123456789012": {"us-east-1": Broken()}})
    # WHEN the event is delivered, THEN the fault surfaces as itself, not as a missing function in a DLQ
    with pytest.raises(RuntimeError, match="backend bug"):
        event_targets._invoke_function(RULE, {"Id": "t", "Arn": ARN}, {})  # type: ignore[arg-type]
