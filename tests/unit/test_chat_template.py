"""The chat template renderer mirrors transformers' apply_chat_template and finds the trained spans."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from local.tiny_model import PLAIN_TEMPLATE

from tuneplane.errors import BaseModelUnavailable
from tuneplane.logic.chat_template import ChatTemplateError, ChatTokenizer

CONVERSATION = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello"},
    {"role": "user", "content": "bye"},
    {"role": "assistant", "content": "ciao"},
]


def test_renders_chatml_with_generation_spans(base_model_dir: Path) -> None:
    # GIVEN the tiny model's ChatML template with {% generation %} blocks
    chat = ChatTokenizer.from_dir(base_model_dir)
    # WHEN a two-turn conversation is rendered
    rendered = chat.render(CONVERSATION)
    # THEN the text is exactly ChatML and the trained spans are each answer plus its end-of-turn token
    assert rendered.text == (
        "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>user\nbye<|im_end|>\n"
        "<|im_start|>assistant\nciao<|im_end|>\n"
    )
    assert [rendered.text[a:b] for a, b in rendered.trained_spans] == ["hello<|im_end|>", "ciao<|im_end|>"]
    assert chat.uses_generation_blocks
    assert chat.end_of_turn_tokens == ["<|im_end|>"]


def test_template_without_generation_blocks_uses_prefix_rendering(base_model_factory: Callable[..., Path]) -> None:
    # GIVEN a template with no generation blocks (like most published ones)
    chat = ChatTokenizer.from_dir(base_model_factory(PLAIN_TEMPLATE))
    # WHEN rendered
    rendered = chat.render(CONVERSATION)
    # THEN each assistant turn is found by rendering the prefix with add_generation_prompt
    assert not chat.uses_generation_blocks
    assert [rendered.text[a:b] for a, b in rendered.trained_spans] == ["hello<|im_end|>\n", "ciao<|im_end|>\n"]


def test_template_raise_exception_becomes_chat_template_error(tmp_path: Path, base_model_dir: Path) -> None:
    # GIVEN a template that refuses system messages, as some model families' templates do
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        (tmp_path / name).write_bytes((base_model_dir / name).read_bytes())
    (tmp_path / "chat_template.jinja").write_text(
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    )
    chat = ChatTokenizer.from_dir(tmp_path)
    # WHEN a conversation with a system message is rendered THEN the template's own message surfaces
    with pytest.raises(ChatTemplateError, match="System role not supported"):
        chat.render(CONVERSATION)


def test_missing_chat_template_is_a_clear_error(tmp_path: Path, base_model_dir: Path) -> None:
    # GIVEN a model directory with a tokenizer but no chat template anywhere
    (tmp_path / "tokenizer.json").write_bytes((base_model_dir / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text('{"eos_token": "<|im_end|>"}')
    # WHEN loaded THEN the error names what is missing and where it was looked for
    with pytest.raises(BaseModelUnavailable, match="no chat template"):
        ChatTokenizer.from_dir(tmp_path)


def test_missing_tokenizer_json_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BaseModelUnavailable, match="tokenizer.json"):
        ChatTokenizer.from_dir(tmp_path)
