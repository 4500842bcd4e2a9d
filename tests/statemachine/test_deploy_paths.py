"""The state machine's paths through both deploy targets: the real template and ASL on the local cloud, the real
Deploy function in process; SageMaker endpoints served by scripted model servers (local/cloud/endpoints.py), Bedrock
Custom Model Import by its in-memory stand-in (local/cloud/bedrock.py).

Each test asserts on the execution history, the run ledger, the bus events and what was (or was not) deployed.

The tests of one stack (template parameters) share it (harness.StackPool; the tests are ordered by stack): each test
has a dataset of its own (so an endpoint of its own: one per dataset) and run ids of its own (``Dataset``), and
asserts on its runs' events, ledger, models, endpoint, autoscaling target and imported models only."""

from __future__ import annotations

import itertools
import json
import re
import time
from typing import Any, NamedTuple

import boto3
import pytest
from tests.statemachine.harness import Cloud

from tuneplane.logic.job_requests import job_prefix

DEPLOY_STATES = ["StartDeploy", "DeployBegin", "DeployWait", "DeployPoll", "DeployReady"]
# A blue/green update watches the new fleet for DeployBakeTimeSeconds (default 300 s: 3 s of real time at the local
# cloud's time scale) before the old fleet goes. The stacks whose runs update an endpoint bake 30 s instead: no test
# here asserts on the bake (test_endpoint_rollouts.py and test_failure_paths.py do).
UPDATED_VLLM = {"DeployTarget": "vllm", "DeployBakeTimeSeconds": "30"}
_DATASET_NUMBERS = itertools.count(1)


class Dataset(NamedTuple):
    """A test's own dataset and the ids of its first and second run."""

    key: str
    first: str
    second: str

    @property
    def stem(self) -> str:
        return self.key.rsplit("/", 1)[1].removesuffix(".jsonl")


@pytest.fixture
def cloud(shared_cloud: Cloud) -> Cloud:
    """The stack of the test's parameters, shared with the other tests of that stack (the module docstring)."""
    return shared_cloud


@pytest.fixture
def dataset() -> Dataset:
    """The test's own dataset (so its own endpoint) and run ids."""
    number = next(_DATASET_NUMBERS)
    return Dataset(f"incoming/reverse-{number:02d}.jsonl", f"run-{number:02d}-one", f"run-{number:02d}-two")


@pytest.fixture(autouse=True)
def _manual_runs_only(cloud: Cloud) -> None:
    cloud.disable_trigger()


def _start(cloud: Cloud, dataset: Dataset, run_id: str, lines: list[str], **settings: Any) -> dict[str, Any]:
    version = cloud.upload(dataset.key, lines)
    request = {
        "run_id": run_id,
        "bucket": cloud.deployment.bucket_name,
        "key": dataset.key,
        "version_id": version,
        "rerun": True,
        **settings,
    }
    return cloud.run(run_id, request)


def _deploy_events(cloud: Cloud, *run_ids: str) -> list[tuple[str, dict[str, Any]]]:
    """The deploy and run events of ``run_ids`` (reading drains the bus queue)."""
    return [
        (e["detail-type"], e["detail"])
        for e in cloud.bus_events()
        if e["detail"]["stage"] in {"deploy", "run"} and e["detail"]["run_id"] in run_ids
    ]


def _endpoints(dataset: Dataset) -> list[str]:
    """The names of the dataset's endpoints (named after its file: ``<stem>-<8 hex>``)."""
    listed = boto3.client("sagemaker").list_endpoints(NameContains=f"{dataset.stem}-", MaxResults=100)["Endpoints"]
    return [e["EndpointName"] for e in listed if re.fullmatch(rf"{dataset.stem}-[0-9a-f]{{8}}", e["EndpointName"])]


def _endpoint(dataset: Dataset) -> dict[str, Any]:
    [name] = _endpoints(dataset)
    return dict(boto3.client("sagemaker").describe_endpoint(EndpointName=name))


def _scalable_targets(endpoint_name: str) -> list[dict[str, Any]]:
    """The autoscaling targets of the endpoint's variants."""
    targets = boto3.client("application-autoscaling").describe_scalable_targets(ServiceNamespace="sagemaker")
    return [dict(t) for t in targets["ScalableTargets"] if t["ResourceId"].startswith(f"endpoint/{endpoint_name}/")]


