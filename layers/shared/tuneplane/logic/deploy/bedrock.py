"""The Bedrock deploy target: Custom Model Import of the merged bf16 model, one chat request to it, and clean-up
of the dataset's older imports (imported models live outside CloudFormation: nobody else deletes them)."""

from __future__ import annotations

import hashlib

from tuneplane.adapters.bedrock_import import ModelImportService
from tuneplane.config import DeploySettings
from tuneplane.errors import InvalidConfiguration, ModelImportFailed, UnservableModel
from tuneplane.logic.deploy.context import (
    RunArtifacts,
    ask_smoke_question,
    imported_model_prefix,
    read_json,
    run_resource_name,
)
from tuneplane.models.deploy import Deployment


def _refuse_unimportable(report: dict[str, object]) -> None:
    verdict = report.get("bedrock_custom_model_import")
    if not isinstance(verdict, dict):
        raise UnservableModel("the merge report has no Bedrock Custom Model Import verdict: cannot tell it imports")
    if not verdict.get("compatible"):
        reasons = [str(r) for r in verdict.get("reasons") or [] if " not " in str(r) or "missing" in str(r)]
        raise UnservableModel(
            "Bedrock Custom Model Import cannot take this model: " + ("; ".join(reasons) or "incompatible")
        )


def begin(settings: DeploySettings, run: RunArtifacts, service: ModelImportService) -> Deployment:
    if not settings.bedrock_role_arn:
        raise InvalidConfiguration("DeployTarget=bedrock needs the import role: the stack's BedrockImportRole")
    _refuse_unimportable(read_json(run.merged_uri + "merge_report.json"))
    prefix = imported_model_prefix(settings, run.dataset_key)
    model_name = f"{prefix}-{hashlib.sha256(run.run_id.encode()).hexdigest()[:10]}"
    job_name = run_resource_name(run.run_id, "import")
    job_arn = service.start_import(
        job_name,
        model_name,
        settings.bedrock_role_arn,
        run.merged_uri,
        settings.kms_key_arn,
        {"tuneplane:stack": settings.stack_name, "tuneplane:run-id": run.run_id},
    )
    return Deployment(
        target="bedrock",
        max_polls=settings.max_polls,
        import_job_arn=job_arn,
        imported_model_name=model_name,
        notes=[f"importing {run.merged_uri} as {model_name}"],
    )


def poll(deployment: Deployment, service: ModelImportService) -> Deployment:
    job = service.import_job(str(deployment.import_job_arn))
    polls = deployment.polls + 1
    if job.status == "Completed":
        if not job.imported_model_arn:
            raise ModelImportFailed(f"import {job.arn} completed without an imported model ARN")
        return deployment.model_copy(
            update={"status": "ready", "polls": polls, "imported_model_arn": job.imported_model_arn}
        )
    if job.status == "Failed":
        raise ModelImportFailed(f"Bedrock import of {deployment.imported_model_name} failed: {job.failure}")
    if polls >= deployment.max_polls:
        raise ModelImportFailed(f"Bedrock import {job.arn} still {job.status} after {polls} checks: gave up waiting")
    return deployment.model_copy(update={"polls": polls})


def smoke(
    settings: DeploySettings, run: RunArtifacts, deployment: Deployment, service: ModelImportService
) -> Deployment:
    """Ask the imported model one eval question, then delete the dataset's imports beyond the newest N."""
    answered = ask_smoke_question(
        run.eval_uri,
        lambda messages: service.chat(str(deployment.imported_model_arn), messages, settings.smoke_max_tokens),
        f"the imported model {deployment.imported_model_name}",
    )
    models = sorted(
        service.imported_models(imported_model_prefix(settings, run.dataset_key)),
        key=lambda model: model.created,
        reverse=True,
    )
    earlier = [model for model in models if model.arn != deployment.imported_model_arn]
    keep = {deployment.imported_model_arn} | {m.arn for m in earlier[: settings.bedrock_keep_models - 1]}
    removed = []
    for model in models:
        if model.arn not in keep:
            service.delete_imported_model(model.arn)
            removed.append(model.name)
    notes = [f"deleted {len(removed)} older import(s) of this dataset: {', '.join(removed)}"] if removed else []
    return deployment.model_copy(
        update={
            **answered,
            "removed_models": removed,
            "notes": [*deployment.notes, *notes],
        }
    )


def rollback(deployment: Deployment, service: ModelImportService) -> Deployment:
    """A model that failed its smoke test is not left behind for someone to call."""
    if not deployment.imported_model_arn:
        note = "no model was imported: nothing to roll back"
    else:
        service.delete_imported_model(deployment.imported_model_arn)
        note = f"deleted the imported model {deployment.imported_model_name}"
    return deployment.model_copy(update={"notes": [*deployment.notes, note]})
