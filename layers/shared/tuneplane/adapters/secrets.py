"""Secrets Manager access: the Slack webhook URL, cached for ``max_age_s`` by Powertools' parameters utility.

The secret holds either the URL itself or a JSON object ``{"webhook_url": "https://hooks.slack.com/..."}``. Error
messages name the secret's ARN, never its value. Powertools creates its Secrets Manager client on first use; tests
start moto first and call ``aws_lambda_powertools.utilities.parameters.clear_caches()`` between tests.
"""

from __future__ import annotations

import json

from aws_lambda_powertools.utilities import parameters
from urllib3.exceptions import LocationValueError
from urllib3.util import parse_url

from tuneplane.errors import InvalidConfiguration

_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})  # the local demo's receiver speaks plain http
_JSON_KEY = "webhook_url"


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


def slack_webhook_url(secret_arn: str, max_age_s: int = 300) -> str:
    """The webhook URL stored in the secret; ``InvalidConfiguration`` when it cannot be read or is not one."""
    try:
        value = parameters.get_secret(secret_arn, max_age=max_age_s)
    except parameters.GetParameterError as exc:  # its message is botocore's: the error code, never the value
        raise InvalidConfiguration(f"cannot read the Slack webhook secret {secret_arn}: {exc}") from exc
    url = _url_from(value)
    if url is None or not _is_webhook_url(url):
        raise InvalidConfiguration(
            f"the Slack webhook secret {secret_arn} holds no webhook URL: expected https://hooks.slack.com/... "
            f'or JSON {{"{_JSON_KEY}": "https://..."}}'
        )
    return url
