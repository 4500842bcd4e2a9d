"""Blue/green endpoint updates in the local cloud as SageMaker runs them (local/cloud/endpoint_rollouts.py): traffic
shifting (canary, then the rest), the baking periods with the AutoRollbackConfiguration alarms watched, the rollback
an alarm in ALARM causes, updates and deletes refused while an endpoint is in progress, and deletes that take time;
then the same rollback through the real pipeline (a second run's update, with the DeploymentConfig the product builds).

Time is compressed (``time_scale=0.01``: a bake of 300 s lasts 3 s). Models are fakes served by scripted servers that
answer their model folder's ``answer.txt``, so each answer says which fleet served it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from local.cloud import ScriptedEndpointBackend, active_endpoints, local_cloud
from tests.statemachine.harness import Cloud

from tuneplane.config import DeploySettings
from tuneplane.logic.deploy import serving
from tuneplane.logic.job_requests import job_prefix

SCALE = 0.01
BUCKET = "tuneplane-test-rollouts"
ROLE = "arn:aws:iam::123456789012:role/serve"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/vllm:latest"
CHAT = {"messages": [{"role": "user", "content": "Which model are you?"}], "max_tokens": 4}
KEY = "incoming/reverse.jsonl"


def _answer_file(model_dir: Path, request: dict[str, Any]) -> str:
    return (model_dir / "answer.txt").read_text()


@dataclass
class Endpoints:
    """The local cloud's SageMaker and CloudWatch, with helpers to deploy fake models and watch an update."""

    backend: ScriptedEndpointBackend
    sagemaker: Any
    runtime: Any
    cloudwatch: Any

    def config(self, name: str, answer: str, instances: int = 1) -> str:
        """A model answering ``answer`` and an endpoint config of ``instances`` instances, both named ``name``."""
        boto3.client("s3").put_object(Bucket=BUCKET, Key=f"{name}/answer.txt", Body=answer.encode())
        source = {"S3Uri": f"s3://{BUCKET}/{name}/", "S3DataType": "S3Prefix", "CompressionType": "None"}
        self.sagemaker.create_model(
            ModelName=name,
            ExecutionRoleArn=ROLE,
            PrimaryContainer={"Image": IMAGE, "ModelDataSource": {"S3DataSource": source}},
        )
        variant = {
            "VariantName": "AllTraffic",
            "ModelName": name,
            "InstanceType": "ml.g5.xlarge",
            "InitialInstanceCount": instances,
        }
        self.sagemaker.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[variant])
        return name

    def describe(self, endpoint: str) -> dict[str, Any]:
        return dict(self.sagemaker.describe_endpoint(EndpointName=endpoint))

    def until(self, endpoint: str, done: Callable[[dict[str, Any]], bool], timeout_s: float = 20.0) -> dict[str, Any]:
        """The endpoint's description once ``done`` says so (bounded)."""
        deadline = time.monotonic() + timeout_s
        while not done(description := self.describe(endpoint)):
            if time.monotonic() > deadline:
                raise AssertionError(f"endpoint {endpoint} never got there: {description}")
            time.sleep(0.02)
        return description

    def in_service(self, endpoint: str) -> dict[str, Any]:
        return self.until(endpoint, lambda d: d["EndpointStatus"] in ("InService", "Failed"))

    def ask(self, endpoint: str) -> tuple[str, str]:
        """(the answer, the production variant that answered) of one chat through InvokeEndpoint."""
        response = self.runtime.invoke_endpoint(
            EndpointName=endpoint, ContentType="application/json", Body=json.dumps(CHAT)
        )
        answer = json.loads(response["Body"].read())["choices"][0]["message"]["content"]
        return str(answer), str(response["InvokedProductionVariant"])

    def alarm(self, name: str) -> str:
        self.cloudwatch.put_metric_alarm(
            AlarmName=name,
            Namespace="AWS/SageMaker",
            MetricName="Invocation5XXErrors",
            Statistic="Sum",
            Period=60,
            EvaluationPeriods=1,
            Threshold=0,
            ComparisonOperator="GreaterThanThreshold",
        )
        return name


