"""Greedy answers of one model, as the endpoint would give them: its chat template, its stop tokens, its engine.

The prompt of each conversation is rendered with the model's chat template (`add_generation_prompt`) into token ids
once; the engine then only generates from those ids, so every engine answers the very same prompt:
- vLLM's offline engine (vllm_engine.py) when vLLM is installed and a GPU is there: the serving engine, as the
  endpoint runs it (the evaluate image built on the serve image, containers/evaluate/Dockerfile.vllm);
- transformers' `generate` otherwise (the local cloud, the CPU tests, the PyTorch image), in batches cut to fit the
  GPU's free memory (batching.py) with left padding. A batch the estimate got wrong (CUDA out of memory) is split in
  two and retried, down to single prompts, rather than failing the job.
With ServeMode=lora the endpoint serves the base model with the run's adapter applied at request time: the model is
then the base directory and `adapter_dir` the adapter, applied unmerged (PEFT's LoRA layers here, vLLM's LoRA kernels
there), with the base's tokenizer and generation_config.json, which are what that endpoint uses.
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path
from typing import Any, Protocol

from containers.common import jobkit
from containers.common.jobkit import END_OF_TURN_TOKENS
from containers.evaluate import batching, vllm_engine


class GenerationOptions(Protocol):
    max_new_tokens: int
    max_prompt_tokens: int
    batch_size: int
    max_batch_rows: int


def served_stop_ids(tokenizer: Any, model_dir: Path) -> list[int]:
    """The ids a served model stops on: the tokenizer's eos and generation_config.json's eos ids (the endpoint runs
    vLLM with SM_VLLM_GENERATION_CONFIG=auto, so those are its stop ids; tuneplane/logic/deploy/serving.py). Without
    a generation_config.json, transformers' GenerationConfig.from_model_config (which vLLM falls back on) takes
    config.json's eos_token_id. Only whole numbers count: anything else there is no token the server can stop on."""
    ids: list[int] = []

    def add(value: Any) -> None:
        for item in value if isinstance(value, list | tuple) else [value]:
            if isinstance(item, int) and not isinstance(item, bool) and item >= 0 and item not in ids:
                ids.append(item)

    add(tokenizer.eos_token_id)
    generation_path = model_dir / "generation_config.json"
    config_path = generation_path if generation_path.is_file() else model_dir / "config.json"
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text())
        except ValueError as exc:
            raise ValueError(f"{config_path} is not valid JSON: {exc}") from exc
        add(config.get("eos_token_id") if isinstance(config, dict) else None)
    return ids


def template_end_of_turn(tokenizer: Any) -> dict[str, int]:
    """The known end-of-turn markers the chat template emits (and the vocabulary has), with their ids."""
    vocab = tokenizer.get_vocab()
    template = tokenizer.chat_template or ""
    return {token: vocab[token] for token in END_OF_TURN_TOKENS if token in template and token in vocab}


def stop_token_ids(tokenizer: Any, model_dir: Path) -> list[int]:
    """The tokenizer's eos, generation_config.json's eos ids, and known end-of-turn markers the template emits."""
    ids = served_stop_ids(tokenizer, model_dir)
    ids += [token_id for token_id in template_end_of_turn(tokenizer).values() if token_id not in ids]
    if not ids:
        raise ValueError(f"no end-of-turn token for {model_dir}: no eos in the tokenizer or generation_config.json")
    return ids


def unserved_end_of_turn(tokenizer: Any, model_dir: Path) -> list[str]:
    """End-of-turn markers of the chat template that a served model would not stop on: answers scored here end
    there, but the endpoint would run on past them (a training/serving mismatch found before production)."""
    served = served_stop_ids(tokenizer, model_dir)
    return [token for token, token_id in template_end_of_turn(tokenizer).items() if token_id not in served]


