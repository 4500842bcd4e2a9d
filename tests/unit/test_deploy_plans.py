"""What the Deploy stage decides before it deploys anything: the vLLM settings of each way of serving, the LoRA
rank refusal, the GPU count of an instance, the blue/green guardrails, and the names it gives resources."""

from __future__ import annotations

from typing import Any

import pytest

from tuneplane.config import DeploySettings
from tuneplane.errors import UnservableModel
from tuneplane.logic.deploy import serving
from tuneplane.logic.deploy.context import (
    NAME_MAX,
    RunArtifacts,
    endpoint_name,
    imported_model_prefix,
    run_resource_name,
)

BUCKET = "tuneplane-data-test"
RUN_ID = "support-1515d2ffc132722f"


def _settings(**overrides: Any) -> DeploySettings:
    values: dict[str, Any] = {
        "stack_name": "tuneplane-test",
        "data_bucket": BUCKET,
        "base_model_s3_uri": "s3://models/llama-3-8b/",
        "sagemaker_role_arn": "arn:aws:iam::123456789012:role/sm",
        "serve_image_uri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/vllm:0.33",
    }
    return DeploySettings(**(values | overrides))


def _run(**overrides: Any) -> RunArtifacts:
    values: dict[str, Any] = {
        "run_id": RUN_ID,
        "dataset_key": "incoming/support.jsonl",
        "merged_uri": f"s3://{BUCKET}/runs/{RUN_ID}/merged/",
        "quantized_uri": None,
        "adapter_uri": f"s3://{BUCKET}/runs/{RUN_ID}/train/output/model.tar.gz",
        "eval_uri": f"s3://{BUCKET}/runs/{RUN_ID}/data/eval.jsonl",
        "max_seq_length": 4096,
    }
    return RunArtifacts(**(values | overrides))


@pytest.mark.parametrize(
    ("instance", "gpus"),
    [
        ("ml.g5.2xlarge", 1),
        ("ml.g5.12xlarge", 4),
        ("ml.g6e.48xlarge", 8),
        ("ml.p4d.24xlarge", 8),
        ("ml.p5.48xlarge", 8),
        ("ml.m5.xlarge", None),
        ("g5.2xlarge", None),
    ],
)
def test_gpu_count_of_instance_types(instance: str, gpus: int | None) -> None:
    # GIVEN an instance type / WHEN its GPUs are counted / THEN the known count, or None for a CPU or unknown type
    assert serving.gpu_count(instance) == gpus


def test_merged_model_is_served_with_the_training_length_and_every_gpu() -> None:
    # GIVEN a run without quantization on a 4-GPU instance
    settings = _settings(endpoint_instance_type="ml.g5.12xlarge")

    # WHEN the serving plan is made
    plan = serving.plan(settings, _run(), {"dtype": "bf16"}, lora_name="support")

    # THEN vLLM serves the merged model in bf16, tensor parallel over the 4 GPUs, at the training sequence length
    assert plan.served == "merged"
    assert plan.model_data_uri == f"s3://{BUCKET}/runs/{RUN_ID}/merged/"
    assert plan.adapter_uri is None
    assert plan.environment == {
        "SM_VLLM_MODEL": "/opt/ml/model",
        "SM_VLLM_MAX_MODEL_LEN": "4096",
        "SM_VLLM_GPU_MEMORY_UTILIZATION": "0.9",
        "SM_VLLM_TENSOR_PARALLEL_SIZE": "4",
        "SM_VLLM_ENABLE_PREFIX_CACHING": "",
        "SM_VLLM_GENERATION_CONFIG": "auto",
        "SM_VLLM_DTYPE": "bfloat16",
    }
    assert plan.tensor_parallel_size == 4


def test_a_quantized_model_is_served_instead_of_the_merged_one() -> None:
    # GIVEN a run whose Quantize stage wrote an AWQ model, and no sequence length in the sidecar
    run = _run(quantized_uri=f"s3://{BUCKET}/runs/{RUN_ID}/quantized/", max_seq_length=None)

    # WHEN the serving plan is made
    plan = serving.plan(_settings(max_model_len=2048), run, {"dtype": "bf16"}, lora_name="support")

    # THEN the compressed-tensors model is mounted, with fp16 activations and the stack's length
    assert plan.served == "quantized"
    assert plan.model_data_uri.endswith("/quantized/")
    assert plan.environment["SM_VLLM_DTYPE"] == "float16"
    assert plan.environment["SM_VLLM_MAX_MODEL_LEN"] == "2048"


