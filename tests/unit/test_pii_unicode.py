"""The PII detector reads text the way a person does: card numbers with any Unicode space, a dash, a dot or a slash
between their digit groups and in any script's or full-width digits; international phone numbers (E.164 with "+",
"00" or "(+NN)", spaces, dots, dashes, slashes or parentheses, 8 to 15 digits); e-mail addresses with non-ASCII
local parts and domains (RFC 6531) and in full-width forms. Each is masked where it stands in the ORIGINAL text
(the text around it is left exactly as it was) and reported by ``find_pii`` and the validator; dates, versions,
times, decimal numbers, short integers, words with accents and URLs are left alone.

Property tests plant each class in random surrounding text: letters of any script, punctuation and Unicode spaces,
no digits and no '@' (so that the surroundings cannot join the secret or hold one of their own), one ASCII space on
either side of the secret (a phone number or an address glued to a word is not one).
"""

from __future__ import annotations

import json
import re
import sys
import time
import unicodedata
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuneplane.logic.validation import pii
from tuneplane.logic.validation.formats import key_label, preview
from tuneplane.logic.validation.pii import find_pii, mask_head, mask_pii, may_contain_pii, redact
from tuneplane.logic.validation.validator import DatasetSource, validate_dataset
from tuneplane.models.validation import Code, Severity, ValidationOptions

