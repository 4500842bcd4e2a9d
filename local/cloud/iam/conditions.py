"""The ``Condition`` element of an IAM policy statement, evaluated against a request context.

What the AWS docs say ("IAM JSON policy elements: Condition operators", "Single-valued vs. multivalued context
keys", "Creating a condition with multiple keys or values"), and what this module does:

- keys in one operator block, and operator blocks in one statement, are AND-ed; the values of one key are OR-ed;
- condition key names are case-insensitive, values case-sensitive (except for the ``...IgnoreCase`` operators);
- a key that is not in the request context does not match: the condition is false, except for the negated
  operators (``StringNotEquals``, ``StringNotLike``, ``ArnNotLike``, ``NotIpAddress``, ...), which are true;
- ``...IfExists``: a missing key makes the condition true; ``Null``: ``"true"`` means the key is missing;
- ``ForAnyValue:``: true if at least one request value matches (false when the key is missing);
  ``ForAllValues:``: true if every request value matches (true when the key is missing or empty);
  without a set operator a multivalued key matches when any of its values does;
- ``StringLike``/``ArnLike`` values may hold ``*`` and ``?``; ``ArnEquals``/``ArnLike`` compare each of the six
  colon-separated parts of the ARN separately.

The request context maps lower-cased key names to the list of their values (strings, as the request carries them).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import cache
from typing import Any

Context = Mapping[str, Sequence[str]]


class UnsupportedCondition(ValueError):
    """A condition operator this engine does not know: an error, never silently true or false."""


@cache
def wildcard_pattern(pattern: str, ignore_case: bool = False) -> re.Pattern[str]:
    """``*`` (any run of characters) and ``?`` (one character) as a regular expression matching the whole string."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(f"^{regex}$", re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def wildcard_match(pattern: str, value: str, ignore_case: bool = False) -> bool:
    return bool(wildcard_pattern(pattern, ignore_case).match(value))


def _arn_like(pattern: str, value: str) -> bool:
    """ARN parts matched one by one; a pattern that is not an ARN (``"*"``) is matched against the whole value."""
    patterns, values = pattern.split(":", 5), value.split(":", 5)
    if len(patterns) != 6:
        return wildcard_match(pattern, value)
    return len(values) == 6 and all(map(wildcard_match, patterns, values))


def _number(text: str) -> float:
    return float(text)


def _date(text: str) -> datetime:
    """ISO 8601 dates and times, or epoch seconds, as the Date operators accept them."""
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        return datetime.fromtimestamp(float(text), UTC)
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _ip(policy: str, value: str) -> bool:
    return ipaddress.ip_address(value) in ipaddress.ip_network(policy, strict=False)


Matcher = Callable[[str, str], bool]  # (policy value, request value) -> match

# operator -> (matcher, negated). A negated operator is true when the request value matches none of the values.
_OPERATORS: dict[str, tuple[Matcher, bool]] = {
    "stringequals": (lambda p, v: p == v, False),
    "stringnotequals": (lambda p, v: p == v, True),
    "stringequalsignorecase": (lambda p, v: p.lower() == v.lower(), False),
    "stringnotequalsignorecase": (lambda p, v: p.lower() == v.lower(), True),
    "stringlike": (wildcard_match, False),
    "stringnotlike": (wildcard_match, True),
    "numericequals": (lambda p, v: _number(v) == _number(p), False),
    "numericnotequals": (lambda p, v: _number(v) == _number(p), True),
    "numericlessthan": (lambda p, v: _number(v) < _number(p), False),
    "numericlessthanequals": (lambda p, v: _number(v) <= _number(p), False),
    "numericgreaterthan": (lambda p, v: _number(v) > _number(p), False),
    "numericgreaterthanequals": (lambda p, v: _number(v) >= _number(p), False),
    "dateequals": (lambda p, v: _date(v) == _date(p), False),
    "datenotequals": (lambda p, v: _date(v) == _date(p), True),
    "datelessthan": (lambda p, v: _date(v) < _date(p), False),
    "datelessthanequals": (lambda p, v: _date(v) <= _date(p), False),
    "dategreaterthan": (lambda p, v: _date(v) > _date(p), False),
    "dategreaterthanequals": (lambda p, v: _date(v) >= _date(p), False),
    "bool": (lambda p, v: p.lower() == v.lower(), False),
    "binaryequals": (lambda p, v: p == v, False),
    "ipaddress": (_ip, False),
    "notipaddress": (_ip, True),
    "arnequals": (_arn_like, False),
    "arnlike": (_arn_like, False),
    "arnnotequals": (_arn_like, True),
    "arnnotlike": (_arn_like, True),
}


def policy_values(raw: Any) -> list[str]:
    """A condition or element value (a string, a bool, a number or a list of them) as strings, as IAM reads them."""
    items = raw if isinstance(raw, list) else [raw]
    return [("true" if item else "false") if isinstance(item, bool) else str(item) for item in items]


def operator_matches(operator: str, key: str, raw_values: Any, context: Context) -> bool:
    """One ``"Operator": {"key": values}`` entry for one key."""
    name = operator.lower()
    set_operator = ""
    if name.startswith(("foranyvalue:", "forallvalues:")):
        set_operator, _, name = name.partition(":")
    if_exists = name.endswith("ifexists") and name != "ifexists"
    name = name.removesuffix("ifexists") if if_exists else name
    values = policy_values(raw_values)
    present = context.get(key.lower())
    if name == "null":  # "true": the key must be missing; "false": it must be there
        return any((present is None) == (value.lower() == "true") for value in values)
    if name not in _OPERATORS:
        raise UnsupportedCondition(f"condition operator {operator!r} is not supported")
    matcher, negated = _OPERATORS[name]
    if present is None:
        if set_operator == "forallvalues":
            return True
        if set_operator == "foranyvalue":
            return False
        return if_exists or negated

    def value_matches(value: str) -> bool:
        hit = any(matcher(policy, value) for policy in values)
        return not hit if negated else hit

    if set_operator == "forallvalues":
        return all(value_matches(value) for value in present)
    if negated and not set_operator:  # a single-valued key: true if it equals none of the policy's values
        return all(value_matches(value) for value in present) if present else True
    return any(value_matches(value) for value in present)


def conditions_match(condition: Mapping[str, Mapping[str, Any]] | None, context: Context) -> bool:
    """The whole ``Condition`` element: every operator, every key in it."""
    return all(
        operator_matches(operator, key, values, context)
        for operator, block in (condition or {}).items()
        for key, values in block.items()
    )
