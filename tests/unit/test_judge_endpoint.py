"""The OpenAI-compatible judge (adapters/judge.py) against a chat-completions server on loopback: the API key in
JudgeEndpointSecretArn is sent as a Bearer token, read through adapters/secrets.py (moto's Secrets Manager), and a
refused key ends grading with a clear error instead of being retried; the key appears in no message."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities import parameters
from botocore.exceptions import ClientError, EndpointConnectionError
from local.cloud import deploy
from local.cloud.iam.evaluate import Request, evaluate
from moto import mock_aws

from tuneplane.adapters import s3
from tuneplane.adapters.judge import OpenAICompatibleJudge, judge_for
from tuneplane.config import GradeSettings
from tuneplane.errors import GraderFailed, InvalidConfiguration, JudgeUnavailable
from tuneplane.logic import grading
from tuneplane.models.graders import Graders

KEY = "sk-test-0123456789abcdef"
BUCKET = "judge-endpoint-bucket"
FOLDER = f"s3://{BUCKET}/runs/r1/evaluation/"


@dataclass
class ChatServer:
    """A chat-completions endpoint that records each request's Authorization header (None: absent) and answers
    ``status``; a refusal quotes the header it got, as some servers do."""

    url: str = ""
    status: int = 200
    authorizations: list[str | None] = field(default_factory=list)
    location: str = ""  # sent as Location with a 3xx status
    error_body: str = ""  # the refusal's body instead of the default quoting the Authorization header


@pytest.fixture
def server(loopback: None) -> Iterator[ChatServer]:
    state = ChatServer()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            state.authorizations.append(self.headers.get("Authorization"))
            if state.status == 200:
                body = {
                    "choices": [{"message": {"role": "assistant", "content": "Fine.\nScore: 7"}}],
                    "usage": {"prompt_tokens": 20, "completion_tokens": 4},
                }
            else:
                body = {"error": {"message": f"invalid credentials: {self.headers.get('Authorization')}"}}
            payload = (
                state.error_body.encode() if state.error_body and state.status != 200 else json.dumps(body).encode()
            )
            self.send_response(state.status)
            if state.location:
                self.send_header("Location", state.location)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *_: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def aws() -> Iterator[None]:
    with mock_aws():
        parameters.clear_caches()
        s3.s3_client.cache_clear()
        yield
    parameters.clear_caches()
    s3.s3_client.cache_clear()


def _secret(value: str = KEY) -> str:
    client = boto3.client("secretsmanager")
    return str(client.create_secret(Name="tuneplane/judge-key", SecretString=value)["ARN"])


def test_the_key_in_the_secret_is_sent_as_a_bearer_token(aws: None, server: ChatServer) -> None:
    # GIVEN a judge endpoint and a secret holding its key (with the newline `echo` would add)
    arn = _secret(KEY + "\n")

    # WHEN the stack's judge asks it
    judge = judge_for("", server.url, "judge-model", arn)
    reply = judge.ask("system", "user")

    # THEN the request carried the key as a Bearer token, and the judge shows it nowhere
    assert server.authorizations == [f"Bearer {KEY}"]
    assert reply.text == "Fine.\nScore: 7"
    assert KEY not in repr(judge) and KEY not in judge.name


def test_without_a_secret_no_authorization_header_is_sent(aws: None, server: ChatServer) -> None:
    # GIVEN a judge endpoint and no JudgeEndpointSecretArn
    judge = judge_for("", server.url, "judge-model")

    # WHEN it is asked
    judge.ask("system", "user")

    # THEN the request had no Authorization header at all
    assert server.authorizations == [None]


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_is_a_configuration_error_that_names_the_secret_not_the_key(
    aws: None, server: ChatServer, status: int
) -> None:
    # GIVEN an endpoint that refuses the key (and quotes it back in its error body)
    server.status = status
    judge = judge_for("", server.url, "judge-model", _secret())

    # WHEN it is asked
    with pytest.raises(InvalidConfiguration) as raised:
        judge.ask("system", "user")

    # THEN the error says the key was refused (401) or the request forbidden (403, which may also be the endpoint's
    # access policy) (not JudgeUnavailable: the state machine would retry a wrong key for nothing), and nothing in it
    # or its chain holds the key
    said = "refused the key in JudgeEndpointSecretArn" if status == 401 else "forbade the request"
    assert f"{said} (HTTP {status}): store the endpoint's valid API key" in str(raised.value)
    assert not isinstance(raised.value, JudgeUnavailable)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    assert KEY not in str(raised.value)
    assert len(server.authorizations) == 1


def test_a_refusal_without_a_key_says_to_set_the_secret(aws: None, server: ChatServer) -> None:
    # GIVEN an endpoint that wants a key, and a stack that sends none
    server.status = 401
    judge = OpenAICompatibleJudge(server.url, "judge-model")

    # WHEN it is asked THEN the error names the parameter to set
    with pytest.raises(InvalidConfiguration, match=r"without a key \(HTTP 401\).*JudgeEndpointSecretArn"):
        judge.ask("system", "user")


def test_other_errors_keep_their_class_and_never_quote_the_key(aws: None, server: ChatServer) -> None:
    # GIVEN an endpoint that quotes the Authorization header in its error bodies
    judge = judge_for("", server.url, "judge-model", _secret())

    # WHEN it throttles, then refuses the request itself
    server.status = 429
    with pytest.raises(JudgeUnavailable) as throttled:
        judge.ask("system", "user")
    server.status = 400
    with pytest.raises(GraderFailed) as refused:
        judge.ask("system", "user")

    # THEN throttling is still retried and a bad request still fails grading; both quote the body with the key masked
    for raised in (throttled, refused):
        assert "invalid credentials: Bearer <key>" in str(raised.value)
        assert KEY not in str(raised.value)


@pytest.mark.parametrize(
    "value", ['{"api_key": "sk-test-0123456789abcdef"}', "Bearer sk-test-0123456789abcdef", "   "], ids=str.split
)
def test_a_secret_that_is_not_a_bare_key_is_refused_without_quoting_it(
    aws: None, server: ChatServer, value: str
) -> None:
    # GIVEN a secret holding JSON, a whole header value, or nothing
    arn = _secret(value)

    # WHEN the judge is made
    with pytest.raises(InvalidConfiguration) as raised:
        judge_for("", server.url, "judge-model", arn)

    # THEN the error names the secret and what it should hold, and nothing was sent
    assert f"the JudgeEndpointSecretArn secret {arn} holds no API key" in str(raised.value)
    assert KEY not in str(raised.value)
    assert server.authorizations == []


def test_a_missing_secret_is_a_configuration_error_naming_it(aws: None, server: ChatServer) -> None:
    # GIVEN the ARN of a secret that was deleted
    arn = _secret()
    boto3.client("secretsmanager").delete_secret(SecretId=arn, ForceDeleteWithoutRecovery=True)

    # WHEN the judge is made THEN the error names the secret (not retried: it will not reappear by itself)
    with pytest.raises(InvalidConfiguration, match=f"cannot read the JudgeEndpointSecretArn secret {arn}"):
        judge_for("", server.url, "judge-model", arn)


def test_a_grading_pass_sends_the_grade_settings_key(
    aws: None, server: ChatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the Grade function's environment as template.yaml sets it, and a run's answers
    arn = _secret()
    monkeypatch.setenv("DATA_BUCKET", BUCKET)
    monkeypatch.setenv("JUDGE_ENDPOINT_URL", server.url)
    monkeypatch.setenv("JUDGE_ENDPOINT_SECRET_ARN", arn)
    settings = GradeSettings()  # from the environment
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    line = {"index": 0, "prompt": [{"role": "user", "content": "q"}], "reference": "r", "answers": {"candidate": "a"}}
    client.put_object(Bucket=BUCKET, Key="runs/r1/evaluation/answers.jsonl", Body=json.dumps(line).encode())
    graders = Graders.model_validate({"judge": {"rubric": "Is it correct?", "max_examples": 1}})

    # WHEN a grading pass runs
    progress = grading.grade_pass(graders, {}, settings, FOLDER, 0, lambda: 10**7)

    # THEN every judge request carried the key, and grading.json names the judge without it
    assert progress["done"] is True
    assert server.authorizations and set(server.authorizations) == {f"Bearer {KEY}"}
    body = client.get_object(Bucket=BUCKET, Key="runs/r1/evaluation/grading.json")["Body"].read().decode()
    assert KEY not in body
    assert json.loads(body)["graders"]["judge"]["model"] == f"openai:{server.url} (judge)"


# ---------------------------------------------------------------------------------------------------------------------
# The Grade role (template.yaml): the secret's value, only with JudgeEndpointUrl, and no other secret


def _grade_role(parameters: dict[str, str]) -> tuple[list[dict[str, Any]], str, dict[str, str]]:
    """The Grade role's inline policies, its ARN and the function's environment, of the template deployed locally."""
    deployment = deploy({"BaseModelS3Uri": "s3://judge-models/base/", **parameters}, stack_name="judge-key")
    iam = boto3.client("iam")
    role = deployment.resources["GradeFunctionRole"]
    policies = [
        _document(iam.get_role_policy(RoleName=role, PolicyName=name))
        for name in iam.list_role_policies(RoleName=role)["PolicyNames"]
    ]
    function = boto3.client("lambda").get_function_configuration(
        FunctionName=deployment.function_names["GradeFunction"]
    )
    return policies, iam.get_role(RoleName=role)["Role"]["Arn"], function["Environment"]["Variables"]


def _document(answer: dict[str, Any]) -> dict[str, Any]:
    document = answer["PolicyDocument"]  # moto's may stay URL-encoded
    return json.loads(urllib.parse.unquote(document)) if isinstance(document, str) else dict(document)


@pytest.mark.parametrize("url", ["https://judge.example.com/v1", ""], ids=["with-url", "without-url"])
def test_the_grade_role_may_read_that_secret_only_when_it_is_sent(url: str) -> None:
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        # GIVEN the stack deployed with JudgeEndpointSecretArn (and a JudgeEndpointUrl, or none), and another secret
        arn, other = _secret(), boto3.client("secretsmanager").create_secret(Name="other", SecretString="x")["ARN"]
        policies, role, environment = _grade_role({"JudgeEndpointUrl": url, "JudgeEndpointSecretArn": arn})

        def allowed(action: str, resource: str, **context: str) -> bool:
            keys = {key.replace("__", ":").lower(): [value] for key, value in context.items()}
            return evaluate(Request(action, resource, role, keys), policies).allowed

        key = "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000"
        via = "secretsmanager.us-east-1.amazonaws.com"
        # THEN the function is told the ARN, and its role may read that secret's value (decrypting it through
        # Secrets Manager, for that secret only) exactly when the key is sent; never another secret
        assert environment["JUDGE_ENDPOINT_SECRET_ARN"] == arn
        used = bool(url)
        assert allowed("secretsmanager:GetSecretValue", arn) is used
        assert allowed("kms:Decrypt", key, kms__viaservice=via, kms__encryptioncontext__SecretARN=arn) is used
        assert not allowed("secretsmanager:GetSecretValue", other)
        assert not allowed("kms:Decrypt", key, kms__viaservice=via, kms__encryptioncontext__SecretARN=other)
        assert not allowed("kms:Decrypt", key, kms__encryptioncontext__SecretARN=arn)


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_is_not_followed_so_the_key_goes_nowhere_else(aws: None, server: ChatServer, status: int) -> None:
    # GIVEN an endpoint that redirects (to plain http elsewhere: urllib would follow with the Authorization header)
    server.status = status
    server.location = server.url.replace("/v1", "/elsewhere/v1/chat/completions")
    judge = judge_for("", server.url, "judge-model", _secret())
    # WHEN it is asked
    with pytest.raises(InvalidConfiguration, match=rf"redirects \(HTTP {status}\).*set JudgeEndpointUrl") as raised:
        judge.ask("system", "user")
    # THEN only the first request was made (the key went to the configured URL alone), and the error names no location
    assert server.authorizations == [f"Bearer {KEY}"]
    assert "elsewhere" not in str(raised.value)


def test_no_part_of_the_key_is_left_where_an_error_body_is_cut(aws: None, server: ChatServer) -> None:
    # GIVEN a key with a slash, and error bodies quoting it where the message is cut, and JSON-escaped ("\/")
    key = "sk-proj/AbCdEf0123456789xyz"
    judge = judge_for("", server.url, "judge-model", _secret(key))
    for body in ("x" * 290 + key + "y" * 50, '{"error": "bad key ' + key.replace("/", "\\/") + '"}'):
        server.status, server.error_body = 400, body
        # WHEN it is asked
        with pytest.raises(GraderFailed) as raised:
            judge.ask("system", "user")
        # THEN neither the key nor its first characters are in the error
        message = str(raised.value)
        assert "sk-proj" not in message and "AbCdEf" not in message


@pytest.mark.parametrize(
    ("cause", "error"),
    [
        (
            ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, "GetSecretValue"),
            JudgeUnavailable,
        ),
        (
            ClientError({"Error": {"Code": "InternalServiceError", "Message": "oops"}}, "GetSecretValue"),
            JudgeUnavailable,
        ),
        (EndpointConnectionError(endpoint_url="https://secretsmanager.us-east-1.amazonaws.com"), JudgeUnavailable),
        (
            ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}}, "GetSecretValue"),
            InvalidConfiguration,
        ),
        (
            ClientError({"Error": {"Code": "ResourceNotFoundException", "Message": "no"}}, "GetSecretValue"),
            InvalidConfiguration,
        ),
    ],
    ids=["throttled", "service-fault", "network", "access-denied", "missing"],
)
def test_a_secret_read_that_fails_for_a_passing_reason_is_retried_not_fatal(
    monkeypatch: pytest.MonkeyPatch, server: ChatServer, cause: Exception, error: type[Exception]
) -> None:
    # GIVEN Secrets Manager failing the read (Powertools raises GetParameterError with botocore's error as context)
    def failing(*_: Any, **__: Any) -> str:
        try:
            raise cause
        except Exception as exc:
            raise parameters.GetParameterError(str(exc))  # noqa: B904 - Powertools' own way, reproduced

    monkeypatch.setattr(parameters, "get_secret", failing)
    # WHEN the judge is set up; THEN throttling, a service fault or the network is JudgeUnavailable (the state machine
    # retries the pass), a missing secret or permission InvalidConfiguration (the stack's to fix)
    with pytest.raises(error, match="cannot read the JudgeEndpointSecretArn secret") as raised:
        judge_for("", server.url, "judge-model", "arn:aws:secretsmanager:us-east-1:123456789012:secret:k-AbCdEf")
    assert type(raised.value) is error
