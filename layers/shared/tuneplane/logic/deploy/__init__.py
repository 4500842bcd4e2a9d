"""The Deploy stage: serve a model that passed the gate, with vLLM on a SageMaker endpoint or through Bedrock
Custom Model Import, check it answers, and undo the change when anything goes wrong."""

from __future__ import annotations

from typing import Any

from tuneplane.adapters.bedrock_import import ModelImportService
from tuneplane.config import DeploySettings
from tuneplane.errors import InvalidConfiguration
from tuneplane.logic.deploy import bedrock, sagemaker_endpoint
from tuneplane.logic.deploy.context import RunArtifacts
from tuneplane.models.deploy import Deployment, DeployRequest


def handle(request: DeployRequest, settings: DeploySettings, importer: ModelImportService) -> dict[str, Any]:
    """One step of a deployment; returns the deployment as it stands (the state machine keeps it)."""
    run = RunArtifacts.from_state(request.state)
    if request.action == "begin":
        if request.target == "vllm":
            started = sagemaker_endpoint.begin(settings, run)
        else:
            started = bedrock.begin(settings, run, importer)
        return started.model_dump(mode="json")
    deployment = _deployment(request)
    if request.action == "poll":
        if deployment.target == "vllm":
            deployment = sagemaker_endpoint.poll(settings, deployment)
        else:
            deployment = bedrock.poll(deployment, importer)
    elif request.action == "smoke":
        if deployment.target == "vllm":
            deployment = sagemaker_endpoint.smoke(settings, run, deployment)
        else:
            deployment = bedrock.smoke(settings, run, deployment, importer)
    elif deployment.target == "vllm":
        deployment = sagemaker_endpoint.rollback(deployment)
    else:
        deployment = bedrock.rollback(deployment, importer)
    return deployment.model_dump(mode="json")


def _deployment(request: DeployRequest) -> Deployment:
    if request.deployment is None:
        raise InvalidConfiguration(f"deploy {request.action}: no deployment in the request (begin did not run?)")
    return request.deployment
