"""The state-machine test harness: the real template deployed into moto (local/cloud), one fresh stack per test, or
one stack shared by the tests of a module (``StackPool``) where each test only needs its own runs.

Every event published on the stack's bus is copied to an SQS queue by a catch-all rule, so tests can assert on the
sequence of stage events; S3's events on the default bus are copied the same way, so a test can re-deliver one.
An upload under incoming/ starts a run by itself (the StartRun trigger); tests that start executions themselves
turn the trigger off first (``disable_trigger``). The tiny base model is uploaded where ``BaseModelS3Uri`` points.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from unittest import mock

import boto3
from containers.evaluate import evaluate, gate
from local.cloud import JobOutcome, LocalDeployment, LocalJob, ScriptedEndpointBackend, deploy, local_cloud
from local.cloud.bedrock import LocalModelImport, local_bedrock_imports
from local.cloud.lambda_runtime import reset_shared_package_caches
from local.cloud.s3_events import deliver_to_default_bus
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import state_task_service_callback

MODEL_BUCKET = "tuneplane-test-models"
MODEL_PREFIX = "tiny/"
EXECUTION_TIMEOUT_S = 60.0
S3_OBJECT_CREATED = {"source": ["aws.s3"], "detail-type": ["Object Created"]}
TRIGGER_RULE = "StartRunFunctionDatasetUploaded"  # logical id SAM gives the StartRun function's EventBridge rule
# moto's interpreter checks a ``.sync`` task's job (Describe*Job) every 0.5 s of real time, a constant the local
# cloud does not compress: about a second of every scripted run was spent sleeping there. AWS sets no interval to
# emulate (the AWS docs' "Service integration patterns" only say that with Run a Job (.sync) Step Functions waits for
# the job to complete), so the check is made every 50 ms: a job that has ended is seen sooner; the same resolver
# decides, the same outcomes and history result.
SYNC_CHECK_INTERVAL_S = 0.05


@dataclass
class ScriptedJobs:
    """Fake SageMaker job outcomes (these tests exercise the state machine, not the containers).

    A job completes and writes what its stage's container would leave in S3 (an adapter archive, a merge report,
    an evaluation report), unless the test scripted otherwise: ``fail[stage] = reason`` fails it with that
    FailureReason; ``no_capacity`` lists training instance types that fail with a CapacityError; ``hang`` lists
    stages whose job runs until it is stopped; ``scores`` sets the evaluation (``passed`` follows from them).
    """

    fail: dict[str, str] = field(default_factory=dict)
    no_capacity: set[str] = field(default_factory=set)
    hang: set[str] = field(default_factory=set)
    scores: dict[str, float] = field(default_factory=lambda: {"candidate": 0.9, "base": 0.1})
    adapter_rank: int = 8
    bedrock_importable: bool = True
    # The evaluate job's answers.jsonl: each model's answer to every eval example ("{reference}" is replaced by the
    # example's reference); answer_lines: what the last evaluate job wrote.
    answers: dict[str, str] = field(default_factory=lambda: {"candidate": "{reference}", "base": "no idea"})
    answer_lines: list[dict[str, Any]] = field(default_factory=list)
    started: list[tuple[str, str]] = field(default_factory=list)  # (job name, instance type)

    def reset(self) -> None:
        """Back to a fresh instance's script, in place (the local cloud holds this object as its executor)."""
        fresh = ScriptedJobs()
        for name in (f.name for f in fields(self)):
            setattr(self, name, getattr(fresh, name))

    def __call__(self, job: LocalJob) -> JobOutcome:
        stage = _stage_of(job.name)
        self.started.append((job.name, job.instance_type))
        if stage in self.hang:
            job.stop.wait(EXECUTION_TIMEOUT_S)
            return JobOutcome("Stopped", "Stopped by StopJob")
        if job.kind == "training" and job.instance_type in self.no_capacity:
            return JobOutcome(
                "Failed", f"CapacityError: Unable to provision requested ML compute capacity ({job.instance_type})"
            )
        if stage in self.fail:
            return JobOutcome("Failed", f"AlgorithmError: {self.fail[stage]}", self.fail[stage])
        s3 = boto3.client("s3")
        if job.kind == "training":
            bucket, key = _split(job.model.model_artifacts["S3ModelArtifacts"])
            s3.put_object(Bucket=bucket, Key=key, Body=b"adapter archive")
            return JobOutcome("Completed", metrics={"train_loss": 0.25, "eval_loss": 0.3, "tokens_per_second": 1234.0})
        output = job.model.processing_output_config["Outputs"][0]["S3Output"]["S3Uri"]
        bucket, prefix = _split(output)
        if stage == "merge":
            verdict = {
                "compatible": self.bedrock_importable,
                "reasons": ["architecture LlamaForCausalLM is supported"]
                if self.bedrock_importable
                else ["architecture GemmaForCausalLM is not in the supported list"],
            }
            report = {
                "verification": {"merged_vs_base_plus_adapter": {"max_abs": 1e-5}},
                "wall_time_s": 1.0,
                "dtype": "bf16",
                "adapter_rank": self.adapter_rank,
                "bedrock_custom_model_import": verdict,
            }
            s3.put_object(Bucket=bucket, Key=prefix + "merge_report.json", Body=json.dumps(report).encode())
            s3.put_object(Bucket=bucket, Key=prefix + "config.json", Body=b'{"architectures": ["LlamaForCausalLM"]}')
        if stage == "quantize":  # what a server needs to start from the quantized model
            s3.put_object(Bucket=bucket, Key=prefix + "config.json", Body=b'{"architectures": ["LlamaForCausalLM"]}')
        if stage == "evaluate":
            # The product's gate: the evaluate container's own, on the thresholds the Stage function sent the job.
            config = evaluate.load_config(list(job.model.app_specification["ContainerArguments"]))
            metrics = {name: {config.primary_metric: score, "stop_rate": 1.0} for name, score in self.scores.items()}
            passed, reasons = gate.gate(
                metrics,
                primary_metric=config.primary_metric,
                min_score=config.min_score,
                max_regression_vs_production=config.max_regression_vs_production,
                min_improvement_over_base=config.min_improvement_over_base,
                min_stop_rate=config.min_stop_rate,
            )
            report = {
                "passed": passed,
                "reasons": reasons,
                "primary_metric": config.primary_metric,
                "examples": 4,
                "metrics": metrics,
                "chart": "evaluation.png",
            }
            s3.put_object(Bucket=bucket, Key=prefix + "evaluation.json", Body=json.dumps(report).encode())
            s3.put_object(Bucket=bucket, Key=prefix + "evaluation.png", Body=b"png")
            self._write_answers(s3, job, bucket, prefix + "answers.jsonl")
        return JobOutcome("Completed")

    def _write_answers(self, s3: Any, job: LocalJob, bucket: str, key: str) -> None:
        """answers.jsonl as the evaluate container writes it, for the eval split the job was given."""
        [eval_input] = [i for i in job.model.processing_inputs if i["InputName"] == "eval"]
        eval_bucket, eval_key = _split(eval_input["S3Input"]["S3Uri"])
        lines = s3.get_object(Bucket=eval_bucket, Key=eval_key)["Body"].read().decode().splitlines()
        self.answer_lines = []
        for index, line in enumerate(row for row in lines if row.strip()):
            messages = json.loads(line)["messages"]
            reference = str(messages[-1]["content"])
            answers = {model: text.replace("{reference}", reference) for model, text in self.answers.items()}
            self.answer_lines.append(
                {"index": index, "prompt": messages[:-1], "reference": reference, "answers": answers}
            )
        s3.put_object(Bucket=bucket, Key=key, Body="".join(json.dumps(r) + "\n" for r in self.answer_lines).encode())