def _models(run_id: str) -> list[str]:
    """The SageMaker models of the run (named after its job prefix)."""
    prefix = job_prefix(run_id)
    listed = boto3.client("sagemaker").list_models(NameContains=prefix, MaxResults=100)["Models"]
    return [m["ModelName"] for m in listed if m["ModelName"].startswith(prefix)]


def _failure_cause(cloud: Cloud, run_id: str) -> str:
    """The deploy stage's error and one-line cause (reading drains the bus queue: call it once per test)."""
    [(kind, detail)] = [(kind, detail) for kind, detail in _deploy_events(cloud, run_id) if kind == "Stage Failed"]
    return f"{detail['error']}: {detail['message']}"


@pytest.mark.stack_parameters(**UPDATED_VLLM, EndpointMinInstances="1", EndpointMaxInstances="3")
def test_vllm_first_run_creates_the_endpoint_smoke_tests_and_scales_it(
    cloud: Cloud, dataset: Dataset, reversal_lines: list[str]
) -> None:
    # GIVEN a stack deploying to vLLM endpoints and a model server that answers "olleh"
    cloud.endpoints.reply = "olleh"

    # WHEN a passing run completes
    execution = _start(cloud, dataset, dataset.first, reversal_lines)

    # THEN the deploy states ran (waiting until InService), then the smoke test, and the run succeeded
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    states = cloud.states_entered(execution["executionArn"])
    assert states[states.index("StartDeploy") : states.index("StartDeploy") + 5] == DEPLOY_STATES
    assert states[-4:] == ["DeploySmokeTest", "FinishDeploy", "CompleteRun", "Succeeded"]
    # AND the endpoint serves the merged model with vLLM's settings, on the run's config
    endpoint = _endpoint(dataset)
    assert endpoint["EndpointStatus"] == "InService"
    assert endpoint["EndpointConfigName"] == f"{job_prefix(dataset.first)}-serve"
    [server] = cloud.endpoints.servers
    assert server.environment["SM_VLLM_MAX_MODEL_LEN"] == "2048"
    assert server.environment["SM_VLLM_TENSOR_PARALLEL_SIZE"] == "1"
    # AND the smoke test asked the eval split's first question, and its answer is in the success event and ledger
    [request] = server.requests
    assert request["messages"][-1]["role"] == "user"
    succeeded = dict(_deploy_events(cloud, dataset.first))["Stage Succeeded"]
    assert succeeded["metrics"]["smoke_test_answer"] == "olleh"
    assert succeeded["metrics"]["smoke_test_prompt"] == request["messages"][-1]["content"]
    assert succeeded["artifacts"]["endpoint"] == endpoint["EndpointName"]
    assert cloud.ledger(dataset.first)["deploy"]["status"] == "succeeded"
    # AND autoscaling tracks invocations per instance between the configured bounds
    [target] = _scalable_targets(endpoint["EndpointName"])
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 3)
    assert target["ResourceId"] == f"endpoint/{endpoint['EndpointName']}/variant/AllTraffic"
    # AND the rollback alarms exist for the next update, named under the stack and telling its alarm topic
    described = boto3.client("cloudwatch").describe_alarms(AlarmNamePrefix="tuneplane-test-")["MetricAlarms"]
    alarms = {a["AlarmName"]: a for a in described if endpoint["EndpointName"] in a["AlarmName"]}
    name = endpoint["EndpointName"]
    assert set(alarms) == {f"tuneplane-test-{name}-5xx", f"tuneplane-test-{name}-latency"}
    topic = cloud.deployment.outputs["AlarmTopicArn"]
    assert all(a["AlarmActions"] == [topic] and a["OKActions"] == [topic] for a in alarms.values())


