"""A base model's chat template is rendered with time, loop, recursion and size bounds, and a model directory whose
files are not UTF-8 or not JSON is refused naming the file (issue 15, item 11)."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from tuneplane.errors import BaseModelUnavailable
from tuneplane.logic import chat_template
from tuneplane.logic.base_model import load_model_context
from tuneplane.logic.chat_template import ChatTemplateBoundExceeded, ChatTemplateError, ChatTokenizer

CONVERSATION = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
PLAIN = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"


@pytest.fixture
def model_with(tmp_path: Path, base_model_dir: Path) -> Callable[[str], ChatTokenizer]:
    """A copy of the tiny model with ``template`` as its chat template."""

    def make(template: str) -> ChatTokenizer:
        for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
            (tmp_path / name).write_bytes((base_model_dir / name).read_bytes())
        (tmp_path / "chat_template.jinja").write_text(template + PLAIN, encoding="utf-8")
        return ChatTokenizer.from_dir(tmp_path)

    return make


def _render_bounded(chat: ChatTokenizer) -> tuple[BaseException, float, int]:
    """Render once; the error, the seconds it took and the peak memory allocated (bytes)."""
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(ChatTemplateBoundExceeded) as raised:
            chat.render(CONVERSATION)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return raised.value, time.monotonic() - started, peak


def test_a_nested_loop_is_stopped(model_with: Callable[[str], ChatTokenizer]) -> None:
    # GIVEN a template with a loop of 10^10 iterations
    chat = model_with("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}")
    # WHEN it renders THEN it is stopped quickly, saying why
    error, seconds, _ = _render_bounded(chat)
    assert "looped more than 1,000,000 times" in str(error)
    assert seconds < chat_template.MAX_RENDER_S


def test_a_slow_loop_is_stopped_by_the_time_bound(
    model_with: Callable[[str], ChatTokenizer], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a render time bound of 0.2 s and a loop over the conversation that never ends in time
    monkeypatch.setattr(chat_template, "MAX_RENDER_S", 0.2)
    monkeypatch.setattr(chat_template, "MAX_LOOP_STEPS", 10**9)
    chat = model_with("{% for a in range(100000) %}{% for b in range(100000) %}{{ '' }}{% endfor %}{% endfor %}")
    error, seconds, _ = _render_bounded(chat)
    assert "did not finish rendering within 0.2 s" in str(error)
    assert seconds < 2


@pytest.mark.parametrize(
    "bomb",
    [
        "{% set s = 'x' * 1200000000 %}{{ s }}",
        "{{ 'x' | center(1200000000) }}",
        "{{ 'x'.ljust(1200000000) }}",
        "{{ '{:>1200000000}'.format('x') }}",
        "{{ '%1200000000s' % 'x' }}",
        "{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "{% macro grow(s, n) %}{{ grow(s ~ s, n - 1) if n else s }}{% endmacro %}{{ grow('xxxxxxxx', 40) }}",
        "{{ 10 ** 10000000000 }}",
    ],
)
def test_a_string_bomb_is_stopped_before_it_takes_the_memory(
    model_with: Callable[[str], ChatTokenizer], bomb: str
) -> None:
    # GIVEN a template that builds a huge string (1.2 GB unbounded)
    chat = model_with(bomb)
    # WHEN it renders THEN it is refused having allocated a few MB at most
    error, _, peak = _render_bounded(chat)
    assert "chat template" in str(error)
    assert peak < 64 * 1024 * 1024, peak


def test_a_recursive_macro_is_stopped_without_a_traceback(model_with: Callable[[str], ChatTokenizer]) -> None:
    chat = model_with("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}")
    error, _, _ = _render_bounded(chat)
    assert "nested calls more than 64 deep" in str(error)
    assert isinstance(error, BaseModelUnavailable)  # the base model's template is unusable, not the example


def test_once_a_bound_is_hit_every_later_render_is_refused_at_once(model_with: Callable[[str], ChatTokenizer]) -> None:
    chat = model_with("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}")
    first, _, _ = _render_bounded(chat)
    started = time.monotonic()
    with pytest.raises(ChatTemplateBoundExceeded) as again:
        chat.render(CONVERSATION)
    assert again.value is first and time.monotonic() - started < 0.05


def test_an_error_inside_the_template_is_a_chat_template_error(model_with: Callable[[str], ChatTokenizer]) -> None:
    chat = model_with("{{ 1 / 0 }}")
    with pytest.raises(ChatTemplateError, match="ZeroDivisionError"):
        chat.render(CONVERSATION)


def test_ordinary_templates_still_render(model_with: Callable[[str], ChatTokenizer]) -> None:
    # GIVEN a template using range, loop, filters, string methods, ~ and formatting within their bounds
    chat = model_with(
        "{% for i in range(2) %}{{ loop.index }}{% endfor %}"
        "{{ ('a' ~ 'b') | upper }}{{ 'x'.center(5) }}{{ '%03d' % 7 }}{{ '{:>3}'.format(1) }}{{ range(3)|list|length }}"
        "{{ (messages|tojson)[:1] }}|"
    )
    text = chat.render(CONVERSATION).text
    assert text.startswith("12AB  x  007  13[|")


def _copy_model(base_model_dir: Path, target: Path) -> Path:
    target.mkdir()
    for file in base_model_dir.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    return target


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("chat_template.jinja", b"{{ messages }}\xff\xfe", "chat_template.jinja is not UTF-8 text (byte 14"),
        ("tokenizer_config.json", b'{"chat_template": "\xff"}', "tokenizer_config.json is not UTF-8 text"),
        ("tokenizer_config.json", b'{"eos_token": ', "tokenizer_config.json is not valid JSON"),
        ("generation_config.json", b"[" * 100000, "generation_config.json is nested too deeply"),
        ("config.json", b'{"hidden_size": 1,', "config.json is not valid JSON"),
        ("config.json", b"\xff", "config.json is not UTF-8 text"),
        ("config.json", b'{"hidden_size": 4, "num_hidden_layers": 1, "vocab_size": 8, "head_dim": "x"}', None),
    ],
)
def test_unreadable_model_files_are_named(
    tmp_path: Path, base_model_dir: Path, name: str, content: bytes, message: str | None
) -> None:
    # GIVEN a model directory with one file that is not UTF-8, not JSON or nested too deeply
    model = _copy_model(base_model_dir, tmp_path / "model")
    (model / name).write_bytes(content)
    # WHEN validation loads it THEN the error names the file and the problem (or, for a config value that is no
    # number, the model loads without a parameter estimate)
    if message is None:
        assert load_model_context(str(model)).parameters is None
        return
    with pytest.raises(BaseModelUnavailable) as raised:
        load_model_context(str(model))
    assert message in str(raised.value) and str(model) in str(raised.value)
