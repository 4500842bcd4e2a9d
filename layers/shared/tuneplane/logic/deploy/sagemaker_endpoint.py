"""The vLLM deploy target: a SageMaker real-time endpoint per dataset, created on its first passing run and
updated blue/green (with alarm-driven automatic rollback) on later ones, so a bad model never replaces a serving
one. The state machine calls ``begin``, then ``poll`` until ready, then ``smoke``; ``rollback`` on any failure."""

from __future__ import annotations

import math
from typing import Any

from tuneplane.adapters import endpoints
from tuneplane.bounds import bound_text
from tuneplane.config import DeploySettings
from tuneplane.errors import EndpointDeployFailed, InvalidConfiguration, TuneplaneError
from tuneplane.logic.deploy import serving
from tuneplane.logic.deploy.context import (
    RunArtifacts,
    ask_smoke_question,
    endpoint_name,
    read_json,
    run_resource_name,
    tags,
)
from tuneplane.models.deploy import Deployment, ServingPlan

_SETTLED = {"InService", "Failed"}
POLL_INTERVAL_S = 30  # the state machine's DeployWait between two polls


def begin(settings: DeploySettings, run: RunArtifacts) -> Deployment:
    if not settings.serve_image_uri:
        raise InvalidConfiguration("DeployTarget=vllm needs the vLLM serving image: set ServeImageUri")
    name = endpoint_name(settings, run.dataset_key)
    resource = run_resource_name(run.run_id, "serve")
    report = read_json(run.merged_uri + "merge_report.json")
    plan = serving.plan(settings, run, report, lora_name=name)  # refuses what vLLM cannot serve, before anything
    existing = endpoints.describe_endpoint(name)
    if (
        existing is not None
        and existing.get("EndpointConfigName") == resource
        and existing["EndpointStatus"] == "Creating"
    ):
        # An earlier attempt of this step created it and its answer was lost (a timeout, a throttled response):
        # the retry carries on with it instead of refusing its own endpoint as "another deployment in progress".
        note = f"creating endpoint {name} (created by an earlier attempt of this step)"
        return _deployment(settings, name, resource, plan).model_copy(update={"mode": "create", "notes": [note]})
    if existing is not None and existing["EndpointStatus"] not in _SETTLED:
        raise EndpointDeployFailed(
            f"endpoint {name} is {existing['EndpointStatus']}: another deployment of this dataset is in progress; "
            "upload again when it has finished"
        )
    if existing is not None and existing["EndpointStatus"] == "Failed":
        raise EndpointDeployFailed(
            f"endpoint {name} is Failed from an earlier deployment ({existing.get('FailureReason')}) and cannot be "
            f"updated: delete it (aws sagemaker delete-endpoint --endpoint-name {name}) and upload again"
        )
    done: set[str] = set()  # what this attempt changed, for the report of a failure
    try:
        return _create_or_update(settings, run, name, resource, plan, existing, done)
    except TuneplaneError as exc:
        try:
            reported = _with_what_is_left(exc, settings, run, name, resource, existing, done)
        except (TuneplaneError, TypeError):  # the report must not hide the failure it reports
            raise exc from None
        raise reported from exc


def _with_what_is_left(
    exc: TuneplaneError,
    settings: DeploySettings,
    run: RunArtifacts,
    name: str,
    resource: str,
    existing: dict[str, Any] | None,
    done: set[str],
) -> TuneplaneError:
    """``exc`` (same class: the state machine's Retry and Catch match its name) with what serves and what this
    attempt left behind: ``begin`` has no rollback state after it, so the run's outcome must say it. The Deploy role
    may not delete models or endpoint configs (they cost nothing); an endpoint created although the call failed is
    not deleted (a retry of the step carries on with it) but named; autoscaling deregistered for an update is
    registered again."""
    left: list[str] = []
    created = endpoints.describe_endpoint(name) if existing is None else None
    if existing is None and created is not None and created.get("EndpointConfigName") == resource:
        # Created although the call failed (its answer lost): a retry of this step carries on with it (see begin).
        left.append(
            f"endpoint {name} ({created.get('EndpointStatus')}) was created and is still deployed, costing money; "
            f"undo it: aws sagemaker delete-endpoint --endpoint-name {name}"
        )
    elif existing is None:
        left.append("nothing serves for this dataset")
    else:
        current = endpoints.describe_endpoint(name) or {}
        serving = current.get("EndpointConfigName") or existing.get("EndpointConfigName")
        left.append(f"endpoint {name} still serves {serving}")
        if "scaling stopped" in done:
            try:
                endpoints.scale_between(
                    name,
                    settings.endpoint_min_instances,
                    settings.endpoint_max_instances,
                    settings.invocations_per_instance_target,
                    tags(settings, run.run_id),
                )
                left.append("its autoscaling was registered again")
            except TuneplaneError as failed:
                left.append(f"its autoscaling is off: register it again ({bound_text(str(failed), 200)})")
    left.append(
        f"model and endpoint config {resource} may be left (no cost; aws sagemaker delete-endpoint-config "
        f"--endpoint-config-name {resource}; aws sagemaker delete-model --model-name {resource})"
    )
    return type(exc)(f"{bound_text(str(exc), 200)}; deploy not begun: {'; '.join(left)}")


def _deployment(settings: DeploySettings, name: str, resource: str, plan: ServingPlan) -> Deployment:
    """The deployment of this run's model and endpoint config (both named ``resource``) to endpoint ``name``."""
    return Deployment(
        target="vllm",
        max_polls=settings.max_polls,
        endpoint_name=name,
        endpoint_config_name=resource,
        model_name=resource,
        plan=plan,
    )


