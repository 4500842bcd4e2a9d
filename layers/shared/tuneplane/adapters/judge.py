"""The evaluation's judge model: one chat turn (a system prompt and a user message) answered greedily.

Two kinds, chosen by the stack: Bedrock's Converse API (``JudgeModelId``: a model or inference profile id; the
Grade function's role may call ``bedrock:InvokeModel`` on it) or any OpenAI-compatible chat-completions server
(``JudgeEndpointUrl``: a self-hosted vLLM, a gateway, a hosted API; in the local cloud, a local endpoint), sent
``Authorization: Bearer <key>`` when ``JudgeEndpointSecretArn`` names the secret holding its API key. Throttling,
server errors and timeouts are ``JudgeUnavailable`` (the state machine retries the pass); a refusal that a retry
cannot change (access denied, an unknown model, a malformed request) is ``GraderFailed``, and an endpoint refusing
the key (or asking for one) is ``InvalidConfiguration``: the stack's setting, not the run, is wrong; so is a
redirect, which is never followed (the key would go with it). The key appears in no message.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any, Protocol

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tuneplane.adapters.secrets import judge_api_key
from tuneplane.errors import GraderFailed, InvalidConfiguration, JudgeUnavailable

if TYPE_CHECKING:
    from mypy_boto3_bedrock_runtime import BedrockRuntimeClient

JUDGE_MAX_TOKENS = 512  # a verdict and its reasons; also the cost estimate's bound on the judge's output
# A read waits at most JUDGE_TIMEOUT_S; the SDK's adaptive mode rate-limits and retries throttling itself, up to
# JUDGE_ATTEMPTS; a grading pass also bounds a whole chunk's calls (logic/grading.py CHUNK_DEADLINE_S); longer
# outages are the state machine's Retry.
JUDGE_TIMEOUT_S = 60
JUDGE_CONNECT_TIMEOUT_S = 5
JUDGE_ATTEMPTS = 5
# Bedrock's Converse errors that a retry can fix (the API reference's error list); anything else (access denied, an
# unknown model, a malformed request) is the request's fault.
_TRANSIENT = {
    "ThrottlingException",
    "ServiceUnavailableException",
    "InternalServerException",
    "ModelNotReadyException",
    "ModelTimeoutException",
    "ModelErrorException",  # 424; its message says to try the request again
}
_TRANSIENT_HTTP = {408, 409, 429, 500, 502, 503, 504}
_REFUSED_KEY_HTTP = {401, 403}
_REDIRECT_HTTP = {301, 302, 303, 307, 308}
ERROR_DETAIL_BYTES = 300  # of an error response's body, in the error (after the key is masked)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """urllib follows a redirect with every header but the body's, the Bearer key included, to any host and from
    https to plain http: a judge endpoint that redirects is refused instead (JudgeEndpointUrl must be the final
    URL)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises the 3xx as an HTTPError


_OPENER = urllib.request.build_opener(_NoRedirects())


@dataclass(frozen=True)
class JudgeReply:
    text: str
    input_tokens: int
    output_tokens: int


class Judge(Protocol):
    @property
    def name(self) -> str: ...

    def ask(self, system: str, user: str) -> JudgeReply: ...


@cache
def _runtime() -> BedrockRuntimeClient:
    return boto3.client(
        "bedrock-runtime",
        config=Config(
            connect_timeout=JUDGE_CONNECT_TIMEOUT_S,
            read_timeout=JUDGE_TIMEOUT_S,
            retries={"mode": "adaptive", "total_max_attempts": JUDGE_ATTEMPTS},
        ),
    )


