"""SageMaker real-time endpoints in the local cloud (local/cloud/endpoints.py): create, invoke, blue/green update with
rollback, delete, and no server outliving the local cloud. Most tests use the scripted backend (fake models); one
serves a tiny real model with ``transformers serve``."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from local.cloud import ScriptedEndpointBackend, active_endpoints, endpoint_url, local_cloud
from local.cloud.endpoints import TransformersServeProcess

BUCKET = "tuneplane-test-endpoints"
ROLE = "arn:aws:iam::123456789012:role/serve"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/vllm:latest"
CHAT = {"messages": [{"role": "user", "content": "What is the answer?"}], "max_tokens": 4}


def _answer_file(model_dir: Path, request: dict[str, Any]) -> str:
    """The scripted servers answer what the model folder's answer.txt says (so a test knows which model answered)."""
    return (model_dir / "answer.txt").read_text()


def _broken_models(model_dir: Path, environment: Mapping[str, str]) -> str | None:
    """A model folder with a broken.txt makes its server exit at startup, printing the file."""
    broken = model_dir / "broken.txt"
    return broken.read_text() if broken.is_file() else None


@dataclass
class Endpoints:
    """The local cloud's SageMaker, with helpers to upload a fake model and deploy it."""

    backend: ScriptedEndpointBackend
    sagemaker: Any
    runtime: Any

    def model(
        self, name: str, answer: str = "", *, broken: str | None = None, env: dict[str, str] | None = None
    ) -> str:
        """A model whose S3 prefix holds answer.txt (and broken.txt): ModelDataSource, uncompressed, as Deploy does."""
        s3 = boto3.client("s3")
        s3.put_object(Bucket=BUCKET, Key=f"{name}/answer.txt", Body=answer.encode())
        if broken:
            s3.put_object(Bucket=BUCKET, Key=f"{name}/broken.txt", Body=broken.encode())
        return self.model_at(name, f"{name}/", env)

    def model_at(self, name: str, prefix: str, env: dict[str, str] | None = None) -> str:
        """A model of whatever the bucket holds under ``prefix``."""
        source = {"S3Uri": f"s3://{BUCKET}/{prefix}", "S3DataType": "S3Prefix", "CompressionType": "None"}
        self.sagemaker.create_model(
            ModelName=name,
            ExecutionRoleArn=ROLE,
            PrimaryContainer={"Image": IMAGE, "ModelDataSource": {"S3DataSource": source}, "Environment": env or {}},
        )
        return name

    def config(self, name: str, model: str) -> str:
        variant = {
            "VariantName": "AllTraffic",
            "ModelName": model,
            "InstanceType": "ml.g5.xlarge",
            "InitialInstanceCount": 1,
            "ContainerStartupHealthCheckTimeoutInSeconds": 1800,
        }
        self.sagemaker.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[variant])
        return name

    def deploy(self, endpoint: str, answer: str, **model: Any) -> str:
        """Model, config and endpoint named after ``endpoint``; returns the config's name."""
        config = self.config(f"{endpoint}-config", self.model(f"{endpoint}-model", answer, **model))
        self.sagemaker.create_endpoint(EndpointName=endpoint, EndpointConfigName=config)
        return config

    def describe(self, endpoint: str) -> dict[str, Any]:
        return dict(self.sagemaker.describe_endpoint(EndpointName=endpoint))

    def wait(self, endpoint: str, timeout_s: float = 10.0) -> dict[str, Any]:
        """The description once the endpoint is InService or Failed."""
        deadline = time.monotonic() + timeout_s
        while True:
            description = self.describe(endpoint)
            if description["EndpointStatus"] in ("InService", "Failed") or time.monotonic() > deadline:
                return description
            time.sleep(0.05)

    def ask(self, endpoint: str, body: Any = None) -> dict[str, Any]:
        response = self.runtime.invoke_endpoint(
            EndpointName=endpoint, ContentType="application/json", Body=json.dumps(body or CHAT)
        )
        assert response["ContentType"] == "application/json"
        return dict(json.loads(response["Body"].read()))


def _content(answer: dict[str, Any]) -> str:
    return str(answer["choices"][0]["message"]["content"])