def _variant_status(description: dict[str, Any]) -> dict[str, Any]:
    """The pending variant's current VariantStatus ({} when no update is pending)."""
    pending = description.get("PendingDeploymentSummary") or {}
    variants = pending.get("ProductionVariants") or [{}]
    return dict((variants[0].get("VariantStatus") or [{}])[0])


def _baking(step: str) -> Callable[[dict[str, Any]], bool]:
    """The update bakes: ``step`` is "traffic step 1" (the canary) or "final baking period"."""
    return lambda d: (
        _variant_status(d).get("Status") == "Baking" and step in _variant_status(d).get("StatusMessage", "")
    )


@pytest.fixture
def endpoints(tmp_path: Path) -> Iterator[Endpoints]:
    backend = ScriptedEndpointBackend(reply=_answer_file)
    with local_cloud(time_scale=SCALE, endpoint_backend=backend, work_root=tmp_path, enforce_iam=False):
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield Endpoints(
            backend, boto3.client("sagemaker"), boto3.client("sagemaker-runtime"), boto3.client("cloudwatch")
        )


def test_canary_takes_its_share_of_the_traffic_then_the_rest_shifts_after_the_wait(endpoints: Endpoints) -> None:
    # GIVEN an endpoint of two instances in service on v1
    endpoints.sagemaker.create_endpoint(EndpointName="can", EndpointConfigName=endpoints.config("can-v1", "v1", 2))
    assert endpoints.in_service("can")["EndpointStatus"] == "InService"
    new_config = endpoints.config("can-v2", "v2", 2)
    # WHEN it is updated to v2 with a canary of one instance (50 %), baked 600 s, then a final bake of 500 s
    routing = {"Type": "CANARY", "CanarySize": {"Type": "INSTANCE_COUNT", "Value": 1}, "WaitIntervalInSeconds": 600}
    policy = {"TrafficRoutingConfiguration": routing, "TerminationWaitInSeconds": 500}
    started = time.monotonic()
    endpoints.sagemaker.update_endpoint(
        EndpointName="can", EndpointConfigName=new_config, DeploymentConfig={"BlueGreenUpdatePolicy": policy}
    )
    # THEN during the canary's bake the endpoint is Updating on the old config, and the two fleets share the traffic
    canary = endpoints.until("can", _baking("traffic step 1"))
    assert canary["EndpointStatus"] == "Updating" and canary["EndpointConfigName"] == "can-v1"
    answers = [endpoints.ask("can")[0] for _ in range(6)]
    assert sorted(answers) == ["v1"] * 3 + ["v2"] * 3
    old_server, new_server = endpoints.backend.servers
    assert old_server.alive() and new_server.alive()
    # AND once the canary's wait is over all the traffic is on v2 while the old fleet waits to be terminated
    final = endpoints.until("can", _baking("final baking period"))
    assert time.monotonic() - started >= 600 * SCALE
    assert final["EndpointStatus"] == "Updating" and final["EndpointConfigName"] == "can-v1"
    assert {endpoints.ask("can")[0] for _ in range(4)} == {"v2"}
    assert old_server.alive()
    # AND after the final bake v2 has taken over: InService on the new config, the old server stopped
    done = endpoints.in_service("can")
    assert time.monotonic() - started >= (600 + 500) * SCALE
    assert done["EndpointStatus"] == "InService" and done["EndpointConfigName"] == new_config
    assert "PendingDeploymentSummary" not in done and "FailureReason" not in done
    assert done["LastDeploymentConfig"] == {"BlueGreenUpdatePolicy": policy}
    assert endpoints.ask("can") == ("v2", "AllTraffic")
    assert not old_server.alive() and new_server.alive()


