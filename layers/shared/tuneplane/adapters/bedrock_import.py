"""Bedrock Custom Model Import: import jobs, imported models, and one chat request to an imported model.

moto has no Custom Model Import, so the deploy logic talks to the ``ModelImportService`` protocol: tests and the
local cloud pass a fake kept in memory (``local/cloud/bedrock.py``), AWS gets ``BedrockModelImport``. What the fake
cannot show (the real request shapes' acceptance by Bedrock, the import's timing, the imported model's invoke
format) is listed in docs/local-cloud.md (Bedrock: not exercised here).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING, Any, Protocol

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from tuneplane.errors import DeployServiceError, ModelNotReady, SmokeTestFailed

if TYPE_CHECKING:
    from mypy_boto3_bedrock import BedrockClient
    from mypy_boto3_bedrock_runtime import BedrockRuntimeClient


@dataclass(frozen=True)
class ImportJob:
    arn: str
    status: str  # InProgress | Completed | Failed
    imported_model_arn: str | None = None
    failure: str | None = None


@dataclass(frozen=True)
class ImportedModel:
    name: str
    arn: str
    created: datetime


class ModelImportService(Protocol):
    def start_import(
        self, job_name: str, model_name: str, role_arn: str, s3_uri: str, kms_key_arn: str | None, tags: dict[str, str]
    ) -> str:
        """Start an import job; its ARN."""
        ...

    def import_job(self, job_arn: str) -> ImportJob: ...

    def imported_models(self, name_contains: str) -> list[ImportedModel]: ...

    def delete_imported_model(self, arn: str) -> None: ...

    def chat(self, model_arn: str, messages: list[dict[str, str]], max_tokens: int) -> str: ...


@cache
def _bedrock() -> BedrockClient:
    return boto3.client("bedrock")


@cache
def _runtime() -> BedrockRuntimeClient:
    return boto3.client("bedrock-runtime")


class BedrockModelImport:
    """``ModelImportService`` on the Bedrock APIs."""

    def start_import(
        self, job_name: str, model_name: str, role_arn: str, s3_uri: str, kms_key_arn: str | None, tags: dict[str, str]
    ) -> str:
        tag_list = [{"key": key, "value": value} for key, value in tags.items()]
        extra: dict[str, Any] = {"importedModelKmsKeyId": kms_key_arn} if kms_key_arn else {}
        try:
            response = _bedrock().create_model_import_job(
                jobName=job_name,
                importedModelName=model_name,
                roleArn=role_arn,
                modelDataSource={"s3DataSource": {"s3Uri": s3_uri}},
                jobTags=tag_list,  # type: ignore[arg-type]
                importedModelTags=tag_list,  # type: ignore[arg-type]
                **extra,
            )
        except ClientError as exc:
            raise DeployServiceError(f"start Bedrock import {job_name}: {exc}") from exc
        return str(response["jobArn"])

    def import_job(self, job_arn: str) -> ImportJob:
        try:
            job = _bedrock().get_model_import_job(jobIdentifier=job_arn)
        except ClientError as exc:
            raise DeployServiceError(f"describe Bedrock import {job_arn}: {exc}") from exc
        return ImportJob(
            arn=job_arn,
            status=str(job.get("status")),
            imported_model_arn=job.get("importedModelArn"),
            failure=job.get("failureMessage"),
        )

    def imported_models(self, name_contains: str) -> list[ImportedModel]:
        models: list[ImportedModel] = []
        try:
            for page in _bedrock().get_paginator("list_imported_models").paginate(nameContains=name_contains):
                models += [
                    ImportedModel(name=m["modelName"], arn=m["modelArn"], created=m["creationTime"])
                    for m in page.get("modelSummaries", [])
                ]
        except ClientError as exc:
            raise DeployServiceError(f"list imported models *{name_contains}*: {exc}") from exc
        return models

    def delete_imported_model(self, arn: str) -> None:
        try:
            _bedrock().delete_imported_model(modelIdentifier=arn)
        except ClientError as exc:
            raise DeployServiceError(f"delete imported model {arn}: {exc}") from exc

    def chat(self, model_arn: str, messages: list[dict[str, str]], max_tokens: int) -> str:
        """Imported models take the OpenAI chat-completions body on InvokeModel (the model's chat template is
        applied by Bedrock)."""
        body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0}
        try:
            response = _runtime().invoke_model(
                modelId=model_arn, body=json.dumps(body), contentType="application/json"
            )
            document = json.loads(response["body"].read())
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ModelNotReadyException":
                raise ModelNotReady(f"the imported model {model_arn} is not ready yet (cold start): {exc}") from exc
            raise SmokeTestFailed(f"the imported model {model_arn} did not answer: {exc}") from exc
        except (BotoCoreError, ValueError) as exc:
            raise SmokeTestFailed(f"the imported model {model_arn} did not answer with JSON: {exc}") from exc
        return answer_text(document)


def answer_text(document: Any) -> str:
    """The text of a chat answer: the OpenAI shape, or the older ``generation`` / ``outputs[0].text`` shapes."""
    try:
        if "choices" in document:
            return str(document["choices"][0]["message"]["content"])
        if "generation" in document:
            return str(document["generation"])
        return str(document["outputs"][0]["text"])
    except (KeyError, IndexError, TypeError) as exc:
        raise SmokeTestFailed(f"an answer without text: {str(document)[:200]}") from exc


def model_import_service() -> ModelImportService:
    """What the Deploy function talks to; tests and the local cloud replace this function with a fake's."""
    return BedrockModelImport()
