"""The evaluation's custom graders: Lambda functions the stack allows (GraderFunctionArns), invoked synchronously
with a batch of items and answering one score in [0, 1] per item.

Request: ``{"items": [{"index": 3, "model": "candidate", "prompt": [messages], "reference": "...",
"answer": "..."}]}``.
Answer: ``{"scores": [0.5, ...]}`` in the items' order. A function error (the function raised), an answer of the
wrong shape or a score outside [0, 1] is ``GraderFailed`` naming the function; throttling is ``JudgeUnavailable``'s
kin for graders, retried by the state machine.
"""

from __future__ import annotations

import json
import math
from functools import cache
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ReadTimeoutError

from tuneplane.errors import GraderFailed, JudgeUnavailable

if TYPE_CHECKING:
    from mypy_boto3_lambda import LambdaClient

# Lambda's synchronous invocation payload quota is 6 MB each way (the Lambda quotas page); batches stay well under.
MAX_REQUEST_BYTES = 5 * 1024 * 1024
# A grader must answer a batch within this (docs/evaluation.md says so): a grading pass bounds its chunks' time
# with it.
GRADER_TIMEOUT_S = 120
# Invoke's errors that a retry can fix (botocore's Invoke error list): throttling, the service, a function being
# updated or its network interface or snapshot not ready yet.
_TRANSIENT = {
    "TooManyRequestsException",
    "ServiceException",
    "EC2ThrottledException",
    "EC2UnexpectedException",
    "ResourceNotReadyException",
    "ResourceConflictException",
    "ENINotReadyException",
    "SnapStartNotReadyException",
}


@cache
def _lambda() -> LambdaClient:
    return boto3.client(
        "lambda",
        config=Config(
            connect_timeout=5, read_timeout=GRADER_TIMEOUT_S, retries={"mode": "standard", "total_max_attempts": 1}
        ),
    )


def score(function: str, items: list[dict[str, Any]]) -> list[float]:
    """The function's scores of ``items`` (one each, in order)."""
    payload = json.dumps({"items": items}).encode()
    if len(payload) > MAX_REQUEST_BYTES:
        raise GraderFailed(f"grader {function}: a batch of {len(items)} items is {len(payload)} bytes, over the limit")
    try:
        response = _lambda().invoke(FunctionName=function, InvocationType="RequestResponse", Payload=payload)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in _TRANSIENT:
            raise JudgeUnavailable(f"grader {function} was not invoked: {code}") from exc
        raise GraderFailed(f"grader {function} could not be invoked: {code} {exc}") from exc
    except ReadTimeoutError as exc:  # past the time a grader has (docs/evaluation.md: 2 minutes a batch)
        raise GraderFailed(
            f"grader {function} did not answer a batch of {len(items)} within {GRADER_TIMEOUT_S} s"
        ) from exc
    except BotoCoreError as exc:
        raise JudgeUnavailable(f"grader {function} was not invoked: {exc}") from exc
    return _checked_scores(function, response, len(items))


def _checked_scores(function: str, response: Any, count: int) -> list[float]:
    # The grader's answers and errors may quote the data it was sent: its words are never repeated here (they would
    # reach the run's failure message, events and logs), only their shape.
    raw = response["Payload"].read()
    if response.get("FunctionError"):
        try:
            error_type = str(json.loads(raw).get("errorType") or "an error")
        except (ValueError, AttributeError):
            error_type = "an error"
        raise GraderFailed(f"grader {function} raised {error_type} (its message is in the grader's own log)")
    try:
        scores = json.loads(raw)["scores"]
    except (ValueError, KeyError, TypeError) as exc:
        raise GraderFailed(
            f'grader {function} answered {len(raw)} bytes without a "scores" list ({type(exc).__name__})'
        ) from exc
    if not isinstance(scores, list) or len(scores) != count:
        got = len(scores) if isinstance(scores, list) else type(scores).__name__
        raise GraderFailed(f"grader {function} answered {got} scores for {count} items")
    checked: list[float] = []
    for position, value in enumerate(scores):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            shown = value if isinstance(value, bool | int | float) or value is None else type(value).__name__
            raise GraderFailed(f"grader {function}: score {position} is {shown!r}, not a number in [0, 1]")
        if not 0.0 <= value <= 1.0:
            raise GraderFailed(f"grader {function}: score {position} is {value}, outside [0, 1]")
        checked.append(float(value))
    return checked


def batches(items: list[dict[str, Any]], most: int) -> list[list[dict[str, Any]]]:
    """``items`` in order, at most ``most`` a batch and each batch's request under MAX_REQUEST_BYTES (an item too
    large alone goes alone, and its request is refused with the reason)."""
    out: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    size = len(b'{"items": []}')
    for item in items:
        item_bytes = len(json.dumps(item).encode()) + 2
        if current and (len(current) >= most or size + item_bytes > MAX_REQUEST_BYTES):
            out.append(current)
            current, size = [], len(b'{"items": []}')
        current.append(item)
        size += item_bytes
    if current:
        out.append(current)
    return out