def _create_or_update(
    settings: DeploySettings,
    run: RunArtifacts,
    name: str,
    resource: str,
    plan: ServingPlan,
    existing: dict[str, Any] | None,
    done: set[str],
) -> Deployment:
    resource_tags = tags(settings, run.run_id)
    endpoints.create_model(
        resource,
        str(settings.serve_image_uri),  # checked by begin
        settings.sagemaker_role_arn,
        plan.model_data_uri,
        plan.environment,
        resource_tags,
        adapter_uri=plan.adapter_uri,
    )
    endpoints.create_endpoint_config(
        resource, resource, plan.instance_type, settings.endpoint_min_instances, settings.kms_key_arn, resource_tags
    )
    five_xx, latency = serving.alarm_names(name, settings.stack_name)
    actions = [settings.alarm_topic_arn] if settings.alarm_topic_arn else []
    endpoints.put_alarm(five_xx, name, "Invocation5XXErrors", "Sum", 0, resource_tags, actions)
    endpoints.put_alarm(latency, name, "ModelLatency", "p90", settings.latency_alarm_ms * 1000, resource_tags, actions)
    deployment = _deployment(settings, name, resource, plan)
    if existing is None:
        endpoints.create_endpoint(name, resource, resource_tags)
        return deployment.model_copy(update={"mode": "create", "notes": [f"creating endpoint {name}"]})
    previous = str(existing["EndpointConfigName"])
    guardrails = serving.deployment_config(settings, name)
    notes: list[str] = []
    old_type = endpoints.endpoint_config_instance_type(previous)
    # SageMaker refuses an update that changes the instance type of a variant registered with autoscaling; the
    # smoke test's step registers the new one again.
    if old_type != plan.instance_type and endpoints.stop_scaling(name):
        done.add("scaling stopped")
        notes.append(f"autoscaling of {name} deregistered: the instance type changes from {old_type}")
    endpoints.update_endpoint(name, resource, guardrails)
    notes.append(f"updating endpoint {name} blue/green from {previous}; rolls back on {five_xx} or {latency}")
    # An update cannot be stopped: a run that gave up on it while SageMaker still bakes would report a failure (and
    # roll nothing back) although the new model then takes over. So it is polled until SageMaker has decided it:
    # by MaximumExecutionTimeoutInSeconds SageMaker has completed the update or rolled it back itself.
    timeout = int(guardrails["BlueGreenUpdatePolicy"]["MaximumExecutionTimeoutInSeconds"])
    polls = max(settings.max_polls, math.ceil(timeout / POLL_INTERVAL_S) + 1)
    return deployment.model_copy(
        update={"mode": "update", "previous_endpoint_config_name": previous, "notes": notes, "max_polls": polls}
    )


def poll(settings: DeploySettings, deployment: Deployment) -> Deployment:
    name = str(deployment.endpoint_name)
    described = endpoints.describe_endpoint(name)
    polls = deployment.polls + 1
    if described is None:
        raise EndpointDeployFailed(f"endpoint {name} disappeared during the deployment")
    status, reason = str(described["EndpointStatus"]), described.get("FailureReason")
    if status == "InService":
        if described.get("EndpointConfigName") == deployment.endpoint_config_name:
            return deployment.model_copy(update={"status": "ready", "polls": polls})
        raise EndpointDeployFailed(
            f"the update of endpoint {name} was rolled back ({reason or 'an alarm fired or the new fleet failed'}); "
            f"{described.get('EndpointConfigName')} still serves"
        )
    if status in {"Failed", "UpdateRollbackFailed"}:
        raise EndpointDeployFailed(f"endpoint {name} is {status}: {reason or 'no reason given'}")
    if polls >= deployment.max_polls:
        raise EndpointDeployFailed(
            f"endpoint {name} still {status} after {polls} checks: gave up waiting (DeployMaxPolls)"
        )
    return deployment.model_copy(update={"polls": polls})


def smoke(settings: DeploySettings, run: RunArtifacts, deployment: Deployment) -> Deployment:
    """One chat request from the eval split through /invocations; on success the endpoint gets its autoscaling."""
    name = str(deployment.endpoint_name)
    lora = deployment.plan is not None and deployment.plan.served == "lora"
    answered = ask_smoke_question(
        run.eval_uri,
        lambda messages: endpoints.chat(name, messages, settings.smoke_max_tokens, model=name if lora else None),
        f"endpoint {name}",
    )
    endpoints.scale_between(
        name,
        settings.endpoint_min_instances,
        settings.endpoint_max_instances,
        settings.invocations_per_instance_target,
        tags(settings, run.run_id),
    )
    return deployment.model_copy(update=answered)


def rollback(deployment: Deployment) -> Deployment:
    """Undo this run's change to the endpoint: delete an endpoint it created, or put the previous config back."""
    name = str(deployment.endpoint_name)
    described = endpoints.describe_endpoint(name)
    if described is None:
        note = f"endpoint {name} does not exist: nothing to roll back"
    elif deployment.mode == "create":
        endpoints.stop_scaling(name)  # registered if the failure came after the smoke test's autoscaling step
        endpoints.delete_endpoint(name)
        note = f"deleted the new endpoint {name}"
    elif described.get("EndpointConfigName") != deployment.endpoint_config_name:
        note = f"endpoint {name} still serves {described.get('EndpointConfigName')}: nothing to roll back"
    elif described["EndpointStatus"] != "InService":
        note = f"endpoint {name} is {described['EndpointStatus']}: not rolled back, check it in the console"
    else:
        previous = str(deployment.previous_endpoint_config_name)
        endpoints.update_endpoint(name, previous, None)
        note = f"rolling endpoint {name} back to {previous}"
    return deployment.model_copy(update={"notes": [*deployment.notes, note]})
