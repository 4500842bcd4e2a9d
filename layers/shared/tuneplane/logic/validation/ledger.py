"""What pass one keeps of each usable example: fingerprints, line, token counts (28 bytes an example) and
its normalised JSON line ({"messages": [...]}) in a spill file, so memory stays flat however large the dataset is.

Fingerprints are keyed BLAKE2b hashes of the messages' roles and contents (not of the JSON text, so key
order and whitespace do not hide a duplicate): one of the whole conversation, one of the prompt (all but
the final answer), which decides the held-out split."""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from hashlib import blake2b
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from tuneplane.logic.validation.formats import Message

# Separators that cannot be confused with text: NUL between messages, SOH between role and content.
_BETWEEN_MESSAGES, _ROLE_END = "\x00", "\x01"


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
        self._spill.write(example_json + b"\n")

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
