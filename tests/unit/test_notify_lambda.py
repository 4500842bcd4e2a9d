"""The Notify Lambda end to end: EventBridge event -> secret (moto) -> chart link (moto S3) -> local Slack receiver,
once per event id (idempotency records in moto DynamoDB)."""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from aws_lambda_powertools.utilities import parameters
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig
from local.slack import LocalSlack, local_slack_webhook
from moto import mock_aws

from tuneplane.adapters import s3 as s3_adapter
from tuneplane.adapters import secrets as secrets_adapter
from tuneplane.config import notify_settings
from tuneplane.errors import InvalidConfiguration, SlackDeliveryFailed
from tuneplane.logic.notify import PipelineEventBridgeModel, render
from tuneplane.logic.notify.notify import idempotency_store, presign_client

ROOT = Path(__file__).resolve().parents[2]
EVENTS = {path.stem: json.loads(path.read_text()) for path in sorted((ROOT / "events").glob("pipeline_event_*.json"))}
EVALUATE = EVENTS["pipeline_event_stage_succeeded_evaluate"]
BUCKET = EVALUATE["detail"]["bucket"]
RUN_ID = EVALUATE["detail"]["run_id"]
CHART_KEY = f"runs/{RUN_ID}/evaluation/evaluation.png"
CHARTED = {"pipeline_event_stage_succeeded_evaluate", "pipeline_event_run_succeeded"}
IDEMPOTENCY_TABLE = "tuneplane-test-notify-idempotency"
CONTEXT = SimpleNamespace(
    function_name="notify",
    memory_limit_in_mb=256,
    invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:notify",
    aws_request_id="req-1",
    get_remaining_time_in_millis=lambda: 90_000,
)


def _load_handler() -> ModuleType:
    spec = importlib.util.spec_from_file_location("notify_app", ROOT / "functions" / "notify" / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _clear_caches() -> None:
    s3_adapter.s3_client.cache_clear()
    presign_client.cache_clear()
    notify_settings.cache_clear()
    idempotency_store.cache_clear()
    parameters.clear_caches()


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[SimpleNamespace]:
    """moto with the data bucket (holding the evaluation chart), Secrets Manager and the idempotency table (as
    template.yaml's NotifyIdempotencyTable); the handler loaded."""
    with mock_aws():
        _clear_caches()
        s3, secretsmanager, dynamodb = boto3.client("s3"), boto3.client("secretsmanager"), boto3.client("dynamodb")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key=CHART_KEY, Body=b"\x89PNG...", ContentType="image/png")
        dynamodb.create_table(
            TableName=IDEMPOTENCY_TABLE,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        )
        dynamodb.update_time_to_live(
            TableName=IDEMPOTENCY_TABLE, TimeToLiveSpecification={"AttributeName": "expiration", "Enabled": True}
        )
        monkeypatch.setenv("IDEMPOTENCY_TABLE", IDEMPOTENCY_TABLE)

        def secret(value: str, name: str = "tuneplane/slack-webhook") -> str:
            arn = secretsmanager.create_secret(Name=name, SecretString=value)["ARN"]
            monkeypatch.setenv("SLACK_WEBHOOK_SECRET_ARN", arn)
            return str(arn)

        def records() -> list[dict[str, Any]]:
            return list(dynamodb.scan(TableName=IDEMPOTENCY_TABLE)["Items"])

        yield SimpleNamespace(
            s3=s3,
            secretsmanager=secretsmanager,
            secret=secret,
            records=records,
            handler=_load_handler().handler,
        )
    _clear_caches()


@pytest.fixture
def receiver(loopback: None, aws: SimpleNamespace) -> Iterator[LocalSlack]:
    """A local Slack webhook whose URL is the (plain) secret value."""
    with local_slack_webhook(echo=False) as slack:
        aws.secret(slack.url)
        yield slack


def _header(message: dict[str, Any]) -> str:
    return str(message["blocks"][0]["text"]["text"])


def _buttons(message: dict[str, Any]) -> dict[str, str]:
    return {e["text"]["text"]: e["url"] for b in message["blocks"] if b["type"] == "actions" for e in b["elements"]}


# ---------------------------------------------------------------------------------------------------------------------
# The happy path