def _stage_of(job_name: str) -> str:
    return job_name.rsplit("-", 1)[1].rstrip("0123456789")


def _split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


@dataclass
class Cloud:
    """A deployed stack and the clients a test needs."""

    deployment: LocalDeployment
    s3: Any
    sfn: Any
    sqs: Any
    events_queue_url: str
    s3_events_queue_url: str
    jobs: ScriptedJobs = field(default_factory=ScriptedJobs)
    endpoints: ScriptedEndpointBackend = field(default_factory=ScriptedEndpointBackend)
    bedrock: LocalModelImport = field(default_factory=LocalModelImport)

    def upload(self, key: str, lines: list[str]) -> str:
        """Put ``lines`` as a JSONL object in the data bucket; returns the new version id."""
        return self.put(key, "".join(line + "\n" for line in lines).encode())

    def put(self, key: str, body: bytes) -> str:
        """Put ``body`` in the data bucket; returns the new version id."""
        response = self.s3.put_object(Bucket=self.deployment.bucket_name, Key=key, Body=body)
        return str(response["VersionId"])

    def disable_trigger(self) -> None:
        """Uploads under incoming/ no longer start runs (for tests that start executions themselves)."""
        boto3.client("events").disable_rule(Name=self.deployment.resources[TRIGGER_RULE])

    def run(self, name: str, execution_input: dict[str, Any]) -> dict[str, Any]:
        """Start an execution of the pipeline and wait (bounded) until it is no longer RUNNING."""
        arn = self.sfn.start_execution(
            stateMachineArn=self.deployment.state_machine_arn, name=name, input=json.dumps(execution_input)
        )["executionArn"]
        return self.wait(arn)

    def run_dataset(self, run_id: str, lines: list[str], *, key: str | None = None, **request: Any) -> dict[str, Any]:
        """Upload ``lines`` (to ``key``, by default the run's own ``incoming/<run_id>.jsonl``) and ``run`` the pipeline
        on that version as ``run_id``. With ``rerun``, so that a key and content trained before on a shared stack
        (every test uploads reversal_lines) is trained again instead of ending *unchanged* (dataset_runs.py);
        ``request`` adds to the input (an ``evaluation``)."""
        key = key or f"incoming/{run_id}.jsonl"
        version = self.upload(key, lines)
        bucket = self.deployment.bucket_name
        execution_input = {"run_id": run_id, "bucket": bucket, "key": key, "version_id": version, "rerun": True}
        return self.run(run_id, execution_input | request)

    def wait(self, execution_arn: str) -> dict[str, Any]:
        """The execution once it is no longer RUNNING (bounded wait)."""
        deadline = time.monotonic() + EXECUTION_TIMEOUT_S
        while (execution := self.sfn.describe_execution(executionArn=execution_arn))["status"] == "RUNNING":
            if time.monotonic() > deadline:
                raise AssertionError(f"execution {execution_arn} still RUNNING after {EXECUTION_TIMEOUT_S:.0f} s")
            time.sleep(0.05)
        return dict(execution)

    def executions(self) -> list[dict[str, Any]]:
        """Every execution of the pipeline so far, oldest first."""
        listed = self.sfn.list_executions(stateMachineArn=self.deployment.state_machine_arn, maxResults=1000)
        return sorted(listed["executions"], key=lambda execution: execution["startDate"])

    def executions_since(self, earlier: set[str]) -> list[dict[str, Any]]:
        """The executions not in ``earlier`` (the ``earlier`` fixture: those before the test began), oldest first."""
        return [execution for execution in self.executions() if execution["executionArn"] not in earlier]

    def s3_events(self) -> list[dict[str, Any]]:
        """Every S3 Object Created event that reached the default bus so far (EventBridge envelopes), in order."""
        return self._drain(self.s3_events_queue_url)

    def redeliver(self, event: dict[str, Any]) -> None:
        """Deliver ``event`` to the default bus's rules again, as EventBridge may (at-least-once delivery)."""
        deliver_to_default_bus(event, self.deployment.account_id, self.deployment.region)  # type: ignore[arg-type]

    def dead_letters(self) -> list[dict[str, Any]]:
        """Messages in the StartRun dead-letter queue (events that could not start a run)."""
        url = self.deployment.outputs["StartRunDeadLetterQueueUrl"]
        return list(self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []))

    def ledger(self, run_id: str) -> dict[str, dict[str, Any]]:
        """The run's ledger items by stage."""
        table = boto3.resource("dynamodb").Table(self.deployment.outputs["RunLedgerTableName"])
        items = table.query(KeyConditionExpression="run_id = :r", ExpressionAttributeValues={":r": run_id})["Items"]
        return {str(item["stage"]): item for item in items}

    def stage_function_environment(self, **variables: str) -> None:
        """Change the Stage function's environment (e.g. shorter job runtimes for a timeout test)."""
        client = boto3.client("lambda")
        name = self.deployment.outputs["StageFunctionName"]
        current = client.get_function_configuration(FunctionName=name)["Environment"]["Variables"]
        merged = {key: str(value) for key, value in {**current, **variables}.items()}
        client.update_function_configuration(FunctionName=name, Environment={"Variables": merged})

    def states_entered(self, execution_arn: str) -> list[str]:
        history = self.sfn.get_execution_history(executionArn=execution_arn, maxResults=1000)["events"]
        return [event["stateEnteredEventDetails"]["name"] for event in history if "stateEnteredEventDetails" in event]

    def keys(self, prefix: str) -> list[str]:
        listed = self.s3.list_objects_v2(Bucket=self.deployment.bucket_name, Prefix=prefix)
        return [item["Key"] for item in listed.get("Contents", [])]

    def bus_events(self) -> list[dict[str, Any]]:
        """Every event that reached the bus so far (EventBridge envelopes, ``detail`` parsed), in order."""
        return self._drain(self.events_queue_url)

    def _drain(self, queue_url: str) -> list[dict[str, Any]]:
        received: list[dict[str, Any]] = []
        while messages := self.sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", []):
            for message in messages:
                received.append(json.loads(message["Body"]))
                self.sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        return received