ZS = [chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Zs"]
NBSP, NARROW_NBSP, THIN = "\u00a0", "\u202f", "\u2009"
# Decimal digits 0-9 of a few scripts: ASCII, full-width (U+FF10-U+FF19), Arabic-Indic, Devanagari, Bengali
DIGIT_SCRIPTS = [0x30, 0xFF10, 0x660, 0x966, 0x9E6]
FULL_WIDTH = {c: c + 0xFEE0 for c in range(0x21, 0x7F)}  # "!" .. "~" -> U+FF01 .. U+FF5E


def _luhn_digit(body: str) -> str:
    """The check digit that makes ``body`` + it pass the Luhn check."""
    total = 0
    for index, char in enumerate(reversed(body)):
        value = int(char)
        if index % 2 == 0:  # doubled: the check digit will be at index 0
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return str((10 - total % 10) % 10)


def _in_script(draw: st.DrawFn, digits: str) -> str:
    """``digits`` with each digit written in a script drawn for it (mixed scripts too)."""
    scripts = draw(st.lists(st.sampled_from(DIGIT_SCRIPTS), min_size=len(digits), max_size=len(digits)))
    return "".join(chr(zero + int(d)) for zero, d in zip(scripts, digits, strict=True))


# ---- strategies: the classes the break test found ----


@st.composite
def unicode_cards(draw: st.DrawFn) -> tuple[str, str]:
    """(a Luhn-valid card as printed, with any separator and digits, its last four ASCII digits): 16 digits in
    fours or 19 in 4-4-4-4-3 (Visa, Mastercard), or an Amex 4-6-5, separated by any Unicode space, a dash (ASCII
    or en dash), a dot or a slash, or not at all."""
    shape = draw(st.sampled_from([(4, 4, 4, 4), (4, 4, 4, 4, 3), (4, 6, 5)]))
    body = draw(st.sampled_from("3456")) + draw(
        st.text("0123456789", min_size=sum(shape) - 2, max_size=sum(shape) - 2)
    )
    number = body + _luhn_digit(body)
    separator = draw(st.sampled_from([*ZS, "", "-", "\u2013", ".", "/"]))
    groups, start = [], 0
    for size in shape:
        groups.append(number[start : start + size])
        start += size
    return separator.join(_in_script(draw, group) for group in groups), number[-4:]


COUNTRY_CODES = ["44", "33", "49", "34", "39", "31", "81", "86", "91", "61", "7", "353", "358", "420", "971", "1"]


@st.composite
def intl_phones(draw: st.DrawFn) -> tuple[str, str]:
    """(an international number as written, its last four ASCII digits): "+", "00" or "(+NN)", a country code,
    8 to 15 digits in all (a +1 number has 11), in groups with a space (any Unicode one), a dot, a dash or a slash
    between them, maybe a "(0)" trunk prefix or an area code in parentheses; digits ASCII or full-width."""
    code = draw(st.sampled_from(COUNTRY_CODES))
    total = 11 if code == "1" else draw(st.integers(max(8, len(code) + 6), 15))
    national = draw(st.sampled_from("123456789")) + draw(
        st.text("0123456789", min_size=total - len(code) - 1, max_size=total - len(code) - 1)
    )
    # groups of 1 to 4 digits, the last one of 4 (so that dots never read as thousands separators)
    sizes: list[int] = []
    left = len(national) - 4
    while left > 0:
        sizes.append(min(left, draw(st.integers(1, 4))))
        left -= sizes[-1]
    sizes.append(4)
    groups, start = [], 0
    for size in sizes:
        groups.append(national[start : start + size])
        start += size
    separator = draw(st.sampled_from([" ", NBSP, THIN, ".", "-", "/"]))
    if draw(st.booleans()) and len(groups) > 1:
        groups[0] = f"({groups[0]})"  # an area code in parentheses
    body = separator.join(groups)
    if code != "1" and draw(st.booleans()):
        body = "(0)" + body  # "+49 (0)30 123456"
    prefix = draw(st.sampled_from([f"+{code}{separator}", f"00{code}{separator}", f"(+{code}) "]))
    number = prefix + body
    if draw(st.booleans()):
        number = "".join(chr(0xFF10 + int(c)) if c.isdigit() else c for c in number)
    return number, national[-4:]


# letters of any script that NFKC leaves one letter ("\ufdfa" folds to 18 characters with spaces: an address
# holding it is masked all the same, but its top-level domain is shown unfolded)
_SCRIPT_LETTERS = st.characters(categories=["Ll", "Lu", "Lo"]).filter(
    lambda c: len(unicodedata.normalize("NFKC", c)) == 1 and unicodedata.normalize("NFKC", c).isalpha()
)
_ASCII_LOCAL = "abcdefghijklmnopqrstuvwxyz0123456789._"


@st.composite
def unicode_emails(draw: st.DrawFn) -> str:
    """An address with a local part and a domain in any script (RFC 6531: "josé@exämple.de", "用户@例子.广告"),
    maybe decomposed (NFD: "e" and a combining accent), or in full-width forms ("ｊｏｈｎ＠ｅｘａｍｐｌｅ．ｃｏｍ")."""
    local = draw(_SCRIPT_LETTERS) + draw(
        st.text(st.one_of(_SCRIPT_LETTERS, st.sampled_from(_ASCII_LOCAL)), max_size=12)
    )
    labels = draw(st.lists(st.text(_SCRIPT_LETTERS, min_size=1, max_size=10), min_size=1, max_size=3))
    tld = draw(st.text(_SCRIPT_LETTERS, min_size=2, max_size=6))
    address = f"{local}@{'.'.join(labels)}.{tld}"
    form = draw(st.sampled_from(["as is", "NFD", "full-width ASCII", "full-width at and dots"]))
    if form == "NFD":
        return unicodedata.normalize("NFD", address)
    if form == "full-width ASCII":
        ascii_address = draw(st.from_regex(r"\A[a-z][a-z0-9._]{1,12}@[a-z0-9]{1,10}\.[a-z]{2,6}\Z"))
        return ascii_address.translate(FULL_WIDTH)
    return address.replace("@", draw(st.sampled_from(["\uff20", "\ufe6b"]))).replace(".", "\uff0e")


# Letters of any script, punctuation and Unicode spaces: no digits, no '@' (nor what reads as one), nothing that
# could join the secret or be one.
SURROUNDING = st.text(
    st.characters(categories=["L", "P", "Zs"], exclude_characters="@\uff20\ufe6b"), max_size=30
).filter(lambda s: not any(c.isdigit() for c in s))


def _assert_masked_in_place(text: str, before: str, after: str, secret: str, kind: str) -> str:
    """``text`` (= before + " " + secret + " " + after) is reported as ``kind`` and redacted to before + " " +
    a mask + " " + after: the text around the secret untouched, the secret gone. Returns the mask."""
    assert kind in [hit.kind for hit in find_pii(text)], find_pii(text)
    masked = redact(text)
    assert masked.startswith(before + " ") and masked.endswith(" " + after), (text, masked)
    mask = masked[len(before) + 1 : len(masked) - len(after) - 1]
    assert secret not in masked and "***" in mask, (secret, masked)
    # and masking is done: nothing left to find, masking again changes nothing
    assert find_pii(masked) == [] and mask_pii(masked) == masked
    return mask


@settings(suppress_health_check=[HealthCheck.too_slow])  # generating unicode text is slow on a busy machine
@given(card=unicode_cards(), before=SURROUNDING, after=SURROUNDING)
def test_a_card_with_any_separator_or_digits_is_reported_and_masked_in_place(
    card: tuple[str, str], before: str, after: str
) -> None:
    # GIVEN a card number written with Unicode spaces, dots, slashes or dashes, in any script's digits, in text
    number, last4 = card
    text = f"{before} {number} {after}"
    # WHEN it is checked and redacted
    mask = _assert_masked_in_place(text, before, after, number, "card number")
    # THEN the card is replaced, where it stood, by its mask with its last four digits in ASCII
    assert mask == f"**** {last4}"


@settings(suppress_health_check=[HealthCheck.too_slow])  # generating unicode text is slow on a busy machine
@given(phone=intl_phones(), before=SURROUNDING, after=SURROUNDING)
def test_an_international_phone_number_is_reported_and_masked_in_place(
    phone: tuple[str, str], before: str, after: str
) -> None:
    # GIVEN an international phone number (+, 00 or (+NN), any grouping and separator) in text
    number, last4 = phone
    text = f"{before} {number} {after}"
    # WHEN it is checked and redacted
    mask = _assert_masked_in_place(text, before, after, number, "phone number")
    # THEN the whole number, its prefix included, is replaced by its mask
    assert mask == f"***{last4}"


@settings(suppress_health_check=[HealthCheck.too_slow])  # generating unicode text is slow on a busy machine
@given(address=unicode_emails(), before=SURROUNDING, after=SURROUNDING)
def test_a_non_ascii_or_full_width_address_is_reported_and_masked_in_place(
    address: str, before: str, after: str
) -> None:
    # GIVEN an address in any script, decomposed or full-width, in text
    text = f"{before} {address} {after}"
    # WHEN it is checked and redacted
    mask = _assert_masked_in_place(text, before, after, address, "email address")
    # THEN the mask shows its first character, its domain's and its top-level domain as NFKC reads them
    folded = unicodedata.normalize("NFKC", address)
    local, _, domain = folded.partition("@")
    assert mask == f"{local[0]}***@{domain[0]}***{domain[domain.rfind('.') :]}"


# ---- what must not be flagged ----


@st.composite
def dates_and_times(draw: st.DrawFn) -> str:
    y, m, d = draw(st.integers(1900, 2100)), draw(st.integers(1, 12)), draw(st.integers(1, 28))
    hh, mm, ss = draw(st.integers(0, 23)), draw(st.integers(0, 59)), draw(st.integers(0, 59))
    shapes = [
        f"{y:04}-{m:02}-{d:02}",
        f"{d:02}.{m:02}.{y:04}",
        f"{d:02}/{m:02}/{y:04}",
        f"{y:04}/{m:02}/{d:02}",
        f"{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z",
        f"{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}",
        f"{hh:02}:{mm:02}",
        f"{hh:02}:{mm:02}:{ss:02}.{draw(st.integers(0, 999999)):06}",
        f"{y:04}-{m:02}-{d:02} {y:04}-{m:02}-{d + 1:02}",  # two dates in a row
    ]
    return draw(st.sampled_from(shapes))


VERSIONS = st.builds(
    "{}{}.{}.{}{}".format,
    st.sampled_from(["", "v"]),
    st.integers(0, 99),
    st.integers(0, 99),
    st.integers(0, 9999),
    st.one_of(st.just(""), st.integers(0, 99999).map(".{}".format)),
)
DECIMALS = st.one_of(
    st.builds(
        "{}{}.{}".format,
        st.sampled_from(["", "-", "+"]),
        st.integers(0, 10**15),
        st.text("0123456789", min_size=1, max_size=20),  # a fraction of any length: pi to 16 places
    ),
    st.integers(0, 10**9).map(lambda n: f"{n:,}"),  # 1,234,567,890
    st.integers(0, 10**9).map(lambda n: f"{n:,}".replace(",", NARROW_NBSP) + ",5"),  # French: 1 234 567,5
)
SHORT_INTEGERS = st.one_of(st.integers(-(10**6), 10**7).map(str), st.integers(1, 99).map("+{}".format))
NORMAL_FORMS: list[Literal["NFC", "NFD"]] = ["NFC", "NFD"]
ACCENTED_WORDS = st.lists(
    st.tuples(st.sampled_from(NORMAL_FORMS), st.text(st.characters(categories=["L", "M"]), min_size=1, max_size=12)),
    min_size=1,
    max_size=5,
).map(lambda words: " ".join(unicodedata.normalize(form, word) for form, word in words))
URLS = st.builds(
    "https://{}.{}/{}?q={}".format,
    st.text(st.characters(categories=["Ll", "Lo"]), min_size=1, max_size=12),
    st.sampled_from(["com", "de", "广告", "рф"]),
    st.lists(st.one_of(st.text("abcdefghé", min_size=1, max_size=8), st.integers(0, 9999).map(str)), max_size=4).map(
        "/".join
    ),
    st.text("abcxyzé", max_size=6),
)
NOT_PII = st.one_of(dates_and_times(), VERSIONS, DECIMALS, SHORT_INTEGERS, ACCENTED_WORDS, URLS)


@settings(suppress_health_check=[HealthCheck.too_slow])  # generating unicode text is slow on a busy machine
@given(
    tokens=st.lists(NOT_PII, min_size=1, max_size=4),
    joiner=st.sampled_from([" and ", "; ", ", then ", f"{NBSP}et{NBSP}"]),
    before=SURROUNDING,
    after=SURROUNDING,
)
def test_dates_versions_times_decimals_short_numbers_words_and_urls_are_left_alone(
    tokens: list[str], joiner: str, before: str, after: str
) -> None:
    # GIVEN text of dates, times, versions, decimal numbers, short integers, accented words and URLs without '@'
    text = f"{before} {joiner.join(tokens)} {after}"
    # WHEN it is checked and redacted
    # THEN nothing is reported and nothing masked
    assert find_pii(text) == []
    assert redact(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "released 2026-12-04, build 10.0.19045.2965, v1.2.3",
        "pi is 3.1415926535897932 and e is 2.7182818284",
        "a change of +3.14159265 or +12.345.678",
        "+100 200 300 points",  # a +1 number has 11 digits
        "004912345678",  # "00" then a bare run: an identifier with leading zeros as likely as a number
        "12:30:45 on 04/12/2026 and 2026/12/05",
        "naïve café, Grüße, señor, Ærøskøbing, 日本語",
        "https://exämple.de/path/2026/12?x=1",
    ],
)
def test_the_break_tests_look_alikes_are_left_alone(text: str) -> None:
    # GIVEN text that looks like numbers but holds no PII
    # WHEN it is checked and redacted
    # THEN nothing is reported and nothing masked
    assert find_pii(text) == [] and redact(text) == text


