"""Find personal data and secrets in text: emails, phone numbers, payment card numbers, AWS access keys; and mask them.

Findings carry a masked preview only: reports travel to S3 and Slack, the secret itself must not. ``redact`` is the
one function every text drawn from dataset content passes through before it leaves the pipeline (problem messages
and paths, the smoke test's prompt and answer, event messages, notes and metrics, hence the ledger and Slack): it
masks every occurrence of whatever ``find_pii`` finds, and a little more eagerly (a key glued to a word, a card
followed by more digits): a masked false positive in a message costs little, a leak cannot be taken back.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

from tuneplane.bounds import bound_text

# Bounded runs (RFC 5321: a local part has at most 64 characters, a label 63): with `+` a long run of such
# characters anywhere in a text that holds an '@' made the search quadratic (80 KB took 10 s).
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,63}")
_AWS_KEY = re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b")
# Cheap gate: anything that could be a card or phone number has a run of 9+ digits and separators. (No
# optional prefix: a pattern that can start anywhere is tried at every position, 5x slower.)
_DIGIT_RUN = re.compile(r"\d[\d ().-]{7,}\d")
_AWS_KEY_PREFIXES = ("AKIA", "ASIA", "ABIA", "ACCA")
_AWS_KEY_PREFIX_BYTES = re.compile(rb"A(?:KI|SI|BI|CC)A")  # one literal-prefix scan instead of four
# A digit run needs 9+ consecutive characters from [0-9 ().-]: map them all to "0" (one C-level pass) and
# look for nine in a row, instead of running a regex over every line.
_RUN_CHARS = bytes.maketrans(b"0123456789 ().-", b"0" * 15)
_NINE = b"0" * 9
_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{3}\)|\d{3})[ .-]?\d{3}[ .-]?\d{4}(?!\d)")


# mask_pii also masks a key glued to other text (no word boundaries): its prefixes make it unmistakable.
_AWS_KEY_ANYWHERE = re.compile(r"(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}")
_DIGIT = re.compile(r"\d")
_NON_DIGIT = re.compile(r"\D")
_CARD_DIGITS = (13, 19)
# Longer than any secret the patterns above match (an email address: 64 + 1 + a domain of up to 253), so a secret
# that starts within what is shown of a text is whole within what mask_head and redact mask of it.
MASK_MARGIN = 320


class PiiHit(NamedTuple):
    kind: str
    masked: str


def _luhn_ok(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)  # any script's decimal digit
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _mask_email(address: str) -> str:
    local, _, domain = address.partition("@")
    return f"{local[:1]}***@{domain[:1]}***{domain[domain.rfind('.') :]}"


def may_contain_pii(raw_line: bytes) -> bool:
    """A fast, exact pre-check on a whole raw JSON line: False means find_pii finds nothing in any of its
    strings. Each detector needs an '@', a key prefix or a run of ASCII digits; lines with non-ASCII text
    (other scripts' digits) or \\u escapes (which could spell any of those) always get the full check."""
    return (
        not raw_line.isascii()
        or b"@" in raw_line
        or (b"\\" in raw_line and b"\\u" in raw_line)  # memchr for the rare backslash first
        or _AWS_KEY_PREFIX_BYTES.search(raw_line) is not None
        or _NINE in raw_line.translate(_RUN_CHARS)
    )


def find_pii(text: str) -> list[PiiHit]:
    """Return at most one hit per kind, in the order email, aws_access_key, card_number, phone_number."""
    hits: list[PiiHit] = []
    if "@" in text:
        match = _EMAIL.search(text)
        if match:
            hits.append(PiiHit("email address", _mask_email(match.group())))
    if any(prefix in text for prefix in _AWS_KEY_PREFIXES):
        match = _AWS_KEY.search(text)
        if match:
            key = match.group()
            hits.append(PiiHit("AWS access key", _mask_aws_key(key)))
    if _DIGIT_RUN.search(text) is None:
        return hits
    for match in _CARD.finditer(text):
        digits = re.sub(r"\D", "", match.group())
        if 13 <= len(digits) <= 19 and _luhn_ok(digits):
            hits.append(PiiHit("card number", f"**** {digits[-4:]}"))
            # blank the card out so its digit groups are not reported again as a phone number
            text = text[: match.start()] + " " * len(match.group()) + text[match.end() :]
            break
    match = _PHONE.search(text)
    if match:
        digits = re.sub(r"\D", "", match.group())
        hits.append(PiiHit("phone number", f"***{digits[-4:]}"))
    return hits


def _mask_aws_key(key: str) -> str:
    return f"{key[:4]}{'*' * 12}{key[-4:]}"


def _mask_cards(text: str) -> str:
    """Every Luhn-valid run of 13 to 19 digits (spaces or dashes between them allowed) as ``**** <last 4>``. A run
    that is no card as a whole (a card followed by more digits) is searched for one inside it."""
    out: list[str] = []
    done = 0
    low, high = _CARD_DIGITS
    for match in _CARD.finditer(text):
        chunk = match.group()
        positions = [m.start() for m in _DIGIT.finditer(chunk)]
        digits = "".join(chunk[i] for i in positions)
        start = 0
        while start <= len(digits) - low:
            lengths = range(min(high, len(digits) - start), low - 1, -1)
            found = next((n for n in lengths if _luhn_ok(digits[start : start + n])), None)
            if found is None:
                start += 1
                continue
            first, last = match.start() + positions[start], match.start() + positions[start + found - 1]
            out += [text[done:first], f"**** {digits[start + found - 4 : start + found]}"]
            done = last + 1
            start += found
    out.append(text[done:])
    return "".join(out)


def _mask_phone(number: str) -> str:
    return f"***{_NON_DIGIT.sub('', number)[-4:]}"


def mask_pii(text: str) -> str:
    """``text`` with every email address, AWS access key, payment card number and phone number masked the way
    ``find_pii`` shows them (``j***@e***.com``, ``AKIA************WXYZ``, ``**** 1111``, ``***4567``)."""
    if "@" in text:
        text = _EMAIL.sub(lambda m: _mask_email(m.group()), text)
    if any(prefix in text for prefix in _AWS_KEY_PREFIXES):
        text = _AWS_KEY_ANYWHERE.sub(lambda m: _mask_aws_key(m.group()), text)
    if _DIGIT_RUN.search(text) is None:
        return text
    text = _mask_cards(text)
    return _PHONE.sub(lambda m: _mask_phone(m.group()), text)


def _masked_head(text: str, shown: int, mask: Callable[[str], str]) -> tuple[str, int]:
    """``mask`` of a start of ``text`` long enough that, masked, it has ``shown + MASK_MARGIN`` characters (or all
    of it), and how many characters of ``text`` that start has. A secret cut in two by that start's end lies beyond
    the first ``shown`` characters of the result, so cutting it at ``shown`` leaves no part of it."""
    cut = shown + MASK_MARGIN
    while True:
        masked = mask(text[:cut])
        if cut >= len(text) or len(masked) >= shown + MASK_MARGIN:  # masks are shorter: take more until it is long
            return masked, min(cut, len(text))
        cut *= 2


def mask_head(text: str, shown: int) -> str:
    """``mask_pii`` of as much of ``text`` as a cut at ``shown`` characters needs: a megabyte of hostile text (a key,
    a template's error quoting a message) costs no more than a line ("1 1 1 ..." masked whole takes seconds)."""
    return _masked_head(text, shown, mask_pii)[0]


def _mask_keeping(text: str, keep: tuple[str, ...]) -> str:
    kept = [k for k in keep if k and k in text]
    if not kept:
        return mask_pii(text)
    pattern = re.compile("|".join(re.escape(k) for k in sorted(kept, key=len, reverse=True)))
    pieces, done = [], 0
    for match in pattern.finditer(text):
        pieces += [mask_pii(text[done : match.start()]), match.group()]
        done = match.end()
    return "".join([*pieces, mask_pii(text[done:])])


def redact(text: str, limit: int | None = None, keep: tuple[str, ...] = ()) -> str:
    """What may leave the pipeline of a text drawn from dataset content: PII masked (before any cut, so that no
    half of a secret survives it), then bounded to ``limit`` characters with a marker (``bounds.bound_text``). The
    ``keep`` strings (the run's own identifiers, whose hex digests can hold ten digits in a row) are left as they
    are."""
    if limit is None:
        return _mask_keeping(text, keep)
    masked, used = _masked_head(text, limit, lambda head: _mask_keeping(head, keep))
    # what was not masked is cut away unseen: the marker counts it (as spaces)
    return bound_text(masked + " " * (len(text) - used), limit)
