"""The base model's tokenizer and chat template, without transformers or torch (both too big for a Lambda).

Renders exactly like ``transformers``' ``apply_chat_template`` (sandboxed Jinja, trim/lstrip blocks,
loop controls, ``raise_exception``, ``strftime_now``, the ``{% generation %}`` tag) and reports which
character spans of the rendered text are trained: the ``{% generation %}`` blocks when the template has
them (what TRL's ``assistant_only_loss`` trains), otherwise each assistant turn found by rendering the
conversation prefix by prefix.

A base model's template is code from outside (a hub repository), run once per example in the Validate Lambda and in
``tuneplane validate``, so its rendering is bounded as well as sandboxed: a render that runs longer than
``MAX_RENDER_S``, loops more than ``MAX_LOOP_STEPS`` times over ``range``, nests calls (macros) deeper than
``MAX_CALL_DEPTH``, or builds a string or list longer than a limit relative to the conversation's size raises
``ChatTemplateBoundExceeded`` (a ``BaseModelUnavailable``: it is the base model's template that is unusable, not
the example) instead of hanging, exhausting memory or ending in a traceback. Jinja's sandbox offers the hooks this
uses (``call``, ``getattr``, ``getitem``, ``call_binop`` for ``intercepted_binops``), its ``safe_range`` refuses a
range over ``MAX_RANGE`` items, and filters are plain functions looked up at compile time, so they are wrapped; the
``~`` operator compiles to a join no hook sees, so a code generator subclass checks its result too. Once a bound is
hit the template is refused for every later example at once (each would take as long). Any other error inside the
template (a ``TypeError``, a division by zero) is a ``ChatTemplateError`` for that example. Files that are not UTF-8
or not JSON are named in the error.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range
from tokenizers import Encoding, Tokenizer

from tuneplane.errors import BaseModelUnavailable

# What a base-model directory must or may hold for validation; the Lambda fetches just these from S3.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


MAX_RENDER_S = 5.0  # one conversation; real templates take milliseconds
MAX_LOOP_STEPS = 1_000_000  # iterations over range() in one render (jinja's MAX_RANGE bounds one range at 100000)
MAX_CALL_DEPTH = 64  # nested calls (a recursive macro); Python's own limit would end in a RecursionError traceback
MIN_STRING_LIMIT = 1_000_000  # characters (or items) of any string or list the template builds, at least ...
STRING_LIMIT_PER_INPUT_CHAR = 8  # ... or this many times the conversation's characters
_HUGE_FORMAT = re.compile(r"\d{7,}")  # a width or precision of a million or more in a format string
_FORMATTING = frozenset({"format", "format_map"})


class ChatTemplateError(Exception):
    """The template refused the conversation (its own raise_exception) or failed to render it."""


class ChatTemplateBoundExceeded(BaseModelUnavailable):
    """The base model's chat template ran too long, looped or recursed too deeply, or built too much: unusable."""


@dataclass
class _Budget:
    """What one render may still spend."""

    deadline: float
    max_chars: int
    steps: int = 0
    depth: int = 0
    operations: int = 0

    def tick(self) -> None:
        """Charge one operation; the clock is read every 64th (reading it on each doubled the cost of a render)."""
        self.operations += 1
        if not self.operations & 63 and time.monotonic() > self.deadline:
            raise ChatTemplateBoundExceeded(f"the chat template did not finish rendering within {MAX_RENDER_S:g} s")

    def step(self) -> None:
        self.steps += 1
        if self.steps > MAX_LOOP_STEPS:
            raise ChatTemplateBoundExceeded(f"the chat template looped more than {MAX_LOOP_STEPS:,} times")
        self.tick()

    def sized(self, value: Any) -> Any:
        if isinstance(value, str | list | tuple | dict | set) and len(value) > self.max_chars:
            kind = "string" if isinstance(value, str) else type(value).__name__
            raise ChatTemplateBoundExceeded(
                f"the chat template built a {kind} of {len(value):,} items (limit {self.max_chars:,})"
            )
        return value

    def product(self, left: Any, right: Any) -> None:
        """Refuse ``"x" * 10**9`` before it is computed."""
        for sequence, count in ((left, right), (right, left)):
            if isinstance(sequence, str | list | tuple) and isinstance(count, int) and not isinstance(count, bool):
                if len(sequence) * count > self.max_chars:
                    raise ChatTemplateBoundExceeded(
                        f"the chat template multiplied a sequence to {len(sequence) * count:,} items "
                        f"(limit {self.max_chars:,})"
                    )

    def numbers(self, values: Sequence[Any]) -> None:
        """Refuse a width or count larger than any string the template may build (``center(10**9)``)."""
        for value in values:
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) > self.max_chars:
                raise ChatTemplateBoundExceeded(f"the chat template asked for a size of {value:,}")

    @staticmethod
    def format_string(value: Any) -> None:
        """Refuse ``"{:>1000000000}".format(x)`` and ``"%1000000000s" % x`` before they are computed."""
        if isinstance(value, str) and _HUGE_FORMAT.search(value):
            raise ChatTemplateBoundExceeded("the chat template asked for a format width of a million or more")


