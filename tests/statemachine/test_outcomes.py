"""Every run ends in exactly one outcome event (``Run Succeeded``, ``Run Rejected`` or ``Run Failed``) and a final
ledger, whatever failed, however large its message, and however the event bus behaved; every stage outcome is one
stage event; the outcome says what serves and what was left behind.

End to end on the local cloud (harness.py): the real template and ASL, the real Stage, Validate and Deploy functions
in process, scripted SageMaker jobs and model servers. Faults are injected where they happen on AWS: a function's
own code raising (``mock.patch`` on the module function it calls), SageMaker refusing a call (moto's backend
method), EventBridge refusing ``PutEvents`` entries (moto's ``EventsBackend.put_events`` answering them with
``InternalFailure``, as the AWS docs' "PutEvents" says refused entries come back: in the answer, not raised).

A bus outage is measured in the state machine's own time: the local cloud compresses Retry back-off (clock.py), so
the outage lasts until the Retry intervals slept since it began add up to its length (Lambda run time not counted:
the outage is never shorter than on AWS).

The tests of one stack (template parameters) share it (harness.StackPool; the tests are ordered by stack): each test
has a run id and a dataset of its own (``run_id``) and asserts on its run's events, ledger and endpoints only.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any
from unittest import mock

import boto3
import pytest
from moto.core.exceptions import JsonRESTError
from moto.events.models import EventsBackend
from moto.sagemaker import responses as sm_responses
from moto.sagemaker.models import SageMakerModelBackend
from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl
from tests.statemachine.harness import Cloud

from tuneplane.errors import InvalidTrainingData, SmokeTestFailed
from tuneplane.logic import stages
from tuneplane.logic.job_requests import job_prefix
from tuneplane.models.events import Stage

MB = 1_000_000
MESSAGE_MAX = 2000  # PipelineEvent.message's max_length
TRUNCATED = "[truncated:"
OUTCOMES = {"succeeded": "Run Succeeded", "rejected": "Run Rejected", "failed": "Run Failed"}
STAGE_OUTCOME_TYPES = {"Stage Succeeded", "Stage Failed", "Stage Skipped"}


_RUN_NUMBERS = itertools.count(1)


@pytest.fixture
def cloud(shared_cloud: Cloud) -> Cloud:
    """The stack of the test's parameters, shared with the other tests of that stack (the module docstring)."""
    return shared_cloud


@pytest.fixture
def run_id() -> str:
    """The test's own run id; its dataset is ``_key(run_id)``, so its endpoint is its own too."""
    return f"run-{next(_RUN_NUMBERS):02d}"


def _key(run_id: str) -> str:
    return f"incoming/reverse-{run_id}.jsonl"


@pytest.fixture(autouse=True)
def _manual_runs_only(cloud: Cloud) -> None:
    cloud.disable_trigger()


def _run(cloud: Cloud, run_id: str, lines: list[str], execution_name: str | None = None) -> dict[str, Any]:
    """A run of ``run_id`` (default) or of ``execution_name`` on the test's dataset."""
    name, key = execution_name or run_id, _key(run_id)
    version = cloud.upload(key, lines)
    request = {
        "run_id": name,
        "bucket": cloud.deployment.bucket_name,
        "key": key,
        "version_id": version,
        "rerun": True,
    }
    return cloud.run(name, request)


def _ends_in_one_outcome(
    cloud: Cloud, run_id: str, execution: dict[str, Any], status: str
) -> tuple[dict[str, Any], list[Any]]:
    """The invariant: exactly one Run event, of ``status``; at most one outcome event per stage (a Stage Started per
    attempt at most); every message within its bound; the ledger's run item final with that status. Returns the
    outcome's detail (with its detail type) and the run's events."""
    events = [e for e in cloud.bus_events() if e["detail"]["run_id"] == run_id]
    outcomes = [e for e in events if e["detail"]["stage"] == Stage.RUN.value]
    assert [e["detail-type"] for e in outcomes] == [OUTCOMES[status]], (
        execution["status"],
        execution.get("error"),
        [(e["detail-type"], e["detail"]["stage"]) for e in events],
    )
    per_stage = Counter((e["detail"]["stage"], e["detail-type"]) for e in events if e["detail"]["stage"] != "run")
    for (stage, detail_type), count in per_stage.items():
        assert count == 1 or (detail_type == "Stage Started" and stage == "train"), (stage, detail_type, count)
    ended = Counter(stage for (stage, detail_type) in per_stage.elements() if detail_type in STAGE_OUTCOME_TYPES)
    assert all(count == 1 for count in ended.values()), ended
    for event in events:
        assert len(event["detail"].get("message") or "") <= MESSAGE_MAX
    ledger = cloud.ledger(run_id)
    assert ledger["run"]["status"] == status and ledger["run"].get("finished_at"), ledger["run"]
    for stage in ended:
        assert ledger[stage]["status"] != "started", (stage, ledger[stage])
    return {**outcomes[0]["detail"], "detail-type": outcomes[0]["detail-type"]}, events


