"""Run moto's Lambda functions in this process, from their code folders on disk, instead of in Docker.

moto invokes a function through ``LambdaFunction._invoke_lambda(self, event) -> (payload, errored, logs)``, which
starts a Docker container. There is no Docker in the local cloud, so ``patched_lambda_runtime()`` replaces that
method with an in-process runner that behaves like the Python Lambda runtime where the pipeline can tell:

- the handler (``module.function`` from the function's ``Handler``) is imported from the folder named by the
  function's ``tuneplane:local:code-dir`` tag (``deploy`` sets it from the template's ``CodeUri``), once per
  function and code version: a warm container, so module-level state survives between invocations;
- the function's environment variables (plus the ones Lambda itself sets) apply for the duration of the call, and
  its AWS calls are made as its execution role (``local.cloud.iam``: checked when IAM enforcement is on);
- the handler gets a context object (``function_name``, ``memory_limit_in_mb``, ``invoked_function_arn``,
  ``aws_request_id``, ``get_remaining_time_in_millis()``, ...);
- an exception becomes Lambda's error payload ``{"errorMessage", "errorType", "requestId", "stackTrace"}`` with
  ``X-Amz-Function-Error: Unhandled``, so a Step Functions ``lambda:invoke`` task fails with Error = the exception's
  class name (what ``Catch``/``Retry`` match, e.g. ``InvalidTrainingData``) and Cause = that JSON payload, as on AWS.

Differences from AWS, on purpose or not (yet) emulated: one process for all functions (a shared package such as
``tuneplane`` is imported once, so its module-level caches are shared between functions: tests clear them); calls
are serialised (the environment is process-wide); the timeout is not enforced (the remaining time still counts
down); layers are not added to ``sys.path`` (the shared package is installed in the virtualenv); ``AWS_SAM_LOCAL``
is set, as ``sam local invoke`` does, so Powertools does not look for an X-Ray daemon.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import threading
import time
import traceback
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from unittest import mock

import botocore.utils
from moto.awslambda.models import LambdaFunction

from local.cloud.iam.enforce import acting_as

CODE_DIR_TAG = "tuneplane:local:code-dir"

Handler = Callable[[Any, Any], Any]

_lock = threading.RLock()
_warm: dict[tuple[str, str, str], Handler] = {}  # (function ARN, code sha256, environment) -> handler


class _RuntimeError(Exception):
    """A failure of the (emulated) runtime itself, reported with Lambda's own error type."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


@dataclass
class LocalLambdaContext:
    """The attributes of the Python runtime's context object that handlers and Powertools read."""

    function_name: str
    function_version: str
    invoked_function_arn: str
    memory_limit_in_mb: int
    aws_request_id: str
    log_group_name: str
    log_stream_name: str
    timeout_s: float
    identity: Any = None
    client_context: Any = None
    _started: float = field(default_factory=time.monotonic)

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.timeout_s - (time.monotonic() - self._started)) * 1000))


@contextmanager
def _environment(variables: Mapping[str, str]) -> Iterator[None]:
    """Set ``variables`` in ``os.environ`` and put every touched variable back as it was afterwards."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _function_environment(function: LambdaFunction, code_dir: Path) -> dict[str, str]:
    """The function's own variables (always strings on Lambda) and the ones the Lambda runtime sets itself."""
    variables = {name: str(value) for name, value in (function.environment_vars or {}).items()}
    variables.update(
        {
            "AWS_LAMBDA_FUNCTION_NAME": function.function_name,
            "AWS_LAMBDA_FUNCTION_VERSION": str(function.version),
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(function.memory_size),
            "AWS_LAMBDA_LOG_GROUP_NAME": function.logs_group_name,
            "AWS_REGION": function.region,
            "AWS_DEFAULT_REGION": function.region,
            "LAMBDA_TASK_ROOT": str(code_dir),
            "_HANDLER": str(function.handler),
            "AWS_SAM_LOCAL": "true",
        }
    )
    return variables