def _capture(bus_name: str, queue_name: str, pattern: dict[str, Any]) -> str:
    """A rule on ``bus_name`` that copies every matching event to a new SQS queue; returns the queue URL."""
    sqs, events = boto3.client("sqs"), boto3.client("events")
    queue_url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name=f"copy-to-{queue_name}", EventBusName=bus_name, EventPattern=json.dumps(pattern))
    events.put_targets(
        Rule=f"copy-to-{queue_name}", EventBusName=bus_name, Targets=[{"Id": "queue", "Arn": queue_arn}]
    )
    return str(queue_url)


@contextmanager
def deployed_cloud(
    base_model_dir: Path, parameters: dict[str, str] | None = None, enforce_iam: bool = True
) -> Iterator[Cloud]:
    """A fresh local cloud with the stack deployed, the base model in place and scripted SageMaker jobs. IAM is
    enforced unless ``enforce_iam`` is False (for tests that switch their own enforcement on)."""
    jobs, endpoints, bedrock = ScriptedJobs(), ScriptedEndpointBackend(), LocalModelImport()
    with (
        local_cloud(
            time_scale=0.01, executor=jobs, endpoint_backend=endpoints, enforce_iam=enforce_iam
        ),  # resets cached settings, clients
        local_bedrock_imports(bedrock),
        mock.patch.object(state_task_service_callback, "_DELAY_SECONDS_SYNC_CONDITION_CHECK", SYNC_CHECK_INTERVAL_S),
    ):
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=MODEL_BUCKET)
        for file in base_model_dir.iterdir():
            s3.upload_file(str(file), MODEL_BUCKET, MODEL_PREFIX + file.name)
        deployment = deploy(
            {"BaseModelS3Uri": f"s3://{MODEL_BUCKET}/{MODEL_PREFIX}", **(parameters or {})},
            stack_name="tuneplane-test",
        )
        yield Cloud(
            deployment=deployment,
            s3=s3,
            sfn=boto3.client("stepfunctions"),
            sqs=boto3.client("sqs"),
            events_queue_url=_capture(deployment.bus_name, "bus-events", {"account": [deployment.account_id]}),
            s3_events_queue_url=_capture("default", "s3-events", S3_OBJECT_CREATED),
            jobs=jobs,
            endpoints=endpoints,
            bedrock=bedrock,
        )


