"""IAM enforcement for the local cloud: every AWS call the product makes, evaluated as the principal that makes it
on AWS against that principal's policies as deployed from ``template.yaml`` (and the resource's policy).

- ``evaluate.py`` / ``conditions.py``: the policy evaluation engine (pure Python);
- ``actions.py``: the authorization context of a call: IAM actions, resource ARNs and condition keys;
- ``moto_state.py``: a role's policies, a resource's policy and facts about resources, from moto;
- ``enforce.py``: ``acting_as(role_arn)``, the botocore hook and ``enforcing()``;
- ``wiring.py``: who acts in the local cloud (Lambda functions, state machines, SageMaker jobs).

``local_cloud(enforce_iam=True)`` switches it on (``"audit"``: record what would be denied, deny nothing).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from local.cloud.iam.enforce import Denial, Enforcement, acting_as, acting_principal, current_enforcement, enforcing
from local.cloud.iam.wiring import executions_as_their_role, remembered_scalable_target_tags

__all__ = [
    "Denial",
    "Enforcement",
    "acting_as",
    "acting_principal",
    "current_enforcement",
    "enforcing",
    "iam_enforcement",
]


@contextmanager
def iam_enforcement(mode: Literal["enforce", "audit"] = "enforce") -> Iterator[Enforcement]:
    """Enforcement on, and state-machine executions acting as their role (Lambda invocations and SageMaker jobs
    always act as theirs: without enforcement that changes nothing)."""
    with enforcing(mode) as enforcement, executions_as_their_role(), remembered_scalable_target_tags():
        yield enforcement
