"""Deterministic synthetic chat datasets for benchmarks: realistic lengths, some numbers and punctuation,
a few duplicates, one example per line."""

from __future__ import annotations

import json
import random
from pathlib import Path

_WORDS = (
    "the model answer question customer order invoice shipping delivery account password reset policy "
    "refund product price discount weather travel booking hotel flight python function error stack trace "
    "database query index latency throughput memory report summary translate french german please thanks "
    "could would should because however therefore example data value result step first second third"
).split()


def _sentence(rng: random.Random, words: int) -> str:
    text = " ".join(rng.choice(_WORDS) for _ in range(words))
    if rng.random() < 0.3:
        text += f" ({rng.randint(1, 9999)} items, {rng.randint(1, 99)}%)"
    return text[0].upper() + text[1:] + rng.choice(".?!")


def example(rng: random.Random) -> dict[str, object]:
    messages = []
    if rng.random() < 0.5:
        messages.append({"role": "system", "content": _sentence(rng, rng.randint(8, 20))})
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        messages.append({"role": "user", "content": " ".join(_sentence(rng, rng.randint(6, 18)) for _ in range(2))})
        reply = " ".join(_sentence(rng, rng.randint(8, 24)) for _ in range(rng.randint(2, 6)))
        messages.append({"role": "assistant", "content": reply})
    return {"messages": messages}


def write_dataset(path: Path, size_mb: float, seed: int = 0) -> int:
    """Write about `size_mb` MB of JSONL; return the number of lines."""
    rng = random.Random(seed)
    target = int(size_mb * 1024 * 1024)
    written = lines = 0
    with path.open("w", encoding="utf-8") as out:
        pool: list[str] = []
        while written < target:
            line = json.dumps(example(rng), ensure_ascii=False) + "\n"
            if pool and rng.random() < 0.001:  # the odd exact duplicate, as in real data
                line = rng.choice(pool)
            elif len(pool) < 1000:
                pool.append(line)
            out.write(line)
            written += len(line.encode())
            lines += 1
    return lines
