"""A stand-in for Bedrock Custom Model Import, which moto does not have: the Deploy function's
``ModelImportService`` kept in memory. An import job reads the model's ``config.json`` from the (moto) S3 prefix,
completes after ``polls_to_complete`` checks (or fails with ``fail_with``), and the imported model answers chats
through ``answer``, after ``cold_start_chats`` chats answered with ModelNotReadyException (as the adapter reports it).
What it cannot show about the real service is listed in docs/local-cloud.md ("Bedrock: not exercised").

IAM: starting an import (``CreateModelImportJob``, with the role it passes), checking it (``GetModelImportJob``) and
listing imported models are authorized as the caller when the local cloud enforces IAM, with the request the real
adapter sends. The calls on an imported model (get, delete, invoke) are not: their policy keys on the model's tags,
which this stand-in does not keep as Bedrock would.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from unittest import mock

import boto3
from botocore.exceptions import ClientError

from local.cloud.iam.actions import Call, checks
from local.cloud.iam.enforce import acting_principal, require
from local.cloud.iam.moto_state import MotoFacts
from tuneplane.adapters import bedrock_import
from tuneplane.adapters.bedrock_import import ImportedModel, ImportJob
from tuneplane.errors import DeployServiceError, ModelNotReady, SmokeTestFailed

_ACCOUNT_REGION = "us-east-1:123456789012"


def _echo(messages: list[dict[str, str]]) -> str:
    return f"(local imported model) you said: {messages[-1]['content']}"


def _authorize(operation: str, params: dict[str, object], failure: str) -> None:
    """The caller's permission for the Bedrock call the real adapter makes; denied: the adapter's own error."""
    principal = acting_principal()
    if principal is None:
        return
    region = boto3.session.Session().region_name or "us-east-1"
    call = Call("bedrock", operation, params, region, principal.account)
    try:
        require("bedrock", operation, checks(call, MotoFacts(region, principal.account)), region)
    except ClientError as exc:
        raise DeployServiceError(f"{failure}: {exc}") from exc


@dataclass
class LocalModelImport:
    """``ModelImportService`` in memory. ``calls`` records every call, for tests to assert on."""

    answer: Callable[[list[dict[str, str]]], str] = _echo
    polls_to_complete: int = 1
    cold_start_chats: int = 0
    fail_with: str | None = None
    jobs: dict[str, dict[str, object]] = field(default_factory=dict)
    models: dict[str, ImportedModel] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    _clock: Iterator[int] = field(default_factory=itertools.count)

    def start_import(
        self, job_name: str, model_name: str, role_arn: str, s3_uri: str, kms_key_arn: str | None, tags: dict[str, str]
    ) -> str:
        self.calls.append(("start_import", model_name))
        tag_list = [{"key": key, "value": value} for key, value in tags.items()]
        request: dict[str, object] = {
            "jobName": job_name,
            "importedModelName": model_name,
            "roleArn": role_arn,
            "modelDataSource": {"s3DataSource": {"s3Uri": s3_uri}},
            "jobTags": tag_list,
            "importedModelTags": tag_list,
        }
        _authorize("CreateModelImportJob", request, f"start Bedrock import {job_name}")
        if any(model.name == model_name for model in self.models.values()):
            raise DeployServiceError(f"start Bedrock import {job_name}: a model named {model_name} exists")
        bucket, _, prefix = s3_uri.removeprefix("s3://").partition("/")
        try:
            config = json.loads(
                boto3.client("s3").get_object(Bucket=bucket, Key=prefix + "config.json")["Body"].read()
            )
        except ClientError as exc:
            raise DeployServiceError(
                f"start Bedrock import {job_name}: cannot read {s3_uri}config.json: {exc}"
            ) from exc
        arn = f"arn:aws:bedrock:{_ACCOUNT_REGION}:model-import-job/{job_name}"
        self.jobs[arn] = {"model_name": model_name, "polls": 0, "architectures": config.get("architectures")}
        return arn

    def import_job(self, job_arn: str) -> ImportJob:
        self.calls.append(("import_job", job_arn))
        _authorize("GetModelImportJob", {"jobIdentifier": job_arn}, f"describe Bedrock import {job_arn}")
        job = self.jobs[job_arn]
        job["polls"] = int(str(job["polls"])) + 1
        if int(str(job["polls"])) < self.polls_to_complete:
            return ImportJob(arn=job_arn, status="InProgress")
        if self.fail_with:
            return ImportJob(arn=job_arn, status="Failed", failure=self.fail_with)
        name = str(job["model_name"])
        arn = f"arn:aws:bedrock:{_ACCOUNT_REGION}:imported-model/{name}"
        created = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=next(self._clock))
        self.models.setdefault(arn, ImportedModel(name=name, arn=arn, created=created))
        return ImportJob(arn=job_arn, status="Completed", imported_model_arn=arn)

    def imported_models(self, name_contains: str) -> list[ImportedModel]:
        self.calls.append(("imported_models", name_contains))
        _authorize("ListImportedModels", {"nameContains": name_contains}, f"list imported models *{name_contains}*")
        return [model for model in self.models.values() if name_contains in model.name]

    def delete_imported_model(self, arn: str) -> None:
        self.calls.append(("delete_imported_model", arn))
        if self.models.pop(arn, None) is None:
            raise DeployServiceError(f"delete imported model {arn}: no such model")

    def chat(self, model_arn: str, messages: list[dict[str, str]], max_tokens: int) -> str:
        self.calls.append(("chat", model_arn))
        if model_arn not in self.models:
            raise SmokeTestFailed(f"the imported model {model_arn} did not answer: no such model")
        if self.cold_start_chats > 0:
            self.cold_start_chats -= 1
            raise ModelNotReady(f"the imported model {model_arn} is not ready yet (cold start)")
        return self.answer(messages)

    def add_model(self, name: str, created: datetime) -> ImportedModel:
        """An import from an earlier run (for clean-up tests)."""
        model = ImportedModel(
            name=name, arn=f"arn:aws:bedrock:{_ACCOUNT_REGION}:imported-model/{name}", created=created
        )
        self.models[model.arn] = model
        return model


@contextmanager
def local_bedrock_imports(service: LocalModelImport) -> Iterator[LocalModelImport]:
    """The Deploy function talks to ``service`` instead of Bedrock while this is open."""
    with mock.patch.object(bedrock_import, "model_import_service", return_value=service):
        yield service
