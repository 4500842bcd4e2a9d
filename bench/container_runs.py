"""The training container run as a subprocess on a random model and synthetic chat data: what bench/train_gpu.py
and bench/train_multi_gpu.py share.

    python bench/container_runs.py --write-weights DIR    # random weights for DIR/config.json (a child process)

`prepare(work, size, examples)` writes work/data/train.jsonl (bench/datagen.py conversations) and work/model (a
byte-level BPE tokenizer with the ChatML template of local/tiny_model.py, a Llama config of the size's shape from
bench/train_gpu.py, random bf16 weights written by a child process so that the caller never holds a GPU); reused when
present. `run_train(work, name, options)` runs containers/train/train.py with the container's defaults plus `options`
and returns its steady tokens/s (the median of the per-step metric lines after the warm-up steps), peak memory and
losses from training_summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import datagen
from shapes import SHAPES

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "containers" / "train" / "train.py"


def write_data(directory: Path, examples: int, seed: int) -> list[str]:
    """`examples` synthetic conversations as directory/train.jsonl; returns every message text (for the tokenizer)."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    rows = [datagen.example(rng) for _ in range(examples)]
    (directory / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    texts: list[str] = []
    for row in rows:
        messages = row["messages"]
        assert isinstance(messages, list)
        texts += [str(message["content"]) for message in messages]
    return texts


def write_model_config(directory: Path, texts: list[str], size: str, tokenizer_vocab: int) -> None:
    """Tokenizer, chat template and a config.json of the given shape (no weights)."""
    sys.path.insert(0, str(REPO))
    from local.tiny_model import write_base_model

    write_base_model(directory, texts, vocab_size=tokenizer_vocab)
    config = json.loads((directory / "config.json").read_text())
    shape = SHAPES[size]
    config.update({key: value for key, value in shape.items() if key != "vocab_size"})
    config["vocab_size"] = max(shape["vocab_size"], config["vocab_size"])
    (directory / "config.json").write_text(json.dumps(config, indent=2))


def write_weights(directory: Path, seed: int) -> None:
    """Random weights for directory/config.json (bf16, initialised on GPU 0 when there is one); run in a child."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    cuda = torch.cuda.is_available()
    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    with torch.device("cuda" if cuda else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if cuda else torch.float32)
    model.save_pretrained(directory, safe_serialization=True, max_shard_size="5GB")


def prepare(work: Path, size: str, examples: int, tokenizer_vocab: int = 8000) -> None:
    """work/data and work/model (see the module docstring); kept when already there."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "no-hyperparameters.json").write_text("{}")
    model = work / "model"
    if (model / "config.json").is_file() and any(model.glob("*.safetensors")):
        return
    started = time.monotonic()
    texts = write_data(work / "data", examples, seed=0)
    write_model_config(model, texts, size, tokenizer_vocab)
    subprocess.run([sys.executable, __file__, "--write-weights", str(model)], check=True)
    elapsed = time.monotonic() - started
    print(f"wrote {examples} conversations and a random {size} model in {elapsed:.0f} s", flush=True)


def base_parameters(work: Path) -> int:
    """Parameters of work/model (counted on the meta device: no weights loaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(work / "model", local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def run_train(work: Path, name: str, options: dict[str, Any], warmup_steps: int) -> dict[str, Any]:
    """train.py on work/model and work/data with `options` as `--name value` arguments (no evaluation)."""
    run = work / name
    shutil.rmtree(run, ignore_errors=True)
    command = [sys.executable, str(TRAIN), "--hyperparameters", str(work / "no-hyperparameters.json")]
    paths = {
        "model_dir": work / "model",
        "train_dir": work / "data",
        "eval_dir": work / "no-eval",
        "output_dir": run / "model",
        "checkpoint_dir": run / "checkpoints",
        "failure_file": run / "failure",
    }
    for key, value in {**paths, "logging_steps": 1, **options}.items():
        command += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    env = {key: value for key, value in os.environ.items() if key not in ("WORLD_SIZE", "LOCAL_RANK", "RANK")}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(f"[{name}] {' '.join(command)}", flush=True)
    started = time.monotonic()
    with (work / f"{name}.log").open("w") as log:
        code = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    wall = time.monotonic() - started
    if code != 0:
        failure = run / "failure"
        reason = failure.read_text().strip() if failure.is_file() else "(no failure file)"
        raise SystemExit(f"[{name}] train.py exited {code}: {reason}; log: {work / f'{name}.log'}")
    summary = json.loads((run / "model" / "training_summary.json").read_text())
    curve = summary["loss_curve"]
    steady = [p["tokens_per_second"] for p in curve[warmup_steps:] if "tokens_per_second" in p]
    tokens_per_second = statistics.median(steady) if steady else float(summary["tokens_per_second"] or 0.0)
    return {
        "options": dict(options),
        "world_size": summary["world_size"],
        "tokens_seen": summary["tokens_seen"],
        "tokens_per_second": tokens_per_second,
        "peak_memory_gb_per_gpu": summary["peak_memory_gb_per_rank"],
        "peak_memory_kind": summary["peak_memory_kind"],
        "last_epoch": curve[-1]["epoch"],
        "losses": [p["train_loss"] for p in curve],
        "wall_time_s": round(wall, 1),
        "precision": summary["precision"],
        "attn_implementation": summary["attn_implementation"],
        "liger_kernels": summary.get("liger_kernels"),
        "batch_plan": summary.get("batch_plan"),
        "adapter": str(run / "model" / "adapter_model.safetensors"),
    }


def gpu_names() -> list[str]:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-weights", required=True, help="a model directory with config.json")
    write_weights(Path(parser.parse_args().write_weights), seed=0)