def _tags(function: LambdaFunction) -> dict[str, str]:
    """The function's tags (moto keeps them on the function object)."""
    tags = getattr(function, "tags", None)
    return dict(tags) if isinstance(tags, Mapping) else {}


def _load_handler(function: LambdaFunction, code_dir: Path) -> Handler:
    """Import ``Handler`` (``module.function``) from the code folder, the way the Python runtime does."""
    module_name, _, attribute = str(function.handler).rpartition(".")
    if not module_name or not attribute:
        raise _RuntimeError("Runtime.MalformedHandlerName", f"Bad handler '{function.handler}'")
    source = code_dir / (module_name.replace(".", "/") + ".py")
    # A unique name per function: every function folder has its own app.py.
    unique = re.sub(r"\W", "_", f"_local_lambda_{function.function_name}_{module_name}")
    spec = importlib.util.spec_from_file_location(unique, source)
    if spec is None or spec.loader is None or not source.is_file():
        raise _RuntimeError("Runtime.ImportModuleError", f"Unable to import module '{module_name}': no {source}")
    module: ModuleType = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(code_dir))  # the code folder is /var/task, first on the path
    try:  # as awslambdaric: import and syntax errors are the runtime's; any other exception is the code's own
        spec.loader.exec_module(module)
    except ImportError as exc:
        raise _RuntimeError("Runtime.ImportModuleError", f"Unable to import module '{module_name}': {exc}") from exc
    except SyntaxError as exc:
        raise _RuntimeError("Runtime.UserCodeSyntaxError", f"Syntax error in module '{module_name}': {exc}") from exc
    finally:
        sys.path.remove(str(code_dir))
    handler = getattr(module, attribute, None)
    if not callable(handler):
        raise _RuntimeError("Runtime.HandlerNotFound", f"Handler '{attribute}' missing on module '{module_name}'")
    return handler  # type: ignore[no-any-return]


def _error_payload(exc: BaseException, request_id: str) -> dict[str, Any]:
    """Lambda's error shape for an unhandled exception, as the Python runtime (awslambdaric) builds it."""
    if isinstance(exc, _RuntimeError):
        return {"errorMessage": str(exc), "errorType": exc.error_type, "requestId": request_id, "stackTrace": []}
    frames = traceback.extract_tb(exc.__traceback__)[1:]  # drop this module's frame, as Lambda hides its own
    return {
        "errorMessage": str(exc),
        "errorType": type(exc).__name__,
        "requestId": request_id,
        "stackTrace": traceback.format_list(frames),
    }


def _invoke_in_process(self: LambdaFunction, event: Any = None) -> tuple[str, bool, str]:
    """Replacement for ``LambdaFunction._invoke_lambda``: (response payload, errored, log text)."""
    if isinstance(event, str | bytes):  # moto passes the parsed body, or the string "{}" when there was none
        event = json.loads(event or "{}")
    request_id = str(uuid.uuid4())
    started = time.monotonic()
    errored = False
    with _lock:
        try:
            code_dir_tag = _tags(self).get(CODE_DIR_TAG)
            if not code_dir_tag:
                raise _RuntimeError(
                    "Runtime.ImportModuleError",
                    f"{self.function_name} has no {CODE_DIR_TAG} tag: deploy it with local.cloud.deploy",
                )
            code_dir = Path(code_dir_tag)
            context = LocalLambdaContext(
                function_name=self.function_name,
                function_version=str(self.version),
                invoked_function_arn=self.function_arn,
                memory_limit_in_mb=int(self.memory_size),
                aws_request_id=request_id,
                log_group_name=self.logs_group_name,
                log_stream_name=f"local/[{self.version}]{request_id}",
                timeout_s=float(self.timeout),
            )
            with _environment(_function_environment(self, code_dir)), acting_as(self.role, self.function_name):
                # A new code or configuration gives new execution environments (cold starts), as on Lambda: the
                # shared package's cached settings and clients are dropped too.
                key = (self.function_arn, str(self.code_sha_256), json.dumps(self.environment_vars, sort_keys=True))
                if key not in _warm:
                    reset_shared_package_caches()
                    _warm[key] = _load_handler(self, code_dir)
                result = _warm[key](event, context)
            try:
                payload = json.dumps(result)
            except (TypeError, ValueError) as exc:
                raise _RuntimeError("Runtime.MarshalError", f"Unable to marshal response: {exc}") from exc
        except Exception as exc:  # every failure, the handler's or the runtime's, is the function's error result
            errored = True
            payload = json.dumps(_error_payload(exc, request_id))
    duration_ms = (time.monotonic() - started) * 1000
    logs = "\n".join(
        [
            f"START RequestId: {request_id} Version: {self.version}",
            *([f"[ERROR] {payload}"] if errored else []),
            f"END RequestId: {request_id}",
            f"REPORT RequestId: {request_id}\tDuration: {duration_ms:.2f} ms\tMemory Size: {self.memory_size} MB",
        ]
    )
    self.logs_backend.ensure_log_group(self.logs_group_name)
    self.save_logs(logs)
    return payload, errored, logs