@pytest.mark.stack_parameters(**UPDATED_VLLM, EndpointMinInstances="1", EndpointMaxInstances="3")
def test_a_new_instance_type_for_an_autoscaled_endpoint_is_deployed(
    cloud: Cloud, dataset: Dataset, reversal_lines: list[str]
) -> None:
    # GIVEN an endpoint deployed and autoscaled by a first run
    assert _start(cloud, dataset, dataset.first, reversal_lines)["status"] == "SUCCEEDED"
    # AND the stack's endpoint instance type changed since (SageMaker refuses to change the instance type of a variant
    # registered with autoscaling)
    lam = boto3.client("lambda")
    name = cloud.deployment.function_names["DeployFunction"]
    variables = lam.get_function_configuration(FunctionName=name)["Environment"]["Variables"]
    changed = {key: str(value) for key, value in {**variables, "ENDPOINT_INSTANCE_TYPE": "ml.g6e.2xlarge"}.items()}
    lam.update_function_configuration(FunctionName=name, Environment={"Variables": changed})
    # WHEN the next run deploys
    execution = _start(cloud, dataset, dataset.second, reversal_lines)
    # THEN autoscaling was deregistered first, the update went through, and the new variant is autoscaled again
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    endpoint = _endpoint(dataset)
    config = boto3.client("sagemaker").describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    assert config["ProductionVariants"][0]["InstanceType"] == "ml.g6e.2xlarge"
    events = _deploy_events(cloud, dataset.first, dataset.second)
    notes = [n for kind, d in events if kind == "Stage Succeeded" for n in d.get("notes") or []]
    assert any("autoscaling of" in note and "deregistered" in note for note in notes), notes
    [target] = _scalable_targets(endpoint["EndpointName"])
    assert target["ResourceId"] == f"endpoint/{endpoint['EndpointName']}/variant/AllTraffic"


@pytest.mark.stack_parameters(**UPDATED_VLLM)
def test_vllm_next_run_updates_the_endpoint_blue_green(
    cloud: Cloud, dataset: Dataset, reversal_lines: list[str]
) -> None:
    # GIVEN an endpoint deployed by a first run of the dataset
    assert _start(cloud, dataset, dataset.first, reversal_lines)["status"] == "SUCCEEDED"
    first_config = _endpoint(dataset)["EndpointConfigName"]

    # WHEN a second run of the same dataset passes
    execution = _start(cloud, dataset, dataset.second, reversal_lines)

    # THEN the same endpoint now serves the second run's config, and the first run's server was stopped
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    endpoint = _endpoint(dataset)
    assert endpoint["EndpointConfigName"] == f"{job_prefix(dataset.second)}-serve" != first_config
    first, second = cloud.endpoints.servers
    assert not first.alive() and second.alive()
    events = _deploy_events(cloud, dataset.first, dataset.second)
    notes = [n for kind, d in events if kind == "Stage Succeeded" for n in d.get("notes") or []]
    assert any(f"blue/green from {first_config}" in note for note in notes)


@pytest.mark.stack_parameters(**UPDATED_VLLM)
def test_vllm_update_that_fails_keeps_the_old_model_serving(
    cloud: Cloud, dataset: Dataset, reversal_lines: list[str]
) -> None:
    # GIVEN an endpoint serving the first run's model, and a second model whose server cannot start
    assert _start(cloud, dataset, dataset.first, reversal_lines)["status"] == "SUCCEEDED"
    second_prefix = job_prefix(dataset.second)
    cloud.endpoints.start_error = lambda model_dir, env: (
        "CUDA out of memory while loading weights" if second_prefix in str(model_dir) else None
    )

    # WHEN the second run deploys
    execution = _start(cloud, dataset, dataset.second, reversal_lines)

    # THEN SageMaker's blue/green update rolled back, the run failed at deploy saying so
    assert execution["status"] == "FAILED"
    states = cloud.states_entered(execution["executionArn"])
    assert "DeployRollback" in states and "DeploySmokeTest" not in states
    cause = _failure_cause(cloud, dataset.second)
    assert cause.startswith("EndpointDeployFailed: the update of endpoint")
    assert "rolled back" in cause and "CUDA out of memory" in cause
    # AND the first run's model still serves and answers
    endpoint = _endpoint(dataset)
    assert endpoint["EndpointStatus"] == "InService"
    assert endpoint["EndpointConfigName"] == f"{job_prefix(dataset.first)}-serve"
    answer = boto3.client("sagemaker-runtime").invoke_endpoint(
        EndpointName=endpoint["EndpointName"],
        ContentType="application/json",
        Body=b'{"messages": [{"role": "user", "content": "abc"}]}',
    )
    assert answer["Body"].read()


