"""Every Retry of the state machine fires: each (state, error name) of the ASL's Retry blocks is injected once into
that state, and the state must be retried and the run must end as it would have without the fault.

The pairs are read from ``statemachines/pipeline.asl.json`` itself, so a Retry added later is tested, or listed in
``NOT_INJECTABLE`` with the reason (``test_every_retry_has_an_injector_or_a_reason`` fails on an unlisted one).

How an error is made to happen, closest to where it happens on AWS (``_injector``):

- ``Lambda.*`` (the Lambda service's own errors, which Step Functions names ``Lambda.<code>``): the local Lambda
  service answers the ``Invoke`` with that error code once, before the handler runs. The AWS docs ("Handle Lambda
  service exceptions", Step Functions developer guide) say transient Lambda errors come as ServiceException,
  AWSLambdaException, SdkClientException (and ClientExecutionTimeoutException), and a throttled invoke as
  ``Lambda.TooManyRequestsException``; ``SdkClientException`` is a client-side failure on AWS, answered here by the
  service with that code (the interpreter names both the same way);
- the product's errors (``StorageError``, ``OrchestrationError``, ``DeployServiceError``): the AWS call the handler's
  adapter makes is refused during one invocation (``SERVICE_FAULTS``: DynamoDB, EventBridge, S3 and SageMaker answer
  ``AccessDenied``, InvokeEndpoint ``InternalDependencyException``, codes botocore does not retry itself), so the
  error name the state machine sees is the one the adapter really translates the refusal into;
- ``SmokeTestFailed``: the scripted model server answers the smoke test with an empty message once;
  ``ModelNotReady``: the Bedrock stand-in answers with a cold start (``ModelNotReadyException``) once;
- ``SageMaker.*`` of the ``.sync`` job tasks and of Register (``aws-sdk``): SageMaker throttles the create call once
  (``test_sagemaker_errors.py`` shows the integrations' error names).

To keep the suite fast the pairs share runs: a run injects, into every state it passes through, each pending pair
of that state, one per attempt (never more per Retrier than its MaxAttempts), so one passing run covers every pair
of the happy path. The runs below are the fewest that reach every state with a Retry (each skip, reject and failure
state is on its own path). Each run is then checked as a whole: one ``Run ...`` outcome event, no stage event
published twice by a retried state, the ledger closed, and what it deployed (or removed) as without the faults.
The price of sharing: when a fault is not retried, its run ends early and every pair of that run fails; the culprit
is the pair whose message shows its own state failing with an error other than the injected one (or not retried).
A Retrier's MaxAttempts lowered below the number of its errors is fine only while another run passes the state.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import boto3
import pytest
from botocore.exceptions import ClientError
from local.cloud import ContainerExecutor, EndpointRegistry, JobOutcome, LocalJob, local_cloud
from moto.awslambda.models import LambdaFunction
from moto.core.exceptions import JsonRESTError, ServiceException
from moto.dynamodb.models import DynamoDBBackend
from moto.events.models import EventsBackend
from moto.s3.exceptions import S3ClientError
from moto.s3.models import S3Backend
from moto.sagemaker.models import SageMakerModelBackend
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_aws_sdk import (
    StateTaskServiceAwsSdk,
)
from tests.statemachine.harness import Cloud, ScriptedJobs, deployed_cloud

from tuneplane.logic import validation_engine
from tuneplane.logic.job_requests import job_prefix

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")  # a handler failed, on purpose

ASL = json.loads((Path(__file__).resolve().parents[2] / "statemachines" / "pipeline.asl.json").read_text())
LAMBDA_INVOKE = "arn:aws:states:::lambda:invoke"
DEFAULT_MAX_ATTEMPTS = 3  # the ASL's default when a Retrier has no MaxAttempts (States Language spec)


def _states(states: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every state, those inside Parallel branches and Map iterators included."""
    for name, state in states.items():
        yield name, state
        for branch in state.get("Branches") or []:
            yield from _states(branch["States"])
        for key in ("Iterator", "ItemProcessor"):
            if key in state:
                yield from _states(state[key]["States"])


STATES: dict[str, dict[str, Any]] = dict(_states(ASL["States"]))


def _retry_pairs() -> dict[tuple[str, str], tuple[int, int]]:
    """(state, error name) -> (index of the first Retrier that names it, that Retrier's MaxAttempts)."""
    pairs: dict[tuple[str, str], tuple[int, int]] = {}
    for name, state in STATES.items():
        for index, retrier in enumerate(state.get("Retry") or []):
            for error in retrier["ErrorEquals"]:
                pairs.setdefault((name, error), (index, int(retrier.get("MaxAttempts", DEFAULT_MAX_ATTEMPTS))))
    return pairs


