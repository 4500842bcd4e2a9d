"""The Bedrock deploy target through the Deploy function's logic: refusal of an unimportable model, the import
and its polling, the smoke test on the eval split's first question, clean-up of older imports, and rollback.

moto has no Custom Model Import: the service is ``local.cloud.bedrock.LocalModelImport`` (S3 is moto's)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from local.cloud.bedrock import LocalModelImport
from moto import mock_aws

from tuneplane.adapters import s3 as s3_adapter
from tuneplane.config import DeploySettings
from tuneplane.errors import (
    InvalidConfiguration,
    ModelImportFailed,
    ModelNotReady,
    SmokeTestFailed,
    UnservableModel,
)
from tuneplane.logic.deploy import handle
from tuneplane.logic.deploy.context import imported_model_prefix
from tuneplane.models.deploy import DeployRequest

BUCKET = "tuneplane-data-test"
RUN_ID = "support-1515d2ffc132722f"
MERGED = f"s3://{BUCKET}/runs/{RUN_ID}/merged/"
EVAL_KEY = f"runs/{RUN_ID}/data/eval.jsonl"
QUESTION = [
    {"role": "system", "content": "Route the ticket."},
    {"role": "user", "content": "My card was charged twice"},
]
COMPATIBLE = {"compatible": True, "reasons": ["config.json present", "architecture LlamaForCausalLM is supported"]}
STATE: dict[str, Any] = {
    "run_id": RUN_ID,
    "bucket": BUCKET,
    "key": "incoming/support.jsonl",
    "validation": {"summary": {"eval_uri": f"s3://{BUCKET}/{EVAL_KEY}"}},
    "train": {"model_artifacts": f"s3://{BUCKET}/runs/{RUN_ID}/train/output/model.tar.gz"},
    "recorded": {"merge": {"outcome": {"artifacts": {"merged": MERGED}}}},
}


def _settings(**overrides: Any) -> DeploySettings:
    values: dict[str, Any] = {
        "stack_name": "tuneplane-test",
        "data_bucket": BUCKET,
        "base_model_s3_uri": "s3://models/tiny/",
        "sagemaker_role_arn": "arn:aws:iam::123456789012:role/sm",
        "bedrock_role_arn": "arn:aws:iam::123456789012:role/tuneplane-test-import",
        "bedrock_keep_models": 2,
    }
    return DeploySettings(**(values | overrides))


@pytest.fixture
def bucket() -> Iterator[Any]:
    """moto S3 with the run's merged model (config + merge report) and eval split."""
    with mock_aws():
        s3_adapter.s3_client.cache_clear()
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key=f"runs/{RUN_ID}/merged/config.json", Body=b'{"architectures": ["X"]}')
        _merge_report(s3, COMPATIBLE)
        lines = [{"messages": [*QUESTION, {"role": "assistant", "content": "billing"}]}] * 2
        s3.put_object(Bucket=BUCKET, Key=EVAL_KEY, Body="\n".join(json.dumps(line) for line in lines).encode())
        yield s3
        s3_adapter.s3_client.cache_clear()


def _merge_report(s3: Any, verdict: dict[str, Any]) -> None:
    report = {"adapter_rank": 8, "dtype": "bf16", "bedrock_custom_model_import": verdict}
    s3.put_object(Bucket=BUCKET, Key=f"runs/{RUN_ID}/merged/merge_report.json", Body=json.dumps(report).encode())


def _step(action: str, service: LocalModelImport, deployment: dict[str, Any] | None = None, **settings: Any) -> Any:
    request = DeployRequest(action=action, target="bedrock", deployment=deployment, state=STATE)  # type: ignore[arg-type]
    return handle(request, _settings(**settings), service)


def test_import_then_smoke_test_then_clean_up_older_imports(bucket: Any) -> None:
    # GIVEN two earlier imports of the same dataset, one import of another dataset, and a 2-poll import
    service = LocalModelImport(answer=lambda messages: "billing", polls_to_complete=2)
    prefix = imported_model_prefix(_settings(), "incoming/support.jsonl")
    oldest = service.add_model(f"{prefix}-0000000001", datetime(2025, 1, 1, tzinfo=UTC))
    older = service.add_model(f"{prefix}-0000000002", datetime(2025, 6, 1, tzinfo=UTC))
    other = service.add_model("other-dataset-12345678-0000000003", datetime(2025, 1, 1, tzinfo=UTC))

    # WHEN the state machine runs begin, poll until ready, smoke
    deployment = _step("begin", service)
    assert deployment["status"] == "pending" and deployment["import_job_arn"]
    deployment = _step("poll", service, deployment)
    assert deployment["status"] == "pending" and deployment["polls"] == 1
    deployment = _step("poll", service, deployment)
    assert deployment["status"] == "ready"
    deployment = _step("smoke", service, deployment)

    # THEN the merged model was imported under a per-run name, answered the eval split's first question
    assert ("start_import", deployment["imported_model_name"]) in service.calls
    assert deployment["imported_model_name"].startswith(prefix)
    assert deployment["question"] == "My card was charged twice"
    assert deployment["expected"] == "billing" and deployment["answer"] == "billing"
    # AND only the newest 2 imports of this dataset remain (the new one included); other datasets are untouched
    assert set(service.models) == {deployment["imported_model_arn"], older.arn, other.arn}
    assert deployment["removed_models"] == [oldest.name]
    assert any("deleted 1 older import" in note for note in deployment["notes"])