_original_invoke = LambdaFunction.invoke


def _invoke_unhandled(self: LambdaFunction, body: str, request_headers: Any, response_headers: Any) -> str | bytes:
    """moto marks every function error ``Handled``; an exception escaping the handler is ``Unhandled`` on AWS."""
    payload = _original_invoke(self, body, request_headers, response_headers)
    if response_headers.get("x-amz-function-error") == "Handled":
        response_headers["x-amz-function-error"] = "Unhandled"
    return payload


def _environment_proxies() -> dict[str, str]:
    """``urllib.request.getproxies()`` (what botocore asks when it creates a client), read from a snapshot of the
    environment: the original iterates ``os.environ`` while another thread's invocation may be removing its
    variables, and a key gone mid-iteration raised ``KeyError`` out of ``boto3.client()``."""
    snapshot = list(os.environ._data.items())  # type: ignore[attr-defined]  # a plain dict's copy: atomic under the GIL
    environ = {os.environ.decodekey(k): os.environ.decodevalue(v) for k, v in snapshot}
    proxies: dict[str, str] = {}  # urllib's own two passes, over the snapshot
    for name, value in environ.items():
        if value and name.lower()[-6:] == "_proxy":
            proxies[name.lower()[:-6]] = value
    if "REQUEST_METHOD" in environ:
        proxies.pop("http", None)
    for name, value in environ.items():
        if name[-6:] == "_proxy":
            if value:
                proxies[name.lower()[:-6]] = value
            else:
                proxies.pop(name.lower()[:-6], None)
    return proxies


def _environment_proxy_bypass(host: str) -> bool:
    """``urllib.request.proxy_bypass`` (botocore's ``should_bypass_proxies`` asks it too), over the same snapshot:
    the original reads the proxies from ``os.environ`` again, with the same race."""
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]  # typeshed has it off Linux only
    return bool(bypass(host, _environment_proxies()))


@contextmanager
def patched_lambda_runtime() -> Iterator[None]:
    """Within this block every moto Lambda invocation runs in process (see the module docstring)."""
    with (
        mock.patch.object(LambdaFunction, "_invoke_lambda", _invoke_in_process),
        mock.patch.object(LambdaFunction, "invoke", _invoke_unhandled),
        mock.patch.object(botocore.utils, "getproxies", _environment_proxies),
        mock.patch.object(botocore.utils, "proxy_bypass", _environment_proxy_bypass),
    ):
        reset_shared_package_caches()
        try:
            yield
        finally:
            _warm.clear()
            reset_shared_package_caches()


def reset_shared_package_caches() -> None:
    """What a cold start gives every real function: fresh settings and clients. In process, all functions share
    the loaded tuneplane package, so its cached settings/clients (functools.cache) would outlive one local cloud
    and point the next one at the previous stack's bucket."""
    for name, module in list(sys.modules.items()):
        if name == "tuneplane" or name.startswith("tuneplane."):
            for value in vars(module).values():
                if callable(getattr(value, "cache_clear", None)) and getattr(value, "__module__", None) == name:
                    value.cache_clear()