RETRY_PAIRS = _retry_pairs()

# Pairs that cannot be made to fire here, with the reason. A Retry whose error the state's code never raises is
# dead configuration: it is listed rather than faked.
NOT_INJECTABLE: dict[tuple[str, str], str] = {
    ("StartDeploy", "DeploymentInProgress"): "not a one-shot fault but another run of the dataset holding its "
    "deployment lease: test_dataset_runs_pipeline.py and test_failure_paths.py hold one and see the run wait",
    ("StartValidateJob", "OrchestrationError"): "the hand-off publishes no event, so nothing there raises it; the "
    "state retries it as every Stage function state does (the function may raise it)",
    ("GradeAnswers", "JudgeUnavailable"): "these runs have no judge (the Grade function answers done without a "
    "call); tests/unit/test_grading.py fails a pass with it and shows the retried pass resume, and "
    "test_evaluation_graders.py runs a judge and a Lambda grader through the state machine",
    (
        "GradeAnswers",
        "StorageError",
    ): "these runs have no control-plane grader, so the Grade function reads and writes "
    "nothing; its S3 reads and writes are those of tests/unit/test_grading.py",
}

# The product's errors: the first call of this AWS operation (the moto backend method) made while the state's
# handler runs is refused, and the adapter turns the refusal into the error. (state or function logical id, error)
# -> (class, method); the state's own entry wins over its function's.
SERVICE_FAULTS: dict[tuple[str, str], tuple[type, str]] = {
    ("StageFunction", "StorageError"): (DynamoDBBackend, "update_item"),  # the ledger
    ("StageFunction", "OrchestrationError"): (EventsBackend, "put_events"),  # the stage's event
    ("ValidateFunction", "StorageError"): (S3Backend, "put_object"),  # the splits and the report
    ("CollectValidation", "StorageError"): (S3Backend, "get_object"),  # the validation job's result.json
    ("StartValidateJob", "StorageError"): (DynamoDBBackend, "get_item"),  # the run item (which execution owns it)
    ("DeployBegin", "StorageError"): (S3Backend, "get_object"),  # the merge report
    ("DeployBegin", "DeployServiceError"): (SageMakerModelBackend, "describe_endpoint"),
    ("DeployPoll", "DeployServiceError"): (SageMakerModelBackend, "describe_endpoint"),
    ("DeployRollback", "DeployServiceError"): (SageMakerModelBackend, "describe_endpoint"),
    ("DeploySmokeTest", "StorageError"): (S3Backend, "get_object"),  # the eval split's first conversation
    ("DeploySmokeTest", "DeployServiceError"): (EndpointRegistry, "invoke"),  # sagemaker-runtime InvokeEndpoint
}
# Errors the local cloud's model servers produce (see ``Faults.arm``).
BACKEND_FAULTS = {("DeploySmokeTest", "SmokeTestFailed"), ("DeploySmokeTest", "ModelNotReady")}
# The Lambda service's answer to Invoke: error code -> HTTP status (Lambda API reference, Invoke's errors).
LAMBDA_SERVICE_ERRORS = {
    "Lambda.ServiceException": 500,
    "Lambda.TooManyRequestsException": 429,
    "Lambda.AWSLambdaException": 500,
    "Lambda.SdkClientException": 500,
    "Lambda.ClientExecutionTimeoutException": 500,  # client-side on AWS (the SDK's own timeout), as SdkClientException
}
# The error names of SageMaker's create calls, by integration: the optimized .sync one and the aws-sdk one.
SAGEMAKER_CREATES = {
    "arn:aws:states:::sagemaker:createTrainingJob.sync": ("create_training_job", "SageMaker.AmazonSageMakerException"),
    "arn:aws:states:::sagemaker:createProcessingJob.sync": (
        "create_processing_job",
        "SageMaker.AmazonSageMakerException",
    ),
    "arn:aws:states:::aws-sdk:sagemaker:createModelPackage": ("create_model_package", "SageMaker.SageMakerException"),
}


def _function_of(state: dict[str, Any]) -> str | None:
    """The logical id of the function a lambda:invoke state calls (``${StageFunctionArn}`` -> ``StageFunction``)."""
    if state.get("Resource") != LAMBDA_INVOKE:
        return None
    return str(state["Parameters"]["FunctionName"]).removeprefix("${").removesuffix("Arn}")