def _said(detail: dict[str, Any]) -> str:
    artifacts = [f"{name}={uri}" for name, uri in (detail.get("artifacts") or {}).items()]
    return " | ".join([str(detail.get("message") or ""), *map(str, detail.get("notes") or []), *artifacts])


def _endpoints(run_id: str) -> dict[str, dict[str, Any]]:
    """The endpoints of the test's dataset (named after its file: ``<stem>-<hash>``)."""
    sagemaker = boto3.client("sagemaker")
    stem = _key(run_id).rsplit("/", 1)[1].removesuffix(".jsonl")
    return {
        e["EndpointName"]: dict(sagemaker.describe_endpoint(EndpointName=e["EndpointName"]))
        for e in sagemaker.list_endpoints(NameContains=f"{stem}-", MaxResults=100)["Endpoints"]
        if e["EndpointName"].startswith(f"{stem}-")
    }


# ---------------------------------------------------------------------------------------------------------------------
# A failure at each stage


def _fail_validate(cloud: Cloud) -> Any:
    return mock.patch("tuneplane.logic.validate_stage.build_options", side_effect=RuntimeError("validator broke"))


def _reject_validate(cloud: Cloud) -> Any:
    return mock.patch("tuneplane.logic.validate_stage.build_options", side_effect=InvalidTrainingData("bad data"))


def _fail_job(stage: str) -> Callable[[Cloud], Any]:
    def arm(cloud: Cloud) -> Any:
        cloud.jobs.fail[stage] = f"{stage} container crashed"
        return _nothing()

    return arm


def _fail_gate(cloud: Cloud) -> Any:
    cloud.jobs.scores = {"candidate": 0.1, "base": 0.2}
    return _nothing()


def _refuse(operation: str, code: str = "ValidationException") -> Callable[[Cloud], Any]:
    def arm(cloud: Cloud) -> Any:
        def refuse(*args: Any, **kwargs: Any) -> None:
            raise JsonRESTError(code, f"{operation} refused by the test")

        return mock.patch.object(SageMakerModelBackend, operation, refuse)

    return arm


def _fail_smoke(cloud: Cloud) -> Any:
    cloud.endpoints.reply = ""
    return _nothing()


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _no_fault(cloud: Cloud) -> Any:
    return _nothing()


STAGE_FAILURES = [
    pytest.param(_fail_validate, "failed", "validate", id="validate-fails"),
    pytest.param(_reject_validate, "rejected", "validate", id="validate-rejects"),
    pytest.param(_fail_job("train"), "failed", "train", id="train"),
    pytest.param(_fail_job("merge"), "failed", "merge", id="merge"),
    pytest.param(_fail_job("quantize"), "failed", "quantize", id="quantize"),
    pytest.param(_fail_job("evaluate"), "failed", "evaluate", id="evaluate"),
    pytest.param(_fail_gate, "rejected", "evaluate", id="gate"),
    pytest.param(_refuse("create_model_package"), "failed", "register", id="register"),
    pytest.param(_fail_smoke, "failed", "deploy", id="deploy-smoke-test"),
    pytest.param(_no_fault, "succeeded", None, id="no-failure"),
]


@pytest.mark.stack_parameters(DeployTarget="vllm", QuantizeEnabled="true")
@pytest.mark.parametrize(("arm", "status", "stage"), STAGE_FAILURES)
def test_a_failure_at_any_stage_ends_the_run_in_one_outcome(
    cloud: Cloud,
    run_id: str,
    reversal_lines: list[str],
    arm: Callable[[Cloud], Any],
    status: str,
    stage: str | None,
) -> None:
    # GIVEN a stack that quantizes and deploys, and a fault at one stage
    cloud.endpoints.reply = "olleh"
    with arm(cloud):
        # WHEN a run goes through the pipeline
        execution = _run(cloud, run_id, reversal_lines)
    # THEN it ends in exactly one outcome event, one event per stage outcome, and a final ledger
    outcome, events = _ends_in_one_outcome(cloud, run_id, execution, status)
    if stage is not None:
        failed = [e for e in events if e["detail-type"] == "Stage Failed"]
        assert [e["detail"]["stage"] for e in failed] == [stage]
        assert cloud.ledger(run_id)[stage]["status"] == status
        assert outcome["message"].startswith(f"{stage}:") or stage == "evaluate"


