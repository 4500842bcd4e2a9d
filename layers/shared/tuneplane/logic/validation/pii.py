"""Find personal data and secrets in text: emails, phone numbers, payment card numbers, AWS access keys.

Findings carry a masked preview only: reports travel to S3 and Slack, the secret itself must not.
"""

from __future__ import annotations

import re
from typing import NamedTuple

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
            hits.append(PiiHit("AWS access key", f"{key[:4]}{'*' * 12}{key[-4:]}"))
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
