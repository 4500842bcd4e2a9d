"""IAM enforcement on every botocore call made while a principal is acting.

``acting_as(role_arn)`` sets the acting principal (a contextvar: per thread and task). While ``enforcing()`` is on,
a hook that every botocore client gets (botocore's ``BUILTIN_HANDLERS``, as moto registers its own stubber) maps
each call made with a principal set (``actions.checks``), evaluates every check against the role's policies and
the resource's policy (``moto_state``, ``evaluate``) and, when one is denied, raises the service's AccessDenied as
AWS answers it: ``User: arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION is not authorized to perform: ACTION on
resource: ARN because no identity-based policy allows the ACTION action`` (code ``AccessDenied`` for the XML/query
services such as S3 and SQS, ``AccessDeniedException`` for the JSON ones). With no principal set (a test acting as
the operator) nothing is checked. An operation without a mapping raises ``UnmappedOperation``: never allowed by
omission.

``Enforcement.mode``: ``"enforce"`` denies; ``"audit"`` lets every call through and only records what would have
been denied (to list what a template lacks in one pipeline run). Both record ``denials`` and ``unmapped``.

Threads: contextvars do not cross ``threading.Thread.start``, and moto runs each state-machine execution, and
each of its states, in threads of its own. While enforcing, a thread started with a principal acting inherits it.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import botocore.session
from botocore.errorfactory import ClientExceptionsFactory
from botocore.exceptions import ClientError
from botocore.handlers import BUILTIN_HANDLERS
from botocore.model import OperationModel, ServiceModel
from moto.iam.exceptions import NotFoundException
from moto.iam.models import iam_backends

from local.cloud.iam.actions import Call, Check, UnmappedOperation, checks, with_resource_tags
from local.cloud.iam.evaluate import Decision, Request, evaluate
from local.cloud.iam.moto_state import MotoFacts, identity_policies, is_operator_call, resource_policy
from local.cloud.iam.probes import probe_checks


@dataclass(frozen=True)
class Principal:
    role_arn: str
    session_name: str

    @property
    def account(self) -> str:
        return self.role_arn.split(":")[4]

    @property
    def session_arn(self) -> str:
        """The caller as AWS names it in messages: ``arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION``."""
        return f"arn:aws:sts::{self.account}:assumed-role/{self.role_arn.rsplit('/', 1)[-1]}/{self.session_name}"


_acting: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("tuneplane_iam_principal", default=None)


@contextmanager
def acting_as(role_arn: str | None, session_name: str = "local") -> Iterator[None]:
    """Calls in this block (and threads started in it while enforcing) are made as ``role_arn``; None: the operator."""
    token = _acting.set(Principal(role_arn, session_name) if role_arn else None)
    try:
        yield
    finally:
        _acting.reset(token)


def acting_principal() -> Principal | None:
    return _acting.get()


@dataclass(frozen=True)
class Denial:
    principal: str  # the session ARN
    action: str
    resource: str
    reason: str
    call: str  # "s3:PutObject", the API call that needed it

    def __str__(self) -> str:
        return f"{self.principal} {self.action} on {self.resource} ({self.call}) {self.reason}"


@dataclass
class Enforcement:
    mode: Literal["enforce", "audit"] = "enforce"
    denials: list[Denial] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)
    calls: list[tuple[str, str]] = field(default_factory=list)  # (session ARN, "s3:PutObject"): every checked call
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, denial: Denial) -> None:
        with self._lock:
            if denial not in self.denials:
                self.denials.append(denial)


_active: Enforcement | None = None


def current_enforcement() -> Enforcement | None:
    """The record of the enforcement now on (None: off)."""
    return _active


# ---------------------------------------------------------------------------------------------------------------------
# The decision for one call


def _global_context(principal: Principal, region: str, secure: bool) -> dict[str, list[str]]:
    """The global condition keys AWS adds to every request of an assumed-role session."""
    now = datetime.now(UTC)
    context = {
        "aws:PrincipalArn": [principal.role_arn],
        "aws:PrincipalAccount": [principal.account],
        "aws:PrincipalType": ["AssumedRole"],
        "aws:RequestedRegion": [region],
        "aws:SecureTransport": ["true" if secure else "false"],
        "aws:CurrentTime": [now.strftime("%Y-%m-%dT%H:%M:%SZ")],
        "aws:EpochTime": [str(int(time.time()))],
        "aws:ViaAWSService": ["false"],
    }
    try:
        role = iam_backends[principal.account]["global"].get_role_by_arn(principal.role_arn)
    except NotFoundException:  # a role that does not exist has no tags (and no policies: all is denied)
        return context
    return context | {f"aws:PrincipalTag/{tag['Key']}": [tag["Value"]] for tag in role.tags or []}


def decide(principal: Principal, check: Check, region: str, secure: bool = True) -> Decision:
    """The decision for one check made by ``principal``."""
    context = {**_global_context(principal, region, secure), **check.context}
    request = Request(
        check.action,
        check.resource,
        principal.role_arn,
        {key.lower(): list(values) for key, values in context.items()},
        principal.session_arn,
    )
    try:
        identity = identity_policies(principal.role_arn, region)
    except NotFoundException:  # the role is gone (or a thread of an earlier local cloud still runs): nothing allows
        reason = f"because no identity-based policy allows the {check.action} action (no role {principal.role_arn})"
        return Decision("implicit_deny", reason)
    policy, key_policy = resource_policy(check.resource, region, principal.account)
    return evaluate(request, identity, policy, key_policy_required=key_policy)


def _access_denied(service_model: ServiceModel, operation: str, message: str) -> ClientError:
    """The service's own AccessDenied error: the modeled exception class where the service has one."""
    protocol = service_model.metadata.get("protocol", "json")
    code = "AccessDenied" if protocol in ("query", "rest-xml", "ec2") else "AccessDeniedException"
    status = 400 if service_model.service_name == "dynamodb" else 403
    response: Any = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    name = service_model.service_name
    if name not in _exceptions:
        _exceptions[name] = ClientExceptionsFactory().create_client_exceptions(service_model)
    return _exceptions[name].from_code(code)(response, operation)  # type: ignore[no-any-return]