def _injector(state: str, error: str) -> str | None:
    """How (state, error) is injected, or None when it cannot be."""
    task = STATES[state]
    function = _function_of(task)
    if function is not None:
        if error in LAMBDA_SERVICE_ERRORS:
            return "lambda-service"
        if (state, error) in SERVICE_FAULTS or (function, error) in SERVICE_FAULTS:
            return "service"
        if (state, error) in BACKEND_FAULTS:
            return "backend"
        return None
    create = SAGEMAKER_CREATES.get(str(task.get("Resource")))
    return "sagemaker-create" if create is not None and create[1] == error else None


INJECTABLE = sorted(pair for pair in RETRY_PAIRS if pair not in NOT_INJECTABLE)


def _lines(count: int = 20) -> list[str]:
    words = [f"word{i}{'xyz'[i % 3]}" for i in range(count)]
    return [
        json.dumps(
            {"messages": [{"role": "user", "content": f"reverse {w}"}, {"role": "assistant", "content": w[::-1]}]}
        )
        for w in words
    ]


def _misspelled_role(lines: list[str]) -> list[str]:
    return [*lines[:4], lines[4].replace('"assistant"', '"assitant"'), *lines[5:]]


@dataclass(frozen=True)
class Run:
    """One execution of a scenario: what it is given, how it must end, and the states it must not get faults in
    (those that fail by design in it)."""

    run_id: str
    status: str  # the execution's status
    error: str | None  # the execution's error when it fails
    outcome: str  # the one Run ... event
    key: str = "incoming/reverse.jsonl"
    deploy_target: str | None = None  # the sidecar's deploy.target
    invalid_data: bool = False
    gate_fails: bool = False
    smoke_fails: bool = False
    no_faults_in: frozenset[str] = frozenset()
    deploys: str | None = None  # the target DeployBegin deploys to, if the run gets there
    rerun: bool = True  # the runs share their examples: each trains unless it tests the same-content stop
    waits_for_capacity: bool = False  # its first training attempt finds no capacity (QueueForCapacity, one round)
    handed_off: bool = False  # beyond the Validate Lambda: validated by the real containers/validate job


# Stacks (template parameters) and their runs, in order: the happy path of each deploy target first, so that the
# pairs of its states land in a run that succeeds.
SCENARIOS: list[tuple[dict[str, str], list[Run]]] = [
    (
        {"DeployTarget": "vllm", "QuantizeEnabled": "true"},
        [
            Run("happy-vllm", "SUCCEEDED", None, "Run Succeeded", deploys="vllm"),
            # a first deploy of another dataset whose smoke test fails: DeployRollback deletes it, RecordFailure
            Run(
                "smoke-fails",
                "FAILED",
                "RunFailed",
                "Run Failed",
                key="incoming/other.jsonl",
                smoke_fails=True,
                no_faults_in=frozenset({"DeploySmokeTest"}),
                deploys="vllm",
            ),
            Run("gate-rejects", "FAILED", "GateFailed", "Run Rejected", gate_fails=True),
            Run(
                "data-rejected",
                "FAILED",
                "InvalidTrainingData",
                "Run Rejected",
                invalid_data=True,
                no_faults_in=frozenset({"Validate"}),
            ),
        ],
    ),
    (
        {"DeployTarget": "bedrock", "QuantizeEnabled": "true"},
        [Run("happy-bedrock", "SUCCEEDED", None, "Run Succeeded", deploys="bedrock")],
    ),
    (
        {"DeployTarget": "none", "ModelApprovalStatus": "PendingManualApproval", "AllowedDeployTargets": "vllm"},
        [
            Run("skip-deploy", "SUCCEEDED", None, "Run Succeeded"),
            Run("dataset-skips-deploy", "SUCCEEDED", None, "Run Succeeded", deploy_target="none"),
            Run("awaiting-approval", "SUCCEEDED", None, "Run Succeeded", deploy_target="vllm"),
            Run("waits-for-capacity", "SUCCEEDED", None, "Run Succeeded", waits_for_capacity=True),
            # too large for its Validate Lambda: PrepareValidateJob, StartValidateJob, ValidateJob, CollectValidation
            Run("handed-off", "SUCCEEDED", None, "Run Succeeded", handed_off=True),
            # the same examples and settings as the runs before: RecordStop ends it (Run Skipped)
            Run("same-content", "SUCCEEDED", None, "Run Skipped", rerun=False),
        ],
    ),
    (
        # vLLM serving each run's adapter (ServeMode=lora) with quantization on: Quantize is skipped
        # (SkipQuantizeForLora); the deploy waits for approval (the local endpoint serves merged models only)
        {
            "DeployTarget": "vllm",
            "QuantizeEnabled": "true",
            "ServeMode": "lora",
            "ModelApprovalStatus": "PendingManualApproval",
        },
        [Run("lora-skips-quantize", "SUCCEEDED", None, "Run Succeeded", key="incoming/lora.jsonl")],
    ),
]


