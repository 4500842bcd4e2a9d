"""Token-level pre-flight: render each example through the base model's chat template, count tokens, and
check that the trained (assistant) tokens are non-empty and end with the end-of-turn token.

Encoding runs on a worker thread (the tokenizers library releases the GIL) while the main thread parses
and renders the next batch, so validation with tokenization costs little more than tokenization itself.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from tokenizers import Encoding

from tuneplane.logic.chat_template import ChatTemplateError, ChatTokenizer
from tuneplane.logic.validation.formats import Message
from tuneplane.logic.validation.problems import ProblemLog
from tuneplane.models.validation import Code, Severity, Source

BATCH_SIZE = 512

# (line, messages, example_json, tokens, trained_tokens) for every example that survives the token checks
Keep = Callable[[int, list[Message], bytes, int, int], None]


@dataclass(slots=True)
class _Pending:
    line: int
    messages: list[Message]
    example_json: bytes
    text: str
    spans: list[tuple[int, int]]
    source: Source


@dataclass
class TemplateTally:
    examples_checked: int = 0
    examples_without_end_of_turn: int = 0
    first_line_without_end_of_turn: int | None = None
    over_max_seq_length: int = 0


def _token_index(encoding: Encoding, start: int, stop: int, step: int) -> int | None:
    """First token covering a character in [start, stop) walking by `step` (some chars map to no token)."""
    for position in range(start, stop, step):
        token = encoding.char_to_token(position)
        if token is not None:
            return int(token)
    return None


class TokenStage:
    def __init__(self, chat_tokenizer: ChatTokenizer, max_seq_length: int, problems: ProblemLog) -> None:
        self._tok = chat_tokenizer
        self._max_seq_length = max_seq_length
        self._problems = problems
        self._pending: list[_Pending] = []
        self._in_flight: tuple[list[_Pending], Future[list[Encoding]], Keep] | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")
        self.tally = TemplateTally()

    def add(self, line: int, messages: list[Message], example_json: bytes, source: Source, keep: Keep) -> None:
        try:
            rendered = self._tok.render(messages)
        except ChatTemplateError as exc:
            self._problems.add(Code.CHAT_TEMPLATE_ERROR, str(exc), source=source, line=line)
            self._problems.drop_line(source, line, had_error=True)
            return
        self._pending.append(_Pending(line, messages, example_json, rendered.text, rendered.trained_spans, source))
        if len(self._pending) >= BATCH_SIZE:
            self.dispatch(keep)

    def dispatch(self, keep: Keep) -> None:
        """Send the pending batch to the worker and finish the previous one meanwhile."""
        batch, self._pending = self._pending, []
        future = self._pool.submit(self._tok.encode_batch, [item.text for item in batch]) if batch else None
        if self._in_flight is not None:
            self._finish(*self._in_flight)
            self._in_flight = None
        if future is not None:
            self._in_flight = (batch, future, keep)

    def flush(self, keep: Keep) -> None:
        """Finish every pending example; call at the end of each file."""
        self.dispatch(keep)
        self.dispatch(keep)

    def shutdown(self) -> None:
        self._pool.shutdown()

    def _finish(self, batch: list[_Pending], future: Future[list[Encoding]], keep: Keep) -> None:
        for item, encoding in zip(batch, future.result(), strict=True):
            total, trained, has_end = self._measure(item, encoding)
            tally = self.tally
            tally.examples_checked += 1
            if not has_end:
                tally.examples_without_end_of_turn += 1
                if tally.first_line_without_end_of_turn is None:
                    tally.first_line_without_end_of_turn = item.line
            errors = False
            if total > self._max_seq_length:
                tally.over_max_seq_length += 1
                severity = self._problems.add(
                    Code.EXAMPLE_TOO_MANY_TOKENS,
                    f"{total} tokens, {total - self._max_seq_length} over max_seq_length {self._max_seq_length}",
                    source=item.source,
                    line=item.line,
                )
                errors = severity is Severity.ERROR
            if trained == 0:
                self._problems.add(
                    Code.NO_TRAINED_TOKENS,
                    "the chat template leaves no assistant tokens to train on",
                    source=item.source,
                    line=item.line,
                )
                self._problems.drop_line(item.source, item.line, had_error=True)
                continue
            if errors:
                self._problems.drop_line(item.source, item.line, had_error=True)
                continue
            keep(item.line, item.messages, item.example_json, total, trained)

    def _measure(self, item: _Pending, encoding: Encoding) -> tuple[int, int, bool]:
        ids = encoding.ids
        trained = 0
        has_end = bool(item.spans)
        end_ids = self._tok.end_of_turn_ids
        for start, stop in item.spans:
            first = _token_index(encoding, start, stop, 1)
            last = _token_index(encoding, stop - 1, start - 1, -1)
            if first is None or last is None:
                has_end = False
                continue
            trained += last - first + 1
            if end_ids.isdisjoint(ids[first : last + 1]):
                has_end = False
        return len(ids), trained, has_end