# ---- the break test's own examples, in place ----


@pytest.mark.parametrize(
    ("secret", "kind", "mask"),
    [
        ("4111.1111.1111.1111", "card number", "**** 1111"),
        ("4111/1111/1111/1111", "card number", "**** 1111"),
        (f"4111{NBSP}1111{NBSP}1111{NBSP}1111", "card number", "**** 1111"),
        (f"4111{NARROW_NBSP}1111{NARROW_NBSP}1111{NARROW_NBSP}1111", "card number", "**** 1111"),
        (f"4111{THIN}1111{THIN}1111{THIN}1111", "card number", "**** 1111"),
        ("４１１１　１１１１　１１１１　１１１１", "card number", "**** 1111"),
        ("３７８２８２２４６３１０００５", "card number", "**** 0005"),
        ("+44 20 7946 0958", "phone number", "***0958"),
        ("+33 1 23 45 67 89", "phone number", "***6789"),
        ("+49 (0)30 123456", "phone number", "***3456"),
        ("0044 20 7946 0958", "phone number", "***0958"),
        ("(+44) 20 7946 0958", "phone number", "***0958"),
        ("+44.20.7946.0958", "phone number", "***0958"),
        ("＋４４ ２０ ７９４６ ０９５８", "phone number", "***0958"),
        ("josé@exämple.de", "email address", "j***@e***.de"),
        ("用户@例子.广告", "email address", "用***@例***.广告"),
        ("用户@例子。广告", "email address", "用***@例***.广告"),  # IDNA's ideographic full stop
        ("ｊｏｈｎ＠ｅｘａｍｐｌｅ．ｃｏｍ", "email address", "j***@e***.com"),
        ("jose\u0301@example.com", "email address", "j***@e***.com"),  # decomposed é
        ("संपर्क@उदाहरण.भारत", "email address", "स***@उ***.भारत"),  # vowel signs are combining marks
    ],
)
def test_the_break_test_examples_are_masked_where_they_stand(secret: str, kind: str, mask: str) -> None:
    # GIVEN each example of the break test in a sentence
    text = f"Kontakt: {secret}, merci"
    # WHEN it is checked and redacted
    hits = find_pii(text)
    # THEN it is reported with its mask, and replaced by it in the original text
    assert (kind, mask) in [(hit.kind, hit.masked) for hit in hits]
    assert redact(text) == f"Kontakt: {mask}, merci"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        # cards in a row, with no-break spaces: each masked whole
        (f"4111{NBSP}1111{NBSP}1111{NBSP}1111 5500{NBSP}0000{NBSP}0000{NBSP}0004", "**** 1111 **** 0004"),
        # a card whose group starts with "00" is no "00" phone number inside it
        ("3000 0020 0000 0000", "**** 0000"),
        # two international numbers in a row
        ("0044 20 7946 0958 0033 1 23 45 67 89", "***0958 ***6789"),
        ("+44 20 7946 0958 +33 1 23 45 67 89", "***0958 ***6789"),
        # decimal numbers shaped like phone numbers
        ("+2000000000.000000 and 100.0000000", "+2000000000.000000 and 100.0000000"),
    ],
)
def test_neighbours_are_told_apart(text: str, masked: str) -> None:
    # GIVEN numbers next to each other, or numbers that hold the shape of another
    # WHEN the text is redacted
    # THEN each is masked as what it is, and only that
    assert redact(text) == masked


