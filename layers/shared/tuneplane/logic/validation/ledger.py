"""What pass one keeps of each usable example: fingerprints, line, token counts (28 bytes an example) and
its normalised JSON line ({"messages": [...]}) in a spill file, so memory stays flat however large the dataset is.

A spilled line (and so each line of train.jsonl / eval.jsonl, copied from the spill) holds no character that any
line splitter ends a line at but its final b"\n": see `one_line`. The containers read those files split on b"\n"
only (containers/common/jobkit.py iter_jsonl, the same definition as reader.py's); this keeps a reader that uses
str.splitlines() (a notebook, a user's script) reading the same records.

Fingerprints are keyed BLAKE2b hashes of the messages' roles and contents (not of the JSON text, so key
order and whitespace do not hide a duplicate): one of the whole conversation, one of the prompt (all but
the final answer), which decides the held-out split."""

from __future__ import annotations

import re
from array import array
from dataclasses import dataclass
from hashlib import blake2b
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt
import orjson

from tuneplane.logic.validation.formats import Message

# Separators that cannot be confused with text: NUL between messages, SOH between role and content.
_BETWEEN_MESSAGES, _ROLE_END = "\x00", "\x01"
# What str.splitlines() ends a line at besides "\n" (Python docs, str.splitlines): "\r", "\v", "\f", "\x1c"-"\x1e"
# and, in UTF-8, U+0085, U+2028 and U+2029. JSON (RFC 8259) allows "\r" raw as whitespace between tokens and the
# last three raw inside strings; the others only escaped (a parser that accepted them raw is caught here too).
_LINE_BREAKS = re.compile(rb"[\r\x0b\x0c\x1c-\x1e]|\xc2\x85|\xe2\x80[\xa8\xa9]")
_ASCII_BREAKS = re.compile(rb"[\r\x0b\x0c\x1c-\x1e]")
# In valid UTF-8 these byte sequences are only ever these characters (0xc2 and 0xe2 are always lead bytes), and in
# JSON text they can only be inside a string, where the \u escape means the same character.
_ESCAPES = ((b"\xc2\x85", b"\\u0085"), (b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"))


def one_line(example_json: bytes) -> bytes:
    """`example_json` (one JSON value, UTF-8) as the same value on one line for any line splitter: a CR (JSON
    whitespace) dropped by re-serialising (orjson writes no whitespace and escapes every control character), and
    U+0085, U+2028, U+2029 written as \\u escapes. The user's bytes are kept as they are when they hold none (nearly
    always: the check is one regex scan)."""
    if _LINE_BREAKS.search(example_json) is None:
        return example_json
    if _ASCII_BREAKS.search(example_json) is not None:
        example_json = orjson.dumps(orjson.loads(example_json))
    for raw, escaped in _ESCAPES:
        example_json = example_json.replace(raw, escaped)
    return example_json


class Ledger:
    def __init__(self, spill_path: Path, seed: int) -> None:
        # Copying a keyed hasher is cheaper than keying a new one for every example.
        self._keyed = blake2b(digest_size=8, key=seed.to_bytes(8, "little", signed=True))
        self.example_fps = array("Q")
        self.prompt_fps = array("Q")
        self.lines = array("I")
        self.tokens = array("I")
        self.trained_tokens = array("I")
        self.spill_path = spill_path
        self._spill: BinaryIO = spill_path.open("wb", buffering=1 << 20)

    def __len__(self) -> int:
        return len(self.lines)

    def append(
        self, line: int, messages: list[Message], example_json: bytes, tokens: int = 0, trained_tokens: int = 0
    ) -> None:
        turns = [m["role"] + _ROLE_END + m["content"] for m in messages]
        fingerprint = self._keyed.copy()
        fingerprint.update(_BETWEEN_MESSAGES.join(turns[:-1]).encode())
        self.prompt_fps.append(int.from_bytes(fingerprint.digest(), "little"))
        fingerprint.update((_BETWEEN_MESSAGES + turns[-1]).encode())  # continue: the whole conversation
        self.example_fps.append(int.from_bytes(fingerprint.digest(), "little"))
        self.lines.append(line)
        self.tokens.append(tokens)
        self.trained_tokens.append(trained_tokens)
        self._spill.write(one_line(example_json) + b"\n")

    def close(self) -> None:
        self._spill.close()

    def as_arrays(self) -> LedgerArrays:
        """Zero-copy numpy views of the columns, for the dataset-wide checks."""
        return LedgerArrays(
            example_fps=np.frombuffer(self.example_fps, dtype=np.uint64),
            prompt_fps=np.frombuffer(self.prompt_fps, dtype=np.uint64),
            lines=np.frombuffer(self.lines, dtype=np.uint32),
            tokens=np.frombuffer(self.tokens, dtype=np.uint32),
            trained_tokens=np.frombuffer(self.trained_tokens, dtype=np.uint32),
        )


@dataclass(frozen=True)
class LedgerArrays:
    example_fps: npt.NDArray[np.uint64]
    prompt_fps: npt.NDArray[np.uint64]
    lines: npt.NDArray[np.uint32]
    tokens: npt.NDArray[np.uint32]
    trained_tokens: npt.NDArray[np.uint32]