def test_an_evaluation_event_becomes_one_message_with_a_presigned_chart_link(
    aws: SimpleNamespace, receiver: LocalSlack
) -> None:
    # WHEN the handler gets the sample Stage Succeeded event of the evaluate stage
    result = aws.handler(copy.deepcopy(EVALUATE), CONTEXT)
    # THEN it returns a small summary of what went out
    assert result == {
        "run_id": RUN_ID,
        "stage": "evaluate",
        "status": "succeeded",
        "detail_type": "Stage Succeeded",
        "attempts": 1,
        "chart_linked": True,
        "duplicate": False,
    }
    # AND Slack got exactly one message, with the scores and a presigned link to the chart
    [message] = receiver.messages
    assert _header(message) == ":white_check_mark: Evaluate succeeded · support-v2.jsonl"
    assert "`exact_match` (primary): candidate *0.620*" in json.dumps(message)
    chart = urlsplit(_buttons(message)["Score chart"])
    assert chart.scheme == "https" and BUCKET in chart.netloc + chart.path and chart.path.endswith(CHART_KEY)
    # AND it is signed with SigV4 (objects encrypted with KMS refuse SigV2 links), valid for the configured 12 h
    query = parse_qs(chart.query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and "X-Amz-Signature" in query
    assert "/us-east-1/s3/aws4_request" in query["X-Amz-Credential"][0]
    assert query["X-Amz-Expires"] == ["43200"]


@pytest.mark.parametrize("name", sorted(EVENTS))
def test_every_sample_event_goes_out_as_one_message(aws: SimpleNamespace, receiver: LocalSlack, name: str) -> None:
    # WHEN the handler gets a sample event
    result = aws.handler(copy.deepcopy(EVENTS[name]), CONTEXT)
    # THEN Slack got the one message the renderer makes of it (an evaluation chart linked where there is one)
    envelope = PipelineEventBridgeModel.model_validate(EVENTS[name])
    expected = render(envelope.detail, envelope.detail_type)
    [message] = receiver.messages
    assert message["text"] == expected["text"] and _header(message) == _header(expected)
    assert result["detail_type"] == EVENTS[name]["detail-type"] and result["attempts"] == 1
    assert result["chart_linked"] == ("Score chart" in _buttons(message)) == (name in CHARTED)


def test_the_console_region_setting_overrides_the_arn_region(
    aws: SimpleNamespace, receiver: LocalSlack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSOLE_REGION", "eu-central-1")
    aws.handler(copy.deepcopy(EVENTS["pipeline_event_run_failed"]), CONTEXT)
    link = _buttons(receiver.messages[0])["Open execution"]
    assert link.startswith("https://eu-central-1.console.aws.amazon.com/states/home?region=eu-central-1#/v2/")


def test_a_chart_outside_the_runs_folder_is_not_presigned(aws: SimpleNamespace, receiver: LocalSlack) -> None:
    # GIVEN an event whose chart points somewhere else than runs/<run-id>/ of its bucket
    event = copy.deepcopy(EVALUATE)
    event["detail"]["artifacts"]["chart"] = f"s3://{BUCKET}/incoming/secret-data.png"
    # WHEN handled THEN the message goes out without a link, showing the URI instead
    assert aws.handler(event, CONTEXT)["chart_linked"] is False
    assert "Score chart" not in _buttons(receiver.messages[0])
    assert f"`s3://{BUCKET}/incoming/secret-data.png`" in json.dumps(receiver.messages[0])


# ---------------------------------------------------------------------------------------------------------------------
# Retries and failures through the handler


def test_a_rate_limited_post_is_retried_after_retry_after(
    loopback: None, aws: SimpleNamespace, waits: list[float]
) -> None:
    # GIVEN Slack answering the first POST with 429 and Retry-After: 1
    with local_slack_webhook(fail_first=1, retry_after="1", echo=False) as slack:
        aws.secret(slack.url)
        # WHEN the handler runs
        result = aws.handler(copy.deepcopy(EVENTS["pipeline_event_stage_succeeded_train"]), CONTEXT)
    # THEN it waited the second Slack asked for, and the second attempt delivered the message
    assert result["attempts"] == 2
    assert waits == [1.0]
    assert [r.status for r in slack.requests] == [429, 200] and len(slack.messages) == 1


def test_slack_down_fails_the_invocation_without_showing_the_url(
    loopback: None,
    aws: SimpleNamespace,
    waits: list[float],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN Slack answering 503 to everything, and every logger at DEBUG but the SDK's: botocore (and moto) log
    # whole request and response bodies at DEBUG, secret values included, for any secret (off unless turned on)
    monkeypatch.setenv("SLACK_MAX_ATTEMPTS", "4")
    monkeypatch.setenv("SLACK_BACKOFF_S", "0.5")
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="botocore")
    caplog.set_level(logging.INFO, logger="moto")
    with local_slack_webhook(fail_first=99, fail_status=503, retry_after=None) as slack:
        aws.secret(slack.url)
        # WHEN the handler runs THEN it raises SlackDeliveryFailed (the async invocation fails: DLQ after retries)
        with pytest.raises(SlackDeliveryFailed) as raised:
            aws.handler(copy.deepcopy(EVENTS["pipeline_event_run_rejected"]), CONTEXT)
    assert slack.attempts == 4 and waits == [0.5, 1.0, 2.0]
    assert "after 4 attempt(s)" in str(raised.value) and "HTTP 503" in str(raised.value)
    # AND the webhook URL shows nowhere: not in the error, its traceback, the log records or the output
    out, err = capsys.readouterr()
    texts = [str(raised.value), "".join(traceback.format_exception(raised.value)), out, err]
    texts += [record.getMessage() for record in caplog.records]
    texts += [json.dumps(record.__dict__, default=str) for record in caplog.records]
    token = slack.url.rsplit("/", 1)[1]
    path = slack.url.split("/", 3)[3]
    for text in texts:
        assert token not in text and path not in text


# ---------------------------------------------------------------------------------------------------------------------
# Once per event: EventBridge delivers at least once, Lambda retries failed async invocations


def test_the_same_event_delivered_twice_posts_one_message(aws: SimpleNamespace, receiver: LocalSlack) -> None:
    # GIVEN an event handled once: one message posted, one completed record of its id
    first = aws.handler(copy.deepcopy(EVALUATE), CONTEXT)
    assert len(receiver.messages) == 1 and first["duplicate"] is False
    [record] = aws.records()
    assert record["status"] == {"S": "COMPLETED"} and record["id"]["S"].startswith("notify#")
    # WHEN EventBridge delivers the same event (same id) again
    again = aws.handler(copy.deepcopy(EVALUATE), CONTEXT)
    # THEN nothing more is posted, and the handler answers with the first result, marked as a duplicate
    assert len(receiver.messages) == 1 and receiver.attempts == 1
    assert again == {**first, "duplicate": True}
    # AND the record expires a day after the post (DynamoDB TTL on "expiration")
    [record] = aws.records()
    expires_in = int(record["expiration"]["N"]) - time.time()
    assert 24 * 3600 - 60 < expires_in <= 24 * 3600


def test_another_event_id_posts_again(aws: SimpleNamespace, receiver: LocalSlack) -> None:
    # GIVEN an event handled once
    aws.handler(copy.deepcopy(EVALUATE), CONTEXT)
    # WHEN an event with the same detail but another id arrives (e.g. a stage re-published by a new execution)
    other = copy.deepcopy(EVALUATE)
    other["id"] = "0d5c1b4e-7f1a-4f7e-9b38-2a9e1c0f4d21"
    assert other["id"] != EVALUATE["id"]
    result = aws.handler(other, CONTEXT)
    # THEN it is posted too: two messages, two records
    assert result["duplicate"] is False
    assert len(receiver.messages) == 2
    # (the same text; only the chart's presigned URL may differ, it is signed with the current time)
    assert receiver.messages[0]["text"] == receiver.messages[1]["text"]
    assert len(aws.records()) == 2


def test_a_failed_delivery_leaves_no_record_and_its_retry_posts(
    loopback: None, aws: SimpleNamespace, waits: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN Slack down for the first invocation's two attempts, then back
    monkeypatch.setenv("SLACK_MAX_ATTEMPTS", "2")
    event = EVENTS["pipeline_event_run_failed"]
    with local_slack_webhook(fail_first=2, fail_status=503, retry_after=None, echo=False) as slack:
        aws.secret(slack.url)
        # WHEN the first invocation fails with SlackDeliveryFailed
        with pytest.raises(SlackDeliveryFailed):
            aws.handler(copy.deepcopy(event), CONTEXT)
        # THEN no idempotency record is left (Powertools deletes the in-progress record when the function raises)
        assert aws.records() == [] and slack.messages == []
        # WHEN Lambda retries the same event
        result = aws.handler(copy.deepcopy(event), CONTEXT)
        # THEN the retry posts the message, and a redelivery after that does not
        assert result["duplicate"] is False and len(slack.messages) == 1
        assert aws.handler(copy.deepcopy(event), CONTEXT)["duplicate"] is True
    assert [r.status for r in slack.requests] == [503, 503, 200]
    assert [record["status"]["S"] for record in aws.records()] == ["COMPLETED"]


def test_an_event_being_posted_by_another_invocation_is_not_posted_again(
    aws: SimpleNamespace, receiver: LocalSlack
) -> None:
    # GIVEN another invocation posting the same event right now (its in-progress record, valid for a minute)
    from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyAlreadyInProgressError

    envelope = PipelineEventBridgeModel.model_validate(EVALUATE)
    store = idempotency_store(IDEMPOTENCY_TABLE)
    store.configure(IdempotencyConfig(event_key_jmespath="id"), key_prefix="notify")
    store.save_inprogress(envelope.model_dump(mode="json"), remaining_time_in_millis=60_000)
    # WHEN the duplicate arrives THEN it fails (Lambda retries it later, when the first one has finished) unposted
    with pytest.raises(IdempotencyAlreadyInProgressError):
        aws.handler(copy.deepcopy(EVALUATE), CONTEXT)
    assert receiver.requests == []


# ---------------------------------------------------------------------------------------------------------------------
# The secret


@pytest.mark.parametrize("form", ["plain", "json", "json-with-more-keys", "padded"])
def test_the_secret_may_be_the_url_or_json(aws: SimpleNamespace, form: str) -> None:
    url = "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXX"
    value = {
        "plain": url,
        "json": json.dumps({"webhook_url": url}),
        "json-with-more-keys": json.dumps({"webhook_url": url, "channel": "#ml"}),
        "padded": f"  {url}\n",
    }[form]
    arn = aws.secret(value)
    assert secrets_adapter.slack_webhook_url(arn) == url


@pytest.mark.parametrize(
    "value",
    [
        "not a url",
        "ftp://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXX",
        "http://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXX",  # plain http only to this machine
        "https://example.com",
        '{"url": "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXX"}',
        '{"webhook_url": 5}',
        '{"webhook_url": "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXX"',
    ],
)
def test_a_secret_without_a_webhook_url_is_invalid_configuration(aws: SimpleNamespace, value: str) -> None:
    arn = aws.secret(value)
    with pytest.raises(InvalidConfiguration) as raised:
        secrets_adapter.slack_webhook_url(arn)
    # THEN the error names the secret, never its value
    assert arn in str(raised.value) and "holds no webhook URL" in str(raised.value)
    assert "XXXXXXXXXXXXXXXX" not in "".join(traceback.format_exception(raised.value))
    assert value not in str(raised.value)


def test_a_missing_secret_is_invalid_configuration_naming_it(aws: SimpleNamespace) -> None:
    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:tuneplane/nope-AbCdEf"
    with pytest.raises(InvalidConfiguration, match="cannot read the Slack webhook secret") as raised:
        secrets_adapter.slack_webhook_url(arn)
    assert arn in str(raised.value) and "ResourceNotFoundException" in str(raised.value)


def test_the_handler_with_a_bad_secret_fails_naming_the_secret_not_its_value(
    aws: SimpleNamespace, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a secret in JSON with the wrong key
    arn = aws.secret('{"webhook": "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXX"}')
    # WHEN the handler runs THEN it fails with InvalidConfiguration that names the secret; the value is nowhere
    with pytest.raises(InvalidConfiguration, match="holds no webhook URL") as raised:
        aws.handler(copy.deepcopy(EVALUATE), CONTEXT)
    assert arn in str(raised.value)
    assert "XXXXXXXXXXXXXXXX" not in "".join(capsys.readouterr()) + "".join(traceback.format_exception(raised.value))


@pytest.mark.parametrize(("max_age_s", "after_rotation"), [(300, "first0000000000"), (0, "second000000")])
def test_the_url_is_cached_for_max_age(aws: SimpleNamespace, max_age_s: int, after_rotation: str) -> None:
    # GIVEN the secret read once
    arn = aws.secret("https://hooks.slack.com/services/T000/B000/first0000000000")
    assert secrets_adapter.slack_webhook_url(arn, max_age_s=max_age_s).endswith("first0000000000")
    # WHEN it is rotated
    aws.secretsmanager.put_secret_value(SecretId=arn, SecretString="https://hooks.slack.com/services/T/B/second000000")
    # THEN a warm container keeps the cached URL until max_age has passed (max_age 0: no cache)
    assert secrets_adapter.slack_webhook_url(arn, max_age_s=max_age_s).endswith(after_rotation)


# ---------------------------------------------------------------------------------------------------------------------
# Bad input


def test_a_malformed_event_is_refused_and_nothing_is_posted(aws: SimpleNamespace, receiver: LocalSlack) -> None:
    from aws_lambda_powertools.utilities.parser import ValidationError

    event = copy.deepcopy(EVALUATE)
    del event["detail"]["run_id"]
    with pytest.raises(ValidationError):
        aws.handler(event, CONTEXT)
    assert receiver.requests == []


def test_without_the_secret_setting_the_function_is_misconfigured(
    aws: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SLACK_WEBHOOK_SECRET_ARN", raising=False)
    with pytest.raises(InvalidConfiguration, match="Notify function environment"):
        aws.handler(copy.deepcopy(EVALUATE), CONTEXT)
