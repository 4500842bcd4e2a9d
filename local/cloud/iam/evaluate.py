"""IAM policy evaluation for one principal in one account: identity policies and, where the service has them, a
resource policy (S3 bucket policy, SQS queue policy, KMS key policy).

No PyPI package evaluates requests with Resource and Condition: policyuniverse, parliament and policy_sentry
expand and lint policies, iam-ape computes effective permissions but keeps conditions unevaluated, aws-why asks
AWS's own policy simulator; moto's ``access_control`` ignores Resource and Condition. So this is a compact
engine of AWS's documented logic ("Policy evaluation logic", "Determining whether a request is allowed or denied
within an account"), for what the local cloud needs: no SCPs, permission boundaries or session policies.

1. An explicit ``Deny`` in any policy that applies wins.
2. Otherwise an ``Allow`` in an identity-based policy, or in the resource-based policy naming the principal (the
   role or its session, or ``*``), allows: within one account either is enough.
   A resource policy that names the *account* (``arn:aws:iam::ACCOUNT:root``) delegates to IAM: it does not allow
   by itself. KMS is stricter: the AWS docs say no principal, not even the account, can use a key unless the key
   policy allows it, directly or by that delegation to IAM (``key_policy_required``).
3. Otherwise the request is implicitly denied.

A statement applies when its Action/NotAction matches (case-insensitive, ``*``/``?`` wildcards), its
Resource/NotResource matches (case-sensitive, wildcards; a resource policy statement without Resource applies to
its resource), for resource policies its Principal/NotPrincipal matches, and its Condition holds (``conditions``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from local.cloud.iam.conditions import conditions_match, policy_values, wildcard_match

Policy = Mapping[str, Any]  # a policy document, parsed


@dataclass(frozen=True)
class Request:
    """One authorization: ``principal`` (the role ARN) performs ``action`` on ``resource``, with condition keys
    ``context`` (lower-cased key -> values). ``session`` is the principal as the caller appears (the assumed-role
    session ARN), for messages and resource policies."""

    action: str
    resource: str
    principal: str
    context: Mapping[str, Sequence[str]] = field(default_factory=dict)
    session: str | None = None

    @property
    def account(self) -> str:
        return self.principal.split(":")[4]


@dataclass(frozen=True)
class Decision:
    outcome: Literal["allow", "explicit_deny", "implicit_deny"]
    reason: str  # the end of AWS's message: "because no identity-based policy allows the s3:GetObject action"

    @property
    def allowed(self) -> bool:
        return self.outcome == "allow"


def statements(policy: Policy | None) -> list[Mapping[str, Any]]:
    """The policy's statements. A ``null`` entry is skipped: it is what moto's CloudFormation leaves of a statement
    that was ``!If [cond, {...}, !Ref AWS::NoValue]`` (CloudFormation removes it)."""
    found = (policy or {}).get("Statement", [])
    return [found] if isinstance(found, Mapping) else [s for s in found if isinstance(s, Mapping)]


def _any_match(patterns: Any, value: str, ignore_case: bool) -> bool:
    return any(wildcard_match(pattern, value, ignore_case) for pattern in policy_values(patterns))


def _action_matches(statement: Mapping[str, Any], action: str) -> bool:
    if "Action" in statement:
        return _any_match(statement["Action"], action, ignore_case=True)
    return "NotAction" in statement and not _any_match(statement["NotAction"], action, ignore_case=True)


def _resource_matches(statement: Mapping[str, Any], resource: str, resource_policy: bool) -> bool:
    if "Resource" in statement:
        return _any_match(statement["Resource"], resource, ignore_case=False)
    if "NotResource" in statement:
        return not _any_match(statement["NotResource"], resource, ignore_case=False)
    return resource_policy  # a resource policy's statement without Resource is about its own resource


PrincipalMatch = Literal["direct", "account", "none"]


def _principal_values(principal: Any) -> list[str]:
    if principal == "*":
        return ["*"]
    if isinstance(principal, Mapping):
        return policy_values(principal.get("AWS", []))  # Service/Federated principals are never our roles
    return []


def _principal_match(statement: Mapping[str, Any], request: Request) -> PrincipalMatch:
    """How a resource policy statement names the caller: itself (role, session or ``*``), its account, or not."""
    if "NotPrincipal" in statement:
        named = _principal_match({"Principal": statement["NotPrincipal"]}, request)
        return "none" if named != "none" else "direct"
    best: PrincipalMatch = "none"
    for value in _principal_values(statement.get("Principal")):
        if value == "*" or value in (request.principal, request.session):
            return "direct"
        if value in (request.account, f"arn:aws:iam::{request.account}:root"):
            best = "account"
    return best


def _applies(statement: Mapping[str, Any], request: Request, resource_policy: bool) -> bool:
    return (
        _action_matches(statement, request.action)
        and _resource_matches(statement, request.resource, resource_policy)
        and conditions_match(statement.get("Condition"), request.context)
    )


def _matching(policies: Sequence[Policy], request: Request, effect: str) -> bool:
    return any(
        s.get("Effect") == effect and _applies(s, request, resource_policy=False)
        for policy in policies
        for s in statements(policy)
    )


def _resource_matching(policy: Policy | None, request: Request, effect: str) -> set[PrincipalMatch]:
    return {
        _principal_match(s, request)
        for s in statements(policy)
        if s.get("Effect") == effect and _applies(s, request, resource_policy=True)
    } - {"none"}


def evaluate(
    request: Request,
    identity_policies: Sequence[Policy],
    resource_policy: Policy | None = None,
    *,
    key_policy_required: bool = False,
) -> Decision:
    """The decision for ``request`` (see the module docstring); ``key_policy_required`` for KMS keys."""
    action = request.action
    if _matching(identity_policies, request, "Deny"):
        return Decision("explicit_deny", "with an explicit deny in an identity-based policy")
    if _resource_matching(resource_policy, request, "Deny"):
        return Decision("explicit_deny", "with an explicit deny in a resource-based policy")
    identity_allows = _matching(identity_policies, request, "Allow")
    resource_allows = _resource_matching(resource_policy, request, "Allow")
    if key_policy_required:
        if "direct" in resource_allows or ("account" in resource_allows and identity_allows):
            return Decision("allow", "")
        if not resource_allows:
            return Decision("implicit_deny", f"because no resource-based policy allows the {action} action")
        return Decision("implicit_deny", f"because no identity-based policy allows the {action} action")
    if identity_allows or "direct" in resource_allows:
        return Decision("allow", "")
    return Decision("implicit_deny", f"because no identity-based policy allows the {action} action")