@pytest.mark.stack_parameters(**UPDATED_VLLM)
def test_vllm_failed_smoke_test_deletes_the_new_endpoint(
    cloud: Cloud, dataset: Dataset, reversal_lines: list[str]
) -> None:
    # GIVEN a model server that answers every chat with HTTP 500
    cloud.endpoints.error = (500, "model produced NaN logits")

    # WHEN a passing run deploys
    execution = _start(cloud, dataset, dataset.first, reversal_lines)

    # THEN the smoke test failed (after its retry), the new endpoint was deleted, and the run failed with the cause
    assert execution["status"] == "FAILED"
    states = cloud.states_entered(execution["executionArn"])
    assert states.count("DeploySmokeTest") == 1 and "DeployRollback" in states
    events = _deploy_events(cloud, dataset.first)  # the bus queue is drained when read
    [failed] = [detail for kind, detail in events if kind == "Stage Failed"]
    assert failed["error"] == "SmokeTestFailed" and "NaN logits" in failed["message"]
    assert [kind for kind, _ in events][-1] == "Run Failed"
    deadline = time.monotonic() + 5  # Deleting for a (compressed) while
    while _endpoints(dataset) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _endpoints(dataset) == []


@pytest.mark.stack_parameters(**UPDATED_VLLM)
def test_a_dataset_can_turn_deploying_off(cloud: Cloud, dataset: Dataset, reversal_lines: list[str]) -> None:
    # GIVEN a stack deploying to vLLM, and a dataset whose sidecar says deploy.target=none
    # WHEN its run passes the gate
    execution = _start(cloud, dataset, dataset.first, reversal_lines, deploy_target="none", rerun=False)

    # THEN the model is registered, the deploy stage is skipped saying the dataset asked, and no endpoint exists
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    assert "SkipDeployForDataset" in cloud.states_entered(execution["executionArn"])
    assert "sidecar" in dict(_deploy_events(cloud, dataset.first))["Stage Skipped"]["message"]
    assert _endpoints(dataset) == []


@pytest.mark.stack_parameters(DeployTarget="vllm", ServeMode="lora", MaxLoraRank="8")
def test_a_lora_rank_the_server_cannot_take_is_refused_before_deploying(
    cloud: Cloud, dataset: Dataset, reversal_lines: list[str]
) -> None:
    # GIVEN LoRA serving with max_lora_rank 8, and a run whose settings ask for rank 8 (the Validate stage refuses
    # more) but whose adapter came out with rank 16
    cloud.jobs.adapter_rank = 16

    # WHEN the run reaches deploy
    execution = _start(cloud, dataset, dataset.first, reversal_lines, training={"lora_r": 8})

    # THEN it fails with the reason, and no model, config or endpoint was created
    assert execution["status"] == "FAILED"
    cause = _failure_cause(cloud, dataset.first)
    assert cause.startswith("UnservableModel: LoRA rank 16 is above the server's max_lora_rank 8")
    assert _endpoints(dataset) == []
    assert _models(dataset.first) == []
    assert cloud.ledger(dataset.first)["deploy"]["status"] == "failed"


@pytest.mark.stack_parameters(DeployTarget="vllm", ServeMode="lora", MaxLoraRank="8")
def test_a_lora_rank_over_the_servers_is_rejected_at_validate_before_training(
    cloud: Cloud, dataset: Dataset, reversal_lines: list[str]
) -> None:
    # GIVEN LoRA serving with max_lora_rank 8 and a run that would train the default rank 16
    # WHEN it is validated
    execution = _start(cloud, dataset, dataset.first, reversal_lines)
    # THEN it is rejected before any job, naming the setting and the stack's limit
    assert execution["status"] == "FAILED" and execution["error"] == "InvalidTrainingData"
    assert cloud.jobs.started == []
    assert "MaxLoraRank" in json.loads(str(execution["cause"]))["errorMessage"]


@pytest.mark.stack_parameters(DeployTarget="bedrock")
def test_bedrock_imports_the_merged_model_and_asks_it(
    cloud: Cloud, dataset: Dataset, reversal_lines: list[str]
) -> None:
    # GIVEN a stack importing into Bedrock
    cloud.bedrock.answer = lambda messages: "cba"
    imported_before = set(cloud.bedrock.models)

    # WHEN a passing run completes
    execution = _start(cloud, dataset, dataset.first, reversal_lines)

    # THEN the merged model was imported (one model more), answered the smoke test, and the event names it
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    [model] = [model for arn, model in cloud.bedrock.models.items() if arn not in imported_before]
    succeeded = dict(_deploy_events(cloud, dataset.first))["Stage Succeeded"]
    assert succeeded["artifacts"]["imported_model"] == model.arn
    assert succeeded["metrics"]["smoke_test_answer"] == "cba"
    assert succeeded["metrics"]["target"] == "bedrock"
    assert ("start_import", model.name) in cloud.bedrock.calls
    assert _endpoints(dataset) == []


