"""What a deployment needs from the run: its artifacts (from the execution state), the merge report and the
smoke-test conversation (from S3), and the names of what it creates.

The smoke test's question and expected answer are the user's eval data, and the model's answer may repeat them: what
the Deployment keeps of them (it goes on to the stage's event, the run ledger and Slack) is masked (``redact``, as
every text drawn from the data) and bounded, and so is a failed smoke test's error message, which can quote the
server's answer."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tuneplane.adapters import s3
from tuneplane.config import DeploySettings
from tuneplane.errors import DeployServiceError, InvalidConfiguration, SmokeTestFailed, StorageError
from tuneplane.logic.job_requests import job_prefix
from tuneplane.logic.validation.pii import redact

NAME_MAX = 63  # SageMaker endpoint/model/config names and Bedrock model names: [a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}
_NOT_NAME = re.compile(r"[^a-zA-Z0-9]+")
_SMOKE_LINE_MAX = 1 << 20
# What the Deployment keeps of each smoke text: the deploy event's message ("<endpoint> answered: <answer>") must stay
# within PipelineEvent's 2,000 characters, and Slack shows 600 characters of the answer, 200 of the question.
SMOKE_TEXT_MAX = 500
SMOKE_ERROR_MAX = 1000


@dataclass(frozen=True)
class RunArtifacts:
    run_id: str
    dataset_key: str
    merged_uri: str
    quantized_uri: str | None
    adapter_uri: str | None
    eval_uri: str | None
    max_seq_length: int | None

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RunArtifacts:
        def outcome(stage: str) -> dict[str, Any]:
            recorded = (state.get("recorded") or {}).get(stage) or {}
            return recorded.get("outcome") or {}

        merged = (outcome("merge").get("artifacts") or {}).get("merged")
        if not merged:
            raise InvalidConfiguration("deploy: the run has no merged model (recorded.merge.outcome.artifacts.merged)")
        try:
            run_id, key = str(state["run_id"]), str(state["key"])
        except KeyError as exc:
            raise InvalidConfiguration(f"deploy: the state has no {exc.args[0]!r}") from exc
        summary = (state.get("validation") or {}).get("summary") or {}
        training = state.get("training") or {}
        return cls(
            run_id=run_id,
            dataset_key=key,
            merged_uri=str(merged),
            quantized_uri=(outcome("quantize").get("artifacts") or {}).get("quantized"),
            adapter_uri=(state.get("train") or {}).get("model_artifacts"),
            eval_uri=summary.get("eval_uri"),
            max_seq_length=training.get("max_seq_length"),
        )


def _slug(text: str, length: int) -> str:
    return _NOT_NAME.sub("-", text).strip("-")[:length].strip("-") or "model"


def _dataset_name(settings: DeploySettings, dataset_key: str, length: int) -> str:
    """The dataset's file name (readable) plus a hash of stack and key (unique), ``length`` characters at most."""
    stem = dataset_key.rsplit("/", 1)[-1].split(".", 1)[0]
    digest = hashlib.sha256(f"{settings.stack_name}|{dataset_key}".encode()).hexdigest()[:8]
    return f"{_slug(stem, length - 9)}-{digest}"


def endpoint_name(settings: DeploySettings, dataset_key: str) -> str:
    """One endpoint per dataset and stack: a new run of the same dataset updates it (blue/green)."""
    return _dataset_name(settings, dataset_key, NAME_MAX)


def run_resource_name(run_id: str, suffix: str) -> str:
    """The model / endpoint config / import job of one run: the run's job prefix plus what it is."""
    return f"{job_prefix(run_id)}-{suffix}"


def imported_model_prefix(settings: DeploySettings, dataset_key: str) -> str:
    """Every imported model of one dataset starts with this (and a run hash follows): how older ones are found."""
    return _dataset_name(settings, dataset_key, NAME_MAX - 11)


def tags(settings: DeploySettings, run_id: str) -> list[dict[str, str]]:
    """``tuneplane:stack`` is what the Deploy function's IAM policy allows it to update and delete by."""
    return [
        {"Key": "tuneplane:stack", "Value": settings.stack_name},
        {"Key": "tuneplane:run-id", "Value": run_id},
        {"Key": "tuneplane:stage", "Value": "deploy"},
    ]


def read_json(uri: str) -> dict[str, Any]:
    document = s3.read_json_object(uri)
    if document is None:
        raise StorageError(f"{uri} does not exist")
    return document


def smoke_conversation(eval_uri: str | None) -> tuple[list[dict[str, str]], str | None]:
    """The first eval conversation without its final answer, and that answer: the smoke test's question."""
    fallback = [{"role": "user", "content": "Reply with one short sentence."}]
    if not eval_uri:
        return fallback, None
    bucket, key = s3.parse_s3_uri(eval_uri)
    found = s3.read_if_exists(bucket, key, _SMOKE_LINE_MAX)
    if found is None:
        raise StorageError(f"{eval_uri} does not exist: no smoke-test question")
    first = found[0].split(b"\n", 1)[0]
    try:
        messages = json.loads(first)["messages"]
    except (ValueError, KeyError, TypeError) as exc:
        raise StorageError(f"{eval_uri}: the first line is not a chat conversation: {exc}") from exc
    if not messages or messages[-1].get("role") != "assistant" or len(messages) < 2:
        return [m for m in messages if m.get("role") != "assistant"] or fallback, None
    prompt = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages[:-1]]
    return prompt, str(messages[-1]["content"])


def ask_smoke_question(eval_uri: str | None, ask: Callable[[list[dict[str, str]]], str], who: str) -> dict[str, Any]:
    """The smoke test of either target: ``ask`` the eval split's first question; the Deployment fields it fills
    (question, expected and actual answer, masked and bounded; latency). An empty answer fails it."""
    messages, expected = smoke_conversation(eval_uri)
    asked = time.monotonic()
    try:
        answer = ask(messages)
    except (SmokeTestFailed, DeployServiceError) as exc:  # ModelNotReady included: the state machine retries it
        raise type(exc)(redact(str(exc), SMOKE_ERROR_MAX)) from None  # not chained: the cause quotes the answer too
    latency_ms = round((time.monotonic() - asked) * 1000, 1)
    if not answer.strip():
        raise SmokeTestFailed(f"{who} answered the smoke test with an empty message")
    return {
        "question": redact(messages[-1]["content"], SMOKE_TEXT_MAX),
        "expected": redact(expected, SMOKE_TEXT_MAX) if expected is not None else None,
        "answer": redact(answer.strip(), SMOKE_TEXT_MAX),
        "smoke_latency_ms": latency_ms,
    }