class _LambdaServiceError(JsonRESTError):
    """The Lambda service's error answer to Invoke (Step Functions names it ``Lambda.<code>``)."""

    def __init__(self, code: str, status: int) -> None:
        super().__init__(code, f"{code}: injected once by {__name__}")
        self.code = status


class _Throttled(JsonRESTError):
    def __init__(self) -> None:
        super().__init__("ThrottlingException", f"Rate exceeded (injected once by {__name__})")


@dataclass
class RunResult:
    run: Run
    execution: dict[str, Any]
    history: list[dict[str, Any]]
    bus: list[dict[str, Any]]
    ledger: dict[str, dict[str, Any]]
    models: list[str]  # SageMaker models whose names start with the run's prefix
    endpoint_configs: list[str]
    endpoints: dict[str, tuple[str, str]]  # every endpoint after the run: name -> (status, config)
    imported_models: list[str]


@dataclass
class Faults:
    """The pending (state, error) pairs and the hooks that inject them (see the module docstring)."""

    cloud: Cloud
    pending: dict[str, list[str]]
    stack_target: str  # the stack's DeployTarget (a run's sidecar may choose another)
    injected: dict[tuple[str, str], str] = field(default_factory=dict)  # pair -> run id
    run: Run | None = None
    armed: tuple[str, str] | None = None  # the product/back-end error the current invocation is to raise
    consumed: bool = False
    thread: int | None = None  # the thread the armed invocation runs in
    _tried: set[tuple[str, str]] = field(default_factory=set)  # this run: armed but not reached
    _used: Counter[tuple[str, int]] = field(default_factory=Counter)  # this run: (state, retrier) -> injections

    def start_run(self, run: Run) -> None:
        self.run, self._tried, self._used = run, set(), Counter()

    # -- which fault, if any, the next attempt of ``state`` gets

    def _next(self, state: str) -> str | None:
        if self.run is None or state in self.run.no_faults_in:
            return None
        target = self.run.deploy_target or self.stack_target
        for error in self.pending.get(state, []):
            index, max_attempts = RETRY_PAIRS[(state, error)]
            needs = _needs_target(state, error)
            if needs not in (None, target) or (state, error) in self._tried:
                continue
            if self._used[(state, index)] < max_attempts:
                return error
        return None

    def _done(self, state: str, error: str) -> None:
        assert self.run is not None
        self.pending[state].remove(error)
        self.injected[(state, error)] = self.run.run_id
        self._used[(state, RETRY_PAIRS[(state, error)][0])] += 1

    # -- the hooks

    def lambda_invoke(self, original: Callable[..., Any], tasks: dict[str, list[tuple[str, dict[str, Any]]]]) -> Any:
        faults = self

        def invoke(function: LambdaFunction, body: Any, request_headers: Any, response_headers: Any) -> Any:
            state = _state_of(tasks, function.function_name, body)
            error = faults._next(state) if state else None
            if state is None or error is None:
                return original(function, body, request_headers, response_headers)
            if error in LAMBDA_SERVICE_ERRORS:
                faults._done(state, error)
                raise _LambdaServiceError(error.removeprefix("Lambda."), LAMBDA_SERVICE_ERRORS[error])
            faults.arm(state, error)
            try:
                return original(function, body, request_headers, response_headers)
            finally:
                if faults.disarm():
                    faults._done(state, error)
                else:  # this code path does not raise it (here): the pair stays pending for a later run
                    faults._tried.add((state, error))

        return invoke

    def arm(self, state: str, error: str) -> None:
        self.armed, self.consumed, self.thread = (state, error), False, threading.get_ident()
        if error == "ModelNotReady":
            self.cloud.bedrock.cold_start_chats = 1

    def disarm(self) -> bool:
        """Whether the armed fault happened; the invocation is over."""
        if self.armed is not None and self.armed[1] == "ModelNotReady":
            self.consumed = self.cloud.bedrock.cold_start_chats == 0
            self.cloud.bedrock.cold_start_chats = 0
        consumed, self.armed, self.consumed = self.consumed, None, False
        return consumed

    def take(self, error: str) -> bool:
        """True (once) when the armed fault is ``error``."""
        if self.armed is None or self.armed[1] != error or self.consumed:
            return False
        self.consumed = True
        return True

    def service(self, owner: type, name: str) -> Callable[..., Any]:
        original = getattr(owner, name)
        faults = self

        def refused(*args: Any, **kwargs: Any) -> Any:
            # Every such call of the armed invocation is refused, not only the first: moto's S3 GetObject calls the
            # backend twice (a pre-check swallows the first error), and an outage outlasts one call anyway. Only the
            # handler's own calls (its thread): the endpoint workers call SageMaker meanwhile.
            armed = faults.armed
            if (
                armed is not None
                and faults.thread == threading.get_ident()
                and _service_target(*armed) == (owner, name)
            ):
                faults.consumed = True
                raise _refusal(owner, name)
            return original(*args, **kwargs)

        return refused

    def sagemaker_create(self, method: str, state_of_request: Callable[[dict[str, Any]], str]) -> Callable[..., Any]:
        original = getattr(SageMakerModelBackend, method)
        faults = self

        def create(backend: SageMakerModelBackend, **kwargs: Any) -> Any:
            state = state_of_request(kwargs)
            error = faults._next(state)
            if error is not None:
                faults._done(state, error)
                raise _Throttled()
            return original(backend, **kwargs)

        return create

    def reply(self, model_dir: Path, request: dict[str, Any]) -> str:
        """The scripted model server's answer: empty when the smoke test is to fail."""
        if self.take("SmokeTestFailed") or (self.run is not None and self.run.smoke_fails):
            return ""
        return "olleh"


