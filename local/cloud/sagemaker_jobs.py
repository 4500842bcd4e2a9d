"""SageMaker training and processing jobs in the local cloud, and the ``sagemaker:*.sync`` integration.

moto records ``CreateTrainingJob`` / ``CreateProcessingJob`` as already ``Completed`` and its state-machine
interpreter does not support ``sagemaker`` ``.sync`` tasks. Here:

- a created job is ``InProgress`` and runs on a worker thread through a ``JobExecutor``; its ``Describe*Job``
  reports the real outcome (``Completed`` / ``Failed`` with ``FailureReason`` / ``Stopped``), the final metrics
  (the request's own ``MetricDefinitions`` applied to the job's output) and, for processing, ``ExitMessage``;
- ``StopTrainingJob`` (missing in moto) and ``StopProcessingJob`` stop the worker;
- ``arn:aws:states:::sagemaker:create*Job.sync`` tasks create the job and poll ``Describe*Job`` until it ends:
  the task's output is the description; a failed or stopped job fails the task with ``States.TaskFailed`` and the
  description (JSON) as the cause, as on AWS; an error of the create call is ``SageMaker.<code>``.

The default executor, ``ContainerExecutor``, runs the real entrypoint of ``containers/<stage>/`` as a subprocess
under the SageMaker container contract, with ``/opt/ml`` mapped into a work directory. Tests pass their own
executor (any callable ``(LocalJob) -> JobOutcome``) to script outcomes without running a model.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast
from unittest import mock

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from moto.core.responses import EmptyResult
from moto.sagemaker import responses as sm_responses
from moto.sagemaker.models import FakeProcessingJob, FakeTrainingJob, SageMakerModelBackend
from moto.stepfunctions.parser.api import HistoryEventType, TaskFailedEventDetails
from moto.stepfunctions.parser.asl.component.common.error_name.custom_error_name import CustomErrorName
from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import (
    FailureEvent,
    FailureEventException,
)
from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name import StatesErrorName
from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name_type import StatesErrorNameType
from moto.stepfunctions.parser.asl.component.state.exec.state_task import state_task_factory
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.resource import ResourceCondition
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_callback import (
    StateTaskServiceCallback,
)
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_factory import (
    state_task_service_for as _original_service_for,
)
from moto.stepfunctions.parser.asl.eval.event.event_detail import EventDetails
from moto.stepfunctions.parser.asl.utils.boto_client import boto_client_for
from moto.stepfunctions.parser.asl.utils.json_path import extract_json

from local.cloud.iam.actions import sync_rule_checks
from local.cloud.iam.enforce import acting_as, require

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS = ROOT / "containers"
OPT_ML = "/opt/ml"
REASON_LIMIT = 1024  # FailureReason and ExitMessage hold 1 KB
SINGLE_PUT_MAX = 5 * 1024**3  # the largest object one PutObject may write (the AWS docs: 5 GB)


@dataclass
class LocalJob:
    """One job as created: its kind, name, the request (moto's model of it) and a private work directory."""

    kind: Literal["training", "processing"]
    name: str
    model: Any  # moto's FakeTrainingJob / FakeProcessingJob
    metric_definitions: list[dict[str, str]]
    work_dir: Path
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def image(self) -> str:
        if self.kind == "training":
            return str(self.model.algorithm_specification.get("TrainingImage", ""))
        return str(self.model.app_specification.get("ImageUri", ""))

    @property
    def instance_type(self) -> str:
        if self.kind == "training":
            return str(self.model.resource_config.get("InstanceType", ""))
        resources = getattr(self.model, "processing_resources", None) or {}  # moto does not keep them
        return str(resources.get("ClusterConfig", {}).get("InstanceType", ""))


@dataclass
class JobOutcome:
    status: Literal["Completed", "Failed", "Stopped"]
    failure_reason: str | None = None
    exit_message: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


JobExecutor = Callable[[LocalJob], JobOutcome]


# ---------------------------------------------------------------------------------------------------------------------
# S3 transfers as SageMaker does them


def split_s3_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def download_prefix(uri: str, destination: Path) -> int:
    """Every object under the S3 prefix ``uri`` into ``destination`` (keys relative to the prefix's folder)."""
    s3 = boto3.client("s3")
    bucket, prefix = split_s3_uri(uri)
    folder = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            relative = item["Key"][len(folder) :]
            if not relative or relative.endswith("/"):
                continue
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            # One GET, streamed to disk: moto answers every ranged GET by reading the whole object, so a managed
            # (multi-range) download of a 5 GB object read it hundreds of times.
            with target.open("wb") as file:
                shutil.copyfileobj(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"], file, 8 * 1024 * 1024)
            count += 1
    return count


def upload_folder(folder: Path, uri: str) -> int:
    # Checksums only where S3 requires them: botocore's default streams a file body as aws-chunked, and moto reads
    # that wrapper whole by concatenating its chunks, quadratic in the file's size (hours for 5 GB).
    s3 = boto3.client("s3", config=Config(request_checksum_calculation="when_required"))
    bucket, prefix = split_s3_uri(uri.rstrip("/") + "/")
    count = 0
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            key = prefix + path.relative_to(folder).as_posix()
            if path.stat().st_size <= SINGLE_PUT_MAX:  # one PUT: moto assembles a multipart upload in memory
                with path.open("rb") as file:
                    s3.put_object(Bucket=bucket, Key=key, Body=file)
            else:
                s3.upload_file(str(path), bucket, key)
            count += 1
    return count


# ---------------------------------------------------------------------------------------------------------------------
# The container executor


def container_script(image: str) -> Path | None:
    """``<registry>/<stack>/train:tag`` -> ``containers/train/train.py`` (None: not one of ours)."""
    name = image.rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0]
    script = CONTAINERS / name / f"{name}.py"
    return script if script.is_file() else None


def _map_opt_ml(value: str, opt_ml: Path) -> str:
    return value.replace(OPT_ML, str(opt_ml))


def _final_metrics(lines: list[str], definitions: list[dict[str, str]]) -> dict[str, float]:
    """The last value each MetricDefinitions regex found in the output, as SageMaker's FinalMetricDataList."""
    found: dict[str, float] = {}
    patterns = [(d["Name"], re.compile(d["Regex"])) for d in definitions]
    for line in lines:
        for name, pattern in patterns:
            for match in pattern.finditer(line):
                try:
                    found[name] = float(match.group(1))
                except (ValueError, IndexError):
                    continue
    return found


@dataclass
class ContainerExecutor:
    """Runs ``containers/<stage>/<stage>.py`` as a subprocess under the SageMaker contract.

    ``on_line(job, line)`` sees every output line as it comes (the demo draws its progress bar from it);
    ``env`` is added to the job's environment (e.g. ``TUNEPLANE_FAIL_AT_STEP`` for an injected failure)."""

    on_line: Callable[[LocalJob, str], None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    python: str = sys.executable

    def __call__(self, job: LocalJob) -> JobOutcome:
        script = container_script(job.image)
        if script is None:
            return JobOutcome("Failed", f"ClientError: image {job.image} is not one of containers/*")
        opt_ml = job.work_dir / "opt" / "ml"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        env |= self.env
        if job.kind == "training":
            command, failure_file = self._prepare_training(job, opt_ml, env)
        else:
            command, failure_file = self._prepare_processing(job, opt_ml)
        lines, returncode = self._run([self.python, str(script), *command], env, job)
        if job.stop.is_set():
            return JobOutcome("Stopped", "Stopped by StopJob")
        metrics = _final_metrics(lines, job.metric_definitions)
        message = failure_file.read_text(errors="replace").strip()[:REASON_LIMIT] if failure_file.is_file() else None
        if returncode != 0:
            reason = message or (lines[-1] if lines else f"exit code {returncode}")
            return JobOutcome("Failed", f"AlgorithmError: {reason}"[:REASON_LIMIT], message, metrics)
        if job.kind == "training":
            self._finish_training(job, opt_ml)
        else:
            self._finish_processing(job, opt_ml)
        return JobOutcome("Completed", None, message, metrics)

    def _prepare_training(self, job: LocalJob, opt_ml: Path, env: dict[str, str]) -> tuple[list[str], Path]:
        model = job.model
        for channel in model.input_data_config:
            name = channel["ChannelName"]
            target = opt_ml / "input" / "data" / name
            target.mkdir(parents=True, exist_ok=True)
            download_prefix(channel["DataSource"]["S3DataSource"]["S3Uri"], target)
            env[f"SM_CHANNEL_{name.upper()}"] = str(target)
        hyperparameters = opt_ml / "input" / "config" / "hyperparameters.json"
        hyperparameters.parent.mkdir(parents=True, exist_ok=True)
        hyperparameters.write_text(json.dumps(model.hyper_parameters or {}))
        checkpoints = opt_ml / "checkpoints"
        checkpoints.mkdir(parents=True, exist_ok=True)
        if (model.checkpoint_config or {}).get("S3Uri"):  # a restarted job resumes from what was synced
            download_prefix(model.checkpoint_config["S3Uri"].rstrip("/") + "/", checkpoints)
        failure_file = opt_ml / "output" / "failure"
        env |= {
            "SM_MODEL_DIR": str(opt_ml / "model"),
            "TUNEPLANE_HYPERPARAMETERS": str(hyperparameters),
            "TUNEPLANE_CHECKPOINT_DIR": str(checkpoints),
            "TUNEPLANE_FAILURE_FILE": str(failure_file),
        }
        return ["train"], failure_file

    def _prepare_processing(self, job: LocalJob, opt_ml: Path) -> tuple[list[str], Path]:
        model = job.model
        for processing_input in model.processing_inputs:
            source = processing_input["S3Input"]
            target = Path(_map_opt_ml(source["LocalPath"], opt_ml))
            target.mkdir(parents=True, exist_ok=True)
            download_prefix(source["S3Uri"], target)
        for output in model.processing_output_config.get("Outputs", []):
            Path(_map_opt_ml(output["S3Output"]["LocalPath"], opt_ml)).mkdir(parents=True, exist_ok=True)
        arguments = [_map_opt_ml(arg, opt_ml) for arg in model.app_specification.get("ContainerArguments", [])]
        return arguments, opt_ml / "output" / "message"

    def _run(self, command: list[str], env: dict[str, str], job: LocalJob) -> tuple[list[str], int]:
        log = job.work_dir / "output.log"
        lines: list[str] = []
        with (
            log.open("w") as sink,
            subprocess.Popen(
                command, env=env, cwd=job.work_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            ) as process,
        ):
            watcher = threading.Thread(target=self._stop_when_asked, args=(job, process), daemon=True)
            watcher.start()
            assert process.stdout is not None
            for line in process.stdout:
                sink.write(line)
                lines.append(line.rstrip("\n"))
                if self.on_line:
                    self.on_line(job, line.rstrip("\n"))
            returncode = process.wait()
        return lines, returncode

    @staticmethod
    def _stop_when_asked(job: LocalJob, process: subprocess.Popen[str]) -> None:
        while process.poll() is None:
            if job.stop.wait(0.2):
                process.terminate()  # SIGTERM, as SageMaker sends: the training entrypoint checkpoints on it
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                return

    @staticmethod
    def _finish_training(job: LocalJob, opt_ml: Path) -> None:
        model = job.model
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w:gz") as tar:
            for path in sorted((opt_ml / "model").rglob("*")):
                if path.is_file():
                    tar.add(path, arcname=path.relative_to(opt_ml / "model").as_posix())
        bucket, key = split_s3_uri(model.model_artifacts["S3ModelArtifacts"])
        boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=archive.getvalue())
        if (model.checkpoint_config or {}).get("S3Uri"):
            upload_folder(opt_ml / "checkpoints", model.checkpoint_config["S3Uri"])

    @staticmethod
    def _finish_processing(job: LocalJob, opt_ml: Path) -> None:
        for output in job.model.processing_output_config.get("Outputs", []):
            upload_folder(Path(_map_opt_ml(output["S3Output"]["LocalPath"], opt_ml)), output["S3Output"]["S3Uri"])


# ---------------------------------------------------------------------------------------------------------------------
# The job runner: moto's SageMaker backend with real job lifecycles


class JobRunner:
    """Runs every created job through ``executor`` on a worker thread and keeps moto's job records up to date."""

    def __init__(self, executor: JobExecutor, work_root: Path) -> None:
        self.executor = executor
        self.work_root = work_root
        self.jobs: dict[str, LocalJob] = {}
        self.threads: list[threading.Thread] = []

    def start(self, job: LocalJob) -> None:
        self.jobs[job.name] = job
        thread = threading.Thread(target=self._run, args=(job,), name=f"sagemaker-{job.name}", daemon=True)
        self.threads.append(thread)
        thread.start()

    def _run(self, job: LocalJob) -> None:
        started = time.monotonic()
        try:
            with acting_as(job.model.role_arn, "SageMaker"):  # its S3 transfers are the job role's (local.cloud.iam)
                outcome = self.executor(job)
        except Exception as exc:  # a broken executor is a failed job, as an infrastructure error is
            outcome = JobOutcome("Failed", f"InternalServerError: {type(exc).__name__}: {exc}"[:REASON_LIMIT])
        if job.stop.is_set() and outcome.status != "Failed":
            outcome = JobOutcome("Stopped", outcome.failure_reason, outcome.exit_message, outcome.metrics)
        _apply(job, outcome, time.monotonic() - started)

    def stop(self, name: str) -> bool:
        job = self.jobs.get(name)
        if job is None:
            return False
        job.stop.set()
        _set_status(job, "Stopping")
        return True

    def wait_idle(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def _set_status(job: LocalJob, status: str) -> None:
    if job.kind == "training":
        job.model.training_job_status = status
        job.model.secondary_status = status
    else:
        job.model.processing_job_status = status
    job.model.last_modified_time = datetime.now(UTC)


def _apply(job: LocalJob, outcome: JobOutcome, seconds: float) -> None:
    now = datetime.now(UTC)
    model = job.model
    if outcome.failure_reason and outcome.status != "Completed":
        model.failure_reason = outcome.failure_reason
    if job.kind == "training":
        model.training_end_time = now
        model.billable_time_in_seconds = max(1, round(seconds))
        model.training_time_in_seconds = max(1, round(seconds))
        model.final_metric_data_list = [
            {"MetricName": name, "Value": value, "Timestamp": now} for name, value in outcome.metrics.items()
        ]
        model.secondary_status_transitions.append(
            {"Status": outcome.status, "StartTime": now, "EndTime": now, "StatusMessage": outcome.status}
        )
    else:
        model.processing_end_time = now
        if outcome.exit_message:
            model.exit_message = outcome.exit_message[:REASON_LIMIT]
    _set_status(job, outcome.status)


@contextmanager
def local_sagemaker_jobs(executor: JobExecutor, work_root: Path) -> Iterator[JobRunner]:
    """moto's SageMaker runs jobs through ``executor``; ``sagemaker:*.sync`` tasks work in state machines."""
    runner = JobRunner(executor, work_root)
    create_training = SageMakerModelBackend.create_training_job
    create_processing = SageMakerModelBackend.create_processing_job
    stop_processing = SageMakerModelBackend.stop_processing_job

    def create_training_job(backend: SageMakerModelBackend, **kwargs: Any) -> FakeTrainingJob:
        definitions = list(kwargs["algorithm_specification"].get("MetricDefinitions") or [])
        job: FakeTrainingJob = create_training(backend, **kwargs)
        job.algorithm_specification["MetricDefinitions"] = definitions  # moto puts an example of its own there
        cast(Any, job).training_end_time = None  # moto types it as a datetime; a running job has none yet
        job.final_metric_data_list = []
        job.secondary_status_transitions = []
        local = LocalJob(
            "training", job.training_job_name, job, definitions, _work_dir(work_root, job.training_job_name)
        )
        _set_status(local, "InProgress")
        runner.start(local)
        return job

    def create_processing_job(backend: SageMakerModelBackend, **kwargs: Any) -> FakeProcessingJob:
        job: FakeProcessingJob = create_processing(backend, **kwargs)
        cast(Any, job).processing_end_time = None  # as above
        local = LocalJob("processing", job.processing_job_name, job, [], _work_dir(work_root, job.processing_job_name))
        _set_status(local, "InProgress")
        runner.start(local)
        return job

    def stop_training_job(backend: SageMakerModelBackend, training_job_name: str) -> None:
        if training_job_name not in backend.training_jobs:
            raise _validation_error(f"Could not find training job '{training_job_name}'.")
        status = backend.training_jobs[training_job_name].training_job_status
        if status != "InProgress":  # SageMaker's words for a job no longer stoppable
            raise _validation_error(f"The request was rejected because the training job is in status {status}.")
        runner.stop(training_job_name)

    def stop_processing_job(backend: SageMakerModelBackend, processing_job_name: str) -> None:
        if processing_job_name in backend.processing_jobs and runner.stop(processing_job_name):
            return
        stop_processing(backend, processing_job_name)

    def stop_training_job_response(response: sm_responses.SageMakerResponse) -> Any:
        stop_training_job(response.sagemaker_backend, response._get_param("TrainingJobName"))  # patched in below
        return EmptyResult()

    with (
        mock.patch.object(SageMakerModelBackend, "create_training_job", create_training_job),
        mock.patch.object(SageMakerModelBackend, "create_processing_job", create_processing_job),
        mock.patch.object(SageMakerModelBackend, "stop_training_job", stop_training_job, create=True),
        mock.patch.object(SageMakerModelBackend, "stop_processing_job", stop_processing_job),
        mock.patch.object(
            sm_responses.SageMakerResponse, "stop_training_job", stop_training_job_response, create=True
        ),
        mock.patch.object(state_task_factory, "state_task_service_for", _service_for),
    ):
        yield runner
        for job in runner.jobs.values():  # nothing outlives the local cloud
            job.stop.set()
        runner.wait_idle()


def _validation_error(message: str) -> Exception:
    from moto.sagemaker.exceptions import ValidationError

    return ValidationError(message=message)


def _work_dir(root: Path, name: str) -> Path:
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# The .sync integration in moto's state-machine interpreter

_TERMINAL = {"Completed", "Failed", "Stopped"}


def _service_for(service_name: str) -> Any:
    if service_name == "sagemaker":
        return StateTaskServiceSageMaker()
    return _original_service_for(service_name=service_name)


def _sagemaker_model() -> Any:
    import botocore.session

    return botocore.session.get_session().get_service_model("sagemaker")


def _task_failed(details: TaskFailedEventDetails) -> EventDetails:
    """moto's ``EventDetails`` TypedDict is total, though every event carries one kind of details (as moto's own
    interpreter builds them)."""
    return cast(EventDetails, {"taskFailedEventDetails": details})


def _json_safe(value: Any) -> Any:
    """Describe* answers hold datetimes; Step Functions has them as epoch milliseconds."""
    if isinstance(value, datetime):
        return value.timestamp() * 1000
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items() if k != "ResponseMetadata"}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _sync_error_name(code: str) -> str:
    """The error name Step Functions' optimized SageMaker integration gives a failed request: its own
    ``SageMaker.ResourceLimitExceededException`` for a quota, ``SageMaker.AmazonSageMakerException`` for every other
    error the service returns (throttling and validation alike; AWS's sample Retry blocks name exactly these two)."""
    if code == "ResourceLimitExceeded":
        return "SageMaker.ResourceLimitExceededException"
    return "SageMaker.AmazonSageMakerException"


def _sync_error_cause(ex: ClientError) -> str:
    """The service's message with the AWS SDK for Java's details, as the integration's Cause carries them."""
    error, metadata = ex.response["Error"], ex.response.get("ResponseMetadata", {})
    return (
        f"{error.get('Message', '')} (Service: AmazonSageMaker; Status Code: {metadata.get('HTTPStatusCode', 400)}; "
        f"Error Code: {error['Code']}; Request ID: {metadata.get('RequestId', '')}; Proxy: null)"
    )


class StateTaskServiceSageMaker(StateTaskServiceCallback):
    """``arn:aws:states:::sagemaker:<action>[.sync]``: request-response for any action, ``.sync`` for
    createTrainingJob and createProcessingJob."""

    def __init__(self) -> None:
        # WaitForTaskToken only because moto's callback base class assumes a callback endpoint exists (it calls
        # interrupt_all() on it unconditionally); the ASL never uses .waitForTaskToken with SageMaker.
        # moto types ResourceCondition's members as plain str (they are class attributes of a str subclass).
        patterns = cast(set[ResourceCondition], {ResourceCondition.Sync, ResourceCondition.WaitForTaskToken})
        super().__init__(supported_integration_patterns=patterns)

    _SYNC_ACTIONS = {"createtrainingjob": "CreateTrainingJob", "createprocessingjob": "CreateProcessingJob"}

    def _get_supported_parameters(self) -> set[str] | None:
        """The request members of the two ``.sync`` actions (the interpreter refuses other resources up front)."""
        operation = self._SYNC_ACTIONS.get(self.resource.api_action.lower())
        if operation is None:
            return None
        model = _sagemaker_model()
        return set(model.operation_model(operation).input_shape.members)

    def _eval_parameters(self, env: Any) -> dict[str, Any]:
        """moto's ASL lexer reads ``"RoleArn.$"`` (a keyword of the ``Credentials`` field) as a plain key holding the
        path as text, and the unsupported-parameter filter then drops it: every job was created without its role.
        Here the path is evaluated, as for any other ``.$`` key, against the state's input."""
        source = env.stack[-1]
        if self.parargs is None:
            return {}
        self.parargs.eval(env=env)
        parameters: dict[str, Any] = env.stack.pop()
        role_path = parameters.pop("RoleArn.$", None)
        if isinstance(role_path, str):
            parameters["RoleArn"] = extract_json(role_path, source)
        supported = self._get_supported_parameters()
        return {k: v for k, v in parameters.items() if not supported or k in supported}

    def _client(self, resource_runtime_part: Any, state_credentials: Any) -> Any:
        return boto_client_for(
            service="sagemaker", region=resource_runtime_part.region, state_credentials=state_credentials
        )

    def _from_error(self, env: Any, ex: Exception) -> FailureEvent:
        if isinstance(ex, ClientError):
            name = _sync_error_name(ex.response["Error"]["Code"])
            return FailureEvent(
                env=env,
                error_name=CustomErrorName(name),
                event_type=HistoryEventType.TaskFailed,
                event_details=_task_failed(
                    TaskFailedEventDetails(
                        error=name,
                        cause=_sync_error_cause(ex),
                        resource=self._get_sfn_resource(),
                        resourceType=self._get_sfn_resource_type(),
                    )
                ),
            )
        return super()._from_error(env=env, ex=ex)

    def _eval_service_task(
        self, env: Any, resource_runtime_part: Any, normalised_parameters: dict[str, Any], state_credentials: Any
    ) -> None:
        client = self._client(resource_runtime_part, state_credentials)
        response = getattr(client, self._get_boto_service_action())(**normalised_parameters)
        env.stack.append(_json_safe(response))

    def _build_sync_resolver(
        self, env: Any, resource_runtime_part: Any, normalised_parameters: dict[str, Any], state_credentials: Any
    ) -> Callable[[], Any]:
        env.stack.pop()  # the create call's answer; the output is the job's description
        client = self._client(resource_runtime_part, state_credentials)
        action = self._get_boto_service_action()
        if action == "create_training_job":
            name = normalised_parameters["TrainingJobName"]

            def describe() -> dict[str, Any]:
                answer = client.describe_training_job(TrainingJobName=name)
                return {**answer, "_status": answer["TrainingJobStatus"]}
        elif action == "create_processing_job":
            name = normalised_parameters["ProcessingJobName"]

            def describe() -> dict[str, Any]:
                answer = client.describe_processing_job(ProcessingJobName=name)
                return {**answer, "_status": answer["ProcessingJobStatus"]}
        else:
            raise ValueError(f"sagemaker:{action}.sync is not supported by the local cloud")
        # what AWS's .sync integration does with its managed EventBridge rule, as the state machine's role
        region, account = resource_runtime_part.region, resource_runtime_part.account
        require("events", "PutRule", sync_rule_checks(action, region, account), region)

        def resolve() -> Any:
            description = describe()
            status = description.pop("_status")
            if status not in _TERMINAL:
                return None
            output = _json_safe(description)
            if status == "Completed":
                return output
            raise FailureEventException(
                FailureEvent(
                    env=env,
                    error_name=StatesErrorName(typ=StatesErrorNameType.StatesTaskFailed),
                    event_type=HistoryEventType.TaskFailed,
                    event_details=_task_failed(
                        TaskFailedEventDetails(
                            resource=self._get_sfn_resource(),
                            resourceType=self._get_sfn_resource_type(),
                            error=StatesErrorNameType.StatesTaskFailed.to_name(),
                            cause=json.dumps(output, default=str),
                        )
                    ),
                )
            )

        return resolve