class _CountedRange:
    """A range whose iteration charges the render's loop budget; otherwise a range (len, index, reversed, in)."""

    def __init__(self, values: range, budget: _Budget) -> None:
        self._values, self._budget = values, budget

    def __iter__(self) -> Iterator[int]:
        for value in self._values:
            self._budget.step()
            yield value

    def __reversed__(self) -> Iterator[int]:
        for value in reversed(self._values):
            self._budget.step()
            yield value

    def __len__(self) -> int:
        return len(self._values)

    def __getitem__(self, index: Any) -> Any:
        return self._values[index]

    def __contains__(self, value: object) -> bool:
        return value in self._values


class _BoundedCodeGenerator(CodeGenerator):
    """``a ~ b`` compiles to a join that no sandbox hook sees: its result is checked like every other string."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.bounded(")
        super().visit_Concat(node, frame)
        self.write(")")


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, with every hook charging the current render's ``_Budget``."""

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})
    budget: _Budget | None = None

    def _budget(self) -> _Budget:
        if self.budget is None:  # rendering outside ChatTokenizer._render_text: no budget was set
            raise ChatTemplateError("the chat template was rendered without bounds")
        return self.budget

    def bounded(self, value: Any) -> Any:
        budget = self._budget()
        budget.tick()
        return budget.sized(value)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = self.budget or self._budget()
        if operator == "+":  # the common case (templates concatenate with +): kept cheap
            result = left + right
            if isinstance(result, str | list) and len(result) > budget.max_chars:
                budget.sized(result)
            return result
        budget.tick()
        if operator == "*":
            budget.product(left, right)
        elif operator == "**" and isinstance(right, int | float) and abs(right) > 256:
            raise ChatTemplateBoundExceeded(f"the chat template raised a number to the power {right}")
        elif operator == "%":
            budget.format_string(left)
        return budget.sized(super().call_binop(context, operator, left, right))

    def getattr(self, obj: Any, attribute: str) -> Any:
        if self.budget is not None:
            self.budget.tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        # messages[i]['content'] is the common case: a plain lookup on a dict or list costs no budget check.
        if type(obj) is dict or type(obj) is list:
            try:
                return obj[argument]
            except (TypeError, LookupError):
                pass
        if self.budget is not None:
            self.budget.tick()
        return super().getitem(obj, argument)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # jinja's
        budget = __self._budget()
        budget.tick()
        budget.numbers([*args, *kwargs.values()])
        target = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format to format safely
        if isinstance(getattr(target, "__self__", None), str) and getattr(target, "__name__", "") in _FORMATTING:
            budget.format_string(target.__self__)
        budget.depth += 1
        try:
            if budget.depth > MAX_CALL_DEPTH:
                raise ChatTemplateBoundExceeded(f"the chat template nested calls more than {MAX_CALL_DEPTH} deep")
            return budget.sized(super().call(__context, __obj, *args, **kwargs))
        finally:
            budget.depth -= 1

    def bounded_range(self, *args: int) -> _CountedRange:
        """jinja's ``safe_range`` (at most MAX_RANGE items), each iteration charged to the render's loop budget."""
        return _CountedRange(safe_range(*args), self._budget())

    def bound_filters(self) -> None:
        """Wrap every filter (plain functions, called directly by compiled templates) with the budget's checks."""
        for name, function in list(self.filters.items()):
            self.filters[name] = self._bounded_function(function)

    def _bounded_function(self, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)  # keeps jinja_pass_arg (pass_context, pass_environment, ...)
        def bounded(*args: Any, **kwargs: Any) -> Any:
            budget = self._budget()
            budget.tick()
            value_at = 1 if getattr(function, "jinja_pass_arg", None) else 0  # after a context/environment argument
            budget.numbers([*args[value_at + 1 :], *kwargs.values()])
            if function.__name__ == "do_format" and len(args) > value_at:
                budget.format_string(args[value_at])
            return budget.sized(function(*args, **kwargs))

        return bounded


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
        env = _BoundedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTracker, jinja2.ext.loopcontrols]
        )
        env.filters["tojson"] = _tojson
        env.bound_filters()
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        env.globals["range"] = env.bounded_range
        env.globals.pop("lipsum", None)  # generates text of any size; no chat template needs it
        self._env = env
        self._broken: ChatTemplateBoundExceeded | None = None
        try:
            self._template = env.from_string(self.template_source)
        except jinja2.TemplateSyntaxError as exc:
            raise BaseModelUnavailable(f"the chat template does not compile: {exc} (line {exc.lineno})") from exc
        except RecursionError as exc:  # the parser recurses per nesting level
            raise BaseModelUnavailable("the chat template is nested too deeply to compile") from exc
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
        template = _read_text(template_file) if template_file.is_file() else config.get("chat_template")
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
        if self._broken is not None:  # a bound was hit before: every example would take as long
            raise self._broken
        rendered: list[str] = []
        budget = _Budget(time.monotonic() + MAX_RENDER_S, _string_limit(messages))
        self._env.budget = budget
        with self._tracker.tracking(rendered) as spans:
            try:
                length = 0
                for block in self._template.generate(
                    messages=messages, add_generation_prompt=add_generation_prompt, **self.special_tokens
                ):
                    rendered.append(block)
                    budget.tick()
                    length += len(block)
                    if length > budget.max_chars:
                        raise ChatTemplateBoundExceeded(
                            f"the chat template wrote more than {budget.max_chars:,} characters for one conversation"
                        )
            except ChatTemplateBoundExceeded as exc:
                self._broken = exc
                raise
            except RecursionError as exc:
                self._broken = ChatTemplateBoundExceeded("the chat template recursed too deeply")
                raise self._broken from exc
            except MemoryError as exc:
                self._broken = ChatTemplateBoundExceeded("the chat template ran out of memory")
                raise self._broken from exc
            except ChatTemplateError:
                raise
            except jinja2.TemplateError as exc:
                raise ChatTemplateError(f"template failed: {exc}") from exc
            except Exception as exc:  # the template's own TypeError, ZeroDivisionError, OverflowError ...
                raise ChatTemplateError(f"template failed: {type(exc).__name__}: {exc}") from exc
            finally:
                self._env.budget = None
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


def _string_limit(messages: Sequence[dict[str, str]]) -> int:
    chars = sum(len(str(value)) for message in messages for value in message.values())
    return max(MIN_STRING_LIMIT, STRING_LIMIT_PER_INPUT_CHAR * chars)


def _read_text(path: Path) -> str:
    """A base model's text file, or BaseModelUnavailable naming it (not a traceback) when it is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BaseModelUnavailable(f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from exc
    except OSError as exc:
        raise BaseModelUnavailable(f"{path} cannot be read: {exc.strerror or exc}") from exc


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BaseModelUnavailable(f"{path} is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise BaseModelUnavailable(f"{path} is nested too deeply to be read as JSON") from exc
    return data if isinstance(data, dict) else {}


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # AddedToken serialised as {"content": ...}
        value = value.get("content")
    return value if isinstance(value, str) else None
