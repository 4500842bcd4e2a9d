"""How vLLM serves a run's model on a SageMaker endpoint: what is mounted, the ``SM_VLLM_*`` settings (vLLM's
SageMaker entrypoint turns ``SM_VLLM_FOO_BAR=x`` into ``--foo-bar x``, and an empty value into a bare ``--foo-bar``
flag: containers/serve/README.md), the blue/green guardrails, and what is refused before anything is deployed."""

from __future__ import annotations

import re
from typing import Any

from tuneplane.config import DeploySettings
from tuneplane.errors import UnservableModel
from tuneplane.logic.deploy.context import RunArtifacts
from tuneplane.models.deploy import ServingPlan

MODEL_DIR = "/opt/ml/model"
ADAPTER_DIR = "/opt/ml/additional-model-data-sources/adapter"
# vLLM's LoRA kernels take these max_lora_rank values only (vllm/config/lora.py: MaxLoRARanks in 0.33,
# possible_max_ranks before).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
_EIGHT_GPU_FAMILIES = {"p4d", "p4de", "p5", "p5e", "p5en", "p6"}
_MULTI_GPU_SIZES = {"12xlarge": 4, "24xlarge": 4, "48xlarge": 8}
_SINGLE_GPU_FAMILIES = {"g4dn", "g5", "g6", "g6e", "g6f"}
_INSTANCE = re.compile(r"^ml\.([a-z0-9]+)\.([a-z0-9]+)$")


def gpu_count(instance_type: str) -> int | None:
    """GPUs of a SageMaker GPU instance type, or None when it is not one we know."""
    match = _INSTANCE.match(instance_type)
    if not match:
        return None
    family, size = match.groups()
    if family in _EIGHT_GPU_FAMILIES:
        return 8
    if family in _SINGLE_GPU_FAMILIES:
        return _MULTI_GPU_SIZES.get(size, 1)
    return None


def tensor_parallel_size(settings: DeploySettings) -> int:
    if settings.tensor_parallel_size:
        return settings.tensor_parallel_size
    gpus = gpu_count(settings.endpoint_instance_type)
    if gpus is None:
        raise UnservableModel(
            f"{settings.endpoint_instance_type} is not a GPU instance type tuneplane knows: vLLM needs a GPU; choose "
            "an ml.g5/g6/g6e/p4d/p5 instance (EndpointInstanceType) or set EndpointTensorParallelSize"
        )
    return gpus


def lora_rank_setting(adapter_rank: Any, settings: DeploySettings) -> int:
    """The server's ``max_lora_rank`` for this adapter: the smallest value vLLM accepts that fits the rank (a larger
    setting reserves more GPU memory per adapter slot), refused when above what this stack allows."""
    if not isinstance(adapter_rank, int) or adapter_rank < 1:
        raise UnservableModel(f"the merge report has no usable adapter_rank ({adapter_rank!r}): cannot serve LoRA")
    if adapter_rank > settings.max_lora_rank:
        raise UnservableModel(
            f"LoRA rank {adapter_rank} is above the server's max_lora_rank {settings.max_lora_rank} (MaxLoraRank): "
            f"train with lora_r <= {settings.max_lora_rank}, raise MaxLoraRank (up to 512; more GPU memory per "
            "adapter), or serve the merged model (ServeMode=merged)"
        )
    return next(rank for rank in VLLM_LORA_RANKS if rank >= adapter_rank)


def plan(settings: DeploySettings, run: RunArtifacts, merge_report: dict[str, Any], lora_name: str) -> ServingPlan:
    """What the endpoint serves: the quantized model when the run made one, else the merged model; or, with
    ServeMode=lora, the base model with the run's adapter."""
    gpus = tensor_parallel_size(settings)
    environment = {
        "SM_VLLM_MODEL": MODEL_DIR,
        "SM_VLLM_MAX_MODEL_LEN": str(run.max_seq_length or settings.max_model_len),
        "SM_VLLM_GPU_MEMORY_UTILIZATION": str(settings.gpu_memory_utilization),
        "SM_VLLM_TENSOR_PARALLEL_SIZE": str(gpus),
        "SM_VLLM_ENABLE_PREFIX_CACHING": "",
        "SM_VLLM_GENERATION_CONFIG": "auto",  # the model's generation_config.json: EOS includes the end of turn
    }
    if settings.serve_mode == "lora":
        if not run.adapter_uri:
            raise UnservableModel("ServeMode=lora, but the run has no adapter (train.model_artifacts)")
        rank = lora_rank_setting(merge_report.get("adapter_rank"), settings)
        environment |= {
            "SM_VLLM_DTYPE": "bfloat16",
            "SM_VLLM_ENABLE_LORA": "",
            "SM_VLLM_MAX_LORA_RANK": str(rank),
            "SM_VLLM_MAX_LORAS": "1",
            "SM_VLLM_LORA_MODULES": f"{lora_name}={ADAPTER_DIR}",
        }
        return ServingPlan(
            served="lora",
            model_data_uri=settings.base_model_s3_uri,
            adapter_uri=run.adapter_uri,
            environment=environment,
            instance_type=settings.endpoint_instance_type,
            tensor_parallel_size=gpus,
        )
    if run.quantized_uri:  # AWQ W4A16 in compressed-tensors: vLLM reads the scheme from config.json
        return ServingPlan(
            served="quantized",
            model_data_uri=run.quantized_uri,
            environment=environment | {"SM_VLLM_DTYPE": "float16"},
            instance_type=settings.endpoint_instance_type,
            tensor_parallel_size=gpus,
        )
    dtype = str(merge_report.get("dtype") or "bf16")
    return ServingPlan(
        served="merged",
        model_data_uri=run.merged_uri,
        environment=environment | {"SM_VLLM_DTYPE": {"bf16": "bfloat16", "fp16": "float16"}.get(dtype, "auto")},
        instance_type=settings.endpoint_instance_type,
        tensor_parallel_size=gpus,
    )


def alarm_names(endpoint: str, stack_name: str) -> tuple[str, str]:
    """The endpoint's two rollback alarms. Named under the stack (``<stack>-<endpoint>-5xx``) so that the stack's alarm
    topic, whose policy lets CloudWatch publish only for the stack's alarms, tells people when one fires later."""
    return f"{stack_name}-{endpoint}-5xx", f"{stack_name}-{endpoint}-latency"


def deployment_config(settings: DeploySettings, endpoint: str) -> dict[str, Any]:
    """Blue/green with auto-rollback on the endpoint's alarms. A canary needs at least two instances (its size is
    at most half the fleet); with one, traffic moves all at once and the alarms are watched while the old fleet
    waits to be terminated."""
    bake = settings.bake_time_s
    if settings.endpoint_min_instances >= 2:
        routing: dict[str, Any] = {
            "Type": "CANARY",
            "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": settings.canary_percent},
            "WaitIntervalInSeconds": bake,
        }
    else:
        routing = {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0}
    return {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": routing,
            "TerminationWaitInSeconds": bake,
            "MaximumExecutionTimeoutInSeconds": min(28_800, max(600, 2 * bake + 3600)),
        },
        "AutoRollbackConfiguration": {
            "Alarms": [{"AlarmName": name} for name in alarm_names(endpoint, settings.stack_name)]
        },
    }