# ---------------------------------------------------------------------------------------------------------------------
# Huge failure messages


def _huge_validate_error(error: type[Exception], size: int) -> Callable[[], Any]:
    return lambda: mock.patch(
        "tuneplane.logic.validate_stage.build_options", side_effect=error("k" * size + " the end")
    )


def _huge_stage_function_error(size: int) -> Callable[[], Any]:
    """The Stage function itself raises (FinishMerge), with a huge message."""
    original = stages.outcome_of

    def outcome_of(stage: Stage, run: Any, settings: Any) -> Any:
        if stage is Stage.MERGE:
            raise RuntimeError("m" * size)
        return original(stage, run, settings)

    return lambda: mock.patch.object(stages, "outcome_of", outcome_of)


def _huge_smoke_test_error(size: int) -> Callable[[], Any]:
    return lambda: mock.patch(
        "tuneplane.logic.deploy.sagemaker_endpoint.ask_smoke_question", side_effect=SmokeTestFailed("s" * size)
    )


HUGE = [
    pytest.param(_huge_validate_error(InvalidTrainingData, size), "rejected", "validate", id=f"reject-{size // MB}MB")
    for size in (MB, 3 * MB)
] + [
    pytest.param(_huge_validate_error(RuntimeError, 3 * MB), "failed", "validate", id="validate-3MB"),
    pytest.param(_huge_stage_function_error(3 * MB), "failed", "merge", id="stage-function-3MB"),
    pytest.param(_huge_smoke_test_error(MB), "failed", "deploy", id="smoke-test-1MB"),
]


@pytest.mark.stack_parameters(DeployTarget="vllm")
@pytest.mark.parametrize(("patch", "status", "stage"), HUGE)
def test_a_huge_failure_message_still_ends_the_run_in_one_bounded_outcome(
    cloud: Cloud, run_id: str, reversal_lines: list[str], patch: Callable[[], Any], status: str, stage: str
) -> None:
    # GIVEN a function that fails with a message of megabytes (over Step Functions' 256 KiB state limit)
    cloud.endpoints.reply = "olleh"
    with patch():
        # WHEN a run meets it
        execution = _run(cloud, run_id, reversal_lines)
    # THEN the execution did not end in States.DataLimitExceeded: one outcome event, a final ledger
    assert execution.get("error") != "States.DataLimitExceeded"
    outcome, events = _ends_in_one_outcome(cloud, run_id, execution, status)
    # AND the failed stage's event carries the start of the message, cut with a visible marker
    [failed] = [e["detail"] for e in events if e["detail-type"] == "Stage Failed"]
    assert failed["stage"] == stage
    assert TRUNCATED in failed["message"] or TRUNCATED in json.dumps(cloud.ledger(run_id)[stage].get("message"))
    assert len(json.dumps(execution.get("cause") or "")) < 64 * 1024


# ---------------------------------------------------------------------------------------------------------------------
# What serves and what was left behind


@pytest.mark.stack_parameters(DeployTarget="vllm")
def test_a_rollback_that_fails_leaves_an_outcome_naming_the_endpoint_left(
    cloud: Cloud, run_id: str, reversal_lines: list[str]
) -> None:
    # GIVEN a model that fails its smoke test and SageMaker refusing the rollback's DeleteEndpoint
    cloud.endpoints.reply = ""
    with _refuse("delete_endpoint", "AccessDeniedException")(cloud):
        # WHEN a run deploys it
        execution = _run(cloud, run_id, reversal_lines)
    # THEN one Run Failed, which names the endpoint still deployed and says the rollback failed
    outcome, _ = _ends_in_one_outcome(cloud, run_id, execution, "failed")
    [name] = _endpoints(run_id)
    said = _said(outcome)
    assert name in said and "rollback failed" in said and "still deployed" in said, said


@pytest.mark.stack_parameters(DeployTarget="vllm")
def test_deploy_begin_failing_after_the_endpoint_config_says_what_is_left(
    cloud: Cloud, run_id: str, reversal_lines: list[str]
) -> None:
    # GIVEN SageMaker refusing CreateEndpoint (after the run's model and endpoint config were created)
    with _refuse("create_endpoint", "ResourceLimitExceeded")(cloud):
        # WHEN a run deploys
        execution = _run(cloud, run_id, reversal_lines)
    # THEN the endpoint config was created and no endpoint
    config = f"{job_prefix(run_id)}-serve"
    configs = boto3.client("sagemaker").list_endpoint_configs(NameContains=config)["EndpointConfigs"]
    assert config in [c["EndpointConfigName"] for c in configs]
    assert _endpoints(run_id) == {}
    # AND one Run Failed, which says nothing serves and names what was left behind
    outcome, _ = _ends_in_one_outcome(cloud, run_id, execution, "failed")
    said = _said(outcome)
    assert "nothing serves" in said and config in said, said