def test_an_unimportable_model_is_refused_before_any_import(bucket: Any) -> None:
    # GIVEN a merge report saying the architecture and dtype are not importable
    _merge_report(
        bucket,
        {
            "compatible": False,
            "reasons": [
                "config.json present",
                "architecture GemmaForCausalLM is not in the supported list [...]",
                "dtype float32 is not bf16/fp16 (merge with --dtype bf16)",
            ],
        },
    )
    service = LocalModelImport()

    # WHEN the deployment begins / THEN it is refused with the failing reasons only, and nothing was imported
    with pytest.raises(UnservableModel) as refused:
        _step("begin", service)
    assert "GemmaForCausalLM is not in the supported list" in str(refused.value)
    assert "dtype float32 is not bf16/fp16" in str(refused.value)
    assert "config.json present" not in str(refused.value)
    assert service.calls == []


def test_a_failed_import_names_the_services_reason(bucket: Any) -> None:
    # GIVEN an import the service fails
    service = LocalModelImport(fail_with="The model's config.json has an unsupported rope_scaling")
    deployment = _step("begin", service)

    # WHEN it is polled / THEN ModelImportFailed carries Bedrock's failure message
    with pytest.raises(ModelImportFailed, match="unsupported rope_scaling"):
        _step("poll", service, deployment)


def test_polling_gives_up_after_the_allowed_checks(bucket: Any) -> None:
    # GIVEN an import that never finishes within max_polls=2
    service = LocalModelImport(polls_to_complete=10)
    deployment = _step("begin", service, max_polls=2)
    deployment = _step("poll", service, deployment, max_polls=2)

    # WHEN the last allowed check finds it still running / THEN the deployment fails saying so
    with pytest.raises(ModelImportFailed, match="still InProgress after 2 checks"):
        _step("poll", service, deployment, max_polls=2)


def test_an_empty_answer_fails_the_smoke_test_and_rollback_deletes_the_import(bucket: Any) -> None:
    # GIVEN an imported model that answers with nothing
    service = LocalModelImport(answer=lambda messages: "  ")
    deployment = _step("poll", service, _step("begin", service))

    # WHEN it is smoke-tested / THEN SmokeTestFailed
    with pytest.raises(SmokeTestFailed, match="empty message"):
        _step("smoke", service, deployment)

    # AND rollback deletes the model that failed, so nobody calls it
    rolled_back = _step("rollback", service, deployment)
    assert deployment["imported_model_arn"] not in service.models
    assert rolled_back["notes"][-1] == f"deleted the imported model {deployment['imported_model_name']}"


def test_bedrock_needs_its_import_role(bucket: Any) -> None:
    # GIVEN a stack without the import role (DeployTarget was not bedrock when deployed) / THEN a clear error
    with pytest.raises(InvalidConfiguration, match="BedrockImportRole"):
        _step("begin", LocalModelImport(), bedrock_role_arn=None)


@pytest.mark.parametrize(
    ("code", "raised"), [("ModelNotReadyException", ModelNotReady), ("ValidationException", SmokeTestFailed)]
)
def test_bedrocks_cold_start_answer_is_its_own_error(
    code: str, raised: type[Exception], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN Bedrock Runtime answering InvokeModel with an error (the response shape checked against its model)
    from botocore.stub import Stubber

    from tuneplane.adapters import bedrock_import

    runtime = boto3.client("bedrock-runtime", region_name="us-east-1")
    monkeypatch.setattr(bedrock_import, "_runtime", lambda: runtime)
    with Stubber(runtime) as stubber:
        stubber.add_client_error(
            "invoke_model", service_error_code=code, service_message="not yet", http_status_code=429
        )
        # WHEN the smoke test asks the imported model
        with pytest.raises(SmokeTestFailed) as failure:
            bedrock_import.BedrockModelImport().chat("arn:aws:bedrock:us-east-1:1:imported-model/m", QUESTION, 16)
    # THEN a cold start is ModelNotReady (retried for minutes by the ASL), anything else a failed smoke test
    assert type(failure.value) is raised
