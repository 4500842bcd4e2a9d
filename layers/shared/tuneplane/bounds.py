"""Size bounds on every text the pipeline hands to a service with a size limit, and on the errors its Lambdas raise.

A run must end in exactly one outcome event whatever failed and however large its message was. Text that came from
the outside (a dataset key, a record, a model's answer, an AWS error) can be megabytes; the services it reaches
have hard limits:

- Step Functions: the AWS docs ("Step Functions service quotas") give 256 KiB as the maximum input or output size of
  a task, state or execution, as a UTF-8 string. A Lambda error becomes the ``Cause`` of the Catch's result: over the
  limit it is ``States.DataLimitExceeded``, which the developer guide ("Error names") says ``States.ALL`` does not
  catch, so the run ends with no outcome event and a ledger that says ``started`` for ever.
- EventBridge: the AWS docs ("Amazon EventBridge quotas", PutEvents) limit a ``PutEvents`` entry to 256 KB.
- DynamoDB: an item is at most 400 KB (the AWS docs, "Service, account, and table quotas in Amazon DynamoDB").

So texts are cut at the point they are published, with a visible marker saying how much was left out, and every
Lambda handler of the state machine raises errors whose message (and stack trace) is bounded.
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

ERROR_MESSAGE_MAX = 8_000  # characters of a Lambda error's message (the Catch's Cause): far below 256 KiB
ERROR_TRACE_FRAMES = 20  # the innermost frames kept in its stack trace (a RecursionError has a thousand)
TRUNCATED = "[truncated: {n} more characters]"

_P = ParamSpec("_P")
_R = TypeVar("_R")


def bound_text(text: str, limit: int) -> str:
    """``text`` if it has at most ``limit`` characters, else its start and a marker saying how much was cut (the
    whole result within ``limit``)."""
    if limit <= 0:
        return ""
    if len(text) <= limit:
        return text
    marker = " " + TRUNCATED.format(n=len(text))  # an upper bound on the digits of the count cut
    keep = max(limit - len(marker), 0)
    return (text[:keep] + " " + TRUNCATED.format(n=len(text) - keep))[:limit]


def bound_utf8(text: str, max_bytes: int) -> str:
    """``text`` cut (with the marker) so that its UTF-8 encoding has at most ``max_bytes`` bytes."""
    if len(text.encode()) <= max_bytes:
        return text
    limit = min(len(text), max_bytes)
    while limit > 0:
        cut = bound_text(text, limit)
        if len(cut.encode()) <= max_bytes:
            return cut
        limit = limit * 3 // 4
    return ""


def _innermost(trace: TracebackType | None, frames: int) -> TracebackType | None:
    """The last ``frames`` entries of a traceback (the frames nearest to where it was raised)."""
    entries: list[TracebackType] = []
    while trace is not None:
        entries.append(trace)
        trace = trace.tb_next
    return entries[-frames] if len(entries) > frames else (entries[0] if entries else None)


def bounded_exception(exc: BaseException) -> BaseException:
    """``exc`` with a message of at most ``ERROR_MESSAGE_MAX`` characters and its innermost frames only, keeping
    its class name: the Lambda runtime reports ``type(exc).__name__`` as ``errorType``, which the state machine's
    Retry and Catch match. An exception whose message does not come from its ``args`` (pydantic's
    ``ValidationError``, classes with their own ``__str__``) is replaced by one of a class of the same name."""
    message = str(exc)
    if len(message) > ERROR_MESSAGE_MAX:
        short = bound_text(message, ERROR_MESSAGE_MAX)
        try:
            exc.args = (short,)
            rewritten = str(exc) == short
        except Exception:  # a class whose args cannot be set: replaced below
            rewritten = False
        if not rewritten:
            same_name = type(type(exc).__name__, (Exception,), {"__module__": type(exc).__module__})
            replacement = same_name(short)
            replacement.__traceback__ = exc.__traceback__
            exc = replacement
    exc.__cause__ = exc.__context__ = None  # the runtime reports the exception itself; its chain only in the log
    exc.__suppress_context__ = True
    return exc.with_traceback(_innermost(exc.__traceback__, ERROR_TRACE_FRAMES))


def bounded_errors(handler: Callable[_P, _R]) -> Callable[_P, _R]:
    """A Lambda handler whose errors stay within Step Functions' limits (see the module docstring). The outermost
    decorator, so that it also bounds what the other decorators raise (the event parser's ``ValidationError``
    quotes the input)."""

    @functools.wraps(handler)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return handler(*args, **kwargs)
        except Exception as exc:
            if len(str(exc)) > ERROR_MESSAGE_MAX or _depth(exc.__traceback__) > ERROR_TRACE_FRAMES:
                _log_whole(exc)
                raise bounded_exception(exc) from None
            raise

    return wrapper


def _depth(trace: TracebackType | None) -> int:
    depth = 0
    while trace is not None:
        depth, trace = depth + 1, trace.tb_next
    return depth


def _log_whole(exc: BaseException) -> None:
    """The whole error, for the function's log (CloudWatch cuts a log event at 256 KB itself): its start and its
    innermost frames, as the error returned to the state machine has only these."""
    from tuneplane.observability import logger  # Powertools' Logger: imported here, the module stays dependency-free

    try:
        frames = traceback.format_tb(_innermost(exc.__traceback__, ERROR_TRACE_FRAMES))
        logger.error(
            "error cut to Step Functions' limits",
            error_type=type(exc).__name__,
            error_chars=len(str(exc)),
            error_text=bound_text(str(exc), 4_000),
            error_trace=frames,
        )
    except Exception:  # logging must not replace the error being reported
        pass


def bounded_json_value(value: Any, text_limit: int) -> Any:
    """``value`` with every string in it (keys included) cut to ``text_limit`` characters."""
    if isinstance(value, str):
        return bound_text(value, text_limit)
    if isinstance(value, dict):
        return {bound_text(str(k), text_limit): bounded_json_value(v, text_limit) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [bounded_json_value(v, text_limit) for v in value]
    return value