@pytest.mark.parametrize(("rank", "server_rank"), [(1, 1), (8, 8), (12, 16), (64, 64)])
def test_lora_serving_sets_max_lora_rank_from_the_adapter(rank: int, server_rank: int) -> None:
    # GIVEN ServeMode=lora and an adapter of rank `rank` (from the merge report, read from adapter_config.json)
    settings = _settings(serve_mode="lora", max_lora_rank=64)

    # WHEN the serving plan is made
    plan = serving.plan(settings, _run(), {"adapter_rank": rank}, lora_name="support-ab12")

    # THEN the base model is mounted with the adapter, and max_lora_rank is the smallest vLLM value >= the rank
    assert plan.served == "lora"
    assert plan.model_data_uri == "s3://models/llama-3-8b/"
    assert plan.adapter_uri == _run().adapter_uri
    assert plan.environment["SM_VLLM_MAX_LORA_RANK"] == str(server_rank)
    assert plan.environment["SM_VLLM_ENABLE_LORA"] == ""
    assert plan.environment["SM_VLLM_LORA_MODULES"] == "support-ab12=/opt/ml/additional-model-data-sources/adapter"


def test_a_lora_rank_above_the_servers_limit_is_refused_with_the_way_out() -> None:
    # GIVEN ServeMode=lora with max_lora_rank 64 and an adapter of rank 128
    settings = _settings(serve_mode="lora", max_lora_rank=64)

    # WHEN the serving plan is made / THEN it is refused before deploying, naming both ranks and the options
    with pytest.raises(UnservableModel) as refused:
        serving.plan(settings, _run(), {"adapter_rank": 128}, lora_name="support")
    message = str(refused.value)
    assert "LoRA rank 128 is above the server's max_lora_rank 64" in message
    assert "ServeMode=merged" in message
    assert "lora_r <= 64" in message


def test_lora_serving_without_an_adapter_or_rank_is_refused() -> None:
    # GIVEN ServeMode=lora / WHEN the run has no adapter, or the report no rank / THEN refused with the reason
    settings = _settings(serve_mode="lora")
    with pytest.raises(UnservableModel, match="no adapter"):
        serving.plan(settings, _run(adapter_uri=None), {"adapter_rank": 8}, lora_name="x")
    with pytest.raises(UnservableModel, match="no usable adapter_rank"):
        serving.plan(settings, _run(), {}, lora_name="x")


def test_a_cpu_instance_is_refused() -> None:
    # GIVEN a CPU endpoint instance and no explicit tensor parallel size / THEN vLLM's need for a GPU is the reason
    with pytest.raises(UnservableModel, match="vLLM needs a GPU"):
        serving.plan(_settings(endpoint_instance_type="ml.m5.xlarge"), _run(), {}, lora_name="x")
    # AND an explicit size is taken as given
    plan = serving.plan(_settings(endpoint_instance_type="ml.m5.xlarge", tensor_parallel_size=2), _run(), {}, "x")
    assert plan.environment["SM_VLLM_TENSOR_PARALLEL_SIZE"] == "2"


def test_blue_green_is_a_canary_with_two_instances_and_all_at_once_with_one() -> None:
    # GIVEN two instances / WHEN the update's guardrails are made / THEN a canary of the configured share, baked
    canary = serving.deployment_config(_settings(endpoint_min_instances=2, canary_percent=25, bake_time_s=600), "ep")
    routing = canary["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]
    assert routing == {
        "Type": "CANARY",
        "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 25},
        "WaitIntervalInSeconds": 600,
    }
    stack = _settings().stack_name
    assert canary["AutoRollbackConfiguration"] == {
        "Alarms": [{"AlarmName": f"{stack}-ep-5xx"}, {"AlarmName": f"{stack}-ep-latency"}]
    }

    # AND with one instance (a canary is at most half the fleet) all at once, watched while the old fleet waits
    single = serving.deployment_config(_settings(endpoint_min_instances=1, bake_time_s=300), "ep")
    assert single["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]["Type"] == "ALL_AT_ONCE"
    assert single["BlueGreenUpdatePolicy"]["TerminationWaitInSeconds"] == 300
    assert 600 <= single["BlueGreenUpdatePolicy"]["MaximumExecutionTimeoutInSeconds"] <= 28_800


def test_names_are_stable_per_dataset_unique_per_run_and_within_limits() -> None:
    # GIVEN two stacks and a long dataset name
    settings, other_stack = _settings(), _settings(stack_name="tuneplane-prod")
    key = "incoming/" + "customer-support-tickets-" * 5 + ".jsonl"

    # WHEN names are made
    name = endpoint_name(settings, key)

    # THEN the endpoint is the same for every run of a dataset, differs per stack, fits SageMaker's pattern
    assert name == endpoint_name(settings, key)
    assert name != endpoint_name(other_stack, key)
    assert len(name) <= NAME_MAX and name[0].isalnum() and all(c.isalnum() or c == "-" for c in name)
    assert name.startswith("customer-support-tickets")
    # AND an imported model name (prefix + "-" + 10 hex) fits too; per-run resources carry the run's job prefix
    assert len(imported_model_prefix(settings, key)) + 11 <= NAME_MAX
    assert run_resource_name(RUN_ID, "serve").startswith("support-1515d2ffc132722f-")
