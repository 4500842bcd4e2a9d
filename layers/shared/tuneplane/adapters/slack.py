"""Posting a message to a Slack incoming webhook, with retries, without ever showing the webhook URL.

A webhook URL is a credential: whoever has it can post to the channel. It is never logged, never put in an
exception (urllib3's own exceptions name the URL, so they are replaced, not chained), and urllib3's debug log lines
that would show the request path are redacted by a filter on its loggers.

Slack answers 200 ``ok``; 429 (rate limited, with ``Retry-After`` in seconds) and 5xx are retried, as are
connection errors and timeouts, with exponential backoff (``Retry-After`` wins when Slack sends it) and a cap on the
total time spent waiting. Anything else (400 ``invalid_payload``, 403, 404 ``no_service``, 410
``channel_is_archived``) will not get better by retrying. In both cases ``SlackDeliveryFailed`` is raised, so that
the Lambda's asynchronous invocation fails and the event ends in its dead-letter queue.

urllib3 comes with botocore in the Lambda runtime; this works with urllib3 1.26 and 2.x.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import cache
from typing import Any

import urllib3
from urllib3.exceptions import HTTPError, LocationValueError

from tuneplane.errors import InvalidConfiguration, SlackDeliveryFailed
from tuneplane.observability import logger

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
_BODY_SHOWN = 100  # characters of Slack's answer quoted in an error ("invalid_payload", "no_service", ...)
_MIN_SECRET = 8  # shorter strings are not redacted (a path of "/" would blank every log line)
_URLLIB3_LOGGERS = (
    "urllib3",
    "urllib3.connectionpool",
    "urllib3.connection",
    "urllib3.poolmanager",
    "urllib3.response",
    "urllib3.util.retry",
)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: ``max_attempts`` POSTs in all, waiting ``backoff_s``, then twice that, ... (or what Slack's
    ``Retry-After`` says) between them, but never more than ``max_wait_s`` in total."""

    max_attempts: int = 3
    max_wait_s: float = 30.0
    backoff_s: float = 1.0
    timeout_s: float = 10.0


@dataclass(frozen=True)
class Delivery:
    """A message Slack accepted: after how many attempts, and how long was spent waiting between them."""

    status: int
    attempts: int
    waited_s: float


class _Redactor(logging.Filter):
    """Replaces the registered secrets in urllib3's log records (its debug line shows the request path)."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def add(self, *secrets: str) -> None:
        self.secrets.update(secret for secret in secrets if len(secret) >= _MIN_SECRET)

    def scrub(self, text: str) -> str:
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, "<redacted>")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        if isinstance(record.msg, str):
            record.msg = self.scrub(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(self.scrub(arg) if isinstance(arg, str) else arg for arg in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {key: self.scrub(v) if isinstance(v, str) else v for key, v in record.args.items()}
        return True


_REDACTOR = _Redactor()
for _name in _URLLIB3_LOGGERS:
    logging.getLogger(_name).addFilter(_REDACTOR)


def _sleep(seconds: float) -> None:
    """The wait between attempts (tests replace it to record the waits instead)."""
    time.sleep(seconds)


@cache
def _pool() -> urllib3.PoolManager:
    """One connection pool per container: warm invocations reuse the TLS connection to hooks.slack.com."""
    return urllib3.PoolManager(num_pools=4, maxsize=1, retries=False)


def retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), or None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    try:
        return max(float(value.strip()), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


def _answer(response: Any) -> str:
    try:
        text = bytes(response.data or b"").decode("utf-8", "replace")
    except Exception:  # the body only decorates the error message
        return ""
    return " ".join(text.split())[:_BODY_SHOWN]


def _request_target(url: str) -> str:
    try:
        return str(urllib3.util.parse_url(url).request_uri)
    except LocationValueError:
        return ""


def post_message(
    webhook_url: str,
    message: Mapping[str, Any],
    policy: RetryPolicy | None = None,
    sleep: Callable[[float], None] | None = None,
) -> Delivery:
    """POST ``message`` as JSON to the webhook; retry what can get better; ``SlackDeliveryFailed`` otherwise."""
    policy = policy or RetryPolicy()
    sleep = sleep or _sleep
    _REDACTOR.add(webhook_url, _request_target(webhook_url))
    body = json.dumps(message, ensure_ascii=False).encode()
    headers = {"Content-Type": "application/json; charset=utf-8"}
    timeout = urllib3.Timeout(connect=policy.timeout_s, read=policy.timeout_s)
    waited, attempt = 0.0, 0
    while True:
        attempt += 1
        status: int | None = None
        retry_after: float | None = None
        try:
            response = _pool().request(
                "POST", webhook_url, body=body, headers=headers, timeout=timeout, retries=False, redirect=False
            )
        except LocationValueError:
            raise InvalidConfiguration("the Slack webhook URL is malformed") from None
        except (HTTPError, OSError) as exc:
            problem = f"no answer ({type(exc).__name__})"
        else:
            status = int(response.status)
            if 200 <= status < 300:
                logger.info("Slack message delivered", attempts=attempt, waited_s=round(waited, 3))
                return Delivery(status=status, attempts=attempt, waited_s=waited)
            problem = f"HTTP {status} {_answer(response)}".rstrip()
            if status not in RETRYABLE_STATUSES:
                raise SlackDeliveryFailed(
                    f"Slack refused the message: {problem}", attempts=attempt, status=status
                ) from None
            retry_after = retry_after_s(response.headers.get("Retry-After"))
        wait = retry_after if retry_after is not None else policy.backoff_s * 2 ** (attempt - 1)
        if attempt >= policy.max_attempts or waited + wait > policy.max_wait_s:
            reason = (
                f"{policy.max_attempts} allowed"
                if attempt >= policy.max_attempts
                else f"waiting {wait:g} s more would pass the {policy.max_wait_s:g} s allowed"
            )
            raise SlackDeliveryFailed(
                f"Slack did not accept the message after {attempt} attempt(s) ({reason}); last answer: {problem}",
                attempts=attempt,
                status=status,
            ) from None
        logger.warning("Slack did not accept the message, retrying", attempt=attempt, problem=problem, wait_s=wait)
        sleep(wait)
        waited += wait
