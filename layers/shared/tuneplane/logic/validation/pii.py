"""Find personal data and secrets in text: emails, phone numbers, payment card numbers, AWS access keys; and mask them.

Findings carry a masked preview only: reports travel to S3 and Slack, the secret itself must not. ``redact`` is the
one function every text drawn from dataset content passes through before it leaves the pipeline (problem messages
and paths, the smoke test's prompt and answer, event messages, notes and metrics, hence the ledger and Slack): it
masks every occurrence of whatever ``find_pii`` finds, and a little more eagerly (a key glued to a word, a card
followed by more digits): a masked false positive in a message costs little, a leak cannot be taken back.

PII is read the way a person reads it, in any script and width: addresses with non-ASCII local parts and domains
(RFC 6531) or in full-width forms, cards with any Unicode space, a dash, a dot or a slash between their digit groups
and in any script's digits, international phone numbers ("+44 20 7946 0958", "0044 ...", "(+44) ...", "+49 (0)30
..."); and masked in the original text, whatever form it had there. Dates, versions, times and decimal numbers are
not read as numbers of either kind.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from collections.abc import Callable
from typing import NamedTuple

from tuneplane.bounds import bound_text

# Every detector runs on a *view* of the text with exactly one character per character of the text (``_view``):
# each character NFKC-normalised on its own where that gives ASCII punctuation or a full-width letter's ASCII
# letter (full-width "ｊｏｈｎ＠" reads "john@"), any script's decimal digit as its ASCII digit ("４١" reads "41"),
# every Unicode space (category Zs: U+00A0, U+2009, U+202F, ...) as " ", every dash (category Pd, U+2212) as "-",
# the ideographic full stops as "." (IDNA reads them as label dots) and every combining mark as a letter (so
# "jose\u0301" or a Devanagari vowel sign stays inside a word). A match in the view is a match at the same offsets
# in the text: masking replaces the ORIGINAL characters, and nothing that calls ``redact`` sees a length other than
# the one it would have seen for ASCII text. Per character, not the whole string: NFKC of a string composes and
# reorders across characters, which breaks that 1:1 map.

# Bounded runs (RFC 5321: a local part has at most 64 characters, a label 63): with `+` a long run of such
# characters anywhere in a text that holds an '@' made the search quadratic (80 KB took 10 s). ``\w`` is any
# script's letters and digits: RFC 6531 allows UTF-8 in both the local part and the domain ("josé@exämple.de",
# "用户@例子.广告"); a top-level domain is letters of any script, or an IDNA A-label (xn--...).
_EMAIL = re.compile(r"[\w.%+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63})*\.(?:xn--[a-z0-9-]{1,59}|[^\W\d_]{2,63})")
_AWS_KEY = re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b")
# Cheap gate: anything that could be a card or phone number has a run of 8+ digits and separators (an E.164
# number can have 8 digits: "+12345678"). (No optional prefix: a pattern that can start anywhere is tried at every
# position, 5x slower.)
_DIGIT_RUN = re.compile(r"[0-9][0-9 ().+/-]{6,}[0-9]")
_AWS_KEY_PREFIXES = ("AKIA", "ASIA", "ABIA", "ACCA")
_AWS_KEY_PREFIX_BYTES = re.compile(rb"A(?:KI|SI|BI|CC)A")  # one literal-prefix scan instead of four
# A digit run needs 9+ consecutive characters from [0-9 ().+/-] (an 8-digit E.164 number with its "+"): map them
# all to "0" (one C-level pass) and look for nine in a row, instead of running a regex over every line.
_RUN_CHARS = bytes.maketrans(b"0123456789 ().-/+", b"0" * 17)
_NINE = b"0" * 9
# A card: 13 to 19 digits in groups of 3 or more with a space or a dash between them (in the view: any Unicode
# space, any dash), or groups as cards are printed (4-4-4-4, 4-4-4-4-3, 4-6-5, 4-6-4) with one dot or slash
# throughout ("4111.1111.1111.1111", "4111/1111/1111/1111"); only the printed shape with dots and slashes, and no
# groups of one or two digits, so that dates ("2026-12-04 2026-12-05"), versions, lists of small numbers and of
# decimals are not read as one. Never the fraction or integer part of a decimal number ("3.1415926535897932"), nor
# four groups of a longer path ("/2026/1234/5678/9012/3456").
# A run of any number of groups is one match: its cards are found group by group (cards in a row), and where none
# starts, at any digit of a chunk of at most 19 digits (``_card_spans``), in a time linear in its length.
_CARD = re.compile(r"(?<![0-9])(?<![0-9][.,])[0-9]{3,19}(?:[ -][0-9]{3,19})*(?![0-9]|[.,][0-9])")
_CARD_GROUPED = re.compile(
    r"(?<![0-9/])(?<![0-9][.,])[0-9]{4}([./])"
    r"(?:[0-9]{4}\1[0-9]{4}\1[0-9]{4}(?:\1[0-9]{3})?|[0-9]{6}\1[0-9]{4,5})(?![0-9]|[.,/][0-9])"
)
# A North American number (10 digits, optionally +1), not the fraction or integer part of a decimal number.
_PHONE = re.compile(
    r"(?<![\w+])(?<![0-9][.,])(?:\+[0-9]{1,3}[ .-]?)?(?:\([0-9]{3}\)|[0-9]{3})[ .-]?[0-9]{3}[ .-]?[0-9]{4}"
    r"(?![0-9]|[.,][0-9])"
)
# An international number (ITU-T E.123/E.164): "+", "00" or "(+NN)" before a country code, then groups of digits
# with one space, dot, dash or slash between them, or in parentheses ("+49 (0)30 123456"). Each group is a maximal
# digit run and the separator is not optional between two of them, so the pattern cannot backtrack into a split
# of a run. A "00" that goes on a run of digit groups is a group of it ("3000 0020 0000 0000": a card), not a prefix,
# unless the run before it is an international number itself (two in a row): ``_intl_phone_spans``.
# How many digits (8 to 15) and whether it is a decimal number is decided in ``_intl_phone_span``.
_INTL_PHONE = re.compile(
    r"(?<![\w+])(?:\+|00|\(\+(?=[1-9][0-9]{0,2}\)))[1-9][0-9]*\)?"
    r"(?:[ ./-]?\([0-9]{1,4}\)[0-9]*|[ ./-][0-9]+){0,16}"
)
# _view's gates: a key prefix or a character that reads as "@" or as a letter of one besides the ASCII ones (﹫ ＠
# Ａ Ｂ Ｃ Ｉ Ｋ Ｓ), in one scan that starts with a character set (four substring scans and a set took 2.3x as long);
# and what _DIGIT_RUN needs in the view: a decimal digit (any script's: \d), then digits and separators (all of
# them \W), then a digit. tests/unit/test_pii_unicode.py checks both against every code point of Unicode.
_KEY_OR_FULL_WIDTH = re.compile("[A\ufe6b\uff20\uff21\uff22\uff23\uff29\uff2b\uff33](?:(?<=A)(?:KI|SI|BI|CC)A|(?<!A))")
_LOOSE_DIGIT_RUN = re.compile(r"\d[\d\W]{6,}\d")
_GROUP = re.compile(r"\(0\)|[0-9]+")
_GROUP_BEFORE = re.compile(r"[0-9][ ./-]\Z")
_DIGIT_OR_PAREN = re.compile(r"[0-9()+]")
_E164_DIGITS = (8, 15)


# mask_pii also masks a key glued to other text (no word boundaries): its prefixes make it unmistakable.
_AWS_KEY_ANYWHERE = re.compile(r"(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}")
_DIGITS = re.compile(r"[0-9]+")
_NON_DIGIT = re.compile(r"[^0-9]")
_CARD_DIGITS = (13, 19)
# Longer than any secret the patterns above match (an email address: 64 + 1 + a domain of up to 253; a phone
# number: 15 digits in at most 16 groups), so a secret that starts within what is shown of a text is whole within
# what mask_head and redact mask of it.
MASK_MARGIN = 320


class PiiHit(NamedTuple):
    kind: str
    masked: str


def _view_code(code: int) -> int:
    """The view's character for the character ``code``. Compatibility forms are read as their NFKC forms where
    that is ASCII punctuation ("\uff20" -> "@", "\uff0e" -> ".", "\uff0f" -> "/", "\u207a" -> "+") and for the
    full-width letters (U+FF21-U+FF5A); other letters stay as they are (``\\w`` reads them as letters already), and
    only decimal digits are digits (a superscript "²" is no digit of a number)."""
    char = chr(code)
    category = unicodedata.category(char)
    if category == "Nd":
        return ord(str(unicodedata.decimal(char)))
    if category == "Zs":
        return ord(" ")
    if category == "Pd" or char == "\u2212":
        return ord("-")
    if category[0] == "M":
        return ord("a")
    if char in "\u3002\uff61":
        return ord(".")
    normal = unicodedata.normalize("NFKC", char)
    if len(normal) == 1 and normal.isascii() and (not normal.isalnum() or 0xFF21 <= code <= 0xFF5A):
        return ord(normal)
    return code


class _ViewTable(dict[int, int]):
    """``str.translate`` table of the view, filled on first sight of a character (a table of all of Unicode would
    take a second to build at every cold start; the characters a dataset uses are a few thousand at most)."""

    def __missing__(self, code: int) -> int:
        self[code] = _view_code(code)
        return self[code]


_VIEW_TABLE = _ViewTable()


def _view(text: str) -> str | None:
    """The text as the detectors read it: one character for each of ``text`` (see above); ASCII is its own view.
    None when no detector can find anything in it.

    Building the view costs ~25 ns a character (a table lookup each): a non-ASCII text gets one only when it could
    hold something a detector looks for (a superset of what its view can hold): an '@' or a character read as one,
    a key prefix or a full-width letter of one, or two decimal digits 8 or more characters apart with only digits
    and non-word characters (every space, dash, dot, slash, parenthesis, mark) between them."""
    if text.isascii():
        return text
    if "@" in text or _KEY_OR_FULL_WIDTH.search(text) or _LOOSE_DIGIT_RUN.search(text):
        return text.translate(_VIEW_TABLE)
    return None


def _splice(text: str, view: str, spans: list[tuple[int, int, str]]) -> tuple[str, str]:
    """``text`` and its view with each (start, end, mask) span replaced by its (ASCII) mask: still one view
    character per text character."""
    if not spans:
        return text, view
    pieces: list[str] = []
    view_pieces: list[str] = []
    done = 0
    for start, end, mask in spans:
        pieces += [text[done:start], mask]
        view_pieces += [view[done:start], mask]
        done = end
    pieces.append(text[done:])
    if view is text:
        masked = "".join(pieces)
        return masked, masked
    view_pieces.append(view[done:])
    return "".join(pieces), "".join(view_pieces)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _mask_email(address: str, view: str) -> str:
    """``j***@e***.com`` for an address and its view: the view says where its '@' and last dot are (whatever form
    they have in the address), the address gives the first character of the local part and of the domain and the
    top-level domain, as NFKC reads them (full-width forms as ASCII, combining marks composed), never the view's
    stand-ins. A top-level domain that NFKC would make longer is shown as it is (one character can fold to 18)."""
    at, dot = view.index("@"), view.rindex(".")
    if address.isascii():
        return f"{address[:1]}***@{address[at + 1 : at + 2]}***{address[dot:]}"
    top = address[dot + 1 :]
    folded = unicodedata.normalize("NFKC", top)
    local, domain = (unicodedata.normalize("NFKC", part)[:1] for part in (address[:at], address[at + 1 : dot]))
    return f"{local}***@{domain}***.{folded if len(folded) <= len(top) else top}"


def may_contain_pii(raw_line: bytes) -> bool:
    """A fast, exact pre-check on a whole raw JSON line: False means find_pii finds nothing in any of its
    strings. Each detector needs an '@', a key prefix or a run of ASCII digits and separators; lines with
    non-ASCII text (full-width forms, other scripts' digits, Unicode spaces) or \\u or \\/ escapes (which could
    spell any of those, or a slash between a card's digit groups) always get the full check."""
    return (
        not raw_line.isascii()
        or b"@" in raw_line
        or (b"\\" in raw_line and (b"\\u" in raw_line or b"\\/" in raw_line))  # memchr for the rare backslash first
        or _AWS_KEY_PREFIX_BYTES.search(raw_line) is not None
        or _NINE in raw_line.translate(_RUN_CHARS)
    )


def _grouped_card_spans(view: str) -> list[tuple[int, int, str]]:
    spans = []
    for match in _CARD_GROUPED.finditer(view):
        digits = _NON_DIGIT.sub("", match.group())
        if _luhn_ok(digits):
            spans.append((match.start(), match.end(), f"**** {digits[-4:]}"))
    return spans


class _DigitRun:
    """A run of digit groups (a match of ``_CARD``): its digits, where each group's are among them and in the view,
    and Luhn sums of its prefixes, so that whether any stretch of it passes the Luhn check is known in O(1): a run
    can be a megabyte of "123 123 ...", and every stretch of 13 to 19 digits of it may be tried."""

    def __init__(self, view: str, match: re.Match[str]) -> None:
        self.groups: list[tuple[int, int, int]] = []  # (first digit, end digit, view offset of the first digit)
        pieces: list[str] = []
        count = 0
        for group in _DIGITS.finditer(match.group()):
            pieces.append(group.group())
            self.groups.append((count, count + len(group.group()), match.start() + group.start()))
            count += len(group.group())
        self.digits = "".join(pieces)
        # sums[0]: every digit at an even index doubled (Luhn's doubling, then 9 taken off above 9), sums[1]: odd
        even, odd, sums_even, sums_odd = 0, 0, [0], [0]
        for index, char in enumerate(self.digits):
            value = ord(char) - 48
            doubled = _DOUBLED[value]
            if index % 2:
                even, odd = even + value, odd + doubled
            else:
                even, odd = even + doubled, odd + value
            sums_even.append(even)
            sums_odd.append(odd)
        self._sums = (sums_even, sums_odd)

    def luhn_ok(self, start: int, end: int) -> bool:
        """Whether digits[start:end] pass the Luhn check: the digits an odd distance before the last are doubled."""
        sums = self._sums[1] if (end - 1) % 2 == 0 else self._sums[0]
        return (sums[end] - sums[start]) % 10 == 0

    def at(self, digit: int) -> int:
        """The view offset of a digit (by its index among the run's digits)."""
        first, _, offset = self.groups[bisect.bisect_right(self.groups, (digit, _NO_END)) - 1]
        return offset + digit - first

    def card_from(self, group: int) -> int | None:
        """The last group of the longest Luhn-valid card of whole groups from ``group``, or None."""
        low, high = _CARD_DIGITS
        first = self.groups[group][0]
        found = None
        for last in range(group, len(self.groups)):
            length = self.groups[last][1] - first
            if length > high:
                break
            if length >= low and self.luhn_ok(first, self.groups[last][1]):
                found = last
        return found

    def chunk_end(self, group: int) -> int:
        """The group after the most whole groups from ``group`` that hold at most 19 digits (at least one)."""
        first, last = self.groups[group][0], group + 1
        while last < len(self.groups) and self.groups[last][1] - first <= _CARD_DIGITS[1]:
            last += 1
        return last

    def mask(self, start: int, end: int) -> tuple[int, int, str]:
        """The view span and mask of the card digits[start:end]."""
        return self.at(start), self.at(end - 1) + 1, f"**** {self.digits[end - 4 : end]}"


_DOUBLED = [0, 2, 4, 6, 8, 1, 3, 5, 7, 9]
_NO_END = 1 << 62  # sorts after every (first digit, end digit, offset) of a group with the same first digit


def _card_spans(view: str) -> list[tuple[int, int, str]]:
    """Every Luhn-valid card in a run of digit groups as ``**** <last 4>``, looked for in chunks as a reader splits
    the run: from a group, the longest card of whole groups (cards in a row, a card followed by more digits); where
    none starts, one at any digit of the most groups from there that hold at most 19 digits (a card glued to more
    digits), then on after that chunk. A few Luhn checks for each chunk: a run of a megabyte is masked in linear
    time, and a table of numbers is not masked all over."""
    spans: list[tuple[int, int, str]] = []
    low = _CARD_DIGITS[0]
    for match in _CARD.finditer(view):
        run = _DigitRun(view, match)
        group = 0
        while group < len(run.groups):
            last = run.card_from(group)
            if last is not None:
                spans.append(run.mask(run.groups[group][0], run.groups[last][1]))
                group = last + 1
                continue
            chunk_end = run.chunk_end(group)
            first, end = run.groups[group][0], run.groups[chunk_end - 1][1]
            found = next(
                (
                    (start, stop)
                    for start in range(first, end - low + 1)
                    for stop in range(end, start + low - 1, -1)
                    if run.luhn_ok(start, stop)
                ),
                None,
            )
            if found is not None:
                spans.append(run.mask(*found))
                while group < chunk_end and run.groups[group][0] < found[1]:
                    group += 1
            else:
                group = chunk_end
    return spans


def _intl_phone_span(match: re.Match[str]) -> tuple[int, int] | None:
    """Where the international number in ``match`` (of ``_INTL_PHONE``) is, or None. Its digits (without the "00"
    prefix and a "(0)" trunk prefix) are 8 to 15 (E.164); groups past the 15th digit are the text that follows,
    not the number. A +1 number is 11 digits (NANP). A signed decimal ("+3.14159265", one dot; "+2000000000.0000000"),
    a number with thousands dots ("+12.345.678") or a bare run after "00" is no phone number."""
    text = match.group()
    prefix = 2 if text.startswith("00") else 0
    low, high = _E164_DIGITS
    count, cut = 0, 0
    for group in _GROUP.finditer(text, prefix):
        count += 0 if group.group() == "(0)" else len(group.group())
        if count > high:
            break
        cut = group.end()
    number = text[prefix:cut]
    digits = _NON_DIGIT.sub("", number.replace("(0)", "", 1))
    if not low <= len(digits) <= high or (digits[0] == "1" and len(digits) != 11):
        return None
    if prefix and number.isdigit():  # "0049123456789" is as likely an identifier with leading zeros
        return None
    separators = _DIGIT_OR_PAREN.sub("", number)
    if separators and set(separators) == {"."}:
        parts = number.lstrip("+(").split(".")
        if len(parts) == 2 or all(len(part) == 3 for part in parts[1:]):
            return None
    after = match.string[match.start() + cut : match.start() + cut + 2]
    if "." not in separators and after[:1] in (".", ",") and after[1:].isdigit():
        return None  # cut at 15 digits, it is the integer part of a decimal number ("+2000000000.000000")
    return match.start(), match.start() + cut


def _intl_phone_spans(view: str) -> list[tuple[int, int, str]]:
    """Every international number as ``***<last 4 digits>``. A match that is no number, or is cut short at 15
    digits, may still have one inside it or after its cut ("+1 0044 20 7946 0958", two numbers in a row): the
    search goes on right after its start or its cut. Each search runs at most 16 groups from a "+" or a "00"
    after a non-word character, so this stays linear."""
    spans: list[tuple[int, int, str]] = []
    match = _INTL_PHONE.search(view)
    while match:
        start = match.start()
        goes_on_a_run = match.group().startswith("00") and _GROUP_BEFORE.search(view, max(0, start - 2), start)
        after_a_number = bool(spans) and spans[-1][1] == start - 1
        span = None if goes_on_a_run and not after_a_number else _intl_phone_span(match)
        if span is None:
            match = _INTL_PHONE.search(view, match.start() + 1)
            continue
        spans.append((*span, _mask_phone(view[span[0] : span[1]])))
        match = _INTL_PHONE.search(view, span[1])
    return spans


def find_pii(text: str) -> list[PiiHit]:
    """Return at most one hit per kind, in the order email, aws_access_key, card_number, phone_number."""
    hits: list[PiiHit] = []
    view = _view(text)
    if view is None:
        return hits
    if "@" in view:
        match = _EMAIL.search(view)
        if match:
            hits.append(PiiHit("email address", _mask_email(text[match.start() : match.end()], match.group())))
    if any(prefix in view for prefix in _AWS_KEY_PREFIXES):
        match = _AWS_KEY.search(view)
        if match:
            hits.append(PiiHit("AWS access key", _mask_aws_key(match.group())))
    if _DIGIT_RUN.search(view) is None:
        return hits
    # international numbers first (a "+" or "00" says what follows is one), blanked out so that their groups are
    # not read as a card; then cards, blanked out so that their groups are not read as a North American number
    intl = _intl_phone_spans(view)
    view = _blank(view, intl)
    cards = _grouped_card_spans(view) or _first_card(view)
    if cards:
        hits.append(PiiHit("card number", cards[0][2]))
    if intl:
        hits.append(PiiHit("phone number", intl[0][2]))
        return hits
    nanp = _nanp_spans(_blank(view, cards[:1]))
    if nanp:
        hits.append(PiiHit("phone number", nanp[0][2]))
    return hits


def _nanp_spans(view: str) -> list[tuple[int, int, str]]:
    """Every North American number as ``***<last 4 digits>``; not a decimal number that has its shape
    ("100.0000000": one dot and nothing else between the digits)."""
    return [
        (m.start(), m.end(), _mask_phone(m.group()))
        for m in _PHONE.finditer(view)
        if _DIGIT_OR_PAREN.sub("", m.group()) != "."
    ]


def _blank(view: str, spans: list[tuple[int, int, str]]) -> str:
    """``view`` with each span (in order, apart) as spaces: one pass, however many numbers a text holds."""
    return _splice(view, view, [(start, end, " " * (end - start)) for start, end, _ in spans])[0]


def _first_card(view: str) -> list[tuple[int, int, str]]:
    """The first card of whole digit groups, looked for as a reader splits a run: from its first group, the most
    groups that hold at most 19 digits, then on from the next group. (Not at any digit or length, as masking does: a
    long run of digits holds a Luhn-valid stretch somewhere in most cases, and a report should not say so.)"""
    for match in _CARD.finditer(view):
        run = _DigitRun(view, match)
        group = 0
        while group < len(run.groups):
            end = run.chunk_end(group)
            first, last = run.groups[group][0], run.groups[end - 1][1]
            if last - first >= _CARD_DIGITS[0] and run.luhn_ok(first, last):
                return [run.mask(first, last)]
            group = end
    return []


def _mask_aws_key(key: str) -> str:
    return f"{key[:4]}{'*' * 12}{key[-4:]}"


def _mask_phone(number: str) -> str:
    return f"***{_NON_DIGIT.sub('', number)[-4:]}"


def mask_pii(text: str) -> str:
    """``text`` with every email address, AWS access key, payment card number and phone number masked the way
    ``find_pii`` shows them (``j***@e***.com``, ``AKIA************WXYZ``, ``**** 1111``, ``***4567``). Each is found
    in the view and replaced in ``text`` itself: the original characters go, whatever script or width they had."""
    view = _view(text)
    if view is None:
        return text
    if "@" in view:
        spans = [
            (m.start(), m.end(), _mask_email(text[m.start() : m.end()], m.group())) for m in _EMAIL.finditer(view)
        ]
        text, view = _splice(text, view, spans)
    if any(prefix in view for prefix in _AWS_KEY_PREFIXES):
        spans = [(m.start(), m.end(), _mask_aws_key(m.group())) for m in _AWS_KEY_ANYWHERE.finditer(view)]
        text, view = _splice(text, view, spans)
    if _DIGIT_RUN.search(view) is None:
        return text
    text, view = _splice(text, view, _intl_phone_spans(view))
    text, view = _splice(text, view, _grouped_card_spans(view))
    text, view = _splice(text, view, _card_spans(view))
    text, view = _splice(text, view, _nanp_spans(view))
    return text


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