def _needs_target(state: str, error: str) -> str | None:
    """The deploy target a fault needs: the endpoint adapter and the scripted server are vLLM's, cold starts
    Bedrock's."""
    target = _service_target(state, error)
    if (target is not None and target[0] in (SageMakerModelBackend, EndpointRegistry)) or error == "SmokeTestFailed":
        return "vllm"
    return "bedrock" if error == "ModelNotReady" else None


def _service_target(state: str, error: str) -> tuple[type, str] | None:
    function = _function_of(STATES[state])
    return SERVICE_FAULTS.get((state, error)) or SERVICE_FAULTS.get((str(function), error))


class _S3Refused(S3ClientError):
    code = "AccessDenied"


class _RuntimeRefused(ServiceException):
    """InvokeEndpoint's own model has no AccessDenied; this one (HTTP 530) botocore does not retry either."""

    code = "InternalDependencyException"


def _refusal(owner: type, name: str) -> Exception:
    """AWS's answer to a caller whose policy lacks the action, or for InvokeEndpoint a failure of SageMaker's own
    (neither retried by botocore, so the adapter sees it)."""
    message = f"not authorized to perform {owner.__name__}.{name} (refused once by {__name__})"
    if owner is S3Backend:
        return _S3Refused(message)
    if owner is EndpointRegistry:
        return _RuntimeRefused(message)
    return JsonRESTError("AccessDeniedException", message)