@pytest.fixture
def endpoints(tmp_path: Path) -> Iterator[Endpoints]:
    backend = ScriptedEndpointBackend(reply=_answer_file, start_error=_broken_models)
    with local_cloud(endpoint_backend=backend, work_root=tmp_path, enforce_iam=False):
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield Endpoints(backend, boto3.client("sagemaker"), boto3.client("sagemaker-runtime"))


def test_create_serves_the_model_and_invoke_answers_through_it(endpoints: Endpoints, tmp_path: Path) -> None:
    # GIVEN an endpoint created for a model (held back from becoming healthy for a moment)
    endpoints.backend.gate = threading.Event()
    config = endpoints.deploy("chat", "forty-two")
    # THEN it is Creating, and cannot be invoked yet
    assert endpoints.describe("chat")["EndpointStatus"] == "Creating"
    with pytest.raises(ClientError) as creating:
        endpoints.ask("chat")
    assert creating.value.response["Error"]["Code"] == "ValidationError"
    # WHEN its server becomes healthy
    endpoints.backend.gate.set()
    description = endpoints.wait("chat")
    # THEN the endpoint is InService on its config, with moto's variant shape
    assert description["EndpointStatus"] == "InService", description.get("FailureReason")
    assert description["EndpointConfigName"] == config
    assert description["ProductionVariants"][0]["VariantName"] == "AllTraffic"
    assert "FailureReason" not in description
    assert description["LastModifiedTime"] >= description["CreationTime"]
    # AND the model data was downloaded where the brief says
    model_dir = tmp_path / "endpoints" / "chat" / config / "model"
    assert (model_dir / "answer.txt").read_text() == "forty-two"
    # WHEN it is invoked with an OpenAI chat body
    answer = endpoints.ask("chat")
    # THEN the server's chat completion comes back, and the server saw stream false and its own model name
    assert _content(answer) == "forty-two"
    request = endpoints.backend.servers[-1].requests[-1]
    assert request["stream"] is False and request["model"] == str(model_dir)
    assert request["messages"] == CHAT["messages"] and request["max_tokens"] == 4
    # AND the endpoint URL answers directly, as an OpenAI base URL
    url = endpoint_url("chat")
    assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
    direct = urllib.request.Request(
        url + "/chat/completions", json.dumps(CHAT).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(direct, timeout=5) as response:  # a local http URL
        assert _content(json.loads(response.read())) == "forty-two"
    assert active_endpoints().served_model("chat") == str(model_dir)


def test_model_data_url_archive_is_extracted(endpoints: Endpoints) -> None:
    # GIVEN a model whose data is a model.tar.gz (ModelDataUrl, as a training job leaves it)
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        data = b"from the archive"
        info = tarfile.TarInfo("answer.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    boto3.client("s3").put_object(Bucket=BUCKET, Key="trained/model.tar.gz", Body=archive.getvalue())
    endpoints.sagemaker.create_model(
        ModelName="trained",
        ExecutionRoleArn=ROLE,
        PrimaryContainer={"Image": IMAGE, "ModelDataUrl": f"s3://{BUCKET}/trained/model.tar.gz"},
    )
    endpoints.config("trained-config", "trained")
    # WHEN an endpoint is created for it
    endpoints.sagemaker.create_endpoint(EndpointName="trained", EndpointConfigName="trained-config")
    # THEN it serves the extracted model
    assert endpoints.wait("trained")["EndpointStatus"] == "InService"
    assert _content(endpoints.ask("trained")) == "from the archive"


def test_update_is_blue_green_and_switches_the_config(endpoints: Endpoints) -> None:
    # GIVEN an endpoint in service on model v1, and a config for model v2 whose server starts slowly
    old_config = endpoints.deploy("bg", "v1")
    assert endpoints.wait("bg")["EndpointStatus"] == "InService"
    new_config = endpoints.config("bg-config-v2", endpoints.model("bg-model-v2", "v2"))
    endpoints.backend.gate = threading.Event()
    # WHEN the endpoint is updated to v2
    routing = {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0}
    arn = endpoints.sagemaker.update_endpoint(
        EndpointName="bg",
        EndpointConfigName=new_config,
        DeploymentConfig={"BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": routing}},
    )["EndpointArn"]
    assert arn.endswith(":endpoint/bg")
    # THEN while v2 starts the endpoint is Updating on the old config, with the new one pending, and v1 still answers
    updating = endpoints.describe("bg")
    assert updating["EndpointStatus"] == "Updating"
    assert updating["EndpointConfigName"] == old_config
    assert updating["PendingDeploymentSummary"]["EndpointConfigName"] == new_config
    assert _content(endpoints.ask("bg")) == "v1"
    # AND a second update meanwhile is refused, as SageMaker refuses it
    with pytest.raises(ClientError) as busy:
        endpoints.sagemaker.update_endpoint(EndpointName="bg", EndpointConfigName=old_config)
    assert busy.value.response["Error"]["Code"] == "ValidationException"
    assert "in-progress" in busy.value.response["Error"]["Message"]
    # WHEN v2 becomes healthy
    old_server = endpoints.backend.servers[0]
    endpoints.backend.gate.set()
    deadline = time.monotonic() + 10
    while endpoints.describe("bg")["EndpointStatus"] != "InService" and time.monotonic() < deadline:
        time.sleep(0.05)
    # THEN the endpoint is InService on v2, v2 answers and v1's server is stopped
    done = endpoints.describe("bg")
    assert done["EndpointStatus"] == "InService"
    assert done["EndpointConfigName"] == new_config
    assert "PendingDeploymentSummary" not in done and "FailureReason" not in done
    assert done["LastDeploymentConfig"]["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"] == routing
    assert _content(endpoints.ask("bg")) == "v2"
    assert not old_server.alive()


def test_update_whose_model_fails_to_start_rolls_back(endpoints: Endpoints) -> None:
    # GIVEN an endpoint in service on v1, and a v2 model whose server exits at startup
    old_config = endpoints.deploy("rb", "v1")
    assert endpoints.wait("rb")["EndpointStatus"] == "InService"
    bad = endpoints.model("rb-model-v2", "v2", broken="RuntimeError: CUDA error: no kernel image is available")
    new_config = endpoints.config("rb-config-v2", bad)
    # WHEN the endpoint is updated to v2
    endpoints.sagemaker.update_endpoint(EndpointName="rb", EndpointConfigName=new_config)
    deadline = time.monotonic() + 10
    while endpoints.describe("rb")["EndpointStatus"] == "Updating" and time.monotonic() < deadline:
        time.sleep(0.05)
    # THEN SageMaker's rollback: InService on the OLD config, with a FailureReason explaining why
    description = endpoints.describe("rb")
    assert description["EndpointStatus"] == "InService"
    assert description["EndpointConfigName"] == old_config
    reason = description["FailureReason"]
    assert new_config in reason and "rolled back" in reason and old_config in reason
    assert "CUDA error: no kernel image" in reason
    # AND v1 still answers, and v2's server is not running
    assert _content(endpoints.ask("rb")) == "v1"
    assert [server.alive() for server in endpoints.backend.servers] == [True, False]


def test_create_failures_report_why(endpoints: Endpoints) -> None:
    # GIVEN a model whose server exits at startup, one asking for LoRA serving and one with no data
    endpoints.deploy("crash", "x", broken="OSError: model.safetensors is truncated")
    endpoints.deploy("lora", "x", env={"SM_VLLM_ENABLE_LORA": "true"})
    endpoints.model_at("empty", "none/")
    endpoints.sagemaker.create_endpoint(EndpointName="empty", EndpointConfigName=endpoints.config("empty-c", "empty"))
    # WHEN they are created
    crash, lora, empty = endpoints.wait("crash"), endpoints.wait("lora"), endpoints.wait("empty")
    # THEN each one Failed, saying why
    assert crash["EndpointStatus"] == "Failed"
    assert "did not pass the ping health check" in crash["FailureReason"]
    assert "model.safetensors is truncated" in crash["FailureReason"]
    assert lora["EndpointStatus"] == "Failed"
    assert "merged models only" in lora["FailureReason"]
    assert empty["EndpointStatus"] == "Failed"
    assert f"s3://{BUCKET}/none/" in empty["FailureReason"]
    # AND a failed endpoint can be neither invoked nor updated
    with pytest.raises(ClientError) as invoked:
        endpoints.ask("crash")
    assert invoked.value.response["Error"]["Code"] == "ValidationError"
    with pytest.raises(ClientError) as updated:
        endpoints.sagemaker.update_endpoint(EndpointName="crash", EndpointConfigName="crash-config")
    assert updated.value.response["Error"]["Code"] == "ValidationException"


def test_invoke_errors_are_sagemaker_runtime_errors(endpoints: Endpoints) -> None:
    # GIVEN an endpoint in service
    endpoints.deploy("err", "fine")
    assert endpoints.wait("err")["EndpointStatus"] == "InService"
    # WHEN its server answers 500
    endpoints.backend.error = (500, "CUDA out of memory")
    with pytest.raises(ClientError) as failed:
        endpoints.ask("err")
    # THEN the caller gets a ModelError (HTTP 424) with the server's status and message, as from SageMaker
    error = failed.value.response
    assert error["Error"]["Code"] == "ModelError"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert error["OriginalStatusCode"] == 500
    assert "CUDA out of memory" in error["OriginalMessage"]
    assert "Received server error (500) from primary" in error["Error"]["Message"]
    # WHEN the body is not an OpenAI chat request
    endpoints.backend.error = None
    with pytest.raises(ClientError) as not_chat:
        endpoints.ask("err", {"inputs": "hello"})
    # THEN the model's client error comes back the same way
    assert not_chat.value.response["Error"]["Code"] == "ModelError"
    assert not_chat.value.response["OriginalStatusCode"] == 400
    # WHEN the endpoint does not exist
    with pytest.raises(ClientError) as missing:
        endpoints.ask("nope")
    # THEN it is sagemaker-runtime's ValidationError
    assert missing.value.response["Error"]["Code"] == "ValidationError"
    assert "nope" in missing.value.response["Error"]["Message"]


def test_a_request_naming_a_model_vllm_does_not_serve_gets_vllms_404(endpoints: Endpoints) -> None:
    # GIVEN an endpoint whose vLLM serves the model under a served name
    endpoints.deploy("named", "fine", env={"SM_VLLM_MODEL": "/opt/ml/model", "SM_VLLM_SERVED_MODEL_NAME": "support"})
    assert endpoints.wait("named")["EndpointStatus"] == "InService"
    # WHEN a request names another model (a LoRA adapter name the server was not started with, say)
    with pytest.raises(ClientError) as unknown:
        endpoints.ask("named", {**CHAT, "model": "support-lora"})
    # THEN vLLM's 404 comes back as SageMaker's ModelError, and the server never saw the request
    error = unknown.value.response
    assert error["Error"]["Code"] == "ModelError" and error["OriginalStatusCode"] == 404
    assert "The model `support-lora` does not exist." in error["OriginalMessage"]
    assert endpoints.backend.servers[-1].requests == []
    # AND the served name, or no name at all (vLLM's first served model), is answered
    assert _content(endpoints.ask("named", {**CHAT, "model": "support"})) == "fine"
    assert _content(endpoints.ask("named")) == "fine"


def test_update_and_create_are_validated_like_sagemaker(endpoints: Endpoints) -> None:
    # GIVEN an endpoint in service
    config = endpoints.deploy("val", "x")
    assert endpoints.wait("val")["EndpointStatus"] == "InService"
    # WHEN an unknown endpoint, or an unknown config, is asked for, or the endpoint is created again
    calls: list[Callable[[], Any]] = [
        lambda: endpoints.sagemaker.update_endpoint(EndpointName="missing", EndpointConfigName=config),
        lambda: endpoints.sagemaker.update_endpoint(EndpointName="val", EndpointConfigName="missing-config"),
        lambda: endpoints.sagemaker.create_endpoint(EndpointName="val", EndpointConfigName=config),
    ]
    # THEN each is a ValidationException
    for call in calls:
        with pytest.raises(ClientError) as refused:
            call()
        assert refused.value.response["Error"]["Code"] == "ValidationException"


def test_delete_stops_the_server(endpoints: Endpoints) -> None:
    # GIVEN an endpoint in service
    endpoints.deploy("gone", "x")
    assert endpoints.wait("gone")["EndpointStatus"] == "InService"
    server = endpoints.backend.servers[-1]
    assert server.alive()
    active_endpoints().delete_seconds = 0.2  # this fixture's clock is not compressed
    # WHEN it is deleted
    endpoints.sagemaker.delete_endpoint(EndpointName="gone")
    # THEN its server is stopped at once, and the endpoint is Deleting for a while, then gone
    assert not server.alive()
    assert endpoints.describe("gone")["EndpointStatus"] == "Deleting"
    deadline = time.monotonic() + 5
    while endpoints.sagemaker.list_endpoints()["Endpoints"] and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(ClientError):
        endpoints.describe("gone")
    with pytest.raises(KeyError):
        endpoint_url("gone")


def test_leaving_the_local_cloud_stops_every_server(tmp_path: Path) -> None:
    # GIVEN a local cloud with one endpoint in service and one still starting
    backend = ScriptedEndpointBackend(reply=_answer_file)
    with local_cloud(endpoint_backend=backend, work_root=tmp_path, enforce_iam=False):
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        endpoints = Endpoints(backend, boto3.client("sagemaker"), boto3.client("sagemaker-runtime"))
        endpoints.deploy("a", "x")
        assert endpoints.wait("a")["EndpointStatus"] == "InService"
        backend.gate = threading.Event()
        endpoints.deploy("b", "y")
        deadline = time.monotonic() + 5
        while len(backend.servers) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [server.alive() for server in backend.servers] == [True, True]
    # WHEN the local cloud is left
    # THEN no server runs any more, and no endpoints are reachable
    assert [server.alive() for server in backend.servers] == [False, False]
    with pytest.raises(RuntimeError):
        active_endpoints()


@pytest.mark.slow
def test_transformers_serve_answers_a_chat(base_model_dir: Path, tmp_path: Path) -> None:
    # GIVEN a tiny merged model (random weights) in S3, and the real backend (transformers serve on the CPU)
    from local.tiny_model import write_tiny_weights

    model_dir = tmp_path / "merged"
    shutil.copytree(base_model_dir, model_dir)
    write_tiny_weights(model_dir)
    started = time.monotonic()
    with local_cloud(work_root=tmp_path / "work", enforce_iam=False):
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        for path in model_dir.iterdir():
            s3.upload_file(str(path), BUCKET, f"runs/r1/merged/{path.name}")
        endpoints = Endpoints(ScriptedEndpointBackend(), boto3.client("sagemaker"), boto3.client("sagemaker-runtime"))
        endpoints.model_at("tiny", "runs/r1/merged/", {"SM_VLLM_MAX_MODEL_LEN": "512"})
        endpoints.sagemaker.create_endpoint(EndpointName="tiny", EndpointConfigName=endpoints.config("tiny-c", "tiny"))
        # WHEN it becomes InService
        description = endpoints.wait("tiny", timeout_s=150)
        assert description["EndpointStatus"] == "InService", description.get("FailureReason")
        ready = time.monotonic() - started
        # THEN a chat completion comes back through InvokeEndpoint
        answer = endpoints.ask("tiny")
        assert answer["object"] == "chat.completion"
        assert answer["choices"][0]["message"]["role"] == "assistant"
        assert answer["usage"]["completion_tokens"] <= CHAT["max_tokens"]
        # AND through the endpoint URL directly (the model field is what the server serves)
        body = {**CHAT, "model": active_endpoints().served_model("tiny")}
        direct = urllib.request.Request(
            endpoint_url("tiny") + "/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(direct, timeout=60) as response:  # a local http URL
            assert json.loads(response.read())["choices"][0]["message"]["role"] == "assistant"
        # AND /v1/models works (it needs $HF_HOME/hub)
        with urllib.request.urlopen(endpoint_url("tiny") + "/models", timeout=10) as response:
            assert json.loads(response.read())["object"] == "list"
        server = active_endpoints().endpoint("tiny").server
        assert isinstance(server, TransformersServeProcess)
    # WHEN the local cloud is left THEN the server process is gone
    assert server.process.poll() is not None
    print(f"transformers serve endpoint InService after {ready:.1f} s")