@pytest.mark.stack_parameters(DeployTarget="vllm")
def test_deploy_begin_whose_create_endpoint_answer_was_lost_deploys_the_endpoint_it_created(
    cloud: Cloud, run_id: str, reversal_lines: list[str]
) -> None:
    # GIVEN SageMaker creating the endpoint but the first answer lost (the call fails after it took effect)
    cloud.endpoints.reply = "olleh"
    original = SageMakerModelBackend.create_endpoint
    lost: list[str] = []

    def create_then_fail(backend: SageMakerModelBackend, *args: Any, **kwargs: Any) -> Any:
        created = original(backend, *args, **kwargs)
        if not lost:
            lost.append("answer")
            raise JsonRESTError("ThrottlingException", "Rate exceeded (the answer was lost)")
        return created

    with mock.patch.object(SageMakerModelBackend, "create_endpoint", create_then_fail):
        # WHEN a run deploys (DeployBegin is retried on the DeployServiceError)
        execution = _run(cloud, run_id, reversal_lines)
    # THEN the retry carried on with the endpoint its first attempt created: the run succeeded, serving on it
    outcome, _ = _ends_in_one_outcome(cloud, run_id, execution, "succeeded")
    [name] = _endpoints(run_id)
    assert lost and name in outcome["message"]


@pytest.mark.stack_parameters(DeployTarget="vllm")
def test_deploy_begin_failing_to_update_says_the_previous_model_still_serves(
    cloud: Cloud, run_id: str, reversal_lines: list[str]
) -> None:
    # GIVEN the dataset's endpoint serving an earlier run's model
    cloud.endpoints.reply = "olleh"
    assert _run(cloud, run_id, reversal_lines, execution_name=f"{run_id}-zero")["status"] == "SUCCEEDED"
    [(name, endpoint)] = _endpoints(run_id).items()
    previous = endpoint["EndpointConfigName"]
    cloud.bus_events()

    # WHEN the next run's DeployBegin cannot update it (SageMaker refuses UpdateEndpoint: the local cloud answers it
    # in its response handler)
    def refuse(response: Any) -> None:
        raise JsonRESTError("ValidationException", "UpdateEndpoint refused by the test")

    with mock.patch.object(sm_responses.SageMakerResponse, "update_endpoint", refuse):
        execution = _run(cloud, run_id, reversal_lines)
    # THEN one Run Failed, which says the endpoint still serves the earlier model and what the run left
    outcome, _ = _ends_in_one_outcome(cloud, run_id, execution, "failed")
    said = _said(outcome)
    assert f"endpoint {name} still serves {previous}" in said and f"{job_prefix(run_id)}-serve" in said, said
    assert _endpoints(run_id)[name]["EndpointConfigName"] == previous


# ---------------------------------------------------------------------------------------------------------------------
# The event bus refuses


@dataclass
class Bus:
    """EventBridge refusing PutEvents entries: ``refuse(detail_type, waited_s)`` decides per entry, where
    ``waited_s`` is the state machine's Retry time slept so far (AWS seconds)."""

    refuse: Callable[[str, float], bool]
    waited_s: float = 0.0
    refused: list[str] = field(default_factory=list)