_exceptions: dict[str, Any] = {}


def _validation_error(service_model: ServiceModel, operation: str, denied: str) -> ClientError:
    response: Any = {
        "Error": {"Code": "ValidationException", "Message": f"Permission validation failed: {denied}"},
        "ResponseMetadata": {"HTTPStatusCode": 400},
    }
    return ClientError(response, operation)


def message(principal: Principal, check: Check, decision: Decision, service: str) -> str:
    resource = f'"{check.resource}"' if service == "s3" else check.resource
    caller = f"User: {principal.session_arn} is not authorized to perform: {check.action}"
    return f"{caller} on resource: {resource} {decision.reason}"


def authorize(
    service_model: ServiceModel,
    operation: str,
    needed: Sequence[Check],
    region: str,
    secure: bool,
    probe: bool = False,
) -> None:
    """Evaluate ``needed`` as the acting principal; raise the service's AccessDenied for the first denied check (for
    a ``probe``, one the service makes as the caller before it accepts the request: its ValidationException)."""
    principal, enforcement = _acting.get(), _active
    if principal is None or enforcement is None:
        return
    service = service_model.service_name
    for check in needed:
        decision = decide(principal, check, region, secure)
        if decision.allowed:
            continue
        prefix = service_model.metadata.get("signingName", service)
        enforcement.record(
            Denial(principal.session_arn, check.action, check.resource, decision.reason, f"{prefix}:{operation}")
        )
        if enforcement.mode == "enforce" and probe:
            raise _validation_error(service_model, operation, message(principal, check, decision, service))
        if enforcement.mode == "enforce":
            raise _access_denied(service_model, operation, message(principal, check, decision, service))


