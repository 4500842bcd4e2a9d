"""The base model's tokenizer and chat template, without transformers or torch (both too big for a Lambda).

Renders exactly like ``transformers``' ``apply_chat_template`` (sandboxed Jinja, trim/lstrip blocks,
loop controls, ``raise_exception``, ``strftime_now``, the ``{% generation %}`` tag) and reports which
character spans of the rendered text are trained: the ``{% generation %}`` blocks when the template has
them (what TRL's ``assistant_only_loss`` trains), otherwise each assistant turn found by rendering the
conversation prefix by prefix.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Encoding, Tokenizer

from tuneplane.errors import BaseModelUnavailable

# What a base-model directory must or may hold for validation; the Lambda fetches just these from S3.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


class ChatTemplateError(Exception):
    """The template refused the conversation (its own raise_exception) or failed to render it."""


@dataclass(slots=True)
class RenderedChat:
    text: str
    trained_spans: list[tuple[int, int]]


class _GenerationTracker(jinja2.ext.Extension):
    """Implements ``{% generation %}...{% endgeneration %}``: records where each block lands in the output."""

    tags = {"generation"}

    def __init__(self, environment: jinja2.Environment) -> None:
        super().__init__(environment)
        self.rendered: list[str] | None = None
        self.spans: list[tuple[int, int]] = []

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_track", []), [], [], body).set_lineno(lineno)

    def _track(self, caller: Any) -> str:
        text: str = caller()
        if self.rendered is not None:
            start = sum(map(len, self.rendered))
            self.spans.append((start, start + len(text)))
        return text

    @contextmanager
    def tracking(self, rendered: list[str]) -> Iterator[list[tuple[int, int]]]:
        self.rendered, self.spans = rendered, []
        try:
            yield self.spans
        finally:
            self.rendered = None


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(message)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@dataclass
class ChatTokenizer:
    tokenizer: Tokenizer
    template_source: str
    special_tokens: dict[str, str] = field(default_factory=dict)
    end_of_turn_tokens: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTracker, jinja2.ext.loopcontrols]
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(self.template_source)
        except jinja2.TemplateSyntaxError as exc:
            raise BaseModelUnavailable(f"the chat template does not compile: {exc} (line {exc.lineno})") from exc
        self._tracker: _GenerationTracker = next(
            ext for ext in env.extensions.values() if isinstance(ext, _GenerationTracker)
        )
        self.uses_generation_blocks = "generation" in self.template_source and "endgeneration" in self.template_source
        ids = [self.tokenizer.token_to_id(token) for token in self.end_of_turn_tokens]
        self.end_of_turn_ids = frozenset(i for i in ids if i is not None)

    @classmethod
    def from_dir(cls, directory: Path) -> ChatTokenizer:
        """Load tokenizer.json, the chat template and the end-of-turn tokens from a Hugging Face model dir."""
        tokenizer_file = directory / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise BaseModelUnavailable(f"{tokenizer_file} not found: a fast tokenizer (tokenizer.json) is required")
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # the Rust side raises a bare Exception for malformed files
            raise BaseModelUnavailable(f"{tokenizer_file} is not a valid tokenizer: {exc}") from exc
        config = _read_json(directory / "tokenizer_config.json")
        template_file = directory / "chat_template.jinja"
        template = template_file.read_text() if template_file.is_file() else config.get("chat_template")
        if isinstance(template, list):  # older configs store named templates
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        if not isinstance(template, str) or not template.strip():
            raise BaseModelUnavailable(
                f"no chat template in {directory} (chat_template.jinja or tokenizer_config.json 'chat_template')"
            )
        special: dict[str, str] = {}
        for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
            token = _token_text(config.get(name))
            if token:
                special[name] = token
        end_of_turn = [special["eos_token"]] if "eos_token" in special else []
        generation = _read_json(directory / "generation_config.json")
        eos_ids = generation.get("eos_token_id")
        for token_id in eos_ids if isinstance(eos_ids, list) else [eos_ids] if eos_ids is not None else []:
            eos = tokenizer.id_to_token(int(token_id))
            if eos and eos not in end_of_turn:
                end_of_turn.append(eos)
        if not end_of_turn:
            raise BaseModelUnavailable(f"no eos_token in {directory}/tokenizer_config.json or generation_config.json")
        return cls(tokenizer, template, special, end_of_turn)

    def _render_text(
        self, messages: Sequence[dict[str, str]], add_generation_prompt: bool
    ) -> tuple[str, list[tuple[int, int]]]:
        rendered: list[str] = []
        with self._tracker.tracking(rendered) as spans:
            try:
                for block in self._template.generate(
                    messages=messages, add_generation_prompt=add_generation_prompt, **self.special_tokens
                ):
                    rendered.append(block)
            except ChatTemplateError:
                raise
            except jinja2.TemplateError as exc:
                raise ChatTemplateError(f"template failed: {exc}") from exc
            return "".join(rendered), list(spans)

    def render(self, messages: Sequence[dict[str, str]]) -> RenderedChat:
        text, spans = self._render_text(messages, add_generation_prompt=False)
        if self.uses_generation_blocks:
            return RenderedChat(text, spans)
        return RenderedChat(text, self._assistant_spans_by_prefix(messages, text))

    def _assistant_spans_by_prefix(self, messages: Sequence[dict[str, str]], full: str) -> list[tuple[int, int]]:
        spans = []
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before, _ = self._render_text(messages[:index], add_generation_prompt=True)
            through, _ = self._render_text(messages[: index + 1], add_generation_prompt=False)
            if not (full.startswith(through) and through.startswith(before)):
                raise ChatTemplateError(
                    "the template renders earlier turns differently once later turns exist, so the trained "
                    "assistant tokens cannot be located; add {% generation %} blocks to the template"
                )
            spans.append((len(before), len(through)))
        return spans

    def encode_batch(self, texts: list[str]) -> list[Encoding]:
        # Chat templates already write BOS/EOS themselves; transformers tokenizes them the same way.
        # encode_batch (not _fast): the trained spans are mapped to tokens through the char offsets.
        return self.tokenizer.encode_batch(texts, add_special_tokens=False)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BaseModelUnavailable(f"{path} is not valid JSON: {exc}") from exc
    return data if isinstance(data, dict) else {}


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # AddedToken serialised as {"content": ...}
        value = value.get("content")
    return value if isinstance(value, str) else None
