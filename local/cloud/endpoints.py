"""SageMaker real-time endpoints in the local cloud: the model really served, on this machine.

moto records an endpoint as ``InService`` at once, has no ``UpdateEndpoint``, and its ``InvokeEndpoint`` answers
canned data. Here, as on SageMaker:

- ``CreateEndpoint`` is ``Creating`` while a worker thread resolves the config's first production variant to its
  model's container, downloads the model data from (moto's) S3 into
  ``<work_root>/endpoints/<endpoint>/<config>/model`` (an uncompressed ``ModelDataSource`` prefix, or a
  ``model.tar.gz`` from ``ModelDataUrl``, extracted), starts a model server through an ``EndpointBackend`` and waits
  for its health check; then ``InService``, or ``Failed`` with a ``FailureReason`` (the server's last output lines);
- ``UpdateEndpoint`` is blue/green (``endpoint_rollouts.py``): ``Updating`` while the old (blue) server keeps
  serving and the new (green) one starts; a healthy green server then gets traffic as the ``DeploymentConfig`` says
  (all at once, a canary, linear steps, ``WaitIntervalInSeconds`` apart), and after the last step the final baking
  period (``TerminationWaitInSeconds``) runs, on the local cloud's compressed clock; the alarms of
  ``AutoRollbackConfiguration`` are watched from the first shift to the end of the bake. The green fleet then takes
  over (``EndpointConfigName`` switches, the blue server stops, ``InService``). A green server that fails to start,
  an alarm in ``ALARM`` or ``MaximumExecutionTimeoutInSeconds`` rolls the update back: all traffic returns to the
  blue server, the green one stops, and the endpoint is ``InService`` on the OLD config with a ``FailureReason``
  saying so and no ``PendingDeploymentSummary`` (a rolled-back update as hashicorp/terraform-provider-aws #39099 and
  #48997 report it: back to ``InService`` on the previous config, the reason in ``FailureReason``);
  ``LastDeploymentConfig``, "the most recent deployment configuration" (API reference), stays the update's. While
  an update runs, ``PendingDeploymentSummary`` shows the new config and its variant's ``VariantStatus``
  (``Creating``, ``ActivatingTraffic``, ``Baking``); a second update is refused with SageMaker's
  ``Cannot update in-progress endpoint``;
- ``DeleteEndpoint`` stops the server(s) at once and leaves the endpoint ``Deleting`` for ``DELETE_SECONDS`` of
  compressed time before it disappears (the API reference: SageMaker "asynchronously deletes associated endpoint
  resources"); an endpoint that is ``Creating``, ``Updating`` or already ``Deleting`` cannot be deleted (SageMaker
  answers the same ``Cannot update in-progress endpoint``, as a stored runbook quotes it for a delete during
  ``Creating``); leaving the local cloud stops every server it started;
- ``CreateEndpointConfig`` accepts the instance types botocore knows (moto's own list has no ml.g5 or newer);
- sagemaker-runtime ``InvokeEndpoint`` forwards an OpenAI chat-completions body to the server's
  ``/v1/chat/completions`` (``stream`` false, ``model`` the served one) and answers the server's JSON; a server
  error is a ``ModelError`` (HTTP 424 with ``OriginalStatusCode`` / ``OriginalMessage``), as on SageMaker.

On AWS the model is served by vLLM (``SM_VLLM_*`` settings); vLLM needs a GPU, so the default backend here,
``TransformersServeBackend``, runs ``transformers serve`` on the CPU (offline, from a local model directory): the
same OpenAI-compatible chat API, for merged (or quantized) models only: a model asking for LoRA serving
(``SM_VLLM_ENABLE_LORA``, or an adapter in ``AdditionalModelDataSources``) fails to deploy. Tests whose models are
fakes pass a ``ScriptedEndpointBackend`` (a tiny HTTP server in a thread that answers what the test says).

    with local_cloud(endpoint_backend=ScriptedEndpointBackend(reply="hi")):
        ...  # create a model, an endpoint config and an endpoint; wait for InService
        endpoint_url("my-endpoint")  # "http://127.0.0.1:PORT/v1": an OpenAI client's base_url
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from unittest import mock
from urllib.parse import urlsplit

import boto3
from botocore.exceptions import ClientError
from moto.core.common_types import TYPE_RESPONSE
from moto.core.exceptions import ServiceException
from moto.core.responses import ActionResult
from moto.sagemaker import responses as sm_responses
from moto.sagemaker.models import FakeEndpoint, FakeEndpointConfig, SageMakerModelBackend
from moto.sagemakerruntime.responses import SageMakerRuntimeResponse

from local.cloud.endpoint_rollouts import (
    AlarmsUnreadable,
    DeploymentConfigError,
    RolloutPlan,
    TrafficSplit,
    VariantPhase,
    alarms_in_alarm,
    run_rollout,
    time_scale,
)
from local.cloud.sagemaker_jobs import download_prefix, split_s3_uri

REASON_LIMIT = 1024  # FailureReason holds 1 KB
STARTUP_TIMEOUT_S = 120.0  # the local bound on a server's startup (SageMaker's variant setting may say 1800)
INVOKE_TIMEOUT_S = 60.0  # SageMaker real-time endpoints give the container 60 s to answer
LORA_SETTING = "SM_VLLM_ENABLE_LORA"
# How long (compressed time) a deleted endpoint stays Deleting: AWS publishes no figure; short, so that a test at
# time_scale 0.01 sees Deleting for 0.1 s, yet long enough to be seen.
DELETE_SECONDS = 10.0
# Statuses in which SageMaker refuses UpdateEndpoint and DeleteEndpoint ("Cannot update in-progress endpoint").
IN_PROGRESS = ("Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting")


# ---------------------------------------------------------------------------------------------------------------------
# Model servers


class EndpointServer(Protocol):
    """One running model server: ``url`` is its root (``http://127.0.0.1:PORT``), with ``/health`` and an
    OpenAI-compatible ``/v1``; ``model`` is the name to send in a request's ``model`` field."""

    @property
    def url(self) -> str: ...

    @property
    def model(self) -> str: ...

    def alive(self) -> bool: ...

    def stop(self) -> None: ...

    def last_output(self) -> str:
        """The server's last output lines (why it exited, when it did)."""
        ...


class EndpointBackend(Protocol):
    def start(self, model_dir: Path, environment: Mapping[str, str]) -> EndpointServer:
        """Start serving the model in ``model_dir`` (``environment``: the container's Environment); return at once,
        the caller waits for health."""
        ...


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _tail(text: str, lines: int = 3) -> str:
    """The last meaningful lines of a server's output, on one line: a traceback's frames, progress bars and blank
    lines dropped, so a crash reads ``<last log line> | ValueError: ...``."""
    kept = [
        line.strip()
        for line in text.replace("\r", "\n").splitlines()
        if line.strip() and not line[0].isspace() and "it/s]" not in line and not line.startswith("Traceback (")
    ]
    distinct = [line for i, line in enumerate(kept) if i == 0 or line != kept[i - 1]]
    return " | ".join(distinct[-lines:])


@dataclass
class TransformersServeProcess:
    """``transformers serve`` in its own process group (stopping it kills every process it started)."""

    process: subprocess.Popen[bytes]
    port: int
    model: str
    log: Path
    stopped: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.stopped:  # once: later, the group's id may belong to someone else
            return
        self.stopped = True
        if self.process.poll() is None:
            _signal_group(self.process, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                _signal_group(self.process, signal.SIGKILL)
                self.process.wait(10)
        _signal_group(self.process, signal.SIGKILL)  # anything the server left behind in its group

    def last_output(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.is_file() else ""
        code = self.process.poll()
        prefix = f"the server exited with code {code}: " if code is not None else ""
        return prefix + (_tail(text) or "no output")


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(process.pid, sig)  # start_new_session: the group's id is the server's pid
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class TransformersServeBackend:
    """The model served by ``transformers serve`` (extra ``transformers[serving]``) on the CPU, offline.

    ``extra_args`` are added to the command line (e.g. ``["--dtype", "float32"]``); ``env`` to the environment."""

    python: str = sys.executable
    device: str = "cpu"
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def start(self, model_dir: Path, environment: Mapping[str, str]) -> EndpointServer:
        home = model_dir.parent / "hf"
        (home / "hub").mkdir(parents=True, exist_ok=True)  # /v1/models scans $HF_HOME/hub and fails without it
        log = model_dir.parent / "server.log"
        env = {**os.environ, **environment, **self.env}
        env |= {
            "HF_HUB_OFFLINE": "1",
            "HF_HOME": str(home),
            "PYTHONUNBUFFERED": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        port = free_port()
        command = [
            self.python,
            "-m",
            "transformers.cli.transformers",
            "serve",
            str(model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--device",
            self.device,
            "--log-level",
            "info",
            *self.extra_args,
        ]
        with log.open("wb") as sink:
            process = subprocess.Popen(
                command,
                env=env,
                cwd=model_dir.parent,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return TransformersServeProcess(process, port, str(model_dir), log)


Reply = str | Callable[[Path, dict[str, Any]], str]


@dataclass
class ScriptedServer:
    """A tiny OpenAI-compatible chat server in a thread (see ``ScriptedEndpointBackend``)."""

    backend: ScriptedEndpointBackend
    model_dir: Path
    environment: dict[str, str]
    startup_error: str | None = None
    gate: threading.Event | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    _http: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def model(self) -> str:
        return str(self.model_dir)

    def serve(self) -> None:
        if self.startup_error is not None:  # as a server process that exits at startup
            self._port = free_port()
            return
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # the base class's name
                pass

            def _answer(self, status: int, body: Any) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # http.server's naming
                if self.path == "/health":
                    ready = server.gate is None or server.gate.is_set()
                    self._answer(200 if ready else 503, {"status": "ok" if ready else "loading"})
                elif self.path == "/v1/models":
                    self._answer(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
                else:
                    self._answer(404, {"detail": "Not Found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    request = json.loads(self.rfile.read(length) or b"null")
                except ValueError:
                    self._answer(400, {"detail": "the body is not JSON"})
                    return
                if self.path != "/v1/chat/completions":
                    self._answer(404, {"detail": "Not Found"})
                    return
                server.requests.append(request)
                status, answer = server.respond(request)
                self._answer(status, answer)

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._port = int(self._http.server_address[1])
        self._thread = threading.Thread(
            target=self._http.serve_forever, args=(0.05,), name=f"scripted-endpoint-{self._port}", daemon=True
        )
        self._thread.start()

    def respond(self, request: dict[str, Any]) -> tuple[int, Any]:
        if self.backend.error is not None:
            status, message = self.backend.error
            return status, {"error": {"message": message, "type": "server_error", "code": status}}
        if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
            return 422, {"detail": "messages: Field required"}
        reply = self.backend.reply
        content = reply if isinstance(reply, str) else reply(self.model_dir, request)
        return 200, {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        if self._http is not None and self.alive():
            self._http.shutdown()
            self._http.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def last_output(self) -> str:
        if self.startup_error is not None:
            return f"the server exited with code 1: {self.startup_error}"
        return "scripted server"


@dataclass
class ScriptedEndpointBackend:
    """Model servers for tests whose models are fakes.

    - ``reply``: every chat is answered with this text, or ``reply(model_dir, request)``'s;
    - ``start_error(model_dir, environment)``: a message makes that server exit at startup with it (None: it starts);
    - ``error = (status, message)``, set at any time: every chat of every server is answered with that HTTP error;
    - ``gate``: servers started while it is set to an unset Event are not healthy until it is set (a slow start);
    - ``servers``: every server started, in order, each with the ``requests`` it received."""

    reply: Reply = "Hello from the scripted endpoint."
    start_error: Callable[[Path, Mapping[str, str]], str | None] | None = None
    error: tuple[int, str] | None = None
    gate: threading.Event | None = None
    servers: list[ScriptedServer] = field(default_factory=list)

    def start(self, model_dir: Path, environment: Mapping[str, str]) -> EndpointServer:
        failure = self.start_error(model_dir, environment) if self.start_error else None
        server = ScriptedServer(self, model_dir, dict(environment), startup_error=failure, gate=self.gate)
        server.serve()
        self.servers.append(server)
        return server


def healthy(url: str, timeout_s: float = 2.0) -> bool:
    """``GET <url>/health`` answers 200."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout_s)
    try:
        connection.request("GET", "/health")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


# ---------------------------------------------------------------------------------------------------------------------
# Model data, as SageMaker fetches it into /opt/ml/model


class StartFailure(Exception):
    """An endpoint (or an update of it) could not start; the message is its FailureReason."""


def _download_archive(uri: str, destination: Path) -> int:
    bucket, key = split_s3_uri(uri)
    archive = destination.parent / "model.tar.gz"
    boto3.client("s3").download_file(bucket, key, str(archive))
    with tarfile.open(archive) as tar:
        tar.extractall(destination, filter="data")
        count = sum(1 for member in tar.getmembers() if member.isfile())
    archive.unlink()
    return count


def fetch_model_data(container: Mapping[str, Any], destination: Path) -> None:
    """The container's model data into ``destination`` (StartFailure when there is none, or it cannot be read)."""
    destination.mkdir(parents=True, exist_ok=True)
    source = (container.get("ModelDataSource") or {}).get("S3DataSource")
    try:
        if source:
            uri = str(source["S3Uri"])
            compressed = str(source.get("CompressionType", "None")) == "Gzip"
            count = (
                _download_archive(uri, destination)
                if compressed
                else download_prefix(uri if uri.endswith("/") else uri + "/", destination)  # keys relative to it
            )
        elif container.get("ModelDataUrl"):
            uri = str(container["ModelDataUrl"])
            count = _download_archive(uri, destination)
        else:
            raise StartFailure("ClientError: the model's container has no ModelDataSource or ModelDataUrl")
    except StartFailure:
        raise
    except Exception as exc:  # any S3 or archive error is a failed model download
        raise StartFailure(f"ClientError: Failed to download model data from {uri}: {exc}") from exc
    if count == 0:
        raise StartFailure(f"ClientError: Failed to download model data: no objects under {uri}")


# ---------------------------------------------------------------------------------------------------------------------
# Endpoints and their servers


@dataclass
class LocalEndpoint:
    """One endpoint: moto's record of it, the server that answers it (``server``, the blue fleet during an update)
    and, during an update's traffic shift, the new config's server (``green``) with its share of the traffic;
    ``deleted`` is set when it is deleted (a worker still starting or rolling out a server for it then stops)."""

    name: str
    record: Any  # moto's FakeEndpoint
    account: str
    region: str
    server: EndpointServer | None = None
    variant: str = "AllTraffic"
    green: EndpointServer | None = None
    green_variant: str = "AllTraffic"
    split: TrafficSplit = field(default_factory=TrafficSplit)
    deleted: threading.Event = field(default_factory=threading.Event)


class EndpointRegistry:
    """Every endpoint of the local cloud and every server started for one (all stopped by ``close``).

    ``delete_seconds``: how long (compressed time) a deleted endpoint stays ``Deleting``."""

    def __init__(
        self,
        backend: EndpointBackend,
        work_root: Path,
        startup_timeout_s: float = STARTUP_TIMEOUT_S,
        invoke_timeout_s: float = INVOKE_TIMEOUT_S,
        delete_seconds: float = DELETE_SECONDS,
    ) -> None:
        self.backend = backend
        self.work_root = work_root
        self.startup_timeout_s = startup_timeout_s
        self.invoke_timeout_s = invoke_timeout_s
        self.delete_seconds = delete_seconds
        self.endpoints: dict[str, LocalEndpoint] = {}
        self.servers: list[EndpointServer] = []  # every server started, to stop them all at the end
        self.served_names: dict[int, set[str]] = {}  # id(server) -> the model names vLLM would answer to
        self.threads: list[threading.Thread] = []
        self.lock = threading.RLock()
        self.closing = threading.Event()  # set by close(): Deleting endpoints disappear at once

    # -- what callers use

    def endpoint(self, name: str) -> LocalEndpoint:
        with self.lock:
            endpoint = self.endpoints.get(name)
        if endpoint is None:
            raise KeyError(f"no local endpoint {name}")
        return endpoint

    def endpoint_url(self, name: str) -> str:
        """The OpenAI-compatible base URL of the server now answering ``name`` (``http://127.0.0.1:PORT/v1``; the
        old fleet's while an update shifts traffic)."""
        server = self.endpoint(name).server
        if server is None:
            raise KeyError(f"endpoint {name} has no server (status {self.endpoint(name).record.endpoint_status})")
        return server.url + "/v1"

    def served_model(self, name: str) -> str:
        """The ``model`` to send to ``endpoint_url(name)``."""
        server = self.endpoint(name).server
        if server is None:
            raise KeyError(f"endpoint {name} has no server")
        return server.model

    def wait_idle(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        for thread in list(self.threads):
            thread.join(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        self.closing.set()
        with self.lock:
            for endpoint in self.endpoints.values():
                endpoint.deleted.set()
        self.wait_idle(self.startup_timeout_s + 10)
        with self.lock:
            servers, self.servers = list(self.servers), []
        for server in servers:
            server.stop()

    # -- the lifecycle (called from the patched moto backend)

    def create(self, backend: SageMakerModelBackend, record: FakeEndpoint, config_name: str) -> None:
        endpoint = LocalEndpoint(record.endpoint_name, record, backend.account_id, backend.region_name)
        with self.lock:
            self.endpoints[endpoint.name] = endpoint
            _set_status(record, "Creating")
        self._spawn(endpoint, self._create, backend, config_name)

    def update(
        self, backend: SageMakerModelBackend, endpoint: LocalEndpoint, config_name: str, plan: RolloutPlan
    ) -> None:
        record = endpoint.record
        config = backend.endpoint_configs[config_name]
        with self.lock:
            variants = record._process_production_variants(config.production_variants)
            for variant, requested in zip(variants, config.production_variants, strict=True):
                variant["InstanceType"] = requested.get("InstanceType")
            record.pending_deployment_summary = {
                "EndpointConfigName": config_name,
                "ProductionVariants": variants,
                "StartTime": datetime.now(UTC),
            }
            _set_status(record, "Updating")
            self._variant_phase(endpoint, "Creating", "Launching the new fleet's instances")
        self._spawn(endpoint, self._update, backend, config_name, plan)

    def delete(self, backend: SageMakerModelBackend, name: str) -> None:
        """``Deleting`` now (servers stopped, invocations refused); the record disappears ``delete_seconds`` of
        compressed time later (at once when the local cloud closes)."""
        with self.lock:
            endpoint = self.endpoints.get(name)
            record: Any = backend.endpoints.get(name)
            if record is not None:
                record.pending_deployment_summary = None
                _set_status(record, "Deleting")
            if endpoint is not None:
                endpoint.deleted.set()  # a worker starting a server for it stops that server
                servers = [endpoint.server, endpoint.green]
                endpoint.server = endpoint.green = None
                endpoint.split.set(0.0)
            else:
                servers = []
        for server in servers:
            if server is not None:
                self._stop(server)
        thread = threading.Thread(
            target=self._finish_delete, args=(backend, name, record, endpoint), name=f"delete-{name}", daemon=True
        )
        with self.lock:
            self.threads = [t for t in self.threads if t.is_alive()] + [thread]
        thread.start()

    def _finish_delete(
        self, backend: SageMakerModelBackend, name: str, record: Any, endpoint: LocalEndpoint | None
    ) -> None:
        self.closing.wait(self.delete_seconds * time_scale())
        with self.lock:
            if backend.endpoints.get(name) is record:
                del backend.endpoints[name]
            if self.endpoints.get(name) is endpoint:
                del self.endpoints[name]

    def _spawn(self, endpoint: LocalEndpoint, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=(endpoint, *args), name=f"endpoint-{endpoint.name}", daemon=True)
        with self.lock:
            self.threads = [t for t in self.threads if t.is_alive()] + [thread]
        thread.start()

    def _create(self, endpoint: LocalEndpoint, backend: SageMakerModelBackend, config_name: str) -> None:
        try:
            server, variant = self._launch(endpoint, backend, config_name)
        except Exception as exc:  # any failure to start is the endpoint's FailureReason
            failure = _reason(exc)
            with self.lock:
                if not endpoint.deleted.is_set():
                    endpoint.record.failure_reason = failure[:REASON_LIMIT]
                    _set_status(endpoint.record, "Failed")
            return
        with self.lock:
            if endpoint.deleted.is_set():
                stale = True
            else:
                stale = False
                endpoint.server, endpoint.variant = server, variant
                endpoint.record.failure_reason = None
                _set_status(endpoint.record, "InService")
        if stale:
            self._stop(server)

    def _update(
        self, endpoint: LocalEndpoint, backend: SageMakerModelBackend, config_name: str, plan: RolloutPlan
    ) -> None:
        """The green fleet started, traffic shifted and baked (``run_rollout``), then the switch or the rollback."""
        record = endpoint.record
        try:
            green, variant = self._launch(endpoint, backend, config_name)
        except Exception as exc:  # as above
            self._roll_back(endpoint, config_name, _reason(exc), None)
            return
        with self.lock:
            if endpoint.deleted.is_set():
                stale = True
            else:
                stale = False
                endpoint.green, endpoint.green_variant = green, variant
        if stale:
            self._stop(green)
            return

        def shift(share: float) -> None:
            with self.lock:
                endpoint.split.set(share)

        def phase(status: VariantPhase, message: str) -> None:
            with self.lock:
                self._variant_phase(endpoint, status, message)

        result = run_rollout(
            plan,
            shift=shift,
            phase=phase,
            alarms_in_alarm=lambda names: self._read_alarms(endpoint, backend, config_name, names),
            cancelled=endpoint.deleted,
        )
        if result.outcome == "cancelled":
            return  # deleted meanwhile: delete() stopped both fleets
        if result.outcome == "rolled_back":
            self._roll_back(endpoint, config_name, result.reason, green)
            return
        with self.lock:  # all the traffic on the green fleet
            if endpoint.deleted.is_set():
                return
            blue = endpoint.server
            endpoint.server, endpoint.variant = green, variant
            endpoint.green = None
            endpoint.split.set(0.0)
        if blue is not None:  # the blue fleet is terminated before the endpoint is InService again
            self._stop(blue)
        with self.lock:
            if endpoint.deleted.is_set():
                return
            config = backend.endpoint_configs.get(config_name)
            if config is not None:
                record.production_variants = record._process_production_variants(config.production_variants)
            record.endpoint_config_name = config_name
            record.failure_reason = None
            record.pending_deployment_summary = None
            _set_status(record, "InService")

    def _roll_back(self, endpoint: LocalEndpoint, config_name: str, why: str, green: EndpointServer | None) -> None:
        """SageMaker's automatic rollback: all traffic back on the blue fleet, the green one terminated, then the
        endpoint ``InService`` on its previous config with a FailureReason. (The wording is the local cloud's: AWS
        documents none; the product shows the reason as it is.)"""
        record = endpoint.record
        with self.lock:
            endpoint.split.set(0.0)
            if endpoint.green is green:
                endpoint.green = None
        if green is not None:
            self._stop(green)
        with self.lock:
            if not endpoint.deleted.is_set():
                reason = (
                    f"Updating to endpoint config {config_name} failed and the endpoint was rolled back to "
                    f"{record.endpoint_config_name}: {why}"
                )
                record.failure_reason = reason[:REASON_LIMIT]
                record.pending_deployment_summary = None
                _set_status(record, "InService")

    def _variant_phase(self, endpoint: LocalEndpoint, status: VariantPhase, message: str) -> None:
        """The pending variant's ``VariantStatus``, as ``DescribeEndpoint`` shows the deployment's progress; under
        ``lock``."""
        pending = endpoint.record.pending_deployment_summary
        if not pending:
            return
        for variant in pending.get("ProductionVariants") or []:
            variant["VariantStatus"] = [{"Status": status, "StatusMessage": message, "StartTime": datetime.now(UTC)}]

    def _launch(
        self, endpoint: LocalEndpoint, backend: SageMakerModelBackend, config_name: str
    ) -> tuple[EndpointServer, str]:
        """config -> first production variant -> model -> container; its data downloaded and a healthy server (with
        the variant's name)."""
        config = backend.endpoint_configs.get(config_name)
        if config is None or not config.production_variants:
            raise StartFailure(f"ClientError: endpoint config {config_name} has no production variants")
        variant = config.production_variants[0]
        try:
            model = backend.describe_model(variant["ModelName"])
        except Exception as exc:  # moto's ValidationError: the model was deleted meanwhile
            raise StartFailure(f"ClientError: {exc}") from exc
        container = model.primary_container or (model.containers[0] if model.containers else {})
        environment = {str(k): str(v) for k, v in (container.get("Environment") or {}).items()}
        if LORA_SETTING in environment or container.get("AdditionalModelDataSources"):
            raise StartFailure(
                f"ClientError: model {model.model_name} asks for LoRA serving ({LORA_SETTING} or an adapter in "
                "AdditionalModelDataSources); the local endpoint serves merged models only (vLLM's LoRA serving "
                "needs a GPU): deploy the merged model"
            )
        variant_name = str(variant.get("VariantName", "AllTraffic"))
        folder = self._work_dir(endpoint.name, config_name)
        fetch_model_data(container, folder / "model")
        if endpoint.deleted.is_set():
            raise StartFailure("the endpoint was deleted")
        try:
            server = self.backend.start(folder / "model", environment)
        except Exception as exc:  # a server that cannot even be started
            raise StartFailure(f"ClientError: the model server could not be started: {exc}") from exc
        with self.lock:
            self.servers.append(server)
        limit = min(
            float(variant.get("ContainerStartupHealthCheckTimeoutInSeconds") or self.startup_timeout_s),
            self.startup_timeout_s,
        )
        deadline = time.monotonic() + limit
        while True:
            if healthy(server.url):
                with self.lock:
                    self.served_names[id(server)] = vllm_served_names(environment)
                return server, variant_name
            problem = None
            if not server.alive():
                problem = server.last_output()
            elif endpoint.deleted.is_set():
                problem = "the endpoint was deleted"
            elif time.monotonic() > deadline:
                problem = f"no healthy answer within {limit:.0f} s; last output: {server.last_output()}"
            if problem is not None:
                self._stop(server)
                raise StartFailure(
                    f"ClientError: The primary container for production variant {variant_name} did not pass the "
                    f"ping health check: {problem}"
                )
            time.sleep(0.2)

    def _read_alarms(
        self, endpoint: LocalEndpoint, backend: SageMakerModelBackend, config_name: str, names: tuple[str, ...]
    ) -> list[str]:
        """The alarms in ALARM, read as SageMaker reads them: ``cloudwatch:DescribeAlarms`` as the new config's
        model's execution role (checked when the local cloud enforces IAM)."""
        from local.cloud.iam.actions import Check
        from local.cloud.iam.enforce import acting_as, require

        role = model_execution_role(backend, config_name)
        alarm_arns = [f"arn:aws:cloudwatch:{endpoint.region}:{endpoint.account}:alarm:{name}" for name in names]
        try:
            with acting_as(role, "SageMaker"):
                checks = [Check("cloudwatch:DescribeAlarms", arn) for arn in alarm_arns]
                require("cloudwatch", "DescribeAlarms", checks, endpoint.region)
        except ClientError as exc:
            raise AlarmsUnreadable(str(exc)) from exc
        return alarms_in_alarm(endpoint.account, endpoint.region, names)

    def _work_dir(self, endpoint_name: str, config_name: str) -> Path:
        """``<work_root>/endpoints/<endpoint>/<config>``, fresh (a suffix if a server still uses that folder)."""
        base = self.work_root / "endpoints" / endpoint_name
        folder, n = base / config_name, 1
        with self.lock:
            used = [str(s.model) for s in self.servers if s.alive()]
        while folder.exists():
            in_use = any(model.startswith(str(folder) + os.sep) for model in used)
            if not in_use:
                shutil.rmtree(folder, ignore_errors=True)
                break
            n += 1
            folder = base / f"{config_name}.{n}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _stop(self, server: EndpointServer) -> None:
        server.stop()
        with self.lock:
            if server in self.servers:
                self.servers.remove(server)

    # -- InvokeEndpoint

    def invoke(self, name: str, body: bytes, account: str, region: str) -> tuple[bytes, str, str]:
        """(body, content type, variant) of one chat completion; ValidationError / ModelError as SageMaker's. While
        an update shifts traffic, the request goes to the new or the old fleet as the split says."""
        with self.lock:
            endpoint = self.endpoints.get(name)
            server = endpoint.server if endpoint is not None else None
            status = endpoint.record.endpoint_status if endpoint is not None else None
        if endpoint is None:
            raise RuntimeValidationError(f"Endpoint {name} of account {account} not found.")
        if server is None or status not in ("InService", "Updating"):
            raise RuntimeValidationError(
                f"Endpoint {name} of account {account} is not in service (status {status}); invoke it when it is "
                "InService."
            )
        logs = f"arn:aws:logs:{region}:{account}:log-group:/aws/sagemaker/Endpoints/{name}"
        try:
            request = json.loads(body)
        except ValueError:
            request = None
        if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
            raise ModelError(
                400,
                '{"error": "the local endpoint expects an OpenAI chat-completions JSON body with \\"messages\\""}',
                endpoint.variant,
                logs,
            )
        with self.lock:
            variant = endpoint.variant
            if endpoint.green is not None and endpoint.split.to_new_fleet():
                server, variant = endpoint.green, endpoint.green_variant
        asked = request.get("model")
        served = self.served_names.get(id(server), set())
        if asked is not None and asked not in served:  # vLLM's answer; SageMaker passes it on as a ModelError
            error = {
                "object": "error",
                "message": f"The model `{asked}` does not exist.",
                "type": "NotFoundError",
                "param": None,
                "code": 404,
            }
            raise ModelError(404, json.dumps(error), variant, logs)
        # The body goes on as sent; only the name is the local server's own for the one model vLLM would serve.
        request = {**request, "stream": False, "model": server.model}
        try:
            status_code, answer, content_type = _post(
                server.url, "/v1/chat/completions", request, self.invoke_timeout_s
            )
        except TimeoutError as exc:
            raise ModelError(
                408,
                f"Your invocation timed out while waiting for a response from container primary ({exc})",
                variant,
                logs,
            ) from exc
        except OSError as exc:
            raise ModelError(502, f"the model server is not answering: {exc}", variant, logs) from exc
        if status_code >= 300:
            raise ModelError(status_code, answer.decode(errors="replace"), variant, logs)
        return answer, content_type or "application/json", variant


def vllm_served_names(environment: Mapping[str, str]) -> set[str]:
    """The ``model`` values vLLM answers to, from its ``SM_VLLM_*`` settings: ``--served-model-name`` (else the model
    path, ``--model``) and each ``--lora-modules`` name (``name=path`` pairs). A request naming another model gets
    vLLM's 404 ``NotFoundError``; a request without ``model`` gets the first served model."""
    names = set(environment.get("SM_VLLM_SERVED_MODEL_NAME", "").split())
    if not names:
        names = {environment.get("SM_VLLM_MODEL", "/opt/ml/model")}
    for module in environment.get("SM_VLLM_LORA_MODULES", "").split():
        names.add(module.split("=", 1)[0])
    return names


def _check_autoscaled_instance_type(sagemaker: SageMakerModelBackend, record: Any, config: Any) -> None:
    """SageMaker's guide, "Update endpoints that use auto scaling": "If the update would change the instance type for
    any model that is a target for auto scaling, the update fails"; deregister the scalable target first."""
    from moto.applicationautoscaling.models import applicationautoscaling_backends

    current = sagemaker.endpoint_configs.get(record.endpoint_config_name)
    old_types = {v["VariantName"]: v.get("InstanceType") for v in (current.production_variants if current else [])}
    scaling = applicationautoscaling_backends[sagemaker.account_id][sagemaker.region_name]
    registered = {t.resource_id for t in scaling.describe_scalable_targets("sagemaker", None, None)}
    for variant in config.production_variants:
        name = variant["VariantName"]
        changed = name in old_types and old_types[name] != variant.get("InstanceType")
        if changed and f"endpoint/{record.endpoint_name}/variant/{name}" in registered:
            raise _validation_error(
                f"The variant {name} of endpoint {record.endpoint_name} is registered with Application Auto Scaling: "
                f"deregister its scalable target before changing its instance type from {old_types[name]} to "
                f"{variant.get('InstanceType')}."
            )


def model_execution_role(backend: Any, config_name: str) -> str | None:
    """The execution role of the endpoint config's first variant's model (None: no such config or model)."""
    config = backend.endpoint_configs.get(config_name)
    variants = config.production_variants if config is not None else []
    model = backend._models.get(variants[0]["ModelName"]) if variants else None
    return getattr(model, "execution_role_arn", None)


def _post(url: str, path: str, body: dict[str, Any], timeout_s: float) -> tuple[int, bytes, str]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout_s)
    try:
        connection.request("POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read(), response.getheader("Content-Type", "")
    finally:
        connection.close()


def _reason(exc: Exception) -> str:
    if isinstance(exc, StartFailure):
        return str(exc)
    return f"InternalFailure: {type(exc).__name__}: {exc}"


def _set_status(record: Any, status: str) -> None:
    record.endpoint_status = status
    record.last_modified_time = datetime.now(UTC)


# ---------------------------------------------------------------------------------------------------------------------
# Errors as the two services answer them


class RuntimeValidationError(ServiceException):
    """sagemaker-runtime's ValidationError (HTTP 400)."""

    code = "ValidationError"


class ModelError(ServiceException):
    """sagemaker-runtime's ModelError (HTTP 424): the container answered an error."""

    code = "ModelError"

    def __init__(self, status: int, message: str, variant: str, log_stream_arn: str) -> None:
        kind = "client" if 400 <= status < 500 else "server"
        super().__init__(
            f'Received {kind} error ({status}) from primary with message "{message[:REASON_LIMIT]}". See '
            f"{log_stream_arn} for more information."
        )
        self.OriginalStatusCode = status
        self.OriginalMessage = message[:REASON_LIMIT]
        self.LogStreamArn = log_stream_arn
        self.variant = variant


def _validation_error(message: str) -> Exception:
    from moto.sagemaker.exceptions import ValidationError

    return ValidationError(message=message)


@functools.cache
def _endpoint_instance_types() -> list[str]:
    import botocore.session
    from botocore.model import StringShape

    shape = botocore.session.get_session().get_service_model("sagemaker").shape_for("ProductionVariantInstanceType")
    return list(shape.enum) if isinstance(shape, StringShape) else []


def validate_instance_type(config: FakeEndpointConfig, instance_type: str) -> None:
    """moto's list of endpoint instance types stops at g4dn/p3 (no ml.g5, g6, g6e, p4d, p5): take botocore's."""
    allowed = _endpoint_instance_types()
    if allowed and instance_type not in allowed:
        raise _validation_error(
            f"Value '{instance_type}' at 'instanceType' failed to satisfy constraint: Member must satisfy enum value "
            f"set: {allowed}"
        )


def _check_updatable(record: FakeEndpoint, arn: str) -> None:
    if record.endpoint_status in IN_PROGRESS:
        raise _validation_error(f'Cannot update in-progress endpoint "{arn}".')
    if record.endpoint_status != "InService":
        raise _validation_error(
            f'Cannot update endpoint "{arn}" in status {record.endpoint_status}: only an InService endpoint can be '
            "updated."
        )


def _rollout_plan(deployment_config: dict[str, Any] | None, config: Mapping[str, Any]) -> RolloutPlan:
    """The update's schedule, for the new config's first variant (its instance count sizes canary and linear
    steps); a DeploymentConfig SageMaker refuses is a ValidationException."""
    variants = config.get("ProductionVariants") or [{}]
    try:
        return RolloutPlan.from_config(deployment_config, int(variants[0].get("InitialInstanceCount") or 1))
    except DeploymentConfigError as exc:
        raise _validation_error(str(exc)) from exc


# ---------------------------------------------------------------------------------------------------------------------
# moto, patched

_active: EndpointRegistry | None = None


def active_endpoints() -> EndpointRegistry:
    """The endpoints of the running local cloud (``local_cloud()`` / ``local_endpoints()``)."""
    if _active is None:
        raise RuntimeError("no local cloud is running: enter local.cloud.local_cloud() first")
    return _active


def endpoint_url(name: str) -> str:
    """The OpenAI-compatible base URL of the local endpoint ``name``, e.g. ``http://127.0.0.1:PORT/v1``."""
    return active_endpoints().endpoint_url(name)


@contextmanager
def local_endpoints(
    backend: EndpointBackend, work_root: Path, startup_timeout_s: float = STARTUP_TIMEOUT_S
) -> Iterator[EndpointRegistry]:
    """moto's SageMaker endpoints served by ``backend``; sagemaker-runtime InvokeEndpoint answered by them."""
    global _active
    registry = EndpointRegistry(backend, work_root, startup_timeout_s)
    create_endpoint_original = SageMakerModelBackend.create_endpoint
    delete_endpoint_original = SageMakerModelBackend.delete_endpoint

    def create_endpoint(
        sagemaker: SageMakerModelBackend, endpoint_name: str, endpoint_config_name: str, tags: list[dict[str, str]]
    ) -> FakeEndpoint:
        if endpoint_name in sagemaker.endpoints:
            arn = FakeEndpoint.arn_formatter(endpoint_name, sagemaker.account_id, sagemaker.region_name)
            raise _validation_error(f'Cannot create already existing endpoint "{arn}".')
        record = create_endpoint_original(sagemaker, endpoint_name, endpoint_config_name, tags)
        registry.create(sagemaker, record, endpoint_config_name)
        return record

    def update_endpoint(
        sagemaker: SageMakerModelBackend,
        endpoint_name: str,
        endpoint_config_name: str,
        deployment_config: dict[str, Any] | None = None,
        retain_deployment_config: bool | None = None,
    ) -> str:
        arn = FakeEndpoint.arn_formatter(endpoint_name, sagemaker.account_id, sagemaker.region_name)
        record = sagemaker.endpoints.get(endpoint_name)
        local = registry.endpoints.get(endpoint_name)
        if record is None or local is None:
            raise _validation_error(f'Could not find endpoint "{arn}".')
        config = sagemaker.describe_endpoint_config(endpoint_config_name)  # ValidationException when there is none
        _check_updatable(record, arn)
        _check_autoscaled_instance_type(sagemaker, record, sagemaker.endpoint_configs[endpoint_config_name])
        cast_record: Any = record
        if not deployment_config and retain_deployment_config:  # "whether to reuse the last deployment configuration"
            deployment_config = getattr(cast_record, "last_deployment_config", None)
        plan = _rollout_plan(deployment_config, config)
        if deployment_config:
            cast_record.last_deployment_config = deployment_config
        registry.update(sagemaker, local, endpoint_config_name, plan)
        return record.arn

    def delete_endpoint(sagemaker: SageMakerModelBackend, endpoint_name: str) -> None:
        record = sagemaker.endpoints.get(endpoint_name)
        if record is None:
            delete_endpoint_original(sagemaker, endpoint_name)  # moto's ValidationException
            return
        if record.endpoint_status in IN_PROGRESS:
            raise _validation_error(f'Cannot update in-progress endpoint "{record.arn}".')
        registry.delete(sagemaker, endpoint_name)

    def update_endpoint_response(response: sm_responses.SageMakerResponse) -> ActionResult:
        arn = update_endpoint(
            response.sagemaker_backend,
            response._get_param("EndpointName"),
            response._get_param("EndpointConfigName"),
            response._get_param("DeploymentConfig"),
            response._get_param("RetainDeploymentConfig"),
        )
        return ActionResult({"EndpointArn": arn})

    def invoke_endpoint_response(response: SageMakerRuntimeResponse) -> TYPE_RESPONSE:
        name = str(response._get_params().get("EndpointName") or response.path.split("/")[2])
        body = response.raw_body if isinstance(response.raw_body, bytes) else str(response.body or "").encode()
        answer, content_type, variant = registry.invoke(name, body, response.current_account, response.region)
        return 200, {"Content-Type": content_type, "x-Amzn-Invoked-Production-Variant": variant}, answer

    with (
        mock.patch.object(FakeEndpointConfig, "validate_instance_type", validate_instance_type),
        mock.patch.object(SageMakerModelBackend, "create_endpoint", create_endpoint),
        mock.patch.object(SageMakerModelBackend, "update_endpoint", update_endpoint, create=True),
        mock.patch.object(SageMakerModelBackend, "delete_endpoint", delete_endpoint),
        mock.patch.object(sm_responses.SageMakerResponse, "update_endpoint", update_endpoint_response, create=True),
        mock.patch.object(SageMakerRuntimeResponse, "invoke_endpoint", invoke_endpoint_response),
    ):
        previous, _active = _active, registry
        try:
            yield registry
        finally:
            _active = previous
            registry.close()  # no server outlives the local cloud
