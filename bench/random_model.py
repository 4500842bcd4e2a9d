"""The model the GPU benches measure on: random bf16 weights of a given shape, saved with the tiny tokenizer and
ChatML template of local/tiny_model.py (no downloads). The callers put the repository root on sys.path."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from local.tiny_model import write_base_model


def write_random_model(
    directory: Path, texts: Iterable[str], shape: dict[str, Any], max_shard_size: str | None = None
) -> Any:
    """Tokenizer (trained on ``texts``), config (``shape`` over the tiny one) and random weights in ``directory``,
    built on the GPU when there is one; returns the model, still in memory."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    write_base_model(directory, texts)
    config = json.loads((directory / "config.json").read_text())
    config.update(shape)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(directory), dtype=torch.bfloat16)
    if max_shard_size:
        model.save_pretrained(directory, max_shard_size=max_shard_size)
    else:
        model.save_pretrained(directory)
    return model


def write_random_adapter(model: Any, directory: Path, rank: int) -> Path:
    """A LoRA adapter of ``rank`` on every linear layer of ``model`` (PEFT's own layout), lora_B random so that it
    changes the answers: what a ServeMode=lora run hands the Evaluate job. Leaves ``model`` without the adapter."""
    import torch
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(
        model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=1e-3)
    peft_model.save_pretrained(str(directory))
    peft_model.unload()
    return directory
