"""What pass one keeps of each usable example: fingerprints, line, token counts (28 bytes an example) and
its normalised JSON in a spill file, so memory stays flat however large the dataset is."""

from __future__ import annotations

from array import array
from hashlib import blake2b
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

# The last message is the assistant's answer (checked before we get here); json.dumps escapes quotes inside
# strings, so this byte sequence can only be the start of a message object, never part of a content.
_LAST_ANSWER = b'{"role": "assistant"'


class Ledger:
    def __init__(self, spill_path: Path, seed: int) -> None:
        self._key = seed.to_bytes(8, "little", signed=True)
        self.example_fps = array("Q")
        self.prompt_fps = array("Q")
        self.lines = array("I")
        self.tokens = array("I")
        self.trained_tokens = array("I")
        self.spill_path = spill_path
        self._spill: BinaryIO = spill_path.open("wb")

    def __len__(self) -> int:
        return len(self.lines)

    def append(self, line: int, example_json: bytes, tokens: int = 0, trained_tokens: int = 0) -> None:
        key = self._key
        self.example_fps.append(int.from_bytes(blake2b(example_json, digest_size=8, key=key).digest(), "little"))
        prompt = example_json[: example_json.rfind(_LAST_ANSWER)]
        self.prompt_fps.append(int.from_bytes(blake2b(prompt, digest_size=8, key=key).digest(), "little"))
        self.lines.append(line)
        self.tokens.append(tokens)
        self.trained_tokens.append(trained_tokens)
        self._spill.write(example_json)
        self._spill.write(b"\n")

    def close(self) -> None:
        self._spill.close()

    def as_arrays(self) -> dict[str, npt.NDArray[np.uint64] | npt.NDArray[np.uint32]]:
        return {
            "example_fps": np.frombuffer(self.example_fps, dtype=np.uint64),
            "prompt_fps": np.frombuffer(self.prompt_fps, dtype=np.uint64),
            "lines": np.frombuffer(self.lines, dtype=np.uint32),
            "tokens": np.frombuffer(self.tokens, dtype=np.uint32),
            "trained_tokens": np.frombuffer(self.trained_tokens, dtype=np.uint32),
        }
