"""Model shapes the benchmarks build (random weights, no downloads), and the H100's dense bf16 peak."""

from __future__ import annotations

from typing import Any

H100_BF16_FLOPS = 989e12
SHAPES: dict[str, dict[str, Any]] = {
    "7b": {  # mistralai/Mistral-7B-v0.1 config.json
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 32000,
    },
    "1b": {
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 16,
        "num_attention_heads": 16,
        "num_key_value_heads": 4,
        "vocab_size": 32000,
    },
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 512,
    },
}