class StackPool:
    """One deployed stack at a time, shared by the tests of a module that only need their own runs (a run id and a
    dataset key of their own): deploying the stack takes seconds, a scripted run a fraction of that.

    ``cloud(parameters)`` gives the stack deployed with ``parameters``, deploying it (into a fresh local cloud, the
    previous one closed) only when they differ from the current stack's: order a module's tests by stack. Before each
    test the stack is made to look fresh where the harness scripts it: SageMaker jobs, model servers and the Bedrock
    stand-in back to their defaults, the records ``jobs.started``, ``endpoints.servers`` and ``bedrock.calls`` empty,
    the capture queues drained, the StartRun trigger on.
    A function's environment changed by a test (``stage_function_environment``, ``update_function_configuration``) is
    put back as deployed, and the shared package's cached settings and clients are dropped (as a cold start drops
    them), so the next test's functions read the deployed environment. What the test's runs leave in AWS (objects,
    ledger items, executions, endpoints, dead letters; imported models and model servers in the stand-ins) stays: a
    test must tell its own from them (by run id, dataset key or what changed since it began)."""

    def __init__(self, base_model_dir: Path) -> None:
        self._base_model_dir = base_model_dir
        self._stack = ExitStack()
        self._parameters: dict[str, str] | None = None
        self._cloud: Cloud | None = None
        self._environments: dict[str, dict[str, str]] = {}  # function name -> its environment as deployed

    def cloud(self, parameters: dict[str, str] | None = None) -> Cloud:
        wanted = dict(parameters or {})
        if self._cloud is None or self._parameters != wanted:
            self.close()
            self._cloud = self._stack.enter_context(deployed_cloud(self._base_model_dir, wanted))
            self._parameters = wanted
            self._environments = _function_environments()
            return self._cloud
        cloud = self._cloud
        lambda_client = boto3.client("lambda")
        for name, current in _function_environments().items():
            if name in self._environments and current != self._environments[name]:
                lambda_client.update_function_configuration(
                    FunctionName=name, Environment={"Variables": self._environments[name]}
                )
        reset_shared_package_caches()
        cloud.jobs.reset()
        endpoints, bedrock = ScriptedEndpointBackend(), LocalModelImport()
        cloud.endpoints.reply, cloud.endpoints.start_error = endpoints.reply, endpoints.start_error
        cloud.endpoints.error, cloud.endpoints.gate = endpoints.error, endpoints.gate
        cloud.bedrock.answer, cloud.bedrock.polls_to_complete = bedrock.answer, bedrock.polls_to_complete
        cloud.bedrock.cold_start_chats, cloud.bedrock.fail_with = bedrock.cold_start_chats, bedrock.fail_with
        cloud.endpoints.servers, cloud.bedrock.calls = [], []  # records for the test (the servers keep serving)
        cloud.bus_events(), cloud.s3_events()
        boto3.client("events").enable_rule(Name=cloud.deployment.resources[TRIGGER_RULE])
        return cloud

    def close(self) -> None:
        self._stack.close()
        self._stack, self._cloud, self._parameters, self._environments = ExitStack(), None, None, {}

    def __enter__(self) -> StackPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _function_environments() -> dict[str, dict[str, str]]:
    """Every Lambda function's environment variables, by function name (as strings: moto keeps the template's numbers
    as numbers, which ``UpdateFunctionConfiguration`` refuses)."""
    client = boto3.client("lambda")
    return {
        function["FunctionName"]: {
            name: str(value) for name, value in function.get("Environment", {}).get("Variables", {}).items()
        }
        for page in client.get_paginator("list_functions").paginate()
        for function in page["Functions"]
    }
