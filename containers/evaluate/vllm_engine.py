"""Greedy generation through vLLM's offline engine (``vllm.LLM``), for the Evaluate job on AWS.

Why vLLM here: it is the engine the endpoint serves the model with (containers/serve: the evaluate image built by
Dockerfile.vllm is the serve image plus this job), so answers, stops and LoRA application are scored as production
computes them; and it is much faster than transformers' batched ``generate``: continuous batching (a finished answer
frees its slot for the next prompt at once, instead of idling until the longest answer of its batch ends) over a
paged KV cache (memory for the tokens actually generated, no padding, no per-batch worst case to plan). The local
cloud, and any image without vLLM or without a GPU, keep evaluate.py's transformers path (``available()`` says which).

The prompts are the token ids evaluate.py already rendered with the chat template and cut to max_prompt_tokens, passed
as ``TokensPrompt``: both paths generate from the same ids, and no second template render can drift from the first.

Checked against the source of vLLM 0.33.0, the version of the serve image (vllm/vllm-openai:v0.33.0): the PyPI wheel
vllm-0.33.0-cp38-abi3-manylinux_2_28_x86_64.whl, whose vllm/_version.py reads commit g4ba787ec9. Paths below are in
that source.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import time
from pathlib import Path
from typing import Any

# transformers_utils/model_arch_config_convertor.py (derive_max_model_len_and_key): the config keys vLLM takes the
# model's maximum length from (the smallest present; model_max_length, when present, wins).
MAX_LENGTH_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "model_max_length",
    "max_target_positions",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)

# vllm/config/lora.py MaxLoRARanks: the only max_lora_rank values vLLM takes (the Deploy side's VLLM_LORA_RANKS in
# tuneplane/logic/deploy/serving.py; a test keeps the two equal).
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

# The name and id of the one adapter (vllm/lora/request.py: LoRARequest needs lora_int_id >= 1).
ADAPTER_NAME = "adapter"
ADAPTER_ID = 1


def available() -> bool:
    """Whether this process can generate with vLLM: the package is installed and a CUDA GPU is visible (the vLLM
    wheel is built for CUDA; the transformers path covers CPUs)."""
    if importlib.util.find_spec("vllm") is None:
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def max_lora_rank_for(rank: int) -> int:
    """The smallest max_lora_rank vLLM takes that fits an adapter of this rank (as the Deploy stage sets it)."""
    fitting = [value for value in MAX_LORA_RANKS if value >= rank]
    if not fitting:
        raise ValueError(f"LoRA rank {rank} is above vLLM's largest max_lora_rank {MAX_LORA_RANKS[-1]}")
    return fitting[0]


def model_max_len(model_dir: Path) -> int | None:
    """The model's own maximum length as vLLM derives it from config.json before RoPE scaling (which only raises it),
    so a max_model_len at or below it is never refused; None when the config names none."""
    config = json.loads((model_dir / "config.json").read_text())
    text_config = config.get("text_config") or config  # multimodal configs keep the language model's in text_config
    if isinstance(text_config.get("model_max_length"), int):
        return int(text_config["model_max_length"])
    lengths = [int(text_config[key]) for key in MAX_LENGTH_KEYS if isinstance(text_config.get(key), int)]
    return min(lengths) if lengths else None


def max_model_len(model_dir: Path, encoded: list[list[int]], max_new_tokens: int) -> int:
    """Room for the longest prompt and a full answer, no more: vLLM sizes its scheduling (and checks that one sequence
    fits the KV cache) by max_model_len, which otherwise defaults to the model's whole context (32k and more)."""
    wanted = max(len(ids) for ids in encoded) + max_new_tokens
    ceiling = model_max_len(model_dir)
    return wanted if ceiling is None else min(wanted, ceiling)


