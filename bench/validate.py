"""Validator throughput and memory against a naive baseline, and tokenization overhead against the
tokenizer's own batch encoding, all measured in one run on one generated dataset.

    python bench/validate.py                       # 1 GB dataset (generated once into bench/out/)
    python bench/validate.py --size-mb 200 --check # smaller, exit 1 if a target is missed

Each measurement runs in a fresh subprocess so its peak RSS is its own; runs without tokenization are pinned
to one core. Targets (issue 2): >= 10x the naive pandas+pydantic baseline and >= 50 MB/s on one core without
tokenization, flat memory (500 MB file < 300 MB peak RSS), and with tokenization within 1.3x of the time
the tokenizer's own batch encoding of the same rendered text takes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "layers" / "shared"), str(ROOT), str(ROOT / "bench")]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _prefix(path: Path, size_mb: float, out: Path) -> Path:
    """The first `size_mb` MB of `path`, cut at a line end."""
    if out.exists():
        return out
    limit = int(size_mb * 1024 * 1024)
    with path.open("rb") as src, out.open("wb") as dst:
        written = 0
        for line in src:
            if written >= limit:
                break
            dst.write(line)
            written += len(line)
    return out


# ---- the measured workloads, each run in its own process ----


def run_ours(data: Path, model_dir: str | None) -> dict[str, float]:
    from tuneplane.logic.base_model import load_model_context
    from tuneplane.logic.validation.validator import DatasetSource, validate_dataset
    from tuneplane.models.validation import ValidationOptions

    model = load_model_context(model_dir) if model_dir else None
    out_dir = data.parent / f"splits-{os.getpid()}"
    started = time.perf_counter()
    result = validate_dataset(DatasetSource.local(data), ValidationOptions(), model=model, out_dir=out_dir)
    seconds = time.perf_counter() - started
    for file in out_dir.iterdir():
        file.unlink()
    out_dir.rmdir()
    assert result.report.passed, result.report.problem_counts
    return {"seconds": seconds, "examples": result.report.examples_valid}


def run_naive(data: Path) -> dict[str, float]:
    """What people write first: load everything with pandas, validate each row with a pydantic model."""
    from typing import Literal

    import pandas as pd
    from pydantic import BaseModel, field_validator

    class Message(BaseModel):
        role: Literal["system", "user", "assistant"]
        content: str

        @field_validator("content")
        @classmethod
        def not_empty(cls, value: str) -> str:
            if not value.strip():
                raise ValueError("empty")
            return value

    class Example(BaseModel):
        messages: list[Message]

    started = time.perf_counter()
    frame = pd.read_json(data, lines=True)
    seen: set[str] = set()
    valid = 0
    for messages in frame["messages"]:
        example = Example(messages=messages)
        key = example.model_dump_json()
        if key not in seen:
            seen.add(key)
            valid += 1
    return {"seconds": time.perf_counter() - started, "examples": valid}


def run_tokenizer_baseline(data: Path, model_dir: str) -> dict[str, float]:
    """The tokenizer's own batch encoding of exactly the text our validator tokenizes (rendering untimed)."""
    from tuneplane.logic.chat_template import ChatTokenizer

    chat = ChatTokenizer.from_dir(Path(model_dir))
    texts = [chat.render(json.loads(line)["messages"]).text for line in data.open("rb")]
    started = time.perf_counter()
    tokens = 0
    for start in range(0, len(texts), 4096):
        tokens += sum(
            len(e.ids) for e in chat.tokenizer.encode_batch(texts[start : start + 4096], add_special_tokens=False)
        )
    return {"seconds": time.perf_counter() - started, "examples": len(texts), "tokens": tokens}


def _child(args: argparse.Namespace) -> None:
    data = Path(args.data)
    if args.workload == "ours":
        result = run_ours(data, None)
    elif args.workload == "ours-tokenized":
        result = run_ours(data, args.model)
    elif args.workload == "naive":
        result = run_naive(data)
    else:
        result = run_tokenizer_baseline(data, args.model)
    result["peak_rss_mb"] = _peak_rss_mb()
    print(json.dumps(result))


