"""Find personal data and secrets in text: emails, phone numbers, payment card numbers, AWS access keys.

Findings carry a masked preview only: reports travel to S3 and Slack, the secret itself must not.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_AWS_KEY = re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b")
# Cheap gate: anything that could be a card or phone number has a run of digits with separators.
_DIGIT_RUN = re.compile(r"\+?\(?\d[\d ().-]{7,}\d")
_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{3}\)|\d{3})[ .-]?\d{3}[ .-]?\d{4}(?!\d)")


class PiiHit(NamedTuple):
    kind: str
    masked: str


def _luhn_ok(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _mask_email(address: str) -> str:
    local, _, domain = address.partition("@")
    return f"{local[:1]}***@{domain[:1]}***{domain[domain.rfind('.'):]}"


def find_pii(text: str) -> list[PiiHit]:
    """Return at most one hit per kind, in the order email, aws_access_key, card_number, phone_number."""
    hits: list[PiiHit] = []
    if "@" in text:
        match = _EMAIL.search(text)
        if match:
            hits.append(PiiHit("email address", _mask_email(match.group())))
    if "A" in text:
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