def test_masking_before_a_cut_works_on_the_original_characters() -> None:
    # GIVEN a full-width address that a cut at 40 characters would halve, and one after a non-ASCII text
    text = "é" * 30 + " ｊｏｈｎ．ｄｏｅ＠ｅｘａｍｐｌｅ．ｃｏｍ and more"
    # WHEN redacted and bounded, and quoted as a key and a preview
    cut = redact(text, 40)
    shown = [mask_head(text, 40), key_label(text), preview(text)]
    # THEN no part of the address survives and the text before it is as it was
    assert len(cut) <= 40 and cut.startswith("é" * 8)
    assert redact(text, 200) == "é" * 30 + " j***@e***.com and more"
    for out in [cut, *shown]:
        assert "ｊｏｈｎ" not in out and "ｅｘａｍｐｌｅ" not in out


def test_the_validator_reports_each_class_and_quotes_none(tmp_path: Path) -> None:
    # GIVEN a dataset whose contents hold one secret of each class, one line of it written by a JSON encoder
    # that escapes every non-ASCII character and the slash (a line the raw pre-check sees as ASCII)
    secrets = [
        f"4111{NBSP}1111{NBSP}1111{NBSP}1111",
        "+44 20 7946 0958",
        "ｊｏｈｎ＠ｅｘａｍｐｌｅ．ｃｏｍ",
        "josé@exämple.de",
    ]
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    lines = [json.dumps({"messages": chat}) for _ in range(11)]
    for secret in secrets:
        lines.append(json.dumps({"messages": [{"role": "user", "content": f"it is {secret} ok"}, chat[1]]}))
    slashed = "4111/1111/1111/1111"
    lines.append(json.dumps({"messages": [{"role": "user", "content": slashed}, chat[1]]}).replace("/", "\\/"))
    path = tmp_path / "data.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    # WHEN it is validated
    report = validate_dataset(
        DatasetSource.local(path), ValidationOptions(severity_overrides={Code.PII_DETECTED: Severity.WARNING})
    ).report
    # THEN each line with a secret has a pii_detected problem, masked, and no secret is in the report
    found = {p.line or 0: p.message for p in report.problems if p.code is Code.PII_DETECTED}
    assert sorted(found) == [12, 13, 14, 15, 16], report.problems
    assert found[12] == "card number '**** 1111'" and found[13] == "phone number '***0958'"
    assert found[14] == "email address 'j***@e***.com'" and found[15] == "email address 'j***@e***.de'"
    dumped = report.model_dump_json()
    assert not [s for s in [*secrets, slashed] if s in dumped or json.dumps(s) in dumped]