def require(service: str, operation: str, needed: Sequence[Check], region: str) -> None:
    """Checks an emulated service makes for the acting principal outside any botocore call of its own (e.g. the
    EventBridge rule of a ``.sync`` task); denied: ``service``'s AccessDenied for ``operation``."""
    if _active is None or _acting.get() is None:
        return
    if service not in _service_models:
        _service_models[service] = botocore.session.get_session().get_service_model(service)
    authorize(_service_models[service], operation, needed, region, secure=True)


_service_models: dict[str, ServiceModel] = {}


# ---------------------------------------------------------------------------------------------------------------------
# The botocore hook

_PARAMS = "tuneplane_iam_params"
_CHECKED = "tuneplane_iam_checked"


def _remember_params(params: Mapping[str, Any], context: dict[str, Any], **_: Any) -> None:
    """``before-parameter-build`` sees the caller's parameters; ``before-call`` (after validation) checks them."""
    if _active is not None and _acting.get() is not None:
        context[_PARAMS] = dict(params)


def _check_call(model: OperationModel, params: Mapping[str, Any], context: dict[str, Any], **_: Any) -> None:
    principal, enforcement = _acting.get(), _active
    if principal is None or enforcement is None or is_operator_call(context) or context.get(_CHECKED):
        return
    context[_CHECKED] = True  # a session that got the hook twice (BUILTIN_HANDLERS and _register_on_default_session)
    with enforcement._lock:
        enforcement.calls.append((principal.session_arn, f"{model.service_model.service_name}:{model.name}"))
    service_model = model.service_model
    region = context.get("client_region") or "us-east-1"
    call = Call(service_model.service_name, model.name, context.get(_PARAMS, {}), region, principal.account)
    try:
        needed = checks(call, MotoFacts(region, principal.account))
    except UnmappedOperation:
        with enforcement._lock:
            enforcement.unmapped.append(f"{call.service}:{call.operation}")
        if enforcement.mode == "enforce":
            raise
        return
    secure = str(params.get("url", "https://")).startswith("https://")
    authorize(service_model, model.name, needed, region, secure)
    facts = MotoFacts(region, principal.account)
    probes = [with_resource_tags(check, facts) for check in probe_checks(call)]
    authorize(service_model, model.name, probes, region, secure, probe=True)


_HANDLERS = [("before-parameter-build", _remember_params), ("before-call", _check_call)]
for _handler in _HANDLERS:
    if _handler not in BUILTIN_HANDLERS:
        BUILTIN_HANDLERS.append(_handler)


def _register_on_default_session() -> None:
    """Sessions created before this module was imported did not get ``BUILTIN_HANDLERS``: boto3's default one."""
    import boto3

    if boto3.DEFAULT_SESSION is not None:
        for event, handler in _HANDLERS:
            unique_id = f"tuneplane-iam-{handler.__name__}"
            boto3.DEFAULT_SESSION._session.register(event, handler, unique_id=unique_id)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------------
# Switching it on

_original_start = threading.Thread.start


def _start_with_principal(self: threading.Thread) -> None:
    """``Thread.start`` that carries the acting principal (the whole context) into the new thread."""
    if _acting.get() is not None:
        context = contextvars.copy_context()
        run = self.run
        self.run = lambda: context.run(run)  # type: ignore[method-assign]
    _original_start(self)


@contextmanager
def enforcing(mode: Literal["enforce", "audit"] = "enforce") -> Iterator[Enforcement]:
    """Enforce IAM on calls made as a principal in this block; yields the record of denials."""
    global _active
    if _active is not None:
        raise RuntimeError("IAM enforcement is already on")
    _register_on_default_session()
    _active = Enforcement(mode)
    threading.Thread.start = _start_with_principal  # type: ignore[method-assign]
    try:
        yield _active
    finally:
        threading.Thread.start = _original_start  # type: ignore[method-assign]
        _active = None
