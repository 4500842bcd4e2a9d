"""Recognise the three accepted record formats and normalise each record to chat messages.

Each checker returns (messages, findings). Messages are fresh ``{"role", "content"}`` dicts in that key
order, so their JSON serialisation is canonical (fingerprints and duplicate detection rely on it).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, NamedTuple

from tuneplane.logic.validation.pii import MASK_MARGIN, mask_head
from tuneplane.models.validation import Code, DatasetFormat

ROLES = ("system", "user", "assistant")
TOOL_ROLES = frozenset({"tool", "function", "ipython"})
TOOL_KEYS = frozenset({"tool_calls", "function_call", "tool_call_id"})
MESSAGE_KEYS = frozenset({"role", "content"})

Message = dict[str, str]


class Finding(NamedTuple):
    code: Code
    path: str | None
    message: str


def preview(value: Any, limit: int = 40) -> str:
    """A value from the data as a problem message quotes it: PII masked, then cut (masking first: a cut through an
    email address or card number would leave a half that no longer looks like one, unmasked)."""
    text = repr(mask_head(value, limit)) if isinstance(value, str) else mask_head(repr(value), limit)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def key_label(key: str, limit: int = 40) -> str:
    """A record key as a problem's path shows it: as it is when short, else cut (a key of a megabyte must not make
    every message, the report and the events a megabyte); PII masked either way (a key is data too)."""
    masked = mask_head(key, limit)
    short = len(key) <= limit + MASK_MARGIN and len(masked) <= limit
    return masked if short and masked.isprintable() else preview(masked, limit)


def type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def detect_format(record: dict[str, Any]) -> DatasetFormat | None:
    if "messages" in record:
        return DatasetFormat.CHAT
    if "prompt" in record or "completion" in record:
        return DatasetFormat.PROMPT_COMPLETION
    if "instruction" in record or "output" in record:
        return DatasetFormat.ALPACA
    return None


def _text_field(record: dict[str, Any], key: str, findings: list[Finding], *, required: bool = True) -> str | None:
    if key not in record:
        if required:
            findings.append(Finding(Code.MESSAGE_MISSING_KEY, key, f"'{key}' is required in this format"))
        return None
    value = record[key]
    if not isinstance(value, str):
        findings.append(Finding(Code.CONTENT_NOT_STRING, key, f"expected a string, got {type_name(value)}"))
        return None
    if required and not value.strip():
        findings.append(Finding(Code.EMPTY_CONTENT, key, "is empty or whitespace only"))
        return None
    return value


def check_prompt_completion(record: dict[str, Any]) -> tuple[list[Message], list[Finding]]:
    findings: list[Finding] = []
    prompt = _text_field(record, "prompt", findings)
    completion = _text_field(record, "completion", findings)
    if findings or prompt is None or completion is None:
        return [], findings
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}], findings


def check_alpaca(record: dict[str, Any]) -> tuple[list[Message], list[Finding]]:
    findings: list[Finding] = []
    instruction = _text_field(record, "instruction", findings)
    extra_input = _text_field(record, "input", findings, required=False)
    output = _text_field(record, "output", findings)
    if findings or instruction is None or output is None:
        return [], findings
    prompt = f"{instruction}\n\n{extra_input}" if extra_input and extra_input.strip() else instruction
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}], findings


def _role_finding(role: Any, path: str) -> Finding | None:
    if not isinstance(role, str):
        return Finding(Code.UNRECOGNIZED_ROLE, path, f"expected a string, got {type_name(role)}")
    if role in TOOL_ROLES:
        return Finding(Code.TOOLS_NOT_SUPPORTED, path, f"role '{role}': tool calling is not supported yet")
    close = difflib.get_close_matches(role.lower(), ROLES, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return Finding(Code.UNRECOGNIZED_ROLE, path, f"{preview(role)} (expected system, user or assistant{hint})")


def _check_message(index: int, message: Any, findings: list[Finding]) -> Message | None:
    path = f"messages[{index}]"
    if not isinstance(message, dict):
        findings.append(Finding(Code.MESSAGE_NOT_OBJECT, path, f"expected an object, got {type_name(message)}"))
        return None
    keys = message.keys()
    if not (keys <= MESSAGE_KEYS):
        for key in sorted(keys - MESSAGE_KEYS):
            if key in TOOL_KEYS:
                findings.append(
                    Finding(Code.TOOLS_NOT_SUPPORTED, f"{path}.{key_label(key)}", "tool calling is not supported yet")
                )
            else:
                findings.append(
                    Finding(
                        Code.MESSAGE_UNRECOGNIZED_KEY,
                        f"{path}.{key_label(key)}",
                        "only 'role' and 'content' are accepted",
                    )
                )
    ok = True
    for key in ("role", "content"):
        if key not in message:
            findings.append(Finding(Code.MESSAGE_MISSING_KEY, f"{path}.{key}", f"'{key}' is required"))
            ok = False
    if not ok:
        return None
    role, content = message["role"], message["content"]
    if role not in ROLES:
        finding = _role_finding(role, f"{path}.role")
        if finding:
            findings.append(finding)
        ok = False
    if not isinstance(content, str):
        hint = " (lists of content parts are not supported; use a string)" if isinstance(content, list) else ""
        findings.append(
            Finding(Code.CONTENT_NOT_STRING, f"{path}.content", f"expected a string, got {type_name(content)}{hint}")
        )
        ok = False
    elif not content.strip():
        findings.append(Finding(Code.EMPTY_CONTENT, f"{path}.content", "is empty or whitespace only"))
        ok = False
    return {"role": role, "content": content} if ok else None


def _check_turn_order(messages: list[Message], findings: list[Finding]) -> None:
    previous = None
    for index, message in enumerate(messages):
        role = message["role"]
        if role == "system" and index != 0:
            findings.append(
                Finding(Code.SYSTEM_NOT_FIRST, f"messages[{index}].role", "a system message may only come first")
            )
        elif role == previous:
            findings.append(
                Finding(
                    Code.CONSECUTIVE_SAME_ROLE,
                    f"messages[{index}].role",
                    f"two '{role}' messages in a row (messages[{index - 1}] and messages[{index}])",
                )
            )
        previous = role
    first_turn = 1 if messages[0]["role"] == "system" else 0
    if first_turn < len(messages) and messages[first_turn]["role"] != "user":
        findings.append(
            Finding(
                Code.FIRST_TURN_NOT_USER,
                f"messages[{first_turn}].role",
                f"the conversation must start with a user message, got '{messages[first_turn]['role']}'",
            )
        )
    if not any(m["role"] == "assistant" for m in messages):
        findings.append(Finding(Code.NO_ASSISTANT_MESSAGE, "messages", "no assistant message to learn from"))
    elif messages[-1]["role"] != "assistant":
        findings.append(
            Finding(
                Code.LAST_MESSAGE_NOT_ASSISTANT,
                f"messages[{len(messages) - 1}].role",
                f"the last message must be the assistant's answer, got '{messages[-1]['role']}'",
            )
        )


def is_clean_conversation(messages: list[Any]) -> bool:
    """The fast path for the common case: every message exactly {role, content}, contents non-blank strings,
    an optional system message, then user/assistant alternating from user to assistant. Anything else goes
    through the full checks, which name each problem."""
    previous = None
    for message in messages:
        if type(message) is not dict or len(message) != 2:
            return False
        role, content = message.get("role"), message.get("content")
        if type(content) is not str or not content or content.isspace():
            return False
        if role == "user":
            if previous == "user":
                return False
        elif role == "assistant":
            if previous != "user":
                return False
        elif role != "system" or previous is not None:
            return False
        previous = role
    return previous == "assistant"


def check_chat(record: dict[str, Any]) -> tuple[list[Message], list[Finding]]:
    """Returns the record's own message list (not a copy) when it is clean and the only key: the caller
    can then keep the raw JSON line as the normalised example."""
    messages = record["messages"]
    if type(messages) is list and is_clean_conversation(messages):
        if "tools" not in record and "functions" not in record:
            return messages, []
    findings: list[Finding] = []
    for key in ("tools", "functions"):
        if key in record:
            findings.append(Finding(Code.TOOLS_NOT_SUPPORTED, key, "tool definitions are not supported yet"))
    raw = record["messages"]
    if not isinstance(raw, list):
        findings.append(
            Finding(Code.MISSING_MESSAGES_LIST, "messages", f"expected a list of messages, got {type_name(raw)}")
        )
        return [], findings
    if not raw:
        findings.append(Finding(Code.EMPTY_MESSAGES, "messages", "the list of messages is empty"))
        return [], findings
    messages = [_check_message(index, message, findings) for index, message in enumerate(raw)]
    if findings:
        return [], findings
    clean = [m for m in messages if m is not None]
    _check_turn_order(clean, findings)
    return clean, findings


_CONTENT_FIELDS = {
    DatasetFormat.PROMPT_COMPLETION: ("prompt", "completion"),
    DatasetFormat.ALPACA: ("instruction/input", "output"),
}


def content_path(fmt: DatasetFormat | None, index: int) -> str:
    """Where the user wrote normalised message `index`, named in the user's own format."""
    fields = _CONTENT_FIELDS.get(fmt) if fmt else None
    return fields[index] if fields else f"messages[{index}].content"


CHECKERS: dict[DatasetFormat, Callable[[dict[str, Any]], tuple[list[Message], list[Finding]]]] = {
    DatasetFormat.CHAT: check_chat,
    DatasetFormat.PROMPT_COMPLETION: check_prompt_completion,
    DatasetFormat.ALPACA: check_alpaca,
}