def _lambda_tasks(cloud: Cloud) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Deployed function name -> [(state, the Payload's constant fields)] of the states that invoke it."""
    tasks: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for name, state in STATES.items():
        function = _function_of(state)
        if function is None:
            continue
        payload = state["Parameters"].get("Payload") or {}
        constants = {key: value for key, value in payload.items() if not key.endswith(".$")}
        tasks.setdefault(cloud.deployment.resources[function], []).append((name, constants))
    return tasks


def _state_of(tasks: dict[str, list[tuple[str, dict[str, Any]]]], function_name: str, body: Any) -> str | None:
    """The state whose invocation this is: the one calling this function whose Payload constants the event has."""
    candidates = tasks.get(function_name)
    if not candidates:
        return None
    event = json.loads(body) if isinstance(body, str | bytes) and body else {}
    found = [
        (state, constants) for state, constants in candidates if all(event.get(k) == v for k, v in constants.items())
    ]
    # the most specific: Validate passes the whole state (no constants), PrepareValidateJob adds {"prepare": true}
    most = max((len(constants) for _, constants in found), default=0)
    matches = [state for state, constants in found if len(constants) == most]
    assert len(matches) == 1, f"an invocation of {function_name} matches states {matches}: {str(event)[:200]}"
    return matches[0]


def _job_state(request: dict[str, Any]) -> str:
    """The .sync state of a job request (its name ends with the stage, e.g. ``-merge``, ``-train0``; ``-validate``
    is the ValidateJob state's)."""
    name = request.get("training_job_name") or request["processing_job_name"]
    stage = str(name).rsplit("-", 1)[1].rstrip("0123456789")
    [state] = [
        s
        for s, task in STATES.items()
        if s.lower() in (stage, f"{stage}job") and str(task.get("Resource")) in SAGEMAKER_CREATES
    ]
    return state


def _register_state(request: dict[str, Any]) -> str:
    [state] = [s for s, task in STATES.items() if str(task.get("Resource")).endswith(":createModelPackage")]
    return state


@contextmanager
def _injecting(faults: Faults) -> Iterator[None]:
    cloud = faults.cloud
    with ExitStack() as stack:
        stack.enter_context(
            mock.patch.object(
                LambdaFunction, "invoke", faults.lambda_invoke(LambdaFunction.invoke, _lambda_tasks(cloud))
            )
        )
        for owner, name in set(SERVICE_FAULTS.values()):
            stack.enter_context(mock.patch.object(owner, name, faults.service(owner, name)))
        for method in ("create_training_job", "create_processing_job"):
            stack.enter_context(
                mock.patch.object(SageMakerModelBackend, method, faults.sagemaker_create(method, _job_state))
            )
        stack.enter_context(
            mock.patch.object(
                SageMakerModelBackend,
                "create_model_package",
                faults.sagemaker_create("create_model_package", _register_state),
            )
        )
        cloud.endpoints.reply = faults.reply
        yield


def _execute(cloud: Cloud, faults: Faults, run: Run) -> RunResult:
    faults.start_run(run)
    cloud.jobs.scores = {"candidate": 0.1, "base": 0.2} if run.gate_fails else {"candidate": 0.9, "base": 0.1}
    lines = _misspelled_role(_lines()) if run.invalid_data else _lines()
    request: dict[str, Any] = {"run_id": run.run_id, "bucket": cloud.deployment.bucket_name, "key": run.key}
    request["version_id"] = cloud.upload(run.key, lines)
    request["rerun"] = run.rerun
    if run.waits_for_capacity:
        _no_capacity_for_the_first_attempt(cloud, run.run_id)
    if run.deploy_target is not None:
        request["deploy_target"] = run.deploy_target
    with _beyond_the_validate_lambda() if run.handed_off else ExitStack():
        execution = cloud.run(run.run_id, request)
    faults.run = None
    sagemaker = boto3.client("sagemaker")
    _wait_until_settled(sagemaker)
    prefix = job_prefix(run.run_id)
    endpoint_list = sagemaker.list_endpoints()["Endpoints"]
    return RunResult(
        run=run,
        execution=execution,
        history=cloud.sfn.get_execution_history(executionArn=execution["executionArn"], maxResults=1000)["events"],
        bus=cloud.bus_events(),
        ledger=cloud.ledger(run.run_id),
        models=[m["ModelName"] for m in sagemaker.list_models()["Models"] if m["ModelName"].startswith(prefix)],
        endpoint_configs=[
            c["EndpointConfigName"]
            for c in sagemaker.list_endpoint_configs()["EndpointConfigs"]
            if c["EndpointConfigName"].startswith(prefix)
        ],
        endpoints={
            e["EndpointName"]: (
                e["EndpointStatus"],
                sagemaker.describe_endpoint(EndpointName=e["EndpointName"])["EndpointConfigName"],
            )
            for e in endpoint_list
        },
        imported_models=[model.name for model in cloud.bedrock.models.values()],
    )


@contextmanager
def _beyond_the_validate_lambda() -> Iterator[None]:
    """The Validate Lambda's /tmp holds the validation of 10 bytes, and validation jobs run the real container."""
    scripted = ScriptedJobs.__call__

    def run(self: ScriptedJobs, job: LocalJob) -> JobOutcome:
        if not job.name.endswith("-validate"):
            return scripted(self, job)
        self.started.append((job.name, job.instance_type))
        return ContainerExecutor()(job)

    with (
        mock.patch.object(validation_engine, "_lambda_disk_reach", lambda budget: 10),
        mock.patch.object(ScriptedJobs, "__call__", run),
    ):
        yield


def _no_capacity_for_the_first_attempt(cloud: Cloud, run_id: str) -> None:
    """The run's first training attempt finds no capacity for the stack's only instance type; capacity is back for
    the next round (after QueueForCapacity and a wait of a minute of AWS time)."""
    cloud.stage_function_environment(CAPACITY_RETRY_INTERVAL_S="60")
    cloud.jobs.no_capacity.add("ml.g5.2xlarge")

    def capacity_comes_back() -> None:  # once the run waits (the ledger says so), not as its first job starts
        deadline = time.monotonic() + 60
        while cloud.ledger(run_id).get("train", {}).get("status") != "waiting":
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)
        cloud.jobs.no_capacity.discard("ml.g5.2xlarge")

    threading.Thread(target=capacity_comes_back, daemon=True).start()


def _wait_until_settled(sagemaker: Any, timeout_s: float = 10.0) -> None:
    """Until no endpoint is in a transitional status (a rollback's delete or update takes a moment)."""
    deadline = time.monotonic() + timeout_s
    while any(e["EndpointStatus"] != "InService" for e in sagemaker.list_endpoints()["Endpoints"]):
        if time.monotonic() > deadline:
            return  # the per-run test reports what it found
        time.sleep(0.05)


@dataclass
class Campaign:
    results: dict[str, RunResult]
    injected: dict[tuple[str, str], str]
    never_injected: dict[str, list[str]]


@pytest.fixture(scope="module")
def campaign(base_model_dir: Path) -> Campaign:
    """Every scenario run once, with every injectable pair injected into the first run that reaches its state."""
    pending: dict[str, list[str]] = {}
    for state, error in INJECTABLE:
        pending.setdefault(state, []).append(error)
    results: dict[str, RunResult] = {}
    injected: dict[tuple[str, str], str] = {}
    for parameters, runs in SCENARIOS:
        with deployed_cloud(base_model_dir, parameters) as cloud:
            cloud.disable_trigger()
            faults = Faults(cloud, pending, parameters.get("DeployTarget", "none"))
            with _injecting(faults):
                for run in runs:
                    results[run.run_id] = _execute(cloud, faults, run)
            injected |= faults.injected
    return Campaign(results, injected, {state: errors for state, errors in pending.items() if errors})


# ---------------------------------------------------------------------------------------------------------------------
# What the ASL must have for this file to hold


def test_every_retry_has_an_injector_or_a_reason() -> None:
    # GIVEN every (state, error) pair of the ASL's Retry blocks
    assert RETRY_PAIRS, "the ASL has no Retry at all?"
    # THEN each one can be injected, or is listed with the reason it cannot be (a new Retry must be tested)
    unlisted = [pair for pair in RETRY_PAIRS if _injector(*pair) is None and pair not in NOT_INJECTABLE]
    assert unlisted == [], f"Retry pairs with no injector: add one to {__name__} or list them in NOT_INJECTABLE"
    # AND nothing listed is stale: it is still a Retry of the ASL
    assert [pair for pair in NOT_INJECTABLE if pair not in RETRY_PAIRS] == []


def test_the_local_cloud_names_sagemaker_sdk_errors_as_aws_does() -> None:
    # GIVEN the local cloud's interpreter and a SageMaker error the SDK has no class for (a throttle)
    throttled = ClientError(
        {"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, "CreateModelPackage"
    )
    with local_cloud():
        # WHEN an aws-sdk:sagemaker task fails with it
        service = StateTaskServiceAwsSdk._normalise_service_error_name("sagemaker")
        name = StateTaskServiceAwsSdk._normalise_exception_name(service, throttled)
    # THEN its error name is the one the ASL's Register Retry names
    assert name == "SageMaker.SageMakerException"


def test_every_transient_error_a_state_can_raise_is_retried() -> None:
    # GIVEN, for each task state, the errors its code (or the service it calls) raises for a transient failure: the
    # errors the injectors above know how to raise there
    raised = {
        (state, error)
        for state, task in STATES.items()
        for error in [*LAMBDA_SERVICE_ERRORS, *{e for _, e in SERVICE_FAULTS}, *{e for _, e in BACKEND_FAULTS}]
        if _function_of(task) is not None and _injector(state, error) is not None
    } | {
        (state, create[1])
        for state, task in STATES.items()
        if (create := SAGEMAKER_CREATES.get(str(task.get("Resource"))))
    }
    # THEN each one is named by a Retry of that state (a Retry deleted from the ASL is caught here, not only missed)
    assert sorted(raised - set(RETRY_PAIRS)) == []


def test_no_error_is_named_by_two_retriers_of_a_state() -> None:
    # GIVEN every Retrier of every state THEN no error name appears twice in one state's Retry: the Retriers are
    # tried in order, so the second one would never fire (and the pairs above would miss it)
    named = Counter(
        (name, error) for name, s in STATES.items() for r in s.get("Retry") or [] for error in r["ErrorEquals"]
    )
    assert [pair for pair, count in named.items() if count > 1] == []


# ---------------------------------------------------------------------------------------------------------------------
# Each Retry fires


def _task_outcomes(history: list[dict[str, Any]], state: str) -> list[list[str]]:
    """For each time ``state`` was entered: its task attempts' outcomes in order (``failed:<error>``/``succeeded``)."""
    spans: list[list[str]] = []
    current: list[str] | None = None
    for event in history:
        entered = event.get("stateEnteredEventDetails")
        if entered is not None:
            current = [] if entered["name"] == state else None
            if current is not None:
                spans.append(current)
        elif current is not None and "taskFailedEventDetails" in event:
            current.append(f"failed:{event['taskFailedEventDetails'].get('error')}")
        elif current is not None and event.get("type") == "TaskSucceeded":
            current.append("succeeded")
        exited = event.get("stateExitedEventDetails")
        if exited is not None and exited["name"] == state:
            current = None
    return spans


@pytest.mark.parametrize(("state", "error"), INJECTABLE, ids=[f"{s}-{e}" for s, e in INJECTABLE])
def test_each_retry_fires(campaign: Campaign, state: str, error: str) -> None:
    # GIVEN the error injected once into the first attempt(s) of the state, in the first run that reached it
    assert (state, error) in campaign.injected, (
        f"no run reached {state} with a way to raise {error} (runs: {[r.run_id for _, rs in SCENARIOS for r in rs]})"
    )
    result = campaign.results[campaign.injected[(state, error)]]
    # THEN the state failed with exactly that error name, was attempted again, and its last attempt succeeded
    [attempts] = _task_outcomes(result.history, state)[:1]
    assert f"failed:{error}" in attempts, f"{state} never failed with {error}: {attempts}"
    after = attempts[attempts.index(f"failed:{error}") + 1 :]
    assert after and after[-1] == "succeeded", f"{state} was not retried to success after {error}: {attempts}"
    # AND the run ended as it would have without the fault
    run = result.run
    assert result.execution["status"] == run.status, result.execution.get("cause")
    assert result.execution.get("error") == run.error


@pytest.mark.parametrize("run", [r for _, runs in SCENARIOS for r in runs], ids=lambda r: r.run_id)
def test_a_run_with_retried_faults_records_and_leaves_what_a_clean_run_does(campaign: Campaign, run: Run) -> None:
    result = campaign.results[run.run_id]
    # GIVEN a run into whose states faults were injected (and retried)
    assert [pair for pair, run_id in campaign.injected.items() if run_id == run.run_id], (
        f"{run.run_id} got no fault: it covers no Retry and can go"
    )
    # THEN the execution ended as the scenario does
    assert result.execution["status"] == run.status, result.execution.get("cause")
    assert result.execution.get("error") == run.error
    # AND exactly one Run outcome event was published, the expected one, and no retried state published twice
    kinds = [(e["detail-type"], e["detail"]["stage"]) for e in result.bus]
    assert [kind for kind, _ in kinds if kind.startswith("Run ")] == [run.outcome]
    counted = Counter(kinds)
    if run.waits_for_capacity:  # one Stage Started per training attempt (the first had no capacity)
        assert counted.pop(("Stage Started", "train")) == 2
    assert [kind for kind, count in counted.items() if count > 1] == []
    assert {e["detail"]["run_id"] for e in result.bus} == {run.run_id}
    # AND the ledger's run item agrees, and no stage is left "started"
    expected = {
        "Run Succeeded": "succeeded",
        "Run Failed": "failed",
        "Run Rejected": "rejected",
        "Run Skipped": "skipped",
        "Run Superseded": "superseded",
    }[run.outcome]
    assert result.ledger["run"]["status"] == expected
    assert {stage: item["status"] for stage, item in result.ledger.items() if item["status"] == "started"} == {}
    # AND a vLLM deployment created one model and one endpoint config (a retried DeployBegin did not make two)
    assert (len(result.models), len(result.endpoint_configs)) == ((1, 1) if run.deploys == "vllm" else (0, 0))
    if run.run_id == "happy-vllm":  # the dataset's endpoint serves this run's config
        assert list(result.endpoints.values()) == [("InService", f"{job_prefix(run.run_id)}-serve")]
    if run.run_id == "smoke-fails":  # its new endpoint was deleted; the other dataset's still serves
        assert [config for _, config in result.endpoints.values()] == [f"{job_prefix('happy-vllm')}-serve"]
    if run.run_id == "happy-bedrock":
        assert len(result.imported_models) == 1


def test_no_pair_is_left_uninjected(campaign: Campaign) -> None:
    # GIVEN every scenario run THEN every injectable pair was injected somewhere (the parametrized test says which)
    assert campaign.never_injected == {}