def test_an_alarm_during_the_bake_rolls_the_update_back_to_the_old_config(endpoints: Endpoints) -> None:
    # GIVEN an endpoint in service on v1 and an alarm watching it (OK)
    endpoints.sagemaker.create_endpoint(EndpointName="rb", EndpointConfigName=endpoints.config("rb-v1", "v1"))
    assert endpoints.in_service("rb")["EndpointStatus"] == "InService"
    alarm = endpoints.alarm("rb-5xx")
    new_config = endpoints.config("rb-v2", "v2")
    # WHEN it is updated to v2 all at once with a bake of 2000 s rolled back by that alarm
    deployment = {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0},
            "TerminationWaitInSeconds": 2000,
            "MaximumExecutionTimeoutInSeconds": 3600,
        },
        "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": alarm}]},
    }
    endpoints.sagemaker.update_endpoint(EndpointName="rb", EndpointConfigName=new_config, DeploymentConfig=deployment)
    # AND the alarm goes into ALARM while v2 takes all the traffic and bakes
    endpoints.until("rb", _baking("final baking period"))
    assert endpoints.ask("rb")[0] == "v2"
    old_server, new_server = endpoints.backend.servers
    tripped = time.monotonic()
    endpoints.cloudwatch.set_alarm_state(AlarmName=alarm, StateValue="ALARM", StateReason="5xx errors on v2")
    # THEN the update is rolled back at once: InService on the OLD config, saying why, with no pending deployment
    rolled_back = endpoints.until("rb", lambda d: d["EndpointStatus"] != "Updating")
    assert time.monotonic() - tripped < 2000 * SCALE / 2
    assert rolled_back["EndpointStatus"] == "InService"
    assert rolled_back["EndpointConfigName"] == "rb-v1"
    reason = rolled_back["FailureReason"]
    assert "rolled back to rb-v1" in reason and new_config in reason and alarm in reason and "ALARM" in reason
    assert "PendingDeploymentSummary" not in rolled_back
    assert rolled_back["LastDeploymentConfig"] == deployment
    assert rolled_back["ProductionVariants"][0]["VariantName"] == "AllTraffic"
    # AND the old server keeps answering every request, and the new one was stopped
    assert {endpoints.ask("rb")[0] for _ in range(4)} == {"v1"}
    assert old_server.alive() and not new_server.alive()


def test_an_alarm_already_in_alarm_stops_the_canary(endpoints: Endpoints) -> None:
    # GIVEN an endpoint of four instances on v1, and an alarm that is in ALARM
    endpoints.sagemaker.create_endpoint(EndpointName="c4", EndpointConfigName=endpoints.config("c4-v1", "v1", 4))
    assert endpoints.in_service("c4")["EndpointStatus"] == "InService"
    alarm = endpoints.alarm("c4-latency")
    endpoints.cloudwatch.set_alarm_state(AlarmName=alarm, StateValue="ALARM", StateReason="slow")
    # WHEN the endpoint is updated with a 25 % canary watched by it
    routing = {"Type": "CANARY", "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 25}, "WaitIntervalInSeconds": 600}
    endpoints.sagemaker.update_endpoint(
        EndpointName="c4",
        EndpointConfigName=endpoints.config("c4-v2", "v2", 4),
        DeploymentConfig={
            "BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": routing, "TerminationWaitInSeconds": 600},
            "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": alarm}]},
        },
    )
    # THEN the canary never gets past its first step: rolled back to v1, the reason naming the step
    done = endpoints.in_service(
        "c4",
    )
    assert done["EndpointConfigName"] == "c4-v1"
    assert "c4-latency" in done["FailureReason"] and "traffic step 1" in done["FailureReason"]
    assert endpoints.ask("c4")[0] == "v1"


def test_deployment_configs_sagemaker_refuses_are_validation_exceptions(endpoints: Endpoints) -> None:
    # GIVEN an endpoint of two instances in service
    endpoints.sagemaker.create_endpoint(EndpointName="val", EndpointConfigName=endpoints.config("val-v1", "v1", 2))
    assert endpoints.in_service("val")["EndpointStatus"] == "InService"
    new_config = endpoints.config("val-v2", "v2", 2)
    refused: list[dict[str, Any]] = [
        {"Type": "CANARY", "CanarySize": {"Type": "INSTANCE_COUNT", "Value": 2}, "WaitIntervalInSeconds": 60},
        {"Type": "CANARY", "WaitIntervalInSeconds": 60},
        {"Type": "LINEAR", "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": 80}, "WaitIntervalInSeconds": 60},
    ]
    for routing in refused:
        # WHEN an update asks for a canary above half the fleet, a canary of no size, or linear steps above 50 %
        with pytest.raises(ClientError) as error:
            endpoints.sagemaker.update_endpoint(
                EndpointName="val",
                EndpointConfigName=new_config,
                DeploymentConfig={"BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": routing}},
            )
        # THEN it is refused and the endpoint is untouched
        assert error.value.response["Error"]["Code"] == "ValidationException"
        assert endpoints.describe("val")["EndpointStatus"] == "InService"


