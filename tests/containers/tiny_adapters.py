"""Tiny LoRA adapters for the container tests (merge, evaluate): made with PEFT directly, never trained."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def make_adapter(
    base_dir: Path, adapter_dir: Path, *, seed: int = 0, r: int = 4, std: float = 0.05, **lora: Any
) -> Path:
    """A LoRA adapter (default: on every linear layer of the base), lora_B random with ``std`` (a non-zero delta) and
    modules_to_save perturbed as much, saved with the tokenizer (if the base has one)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    options = {"r": r, "lora_alpha": 2 * r, "target_modules": "all-linear", "task_type": "CAUSAL_LM", **lora}
    peft_model = get_peft_model(model, LoraConfig(**options))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                param.normal_(std=std)
            elif "modules_to_save" in name:
                param.add_(torch.randn_like(param) * std)
    peft_model.save_pretrained(adapter_dir)
    if (base_dir / "tokenizer.json").is_file():
        AutoTokenizer.from_pretrained(base_dir).save_pretrained(adapter_dir)
    return adapter_dir
