"""Guards for running untrusted patterns on model answers: a time limit per check, and the text form compared.

Why: graders.json comes from the uploader, and its regex (or a JSON Schema's `pattern` / `patternProperties` /
`propertyNames`, which jsonschema runs with Python's `re`) can backtrack catastrophically: `(a|a)+$` on a
30-character answer takes seconds, doubling per character, and would hold the Evaluate job (and its instance) until
SageMaker's MaxRuntimeInSeconds. `time_limit` bounds one check of one answer; running over it is a ConfigError naming
the pattern, the example and the model, so the uploader learns which pattern to simplify.

How: `signal.setitimer(ITIMER_REAL)` with a SIGALRM handler that raises a private exception. The `re` engine checks
for pending signals while it matches (CPython's sre calls PyErr_CheckSignals every few thousand steps), so the
exception interrupts even one long `re.search`. Python runs signal handlers only in the main thread, and
`signal.signal` refuses to be called from another one: off the main thread the check runs WITHOUT a limit (the
Evaluate job scores in its main thread; only a caller that uses threads loses the guard).

`normalize_text` is the form in which graders.py and regression.py compare texts (classification labels, must_contain,
must_not_contain) and run regexes: NFKC (a non-breaking space is a space, an NFD "café" is the NFC one, full-width
letters are ASCII) after removing zero-width characters, so an answer cannot slip past must_not_contain with an
invisible character, and a label matches however its accents were encoded. `visible_strings` checks that the
uploader's phrases and labels compared in that form (graders.json's, a regression set's `expect`) are not blank in it.
"""

from __future__ import annotations

import re
import signal
import threading
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from containers.common.jobkit import ConfigError

# Seconds one regex search, or one JSON Schema validation, may take on one answer (tests lower it).
TIME_LIMIT_S = 2.0
# Removed before comparing: zero width space, non-joiner, joiner, word joiner, and the BOM / zero width no-break space.
ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff"
_DROP_ZERO_WIDTH = dict.fromkeys(map(ord, ZERO_WIDTH))
PATTERN_SHOWN_CHARS = 200


def normalize_text(text: str) -> str:
    """NFKC of the text without zero-width characters (removed first, so that "e" + U+200B + a combining acute
    accent still composes to "é")."""
    return unicodedata.normalize("NFKC", text.translate(_DROP_ZERO_WIDTH))


def is_blank(text: str) -> bool:
    """True when nothing visible is left once normalised and stripped (" ", a non-breaking space, U+200B)."""
    return not normalize_text(text).strip()


def visible_strings(value: Any, where: str, *, minimum: int = 0) -> tuple[str, ...]:
    """`value` as a tuple, checked to be a list of at least `minimum` strings that are each not blank (`is_blank`);
    else a ConfigError starting with `where` (e.g. "graders.json pattern.must_contain").

    Why: these strings (must_contain / must_not_contain phrases, classification labels) are compared to answers in
    their normalized form, in which a blank one (" ", a non-breaking or zero-width space) is "" or whitespace: a
    blank must_not_contain phrase is in every answer (failing all of them), a blank must_contain phrase checks
    nearly nothing, and a blank label matches nothing a model writes. Refused here, the uploader's slip is a
    ConfigError naming the item instead of scores silently skewed."""
    if minimum == 1:
        shape = "a non-empty list of non-empty strings"
    elif minimum:
        shape = f"a list of at least {minimum} non-empty strings"
    else:
        shape = "a list of non-empty strings"
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or len(value) < minimum:
        raise ConfigError(f"{where} must be {shape}")
    for index, item in enumerate(value):
        if is_blank(item):
            raise ConfigError(
                f"{where} must be {shape}: item {index} ({item!r}) is blank (only whitespace or invisible characters)"
            )
    return tuple(value)


class _TimedOut(BaseException):
    """Raised by the SIGALRM handler. A BaseException so that no `except Exception` inside jsonschema (or ours, for
    its validation errors) can swallow it: only `time_limit` catches it."""


@contextmanager
def time_limit(what: str, where: str) -> Iterator[None]:
    """Run the block with at most TIME_LIMIT_S seconds (read at each call); over it: ConfigError "<what> took more
    than N s on <where>: simplify it". Off the main thread: no limit (see the module docstring). The previous SIGALRM
    handler and ITIMER_REAL timer are restored afterwards (an outer timer that fell due meanwhile fires right
    after)."""
    limit = TIME_LIMIT_S
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield  # no limit: signal handlers only run in the main thread (and only where setitimer exists)
        return
    armed = [True]

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        if armed[0]:  # never raise once the block is over (a signal may land while we restore the timer)
            raise _TimedOut

    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    previous_delay, previous_interval = signal.setitimer(signal.ITIMER_REAL, limit)
    started = time.monotonic()
    try:
        yield
    except _TimedOut:
        raise ConfigError(f"{what} took more than {limit:g} s on {where}: simplify it") from None
    finally:
        armed[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        # None: the previous handler was not installed from Python; the default action is the closest we can restore.
        signal.signal(signal.SIGALRM, previous_handler if previous_handler is not None else signal.SIG_DFL)
        if previous_delay > 0:
            remaining = max(previous_delay - (time.monotonic() - started), 1e-6)
            signal.setitimer(signal.ITIMER_REAL, remaining, previous_interval)


def shown(pattern: str) -> str:
    """A pattern as error messages quote it (repr, cut to PATTERN_SHOWN_CHARS characters)."""
    text = repr(pattern)
    return text if len(text) <= PATTERN_SHOWN_CHARS else text[: PATTERN_SHOWN_CHARS - 3] + "..."


def search(regex: re.Pattern[str], text: str, *, what: str, where: str) -> bool:
    """`regex.search(text)` under the time limit; `what` names the check ("pattern regex"), `where` the answer
    ("example 3 (candidate's answer)")."""
    with time_limit(f"{what} {shown(regex.pattern)}", where):
        return regex.search(text) is not None