def generate_token_ids(
    model_dir: Path,
    encoded: list[list[int]],
    stops: list[int],
    max_new_tokens: int,
    *,
    adapter_dir: Path | None = None,
    max_lora_rank: int | None = None,
    seed: int = 0,
    dtype: Any = "auto",
) -> tuple[list[list[int]], list[bool], float]:
    """Greedy answers of one model to prompts given as token ids, in their order: the generated ids without the stop
    token that ended them, whether a stop token ended them (False: max_new_tokens, or the model's length, cut them),
    and the seconds the generation took (the engine's start excluded).

    With ``adapter_dir``, the base model in ``model_dir`` with that LoRA adapter applied per request, as a
    ServeMode=lora endpoint serves it; ``max_lora_rank`` must then be one vLLM accepts (vllm/config/lora.py:
    MaxLoRARanks, 1 8 16 32 64 128 256 320 512) and at least the adapter's rank. ``dtype`` is the engine's (a torch
    dtype or "auto", "bfloat16", "float16"). The GPU memory is given back before returning, so that the next model can
    load in this process."""
    # vLLM is only installed in the Dockerfile.vllm image: no stubs for mypy here.
    from vllm import LLM, SamplingParams  # type: ignore[import-not-found]
    from vllm.inputs import TokensPrompt  # type: ignore[import-not-found]
    from vllm.lora.request import LoRARequest  # type: ignore[import-not-found]

    if not encoded:
        return [], [], 0.0
    if adapter_dir is not None and max_lora_rank is None:
        raise ValueError("generating with a LoRA adapter needs max_lora_rank")
    lora: dict[str, Any] = {}
    if adapter_dir is not None:  # as the endpoint: SM_VLLM_ENABLE_LORA, SM_VLLM_MAX_LORA_RANK, SM_VLLM_MAX_LORAS=1
        lora = {"enable_lora": True, "max_lora_rank": max_lora_rank, "max_loras": 1}
    length = max_model_len(model_dir, encoded, max_new_tokens)
    llm = LLM(
        model=str(model_dir),
        dtype=dtype,
        seed=seed,
        max_model_len=length,
        trust_remote_code=False,
        **lora,
    )
    try:
        params = SamplingParams(
            temperature=0.0,  # sampling_params.py: "Zero means greedy sampling"
            max_tokens=max_new_tokens,
            stop_token_ids=list(stops),
            # Stop on exactly `stops`. Without ignore_eos, v1/engine/input_processor.py calls
            # SamplingParams.update_from_generation_config, which makes the tokenizer's eos the request's eos and adds
            # generation_config.json's eos ids to stop_token_ids; our stops already hold both (generation.py:
            # served_stop_ids), so ignoring them changes nothing but makes the stop set ours alone.
            # v1/core/sched/utils.py check_stop: eos_token_id is the only thing ignore_eos turns off.
            ignore_eos=True,
            # We decode the ids ourselves (as the transformers path does); with detokenize=False the output
            # processor gives the request no tokenizer (v1/engine/output_processor.py) and only collects the ids.
            detokenize=False,
        )
        request = None
        if adapter_dir is not None:
            request = LoRARequest(lora_name=ADAPTER_NAME, lora_int_id=ADAPTER_ID, lora_path=str(adapter_dir))
        # vLLM refuses a prompt as long as the model's context, and one refusal aborts the whole call: a longer
        # prompt keeps its last tokens, as evaluate.py cuts every prompt to max_prompt_tokens.
        prompts = [TokensPrompt(prompt_token_ids=list(ids)[-(length - 1) :]) for ids in encoded]
        started = time.monotonic()
        # entrypoints/llm.py LLM.generate: one SamplingParams applies to every prompt, and the outputs come "in the
        # same order as the input prompts" (entrypoints/common/offline.py _run_engine sorts them by request id).
        outputs = llm.generate(prompts, params, use_tqdm=False, lora_request=request)
        seconds = time.monotonic() - started
    finally:
        release(llm)
        del llm
        gc.collect()
        cleanup()
    if len(outputs) != len(encoded):
        raise RuntimeError(f"vLLM answered {len(outputs)} of {len(encoded)} prompts")
    answers: list[list[int]] = []
    stopped: list[bool] = []
    for output in outputs:
        ids, ended = answer_ids(output.outputs[0], stops)
        answers.append(ids)
        stopped.append(ended)
    return answers, stopped, seconds


def answer_ids(completion: Any, stops: list[int]) -> tuple[list[int], bool]:
    """A CompletionOutput's generated ids without the stop token that ended it, and whether one did.

    v1/engine/detokenizer.py (IncrementalDetokenizer.update, and BaseIncrementalDetokenizer.update when stop-
    terminated) appends the stop token to token_ids: only the text leaves it out. outputs.py: finish_reason is
    str(FinishReason) (v1/engine/__init__.py: "stop", "length", "abort", "error", "repetition"); "stop" comes from
    check_stop (v1/core/sched/utils.py) when the last token is the eos or one of stop_token_ids, checked before the
    length cap, so a stop token in the last allowed place still reads "stop"."""
    ids = list(completion.token_ids)
    reason = completion.finish_reason
    if reason == "length":
        return ids, False
    if reason == "stop" and ids and ids[-1] in stops:
        return ids[:-1], True
    raise RuntimeError(f"vLLM ended an answer with finish_reason={reason!r} (last token {ids[-1:]}, stops {stops})")


def release(llm: Any) -> None:
    """Stop the engine core: with VLLM_ENABLE_V1_MULTIPROCESSING (the default) it is a child process holding the
    weights and the KV cache, and MPClient.shutdown ends it; in process, InprocClient.shutdown runs
    EngineCore.shutdown, which gives its memory back (v1/engine/core_client.py, v1/engine/core.py). LLM itself has
    no shutdown in 0.33 (entrypoints/llm.py); shutting down twice is a no-op (the finalizer is detached)."""
    llm.llm_engine.engine_core.shutdown()


def cleanup() -> None:
    """Tear down this process's distributed groups and cached GPU memory, as EngineCore.shutdown does for its own
    (vllm/distributed/parallel_state.py: cleanup_dist_env_and_memory destroys the model-parallel groups and the
    process group, collects garbage and empties the CUDA cache), so the next engine initializes afresh."""
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory  # type: ignore[import-not-found]

    cleanup_dist_env_and_memory()
