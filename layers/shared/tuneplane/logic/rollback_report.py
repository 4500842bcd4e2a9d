"""What a failed deployment's rollback did, in words for the run's outcome: the user must know what still serves.

The state machine's ``DeployRollback`` leaves its result in ``$.rollback.deployment`` (its last note says what it
did: the new endpoint deleted, the previous config put back, or why nothing was done) or, when it failed too, its
error in ``$.rollback_error``: then the new endpoint or imported model is still there, serving a model that failed,
and costing money until someone deletes it.
"""

from __future__ import annotations

from typing import Any


def _left_behind(deployment: dict[str, Any]) -> tuple[str, str] | None:
    """(what, the command that deletes it) of this run's deployment, if it created or changed something."""
    if deployment.get("imported_model_arn") or deployment.get("imported_model_name"):
        model = str(deployment.get("imported_model_arn") or deployment.get("imported_model_name"))
        return f"imported model {model}", f"aws bedrock delete-imported-model --model-identifier {model}"
    if deployment.get("endpoint_name"):
        name = str(deployment["endpoint_name"])
        if deployment.get("mode") == "update":
            previous = deployment.get("previous_endpoint_config_name")
            command = f"aws sagemaker update-endpoint --endpoint-name {name} --endpoint-config-name {previous}"
            return f"endpoint {name} (updated to {deployment.get('endpoint_config_name')})", command
        return f"endpoint {name}", f"aws sagemaker delete-endpoint --endpoint-name {name}"
    return None


def rollback_notes(state: dict[str, Any], cause_of: Any) -> list[str]:
    """Notes for the failed deploy stage and the run: what the rollback did, or what it left behind.
    ``cause_of(error)`` gives (error name, one-line cause) of a Catch's error object."""
    rollback = (state.get("rollback") or {}).get("deployment") or {}
    error = state.get("rollback_error")
    if isinstance(error, dict) and error:
        name, cause = cause_of(error)
        left = _left_behind((state.get("deploy") or {}).get("deployment") or {})
        if left is None:
            return [f"the rollback failed ({name}: {cause})"]
        what, command = left
        return [f"the rollback failed ({name}: {cause}): {what} is still deployed and costs money; undo it: {command}"]
    notes = rollback.get("notes") or []
    return [f"rollback: {notes[-1]}"] if notes else []