@pytest.mark.stack_parameters(DeployTarget="bedrock")
def test_a_bedrock_cold_start_is_waited_out_not_failed(
    cloud: Cloud, dataset: Dataset, reversal_lines: list[str]
) -> None:
    # GIVEN an imported model that answers ModelNotReadyException to its first five requests (a cold start), more
    # than the retries a wrong answer gets
    cloud.bedrock.answer = lambda messages: "cba"
    cloud.bedrock.cold_start_chats = 5
    # WHEN a passing run completes
    execution = _start(cloud, dataset, dataset.first, reversal_lines)
    # THEN the smoke test waited for the model and the run succeeded
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    history = cloud.sfn.get_execution_history(executionArn=execution["executionArn"], maxResults=1000)["events"]
    failures = [
        e["lambdaFunctionFailedEventDetails"]["error"] for e in history if "lambdaFunctionFailedEventDetails" in e
    ]
    failures += [e["taskFailedEventDetails"]["error"] for e in history if "taskFailedEventDetails" in e]
    assert failures == ["ModelNotReady"] * 5
    assert [call for call, _ in cloud.bedrock.calls].count("chat") == 6


@pytest.mark.stack_parameters(DeployTarget="bedrock")
def test_bedrock_refuses_an_unimportable_architecture(
    cloud: Cloud, dataset: Dataset, reversal_lines: list[str]
) -> None:
    # GIVEN a merged model whose architecture Bedrock Custom Model Import does not take
    cloud.jobs.bedrock_importable = False

    # WHEN the run reaches deploy / THEN it fails naming the architecture, and nothing was imported
    execution = _start(cloud, dataset, dataset.first, reversal_lines)
    assert execution["status"] == "FAILED"
    assert "GemmaForCausalLM is not in the supported list" in _failure_cause(cloud, dataset.first)
    assert cloud.bedrock.calls == []


@pytest.mark.stack_parameters(DeployTarget="vllm", ModelApprovalStatus="PendingManualApproval")
def test_models_awaiting_manual_approval_are_registered_but_not_deployed(
    cloud: Cloud, dataset: Dataset, reversal_lines: list[str]
) -> None:
    # GIVEN a stack whose registered models wait for a person's approval
    # WHEN a passing run completes
    execution = _start(cloud, dataset, dataset.first, reversal_lines)

    # THEN it succeeds with the deploy stage skipped, saying why, and no endpoint exists
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    assert "SkipDeployPendingApproval" in cloud.states_entered(execution["executionArn"])
    skipped = dict(_deploy_events(cloud, dataset.first))["Stage Skipped"]
    assert "PendingManualApproval" in skipped["message"]
    assert _endpoints(dataset) == []


@pytest.mark.stack_parameters(DeployTarget="vllm", AllowedDeployTargets="vllm,bedrock")
def test_a_dataset_can_choose_another_deploy_target(cloud: Cloud, dataset: Dataset, reversal_lines: list[str]) -> None:
    # GIVEN a stack deploying to vLLM that allows Bedrock too, and a dataset whose sidecar says deploy.target=bedrock
    # WHEN its run passes the gate
    execution = _start(cloud, dataset, dataset.first, reversal_lines, deploy_target="bedrock", rerun=False)

    # THEN it went to the Deploy function as a Bedrock deployment: this stack has no import role, which it names
    assert execution["status"] == "FAILED"
    assert "UseDatasetDeployTarget" in cloud.states_entered(execution["executionArn"])
    assert "BedrockImportRole" in _failure_cause(cloud, dataset.first)
    assert _endpoints(dataset) == []


@pytest.mark.stack_parameters(DeployTarget="bedrock", QuantizeEnabled="true")
def test_quantization_is_skipped_for_bedrock(cloud: Cloud, dataset: Dataset, reversal_lines: list[str]) -> None:
    # GIVEN a stack that quantizes, importing into Bedrock (which takes the merged bf16 model)
    # WHEN a run passes
    execution = _start(cloud, dataset, dataset.first, reversal_lines)

    # THEN no quantization job ran, the skip says why, and the merged model was imported
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    assert "SkipQuantizeForBedrock" in cloud.states_entered(execution["executionArn"])
    assert not [name for name, _ in cloud.jobs.started if name.endswith("-quantize")]
    skipped = [
        e["detail"]
        for e in cloud.bus_events()
        if e["detail"]["stage"] == "quantize" and e["detail"]["run_id"] == dataset.first
    ]
    assert "Bedrock" in skipped[0]["message"]
