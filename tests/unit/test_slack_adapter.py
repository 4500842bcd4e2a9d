"""The Slack webhook adapter against a local receiver (local/slack.py): retries, Retry-After, giving up, secrecy."""

from __future__ import annotations

import logging
import socket
import traceback
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from local.slack import local_slack_webhook

from tuneplane.adapters import slack
from tuneplane.errors import InvalidConfiguration, SlackDeliveryFailed

MESSAGE = {"text": "hello", "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "hello"}}]}
FAST = slack.RetryPolicy(max_attempts=3, max_wait_s=30.0, backoff_s=1.0, timeout_s=5.0)


def _secret_parts(url: str) -> list[str]:
    """The webhook URL and its path: neither may appear anywhere."""
    return [url, url.split("/", 3)[3], url.rsplit("/", 1)[1]]


def _assert_not_leaked(url: str, *texts: str) -> None:
    for text in texts:
        for part in _secret_parts(url):
            assert part not in text


def test_a_message_is_posted_as_json(loopback: None, waits: list[float]) -> None:
    # GIVEN a receiver that accepts everything
    with local_slack_webhook(echo=False) as receiver:
        # WHEN a message is posted
        delivery = slack.post_message(receiver.url, MESSAGE, FAST)
    # THEN it arrives once, as sent, on the first attempt, without waiting
    assert receiver.messages == [MESSAGE]
    assert delivery == slack.Delivery(status=200, attempts=1, waited_s=0.0)
    assert waits == []


@pytest.mark.parametrize("retry_after", ["0", "1"])
def test_429_is_retried_after_the_time_slack_asks_for(loopback: None, waits: list[float], retry_after: str) -> None:
    # GIVEN a receiver that rate-limits the first POST with Retry-After, and a backoff that would wait longer
    policy = slack.RetryPolicy(max_attempts=3, max_wait_s=30.0, backoff_s=5.0, timeout_s=5.0)
    with local_slack_webhook(fail_first=1, fail_status=429, retry_after=retry_after, echo=False) as receiver:
        # WHEN a message is posted
        delivery = slack.post_message(receiver.url, MESSAGE, policy)
    # THEN the second attempt got through, after exactly the Retry-After wait (not the backoff)
    assert [r.status for r in receiver.requests] == [429, 200]
    assert receiver.messages == [MESSAGE]
    assert delivery.attempts == 2
    assert waits == [float(retry_after)]
    assert delivery.waited_s == float(retry_after)


def test_5xx_without_retry_after_backs_off_exponentially(loopback: None, waits: list[float]) -> None:
    policy = slack.RetryPolicy(max_attempts=4, max_wait_s=30.0, backoff_s=0.5, timeout_s=5.0)
    with local_slack_webhook(fail_first=2, fail_status=503, retry_after=None, echo=False) as receiver:
        delivery = slack.post_message(receiver.url, MESSAGE, policy)
    assert [r.status for r in receiver.requests] == [503, 503, 200]
    assert waits == [0.5, 1.0]
    assert delivery.attempts == 3 and delivery.waited_s == 1.5


def test_5xx_until_the_attempts_are_used_up_raises_slack_delivery_failed(loopback: None, waits: list[float]) -> None:
    # GIVEN a receiver that always answers 500
    with local_slack_webhook(fail_first=99, fail_status=500, retry_after=None, echo=False) as receiver:
        # WHEN a message is posted THEN after 3 attempts (2 waits) the adapter gives up with SlackDeliveryFailed
        with pytest.raises(SlackDeliveryFailed) as raised:
            slack.post_message(receiver.url, MESSAGE, FAST)
    assert receiver.attempts == 3 and receiver.messages == []
    assert waits == [1.0, 2.0]
    assert raised.value.attempts == 3 and raised.value.status == 500
    assert str(raised.value) == (
        "Slack did not accept the message after 3 attempt(s) (3 allowed); last answer: HTTP 500 internal_error"
    )
    _assert_not_leaked(receiver.url, str(raised.value), repr(raised.value))


def test_the_total_wait_is_capped(loopback: None, waits: list[float]) -> None:
    # GIVEN Slack asking for 20 s each time, and 30 s of waiting allowed in all
    policy = slack.RetryPolicy(max_attempts=5, max_wait_s=30.0, backoff_s=1.0, timeout_s=5.0)
    with local_slack_webhook(fail_first=99, retry_after="20", echo=False) as receiver:
        with pytest.raises(SlackDeliveryFailed) as raised:
            slack.post_message(receiver.url, MESSAGE, policy)
    # THEN it waited once (20 s), and gave up rather than wait past 30 s
    assert waits == [20.0] and receiver.attempts == 2
    assert "waiting 20 s more would pass the 30 s allowed" in str(raised.value)
    assert raised.value.status == 429


def test_other_client_errors_are_not_retried(loopback: None, waits: list[float]) -> None:
    # GIVEN a webhook URL the receiver does not know (Slack answers 404 no_service, e.g. for a revoked webhook)
    with local_slack_webhook(echo=False) as receiver:
        wrong = receiver.url.rsplit("/", 1)[0] + "/revokedtoken0000"
        with pytest.raises(SlackDeliveryFailed) as raised:
            slack.post_message(wrong, MESSAGE, FAST)
    # THEN one attempt, no wait, and the error says what Slack said (but not where it was sent)
    assert receiver.attempts == 1 and waits == []
    assert str(raised.value) == "Slack refused the message: HTTP 404 no_service"
    _assert_not_leaked(wrong, str(raised.value))


def test_connection_errors_are_retried_then_reported_without_the_url(loopback: None, waits: list[float]) -> None:
    # GIVEN a port nobody listens on any more
    with local_slack_webhook(echo=False) as receiver:
        url = receiver.url
    # WHEN posting THEN every attempt fails to connect, and the error names the problem's class only
    with pytest.raises(SlackDeliveryFailed) as raised:
        slack.post_message(url, MESSAGE, FAST)
    assert waits == [1.0, 2.0]
    assert raised.value.status is None
    assert "no answer (NewConnectionError)" in str(raised.value)
    formatted = "".join(traceback.format_exception(raised.value))
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    _assert_not_leaked(url, formatted)


def test_a_receiver_that_never_answers_times_out(loopback: None, waits: list[float]) -> None:
    # GIVEN a socket that accepts connections and never answers
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/services/T000/B000/silentsilentsilent"
    policy = slack.RetryPolicy(max_attempts=2, max_wait_s=30.0, backoff_s=0.0, timeout_s=0.2)
    try:
        # WHEN posting THEN each attempt times out, and the adapter gives up after its attempts
        with pytest.raises(SlackDeliveryFailed, match=r"no answer \(ReadTimeoutError\)"):
            slack.post_message(url, MESSAGE, policy)
    finally:
        listener.close()
    assert waits == [0.0]


def test_a_malformed_url_is_a_configuration_error_that_does_not_show_it() -> None:
    url = "http://[not-a-host/services/T000/B000/malformedsecret"
    with pytest.raises(InvalidConfiguration) as raised:
        slack.post_message(url, MESSAGE, FAST)
    assert str(raised.value) == "the Slack webhook URL is malformed"
    assert "malformedsecret" not in "".join(traceback.format_exception(raised.value))


def test_the_webhook_url_never_appears_in_logs_or_output(
    loopback: None, waits: list[float], caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN every logger at DEBUG (urllib3's debug line names the request path) and a receiver that fails 2 times
    caplog.set_level(logging.DEBUG)
    with local_slack_webhook(fail_first=2, fail_status=503, retry_after="0") as receiver:
        slack.post_message(receiver.url, MESSAGE, FAST)
        # AND one that fails until the adapter gives up
        with local_slack_webhook(fail_first=99, fail_status=429, retry_after="0") as failing:
            with pytest.raises(SlackDeliveryFailed) as raised:
                slack.post_message(failing.url, MESSAGE, FAST)
    out, err = capsys.readouterr()
    logged = [record.getMessage() for record in caplog.records]
    # THEN urllib3 did log the requests, with the path redacted, and nothing anywhere shows either URL
    assert any("<redacted>" in line and "POST" in line for line in logged), logged
    assert any("retrying" in line for line in logged)
    for url in (receiver.url, failing.url):
        _assert_not_leaked(
            url, *logged, out, err, str(raised.value), "".join(traceback.format_exception(raised.value))
        )
    # AND the receiver printed the message it accepted
    assert "hello" in out


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, None), ("", None), ("0", 0.0), ("1", 1.0), ("2.5", 2.5), ("-3", 0.0), ("soon", None)],
)
def test_retry_after_in_seconds(value: str | None, seconds: float | None) -> None:
    assert slack.retry_after_s(value) == seconds


def test_retry_after_as_an_http_date() -> None:
    now = datetime(2026, 11, 23, 15, 0, 0, tzinfo=UTC)
    assert slack.retry_after_s(format_datetime(now + timedelta(seconds=7), usegmt=True), now=now) == 7.0
    assert slack.retry_after_s(format_datetime(now - timedelta(seconds=7), usegmt=True), now=now) == 0.0