@pytest.mark.parametrize(
    "line",
    [
        '{"content": "4111.1111.1111.1111"}',
        '{"content": "4111/1111/1111/1111"}',
        '{"content": "4111\\/1111\\/1111\\/1111"}',  # the JSON escape of "/"
        '{"content": "+44 20 7946 0958"}',
        '{"content": "+23456789"}',  # the shortest E.164 number: 8 digits
        '{"content": "4111\\u00a01111\\u00a01111\\u00a01111"}',
    ],
)
def test_the_raw_pre_check_lets_each_new_class_through(line: str) -> None:
    # GIVEN a raw JSON line whose string holds PII of a new class, written in ASCII
    # WHEN the validator's pre-check looks at it
    # THEN it gets the full check, which finds the PII
    assert may_contain_pii(line.encode()) and find_pii(json.loads(line)["content"])


def test_the_views_gate_lets_through_everything_the_view_reads_as_pii() -> None:
    # GIVEN every code point of the Unicode database and the character the detectors read it as
    digit, separator = re.compile(r"\d"), re.compile(r"\W")
    wrong = []
    for code in range(sys.maxunicode + 1):
        char, read = chr(code), chr(pii._view_code(code))
        # THEN what reads as a digit is a decimal digit and what reads as a separator a non-word character (so the
        # gate's \d[\d\W]{6,}\d sees it), and what reads as '@' or as a key prefix's letter is one the gate looks for
        if (
            (read in "0123456789" and not digit.match(char))
            or (read in " ().+/-" and not separator.match(char))
            or (read == "@" and char != "@" and not pii._KEY_OR_FULL_WIDTH.match(char))
            or (read in "AKSBCI" and not char.isascii() and not pii._KEY_OR_FULL_WIDTH.match(char))
        ):
            wrong.append(f"U+{code:04X} reads {read!r}")
    assert not wrong, wrong[:20]