def test_updates_and_deletes_of_an_endpoint_in_progress_are_refused(endpoints: Endpoints) -> None:
    # GIVEN an endpoint still Creating (its server not healthy yet)
    endpoints.backend.gate = threading.Event()
    config = endpoints.config("busy-v1", "v1")
    arn = endpoints.sagemaker.create_endpoint(EndpointName="busy", EndpointConfigName=config)["EndpointArn"]
    # WHEN it is deleted or updated / THEN SageMaker's answer for an endpoint in progress
    for call in (
        lambda: endpoints.sagemaker.delete_endpoint(EndpointName="busy"),
        lambda: endpoints.sagemaker.update_endpoint(EndpointName="busy", EndpointConfigName=config),
    ):
        with pytest.raises(ClientError) as creating:
            call()
        assert creating.value.response["Error"]["Code"] == "ValidationException"
        assert creating.value.response["Error"]["Message"] == f'Cannot update in-progress endpoint "{arn}".'
    endpoints.backend.gate.set()
    assert endpoints.in_service("busy")["EndpointStatus"] == "InService"
    # GIVEN then an update baking for a long time
    new_config = endpoints.config("busy-v2", "v2")
    endpoints.sagemaker.update_endpoint(
        EndpointName="busy",
        EndpointConfigName=new_config,
        DeploymentConfig={
            "BlueGreenUpdatePolicy": {
                "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0},
                "TerminationWaitInSeconds": 3600,
            }
        },
    )
    endpoints.until("busy", _baking("final baking period"))
    # WHEN it is deleted or updated again / THEN the same answer, and the update goes on
    for call in (
        lambda: endpoints.sagemaker.delete_endpoint(EndpointName="busy"),
        lambda: endpoints.sagemaker.update_endpoint(EndpointName="busy", EndpointConfigName=config),
    ):
        with pytest.raises(ClientError) as updating:
            call()
        assert updating.value.response["Error"]["Message"] == f'Cannot update in-progress endpoint "{arn}".'
    assert endpoints.describe("busy")["EndpointStatus"] == "Updating"


def test_a_delete_takes_time_and_the_endpoint_is_deleting_meanwhile(endpoints: Endpoints) -> None:
    # GIVEN an endpoint in service
    endpoints.sagemaker.create_endpoint(EndpointName="del", EndpointConfigName=endpoints.config("del-v1", "v1"))
    assert endpoints.in_service("del")["EndpointStatus"] == "InService"
    [server] = endpoints.backend.servers
    active_endpoints().delete_seconds = 100  # 1 s at this scale
    # WHEN it is deleted
    deleted = time.monotonic()
    endpoints.sagemaker.delete_endpoint(EndpointName="del")
    # THEN it is Deleting: listed, no longer invocable, its name not free, and its server stopped
    assert endpoints.describe("del")["EndpointStatus"] == "Deleting"
    assert [e["EndpointStatus"] for e in endpoints.sagemaker.list_endpoints()["Endpoints"]] == ["Deleting"]
    assert not server.alive()
    with pytest.raises(ClientError) as invoked:
        endpoints.ask("del")
    assert invoked.value.response["Error"]["Code"] == "ValidationError"
    for call in (
        lambda: endpoints.sagemaker.delete_endpoint(EndpointName="del"),
        lambda: endpoints.sagemaker.create_endpoint(EndpointName="del", EndpointConfigName="del-v1"),
    ):
        with pytest.raises(ClientError) as refused:
            call()
        assert refused.value.response["Error"]["Code"] == "ValidationException"
    # AND it disappears after the (compressed) delete time, and the name can be used again
    while endpoints.sagemaker.list_endpoints()["Endpoints"]:
        assert time.monotonic() - deleted < 10, "the endpoint was never deleted"
        time.sleep(0.02)
    assert time.monotonic() - deleted >= 100 * SCALE
    with pytest.raises(ClientError) as gone:
        endpoints.describe("del")
    assert "Could not find endpoint" in gone.value.response["Error"]["Message"]
    endpoints.sagemaker.create_endpoint(EndpointName="del", EndpointConfigName="del-v1")
    assert endpoints.in_service("del")["EndpointStatus"] == "InService"


