"""A tiny base model directory built on the fly (no downloads): a byte-level BPE tokenizer trained on the
given texts, a ChatML chat template with {% generation %} blocks, and a Llama-style config.

    python -m local.tiny_model events/data/demo.jsonl /tmp/tiny-base
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

END_OF_TEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"

# The end-of-turn token sits inside the generation block: it is trained, so the model learns to stop.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}{{ message['content'] + '<|im_end|>' + '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# The classic mistake: the end-of-turn token is rendered outside the trained block.
UNTRAINED_END_TEMPLATE = CHATML_TEMPLATE.replace(
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}",
    "{% generation %}{{ message['content'] }}{% endgeneration %}{{ '<|im_end|>' }}",
)

# Same conversation layout with no generation blocks (most published templates look like this).
PLAIN_TEMPLATE = CHATML_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def texts_of(jsonl: Path) -> list[str]:
    """Every string value of a JSONL dataset, whatever its format."""
    texts: list[str] = []

    def walk(value: object) -> None:
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    # Lines end at "\n" only, as the validator and the containers read them (containers/common/jobkit.py
    # iter_jsonl): str.splitlines() would also cut at U+2028, U+2029 and U+0085, legal inside a JSON string.
    for line in jsonl.read_text(encoding="utf-8-sig").split("\n"):
        if line.strip():
            walk(json.loads(line))
    return texts


def write_base_model(
    directory: Path,
    texts: Iterable[str],
    *,
    chat_template: str = CHATML_TEMPLATE,
    hidden_size: int = 128,
    num_layers: int = 4,
    vocab_size: int = 512,
) -> Path:
    """Write tokenizer.json, tokenizer_config.json, chat_template.jinja, generation_config.json, config.json."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(texts, vocab_size)
    tokenizer.save(str(directory / "tokenizer.json"))
    eos_id = tokenizer.token_to_id(IM_END)
    pad_id = tokenizer.token_to_id(END_OF_TEXT)
    (directory / "chat_template.jinja").write_text(chat_template)
    tokenizer_config = {
        "tokenizer_class": "TokenizersBackend",
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": END_OF_TEXT,
        "unk_token": None,
        "extra_special_tokens": [IM_START],
        "model_max_length": 4096,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    generation_config = {"eos_token_id": [eos_id], "pad_token_id": pad_id}
    (directory / "generation_config.json").write_text(json.dumps(generation_config, indent=2))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden_size,
        "intermediate_size": hidden_size * 2,
        "num_hidden_layers": num_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": tokenizer.get_vocab_size(),
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "torch_dtype": "bfloat16",
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory


def write_tiny_weights(directory: Path, *, seed: int = 0, lm_head_std: float = 0.2) -> Path:
    """Add random safetensors weights (float32) for the config.json in `directory` (needs torch and transformers).

    The output head gets a larger init than the default 0.02: on a random base a LoRA-only run barely moves the
    output distribution otherwise (a pretrained base does not need this).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        model.get_output_embeddings().weight.normal_(mean=0.0, std=lm_head_std)
    model.save_pretrained(directory, safe_serialization=True)
    return directory


if __name__ == "__main__":
    write_base_model(Path(sys.argv[2]), texts_of(Path(sys.argv[1])))
    print(sys.argv[2])