def test_hostile_unicode_text_is_masked_within_its_bound_and_quickly() -> None:
    # GIVEN megabytes of full-width digits between no-break spaces, of "+1 " runs, of "00" runs, of addresses
    # glued together and of full-width digit groups
    texts = ["４\u00a0" * 500_000, "+1 " * 300_000, "0044 " * 200_000, "用户@例子" * 200_000, "１２３ " * 250_000]
    # WHEN each is redacted to 1,000 characters and checked whole, the last one masked whole
    started = time.perf_counter()
    shown = [redact(text, 1000) for text in texts]
    for text in texts:
        find_pii(text)
    masked_whole = mask_pii(texts[-1])  # every chunk of a megabyte of digit groups searched for a card
    elapsed = time.perf_counter() - started
    # THEN each is within its bound, in seconds at most
    assert all(len(text) <= 1000 for text in shown) and len(masked_whole) < len(texts[-1])
    assert elapsed < 10.0, elapsed


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(secret=st.one_of(unicode_cards().map(lambda c: c[0]), intl_phones().map(lambda p: p[0]), unicode_emails()))
def test_no_planted_unicode_secret_reaches_the_report(tmp_path: Path, secret: str) -> None:
    # GIVEN a dataset with a secret of a new class planted in a content, a role and a key
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    lines = [json.dumps({"messages": chat}) for _ in range(11)]
    lines.append(json.dumps({"messages": [{"role": "user", "content": f"see {secret} ok"}, chat[1]]}))
    lines.append(json.dumps({"messages": [{"role": f"a {secret} b", "content": "x"}, chat[1]]}, ensure_ascii=False))
    lines.append(json.dumps({"messages": chat, secret: 1}, ensure_ascii=False))
    path = tmp_path / "data.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    # WHEN it is validated
    report = validate_dataset(
        DatasetSource.local(path), ValidationOptions(severity_overrides={Code.PII_DETECTED: Severity.WARNING})
    ).report
    # THEN the content's secret is reported and the secret is nowhere in the report
    assert any(p.code is Code.PII_DETECTED and p.line == 12 for p in report.problems), report.problems
    assert secret not in report.model_dump_json(), report.model_dump_json()