@dataclass(frozen=True)
class BedrockJudge:
    model_id: str

    @property
    def name(self) -> str:
        return f"bedrock:{self.model_id}"

    def ask(self, system: str, user: str) -> JudgeReply:
        try:
            response = _runtime().converse(
                modelId=self.model_id,
                system=[{"text": system}],
                messages=[{"role": "user", "content": [{"text": user}]}],
                inferenceConfig={"maxTokens": JUDGE_MAX_TOKENS, "temperature": 0.0},
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            message = exc.response.get("Error", {}).get("Message", "")
            if code in _TRANSIENT:
                raise JudgeUnavailable(f"the judge {self.model_id} did not answer: {code} {message}") from exc
            raise GraderFailed(f"the judge {self.model_id} refused the request: {code} {message}") from exc
        except BotoCoreError as exc:
            raise JudgeUnavailable(f"the judge {self.model_id} did not answer: {exc}") from exc
        blocks = response.get("output", {}).get("message", {}).get("content", [])
        text = "".join(str(block.get("text", "")) for block in blocks)
        usage: Any = response.get("usage", {})
        return JudgeReply(text, int(usage.get("inputTokens", 0)), int(usage.get("outputTokens", 0)))


@dataclass(frozen=True)
class OpenAICompatibleJudge:
    base_url: str
    model: str = "judge"
    timeout_s: float = JUDGE_TIMEOUT_S
    api_key: str = field(default="", repr=False)  # sent as a Bearer token; empty: no Authorization header

    @property
    def name(self) -> str:
        return f"openai:{self.base_url} ({self.model})"

    def ask(self, system: str, user: str) -> JudgeReply:
        body = {
            "model": self.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "max_tokens": JUDGE_MAX_TOKENS,
            "temperature": 0,
            "stream": False,
        }
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(
            self.base_url.rstrip("/") + "/chat/completions",
            data=json.dumps(body).encode(),
            headers=headers,
            method="POST",
        )
        try:
            with _OPENER.open(request, timeout=self.timeout_s) as response:  # https or loopback
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code in _REFUSED_KEY_HTTP:  # its body may quote the key: not shown
                raise self._refused_key(exc.code) from None
            if exc.code in _REDIRECT_HTTP:  # not followed: the key would go along (its Location is not shown)
                raise InvalidConfiguration(
                    f"the judge endpoint {self.base_url} redirects (HTTP {exc.code}), and the judge follows no "
                    "redirect (the key would go with it): set JudgeEndpointUrl to the URL it redirects to"
                ) from None
            detail = self._masked(exc.read().decode("utf-8", "replace"))[:ERROR_DETAIL_BYTES]
            if exc.code in _TRANSIENT_HTTP:
                raise JudgeUnavailable(f"the judge at {self.base_url} answered HTTP {exc.code}: {detail}") from exc
            raise GraderFailed(f"the judge at {self.base_url} refused the request: HTTP {exc.code} {detail}") from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
            raise JudgeUnavailable(f"the judge at {self.base_url} did not answer: {exc}") from exc
        except ValueError as exc:
            raise JudgeUnavailable(f"the judge at {self.base_url} answered something that is not JSON") from exc
        try:
            text = str(answer["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, TypeError) as exc:
            raise GraderFailed(f"the judge at {self.base_url} answered without choices[0].message.content") from exc
        usage = answer.get("usage") or {}
        return JudgeReply(text, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))

    def _masked(self, text: str) -> str:
        """``text`` with the key, as sent and as a JSON string would escape it, replaced by <key> (before any cut,
        so that no part of it is left at the end of a shortened message)."""
        if not self.api_key:
            return text
        for form in {self.api_key, json.dumps(self.api_key)[1:-1], self.api_key.replace("/", "\\/")}:
            text = text.replace(form, "<key>")
        return text

    def _refused_key(self, status: int) -> InvalidConfiguration:
        """A wrong or missing key does not heal: the run ends with what to change instead of being retried. 401 is
        the key refused; 403 is forbidden, which may also be the endpoint's own access policy."""
        refused = "refused the key in JudgeEndpointSecretArn" if status == 401 else "forbade the request"
        if self.api_key:
            return InvalidConfiguration(
                f"the judge endpoint {self.base_url} {refused} (HTTP {status}): store the endpoint's valid API key "
                "as the secret's value"
                + ("" if status == 401 else ", and check that the endpoint's access policy lets it call the model")
            )
        return InvalidConfiguration(
            f"the judge endpoint {self.base_url} refused a request without a key (HTTP {status}): store its API key "
            "in a Secrets Manager secret and deploy the stack with JudgeEndpointSecretArn=<the secret's ARN>"
        )


def judge_for(model_id: str, endpoint_url: str, endpoint_model: str = "", endpoint_secret_arn: str = "") -> Judge:
    """The stack's judge: the OpenAI-compatible server when JudgeEndpointUrl is set (JudgeEndpointModel names the
    model it serves; JudgeEndpointSecretArn the secret holding its API key), else Bedrock's JudgeModelId."""
    if endpoint_url:
        api_key = judge_api_key(endpoint_secret_arn) if endpoint_secret_arn else ""
        return OpenAICompatibleJudge(endpoint_url, endpoint_model or "judge", api_key=api_key)
    return BedrockJudge(model_id)