def lora_rank(adapter_dir: Path) -> int:
    """The adapter's largest LoRA rank (adapter_config.json's r and any per-module rank_pattern)."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    return max([int(config.get("r") or 0), *(int(r) for r in (config.get("rank_pattern") or {}).values())])


def generate(
    model_dir: Path,
    prompts: list[list[dict[str, Any]]],
    cfg: GenerationOptions,
    device: str,
    dtype: Any,
    adapter_dir: Path | None = None,
) -> dict[str, Any]:
    """Greedy answers of one model (``adapter_dir``: the base in ``model_dir`` with that LoRA adapter, unmerged):
    text, generated token count (end-of-turn token excluded), stopped flag, and how fast."""
    from transformers import AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
    if not tokenizer.chat_template:
        raise ValueError(f"the tokenizer in {model_dir} has no chat template")
    stops = stop_token_ids(tokenizer, model_dir)
    unserved = unserved_end_of_turn(tokenizer, model_dir)
    encoded = []
    for messages in prompts:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        encoded.append(list(ids["input_ids"])[-cfg.max_prompt_tokens :])
    if device == "cuda" and vllm_engine.available():
        engine = "vllm"
        tokens, stopped, seconds = vllm_engine.generate_token_ids(
            model_dir,
            encoded,
            stops,
            cfg.max_new_tokens,
            dtype=dtype,
            adapter_dir=adapter_dir,
            max_lora_rank=vllm_engine.max_lora_rank_for(lora_rank(adapter_dir)) if adapter_dir is not None else None,
        )
        shape: dict[str, Any] = {"batches": None, "largest_batch": None, "split_batches": 0}
    else:
        engine = "transformers"
        tokens, stopped, seconds, shape = _generate_with_transformers(
            model_dir, encoded, stops, tokenizer, cfg, device, dtype, adapter_dir
        )
    lengths = [len(ids) for ids in tokens]
    return {
        "answers": [tokenizer.decode(ids, skip_special_tokens=True) for ids in tokens],
        "lengths": lengths,
        "stopped": stopped,
        "stop_token_ids": stops,
        "unserved_end_of_turn": unserved,
        "engine": engine,
        "adapter": str(adapter_dir) if adapter_dir is not None else None,
        "generation_seconds": round(seconds, 3),
        "examples_per_second": round(len(encoded) / seconds, 3) if seconds > 0 else None,
        "generated_tokens_per_second": round(sum(lengths) / seconds, 3) if seconds > 0 else None,
        **shape,
    }


def _generate_with_transformers(
    model_dir: Path,
    encoded: list[list[int]],
    stops: list[int],
    tokenizer: Any,
    cfg: GenerationOptions,
    device: str,
    dtype: Any,
    adapter_dir: Path | None,
) -> tuple[list[list[int]], list[bool], float, dict[str, Any]]:
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    model: Any = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, device_map=device, use_safetensors=True, trust_remote_code=False, local_files_only=True
    )
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    model.eval()
    generation = GenerationConfig(
        do_sample=False, max_new_tokens=cfg.max_new_tokens, eos_token_id=stops, pad_token_id=pad_id
    )
    kv_per_token, prefill_per_token = batching.bytes_per_token(model.config.to_dict(), model.dtype.itemsize)
    budget = None
    if device == "cuda" and encoded:
        # One short forward pass first: weights a quantization format unpacks on first use (compressed-tensors' packed
        # AWQ) take their memory now, before the free memory is measured, not in the middle of the first batch.
        with torch.inference_mode():
            model(input_ids=torch.tensor([encoded[0][:8]], device=device))
        budget = batching.memory_budget(torch.cuda.mem_get_info()[0])
    batches = batching.plan_batches(  # similar lengths share a batch
        [len(ids) for ids in encoded],
        max_new_tokens=cfg.max_new_tokens,
        budget_bytes=budget,
        kv_per_token=kv_per_token,
        prefill_per_token=prefill_per_token,
        fixed=cfg.batch_size,
        max_rows=cfg.max_batch_rows,
    )
    tokens: list[list[int]] = [[] for _ in encoded]
    stopped = [False] * len(encoded)
    splits = 0

    def run(model: Any, batch: list[int]) -> None:
        width = max(len(encoded[i]) for i in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):  # left padding
            input_ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
            mask[row, width - len(encoded[i]) :] = 1
        output = model.generate(
            input_ids=input_ids.to(device), attention_mask=mask.to(device), generation_config=generation
        )
        for row, i in enumerate(batch):
            new = output[row, width:].tolist()
            end = next((k for k, t in enumerate(new) if t in stops), None)
            tokens[i] = new if end is None else new[:end]
            stopped[i] = end is not None

    started = time.monotonic()
    with torch.inference_mode():
        pending = list(reversed(batches))
        while pending:
            batch = pending.pop()
            try:
                run(model, batch)
                continue
            except Exception as exc:
                if not jobkit.is_out_of_memory(exc) or len(batch) == 1:
                    raise
            # The memory estimate was short for this batch: its halves, in order, before the batches after it (the
            # exception and its frames' tensors are gone here, so their memory can be given back first).
            splits += 1
            half = len(batch) // 2
            pending += [batch[half:], batch[:half]]
            gc.collect()
            torch.cuda.empty_cache()
    seconds = time.monotonic() - started
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    shape = {
        "batches": len(batches),
        "largest_batch": max((len(b) for b in batches), default=0),
        "split_batches": splits,
    }
    return tokens, stopped, seconds, shape


def split_generation(result: dict[str, Any], count: int) -> dict[str, list[Any]]:
    """Cut a generate() result's per-prompt lists after the first `count` prompts (the eval split's) and return the
    rest (the regression set's answers, lengths and stop flags)."""
    rest = {key: result[key][count:] for key in ("answers", "lengths", "stopped")}
    for key in rest:
        result[key] = result[key][:count]
    return rest