# ---------------------------------------------------------------------------------------------------------------------
# Through the pipeline: a second run of a dataset updates its endpoint with the product's DeploymentConfig


def _start(cloud: Cloud, run_id: str, lines: list[str]) -> str:
    version = cloud.upload(KEY, lines)
    request = {
        "run_id": run_id,
        "bucket": cloud.deployment.bucket_name,
        "key": KEY,
        "version_id": version,
        "rerun": True,
    }
    arn = cloud.sfn.start_execution(
        stateMachineArn=cloud.deployment.state_machine_arn, name=run_id, input=json.dumps(request)
    )["executionArn"]
    return str(arn)


def _the_endpoint() -> dict[str, Any]:
    sagemaker = boto3.client("sagemaker")
    for _ in range(20):
        try:
            [summary] = sagemaker.list_endpoints()["Endpoints"]
            break
        except RuntimeError:  # moto lists its endpoints dict while the deploy thread may be adding to it
            time.sleep(0.01)
    return dict(sagemaker.describe_endpoint(EndpointName=summary["EndpointName"]))


def _product_settings(min_instances: int) -> DeploySettings:
    """The Deploy function's settings as this stack gives them (what deployment_config reads: instances, bake)."""
    return DeploySettings(
        stack_name="tuneplane-test",
        data_bucket="unused",
        base_model_s3_uri="s3://unused/",
        sagemaker_role_arn="arn:aws:iam::123456789012:role/unused",
        endpoint_min_instances=min_instances,
        bake_time_s=1000,
    )


@pytest.fixture
def stack_parameters(request: pytest.FixtureRequest) -> dict[str, str]:
    return {"DeployTarget": "vllm", "EndpointMinInstances": str(request.param), "DeployBakeTimeSeconds": "1000"}


@pytest.mark.parametrize(
    ("stack_parameters", "tripped_in"),
    [(1, "final baking period"), (2, "traffic step 1")],
    ids=["all-at-once", "canary"],
    indirect=["stack_parameters"],
)
def test_a_second_run_whose_update_an_alarm_rolls_back_fails_and_the_first_model_keeps_serving(
    cloud: Cloud, reversal_lines: list[str], stack_parameters: dict[str, str], tripped_in: str
) -> None:
    # GIVEN an endpoint serving the first run's model (servers answer from which run's model they serve)
    cloud.disable_trigger()
    cloud.endpoints.reply = lambda model_dir, request: "run-two" if job_prefix("run-two") in str(model_dir) else "one"
    assert cloud.wait(_start(cloud, "run-one", reversal_lines))["status"] == "SUCCEEDED"
    first = _the_endpoint()
    name = first["EndpointName"]
    # WHEN a second run updates it and its 5xx alarm goes into ALARM while the new model bakes
    execution_arn = _start(cloud, "run-two", reversal_lines)
    deadline = time.monotonic() + 60
    while not _baking(tripped_in)(updating := _the_endpoint()):
        assert time.monotonic() < deadline, f"the update never baked: {updating}"
        time.sleep(0.02)
    five_xx, _ = serving.alarm_names(name, cloud.deployment.stack_name)
    boto3.client("cloudwatch").set_alarm_state(AlarmName=five_xx, StateValue="ALARM", StateReason="5xx on run-two")
    execution = cloud.wait(execution_arn)
    # THEN the update used the product's DeploymentConfig, and SageMaker rolled it back
    endpoint = _the_endpoint()
    settings = _product_settings(int(stack_parameters["EndpointMinInstances"]))
    assert endpoint["LastDeploymentConfig"] == serving.deployment_config(settings, name)
    assert endpoint["EndpointStatus"] == "InService"
    assert endpoint["EndpointConfigName"] == first["EndpointConfigName"] == f"{job_prefix('run-one')}-serve"
    # AND the run FAILED at deploy, saying the update was rolled back and why, without smoke-testing the new model
    assert execution["status"] == "FAILED"
    states = cloud.states_entered(execution_arn)
    assert "DeployRollback" in states and "DeploySmokeTest" not in states
    events = [(e["detail-type"], e["detail"]) for e in cloud.bus_events() if e["detail"]["run_id"] == "run-two"]
    [failed] = [d for kind, d in events if kind == "Stage Failed" and d["stage"] == "deploy"]
    assert failed["error"] == "EndpointDeployFailed"
    assert f"the update of endpoint {name} was rolled back" in failed["message"]
    assert five_xx in failed["message"] and first["EndpointConfigName"] in failed["message"]
    assert [kind for kind, _ in events][-1] == "Run Failed"
    assert cloud.ledger("run-two")["deploy"]["status"] == "failed"
    # AND the first run's model still answers, the second's server is stopped
    answer = boto3.client("sagemaker-runtime").invoke_endpoint(
        EndpointName=name, ContentType="application/json", Body=json.dumps(CHAT)
    )
    assert json.loads(answer["Body"].read())["choices"][0]["message"]["content"] == "one"
    first_server, second_server = cloud.endpoints.servers
    assert first_server.alive() and not second_server.alive()


