"""Secrets Manager access: the Slack webhook URL and the judge endpoint's API key, each cached for ``max_age_s`` by
Powertools' parameters utility.

The Slack secret holds either the URL itself or a JSON object ``{"webhook_url": "https://hooks.slack.com/..."}``; the
judge's (``JudgeEndpointSecretArn``) holds the bare key. Error messages name the secret's ARN, never its value.
Powertools creates its Secrets Manager client on first use; tests start moto first and call
``aws_lambda_powertools.utilities.parameters.clear_caches()`` between tests.
"""

from __future__ import annotations

import json
import re

from aws_lambda_powertools.utilities import parameters
from botocore.exceptions import BotoCoreError, ClientError
from urllib3.exceptions import LocationValueError
from urllib3.util import parse_url

from tuneplane.errors import InvalidConfiguration, JudgeUnavailable, TuneplaneError

_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})  # the local demo's receiver speaks plain http
_JSON_KEY = "webhook_url"
# Secrets Manager's errors that pass (the GetSecretValue API reference; throttling is the SDK's own).
_PASSING_ERRORS = frozenset({"ThrottlingException", "InternalServiceError", "ServiceUnavailableException"})
# A key goes into an HTTP header: printable ASCII without spaces, so that a stray newline cannot add a header.
_API_KEY = re.compile(r"[\x21-\x7e]+")


def _url_from(value: str | bytes) -> str | None:
    text = (value.decode("utf-8", "replace") if isinstance(value, bytes) else value).strip()
    if text.startswith("{"):
        try:
            document = json.loads(text)
        except ValueError:
            return None
        url = document.get(_JSON_KEY) if isinstance(document, dict) else None
        return url.strip() if isinstance(url, str) else None
    return text


def _is_webhook_url(url: str) -> bool:
    try:
        parsed = parse_url(url)
    except LocationValueError:
        return False
    if not parsed.host or not parsed.path or parsed.path == "/" or any(c.isspace() for c in url):
        return False
    return parsed.scheme == "https" or (parsed.scheme == "http" and parsed.host in _LOCAL_HOSTS)


def _is_passing(error: parameters.GetParameterError) -> bool:
    """Whether the read failed for a reason that passes (throttling, a service fault, the network): Powertools
    raises GetParameterError for every failure, with botocore's exception as its context."""
    cause = error.__context__
    if isinstance(cause, ClientError):
        return cause.response.get("Error", {}).get("Code") in _PASSING_ERRORS
    return isinstance(cause, BotoCoreError)


def _read(
    secret_arn: str, what: str, max_age_s: int, passing: type[TuneplaneError] = InvalidConfiguration
) -> str | bytes:
    """The secret's value; a failure that passes raises ``passing`` (the caller's retried error, where it has one),
    any other ``InvalidConfiguration`` (a missing secret or permission is the stack's to fix)."""
    try:
        return parameters.get_secret(secret_arn, max_age=max_age_s)
    except parameters.GetParameterError as exc:  # its message is botocore's: the error code, never the value
        error = passing if _is_passing(exc) else InvalidConfiguration
        raise error(f"cannot read the {what} secret {secret_arn}: {exc}") from exc


def slack_webhook_url(secret_arn: str, max_age_s: int = 300) -> str:
    """The webhook URL stored in the secret; ``InvalidConfiguration`` when it cannot be read or is not one."""
    url = _url_from(_read(secret_arn, "Slack webhook", max_age_s))
    if url is None or not _is_webhook_url(url):
        raise InvalidConfiguration(
            f"the Slack webhook secret {secret_arn} holds no webhook URL: expected https://hooks.slack.com/... "
            f'or JSON {{"{_JSON_KEY}": "https://..."}}'
        )
    return url


def judge_api_key(secret_arn: str, max_age_s: int = 300) -> str:
    """The judge endpoint's API key stored in the secret (the bare key, surrounding whitespace ignored);
    ``InvalidConfiguration`` when it cannot be read or cannot be sent as a header, ``JudgeUnavailable`` (the grading
    pass is retried) when Secrets Manager failed for a reason that passes."""
    value = _read(secret_arn, "JudgeEndpointSecretArn", max_age_s, passing=JudgeUnavailable)
    key = (value.decode("utf-8", "replace") if isinstance(value, bytes) else value).strip()
    if not _API_KEY.fullmatch(key) or key.startswith("{"):
        raise InvalidConfiguration(
            f"the JudgeEndpointSecretArn secret {secret_arn} holds no API key: expected the bare key as its secret "
            "string (printable ASCII, no spaces; not JSON, not 'Bearer ...')"
        )
    return key