@contextmanager
def _bus(refuse: Callable[[str, float], bool]) -> Iterator[Bus]:
    bus = Bus(refuse)
    original_put = EventsBackend.put_events
    scaled = retrier_decl.time  # type: ignore[attr-defined]  # the local clock's compressed sleep

    def put_events(backend: EventsBackend, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        kept, answers = [], []
        for entry in entries:
            if bus.refuse(str(entry.get("DetailType")), bus.waited_s):
                bus.refused.append(str(entry.get("DetailType")))
                answers.append({"ErrorCode": "InternalFailure", "ErrorMessage": "refused by the test"})
            else:
                kept.append(entry)
                answers.append({})
        accepted = iter(original_put(backend, kept) if kept else [])
        return [answer or next(accepted) for answer in answers]

    def sleep(seconds: float) -> None:
        bus.waited_s += seconds
        scaled.sleep(seconds)

    with (
        mock.patch.object(EventsBackend, "put_events", put_events),
        mock.patch.object(retrier_decl, "time", SimpleNamespace(sleep=sleep)),
    ):
        yield bus


def _once(detail_type: str) -> Callable[[str, float], bool]:
    done: list[bool] = []

    def refuse(kind: str, waited_s: float) -> bool:
        if kind == detail_type and not done:
            done.append(True)
            return True
        return False

    return refuse


def _outage_from_first(prefix: str, seconds: float) -> Callable[[str, float], bool]:
    """Every entry refused from the first one of ``prefix`` until ``seconds`` of Retry time later."""
    began: list[float] = []

    def refuse(kind: str, waited_s: float) -> bool:
        if not began and kind.startswith(prefix):
            began.append(waited_s)
        return bool(began) and waited_s - began[0] < seconds

    return refuse


BUS_FAULTS = [
    pytest.param(_once("Run Succeeded"), _no_fault, "succeeded", id="outcome-refused-once"),
    pytest.param(_once("Run Failed"), _fail_validate, "failed", id="run-failed-refused-once"),
    pytest.param(_once("Stage Failed"), _fail_validate, "failed", id="stage-failed-refused-once"),
    pytest.param(_once("Run Rejected"), _fail_gate, "rejected", id="run-rejected-refused-once"),
    pytest.param(_outage_from_first("Run ", 35), _no_fault, "succeeded", id="35s-outage-at-success"),
    pytest.param(_outage_from_first("Run ", 35), _fail_validate, "failed", id="35s-outage-at-failure"),
    pytest.param(_outage_from_first("Run ", 35), _reject_validate, "rejected", id="35s-outage-at-rejection"),
]


@pytest.mark.parametrize(("refuse", "arm", "status"), BUS_FAULTS)
def test_the_bus_refusing_events_neither_loses_nor_duplicates_the_outcome(
    cloud: Cloud,
    run_id: str,
    reversal_lines: list[str],
    refuse: Callable[[str, float], bool],
    arm: Callable[[Cloud], Any],
    status: str,
) -> None:
    # GIVEN EventBridge refusing PutEvents (once, or every entry for 35 s from the run's outcome on)
    with _bus(refuse) as bus, arm(cloud):
        # WHEN a run ends
        execution = _run(cloud, run_id, reversal_lines)
    # THEN the refusal happened, and still exactly one outcome event and one event per stage outcome reached the bus
    assert bus.refused, "the bus refused nothing: this case tests nothing"
    _ends_in_one_outcome(cloud, run_id, execution, status)
    assert execution["status"] == ("SUCCEEDED" if status == "succeeded" else "FAILED")
    assert "FailedUnrecorded" not in cloud.states_entered(execution["executionArn"])


def test_a_gate_rejection_is_one_stage_event(cloud: Cloud, run_id: str, reversal_lines: list[str]) -> None:
    # GIVEN a model that does not beat the base model
    cloud.jobs.scores = {"candidate": 0.1, "base": 0.2}
    # WHEN a run is evaluated
    execution = _run(cloud, run_id, reversal_lines)
    # THEN the evaluate stage has one outcome, Stage Failed (rejected), and no Stage Succeeded; the run is rejected
    _, events = _ends_in_one_outcome(cloud, run_id, execution, "rejected")
    evaluate = [e["detail-type"] for e in events if e["detail"]["stage"] == "evaluate"]
    assert evaluate == ["Stage Started", "Stage Failed"]
    assert cloud.ledger(run_id)["evaluate"]["status"] == "rejected"


def test_a_task_result_over_the_state_limit_is_caught_and_ends_the_run_failed(
    cloud: Cloud, run_id: str, reversal_lines: list[str]
) -> None:
    # GIVEN a Validate function whose result is over Step Functions' 256 KiB (a headline of 300 KB): the task fails
    # with States.DataLimitExceeded, which a Catch on States.ALL does not take (the local cloud, as Step Functions)
    with mock.patch("tuneplane.logic.validate_stage.headline", return_value="h" * 300_000):
        # WHEN a run validates its data
        execution = _run(cloud, run_id, reversal_lines)
    # THEN the state's own Catch of States.DataLimitExceeded took it: one Run Failed naming it, a final ledger
    outcome, events = _ends_in_one_outcome(cloud, run_id, execution, "failed")
    assert "ValidateFailed" in cloud.states_entered(execution["executionArn"])
    [failed] = [e["detail"] for e in events if e["detail-type"] == "Stage Failed"]
    assert failed["stage"] == "validate" and failed["error"] == "States.DataLimitExceeded"