@pytest.mark.stack_parameters(DeployTarget="vllm", DeployBakeTimeSeconds="300", DeployMaxPolls="3")
def test_a_run_waits_for_an_update_until_sagemaker_has_decided_it(cloud: Cloud, reversal_lines: list[str]) -> None:
    # GIVEN an endpoint serving the first run's model, and a stack that checks a deployment 3 times (30 s apart)
    # although an update bakes 300 s (an update cannot be stopped: giving up on it reports a failure while the new
    # model takes over once the bake is over)
    cloud.disable_trigger()
    cloud.endpoints.reply = lambda model_dir, request: "run-two" if job_prefix("run-two") in str(model_dir) else "one"
    assert cloud.wait(_start(cloud, "run-one", reversal_lines))["status"] == "SUCCEEDED"
    # WHEN a second run updates it and no alarm trips
    execution_arn = _start(cloud, "run-two", reversal_lines)
    execution = cloud.wait(execution_arn)
    # THEN the run kept polling past DeployMaxPolls until SageMaker finished the update, and succeeded with the
    # second model serving and smoke-tested
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    states = cloud.states_entered(execution_arn)
    assert states.count("DeployPoll") > 3 and "DeploySmokeTest" in states
    endpoint = _the_endpoint()
    assert endpoint["EndpointStatus"] == "InService"
    assert endpoint["EndpointConfigName"] == f"{job_prefix('run-two')}-serve"
    first_server, second_server = cloud.endpoints.servers
    assert second_server.requests and not first_server.alive()


@pytest.mark.stack_parameters(DeployTarget="vllm")
def test_the_endpoint_a_failed_first_run_deletes_is_deleting_for_a_while(
    cloud: Cloud, reversal_lines: list[str]
) -> None:
    # GIVEN a model server that answers every chat with HTTP 500, and deletes that take 300 s (3 s here)
    cloud.disable_trigger()
    cloud.endpoints.error = (500, "model produced NaN logits")
    active_endpoints().delete_seconds = 300
    # WHEN the first run of a dataset creates its endpoint and the smoke test fails
    execution_arn = _start(cloud, "run-one", reversal_lines)
    execution = cloud.wait(execution_arn)
    # THEN the run failed and its rollback deleted the endpoint, which is still Deleting when the run ends
    assert execution["status"] == "FAILED"
    assert "DeployRollback" in cloud.states_entered(execution_arn)
    ended = time.monotonic()
    assert _the_endpoint()["EndpointStatus"] == "Deleting"
    # AND it is gone once the delete is over
    while boto3.client("sagemaker").list_endpoints()["Endpoints"]:
        assert time.monotonic() - ended < 15, "the endpoint was never deleted"
        time.sleep(0.05)
