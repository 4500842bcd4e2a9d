"""Time, peak memory and temporary disk of validation on hostile files (issue 15 item 10), as ratios against a
normal dataset of the same decompressed size measured in the same run.

    python bench/validation_bounds.py                  # 64 MiB decompressed per file, limits on and off
    python bench/validation_bounds.py --size-mb 256 --workloads baseline tiny_valid --limits off

Each file is generated once into bench/out/bounds/ (gzip, written in streaming fashion), then validated in a fresh
subprocess under ``/usr/bin/time -v`` (its "Maximum resident set size" and wall clock are what is reported).
"limits on" is ValidationOptions() as deployed (max_decompression_ratio 200, max_decompressed_bytes 50 GiB);
"limits off" raises both out of reach, to measure what the file costs when read to its end. No tokenizer is
loaded: these are the reading and checking costs (the Lambda also tokenizes, which is slower per example).

Workloads (all gzip):
  baseline    varied valid chat examples (~120 bytes a line)
  keys        lines of ~1 MiB made of a few huge keys (the 614 KB gzip that once took 1.9 GB)
  blank       nothing but newlines
  giant       one line holding the whole file
  tiny        "{}" lines: millions of tiny invalid lines, one problem each
  tiny_valid  the smallest valid prompt/completion lines: the most examples, memory and /tmp per byte
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "layers" / "shared")]
OUT = ROOT / "bench" / "out" / "bounds"
WORKLOADS = ["baseline", "keys", "blank", "giant", "tiny", "tiny_valid"]
MIB = 1024 * 1024


def _lines(workload: str, size: int) -> Iterator[bytes]:
    """Lines of `workload` adding up to about `size` bytes."""
    written = 0
    index = 0
    while written < size:
        if workload == "baseline":
            user = {"role": "user", "content": f"Please reverse the word number {index * 7919 % 1_000_003}."}
            line = json.dumps({"messages": [user, {"role": "assistant", "content": f"{index:x}"[::-1]}]}).encode()
        elif workload == "keys":
            keys = {f"{index}-{k}-" + "k" * (250 * 1024): k for k in range(4)}
            line = json.dumps(keys).encode()
        elif workload == "blank":
            line = b"\n" * (MIB - 1)
        elif workload == "giant":
            line = (b'{"' if index == 0 else b"") + b"g" * (MIB - 1)
            if written + MIB >= size:
                line += b'": 1}'
            written += len(line)
            index += 1
            yield line  # no newline: one line
            continue
        elif workload == "tiny":
            line = b"{}"
        else:  # tiny_valid
            line = b'{"prompt":"%x","completion":"a"}' % index
        written += len(line) + 1
        index += 1
        yield line + b"\n"


def generate(workload: str, size_mb: int) -> Path:
    path = OUT / f"{workload}-{size_mb}mb.jsonl.gz"
    if path.exists():
        return path
    OUT.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part")
    with gzip.open(partial, "wb", compresslevel=6) as out:
        for line in _lines(workload, size_mb * MIB):
            out.write(line)
    partial.rename(path)
    return path


def child(data: Path, limits: str) -> None:
    """Validate `data` once; print the report's numbers and the bytes written to temporary disk."""
    from tuneplane.logic.validation.ledger import Ledger
    from tuneplane.logic.validation.validator import DatasetSource, validate_dataset
    from tuneplane.models.validation import ValidationOptions

    spilled = [0]
    original = Ledger.append

    def counting(self: Ledger, line: int, messages: list[Any], example_json: bytes, *args: int) -> None:
        spilled[0] += len(example_json) + 1
        original(self, line, messages, example_json, *args)

    Ledger.append = counting  # type: ignore[method-assign,assignment]
    options = ValidationOptions(max_invalid_fraction=1.0)
    if limits == "off":
        options = ValidationOptions(
            max_invalid_fraction=1.0, max_decompression_ratio=1e12, max_decompressed_bytes=1 << 60
        )
    out_dir = OUT / f"splits-{data.stem}"
    started = time.perf_counter()
    result = validate_dataset(DatasetSource.local(data), options, out_dir=out_dir)
    seconds = time.perf_counter() - started
    splits = sum(f.stat().st_size for f in out_dir.iterdir()) if out_dir.exists() else 0
    if out_dir.exists():
        for file in out_dir.iterdir():
            file.unlink()
        out_dir.rmdir()
    errors = [c.code.value for c in result.report.errors]
    print(
        json.dumps(
            {
                "seconds": seconds,
                "lines": result.report.lines_read,
                "examples": result.report.examples_valid,
                "errors": errors[:3],
                "tmp_bytes": spilled[0] + splits,
            }
        )
    )


def measure(data: Path, limits: str, decompressed: int) -> dict[str, float | str]:
    command = ["/usr/bin/time", "-v", sys.executable, __file__, "--child", str(data), "--limits", limits]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    result: dict[str, float | str] = json.loads(done.stdout.strip().splitlines()[-1])
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    assert rss is not None
    result["peak_rss_mb"] = int(rss[1]) / 1024
    result["tmp_per_input_byte"] = float(result["tmp_bytes"]) / decompressed
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child")
    parser.add_argument("--limits", choices=["on", "off"], default="on")
    parser.add_argument("--size-mb", type=int, default=64, help="decompressed size of every file")
    parser.add_argument("--workloads", nargs="+", default=WORKLOADS, choices=WORKLOADS)
    parser.add_argument("--modes", nargs="+", default=["on", "off"], choices=["on", "off"])
    args = parser.parse_args()
    if args.child:
        child(Path(args.child), args.limits)
        return
    workloads = ["baseline", *[w for w in args.workloads if w != "baseline"]]
    files = {w: generate(w, args.size_mb) for w in workloads}
    decompressed = args.size_mb * MIB
    header = f"{'workload':<11} {'limits':<6} {'gzip KB':>9} {'s':>7} {'x time':>7} {'RSS MB':>7} {'x RSS':>6}"
    print(header + f" {'tmp/B':>6} {'lines':>11} {'examples':>9}  errors")
    for limits in args.modes:
        base = measure(files["baseline"], limits, decompressed)
        for workload in workloads:
            result = base if workload == "baseline" else measure(files[workload], limits, decompressed)
            seconds, rss = float(result["seconds"]), float(result["peak_rss_mb"])
            print(
                f"{workload:<11} {limits:<6} {files[workload].stat().st_size / 1024:>9.0f} {seconds:>7.2f} "
                f"{seconds / float(base['seconds']):>7.2f} {rss:>7.0f} {rss / float(base['peak_rss_mb']):>6.2f} "
                f"{float(result['tmp_per_input_byte']):>6.2f} {int(result['lines']):>11,} "
                f"{int(result['examples']):>9,}  {','.join(result['errors']) or '-'}",  # type: ignore[arg-type]
                flush=True,
            )


if __name__ == "__main__":
    main()