def _measure(workload: str, data: Path, *, one_core: bool, model: Path | None = None) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", workload, "--data", str(data)]
    if model:
        command += ["--model", str(model)]
    if one_core:
        command = ["taskset", "-c", "0", *command]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    result: dict[str, float] = json.loads(output.strip().splitlines()[-1])
    result["mb"] = data.stat().st_size / 1024 / 1024
    result["mb_per_s"] = result["mb"] / result["seconds"]
    print(
        f"  {workload:<22} {result['mb']:>8.1f} MB {result['seconds']:>8.2f} s {result['mb_per_s']:>8.1f} MB/s "
        f"{result['peak_rss_mb']:>8.1f} MB peak RSS",
        flush=True,
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=1024, help="dataset size for the throughput run")
    parser.add_argument("--memory-mb", type=float, default=500, help="dataset size for the memory check")
    parser.add_argument("--naive-mb", type=float, default=100, help="prefix the naive baseline reads (it is slow)")
    parser.add_argument("--tokenized-mb", type=float, default=100, help="prefix for the tokenization comparison")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.workload = args.child
        _child(args)
        return 0

    from local.tiny_model import write_base_model

    from datagen import write_dataset

    work: Path = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    full = work / f"chat-{args.size_mb:g}mb.jsonl"
    if not full.exists():
        print(f"generating {full} ...", flush=True)
        write_dataset(full, max(args.size_mb, args.memory_mb, args.naive_mb, args.tokenized_mb))
    small = _prefix(full, args.memory_mb / 10, work / f"chat-{args.memory_mb / 10:g}mb.jsonl")
    memory = _prefix(full, args.memory_mb, work / f"chat-{args.memory_mb:g}mb.jsonl")
    naive_data = _prefix(full, args.naive_mb, work / f"chat-{args.naive_mb:g}mb.jsonl")
    tokenized = _prefix(full, args.tokenized_mb, work / f"chat-{args.tokenized_mb:g}mb.jsonl")
    model = work / "tokenizer-8k"
    if not (model / "tokenizer.json").exists():
        sample = [line.decode() for _, line in zip(range(20000), small.open("rb"), strict=False)]
        write_base_model(model, sample, vocab_size=8000)

    print("without tokenization (one core):")
    ours = _measure("ours", full, one_core=True)
    naive = _measure("naive", naive_data, one_core=True)
    print("memory (one core):")
    ours_small = _measure("ours", small, one_core=True)
    ours_memory = _measure("ours", memory, one_core=True)
    print(f"with tokenization ({os.cpu_count()} cores, the same for both):")
    baseline = _measure("tokenizer-batch-encode", tokenized, one_core=False, model=model)
    ours_tok = _measure("ours-tokenized", tokenized, one_core=False, model=model)

    speedup = ours["mb_per_s"] / naive["mb_per_s"]
    tok_ratio = ours_tok["seconds"] / baseline["seconds"]
    checks = [
        (f"speed-up vs naive pandas+pydantic: {speedup:.1f}x", speedup >= 10, ">= 10x"),
        (
            f"throughput without tokenization: {ours['mb_per_s']:.1f} MB/s on one core",
            ours["mb_per_s"] >= 50,
            ">= 50 MB/s",
        ),
        (
            f"peak RSS on {args.memory_mb:g} MB: {ours_memory['peak_rss_mb']:.0f} MB "
            f"({ours_small['peak_rss_mb']:.0f} MB on {args.memory_mb / 10:g} MB)",
            ours_memory["peak_rss_mb"] < 300,
            "< 300 MB",
        ),
        (f"tokenized validation / tokenizer batch encoding: {tok_ratio:.2f}x", tok_ratio <= 1.3, "<= 1.3x"),
    ]
    print("results:")
    for text, ok, target in checks:
        print(f"  {'PASS' if ok else 'MISS'}  {text}  (target {target})")
    return 0 if all(ok for _, ok, _ in checks) or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
