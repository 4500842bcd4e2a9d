"""The quantize container's entrypoint on CPU, offline: llm-compressor AWQ W4A16 (group 128) on a tiny random
Llama-style model (hidden size 128, so every linear layer's input splits into 128-wide groups), end to end, once;
the result is reloaded with plain transformers. The degradation bound and the config checks run on the same inputs.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from containers.quantize import quantize
from containers.quantize.quantize import ConfigError, QuantizeConfig
from local.tiny_model import write_base_model, write_tiny_weights

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")
pytest.importorskip("llmcompressor")

ENTRYPOINT = Path(quantize.__file__)
WORDS = ("red", "green", "blue", "yellow", "black", "white", "pink", "brown")


def conversation(word: str, n: int) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": f"say {word} {n} times"},
            {"role": "assistant", "content": " ".join([word] * n)},
        ]
    }


TRAIN = [conversation(w, n) for n in (1, 2, 3) for w in WORDS]
EVAL = [conversation(w, 4) for w in WORDS[:4]]


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("quantize-task")
    for name, rows in (("train", TRAIN), ("eval", EVAL)):
        (root / name).mkdir()
        (root / name / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    texts = [m["content"] for row in TRAIN + EVAL for m in row["messages"]]
    base = write_tiny_weights(write_base_model(root / "model", texts, num_layers=2))
    return {"model": base, "train": root / "train", "eval": root / "eval", "root": root}


def make_args(task: dict[str, Path], out: Path, **overrides: str) -> list[str]:
    values = {
        "model_dir": str(task["model"]),
        "calibration_dir": str(task["train"]),
        "eval_dir": str(task["eval"]),
        "output_dir": str(out / "quantized"),
        "failure_file": str(out / "message"),
        "dtype": "fp32",
        "num_calibration_samples": "8",
        "max_seq_length": "64",
        # A random tiny model has no structure for 4 bits to preserve: its NLL rises by 0.1-0.3 nats (a pretrained 7B
        # gains a few hundredths), so the default bound of 0.1 is too tight here.
        "max_nll_increase": "1.0",
        **overrides,
    }
    return [part for name, value in values.items() for part in (f"--{name}", value)]


def without_awq(cfg: QuantizeConfig, recipe: Callable[[QuantizeConfig], list[Any]] = quantize.awq_recipe) -> list[Any]:
    """The quantization modifier alone (round-to-nearest): a short run where the algorithm does not matter."""
    return recipe(cfg)[1:]


@pytest.fixture(scope="module")
def quantized(task: dict[str, Path]) -> dict[str, Any]:
    """One real AWQ run, shared by the tests that inspect its output."""
    out = task["root"] / "run"
    assert quantize.run(make_args(task, out)) == 0, (out / "message").read_text()
    directory = out / "quantized"
    return {"dir": directory, "report": json.loads((directory / "quantize_report.json").read_text()), "out": out}


def test_report_has_sizes_and_nll_before_and_after(quantized: dict[str, Any]) -> None:
    report = quantized["report"]
    assert report["passed"] is True and not (quantized["out"] / "message").exists()
    # sizes: the 4-bit linear layers make the weights much smaller (embeddings and lm_head stay fp32 here)
    size = report["size"]
    assert 0 < size["weights_bytes_after"] < size["weights_bytes_before"] / 2
    assert size["ratio"] == pytest.approx(size["weights_bytes_after"] / size["weights_bytes_before"], abs=1e-4)
    # NLL on the eval split before and after, with the perplexity and the bound
    nll = report["nll"]
    assert nll["source"] == "eval split" and nll["conversations"] == len(EVAL)
    for side in ("before", "after"):
        assert math.isfinite(nll[side]["mean_token_nll"]) and nll[side]["tokens"] > 0
        assert nll[side]["perplexity"] == pytest.approx(math.exp(nll[side]["mean_token_nll"]))
    assert nll["increase"] == pytest.approx(nll["after"]["mean_token_nll"] - nll["before"]["mean_token_nll"])
    assert nll["increase"] <= nll["max_nll_increase"] == 1.0
    # calibration: the requested number of training conversations; on a CPU the pin_memory workaround was applied
    assert report["calibration"]["samples"] == 8 and report["calibration"]["available"] == len(TRAIN)
    assert report["cpu_pin_memory_workaround"] is (not torch.accelerator.is_available())
    assert report["wall_time_s"] > 0 and report["peak_memory_gb"] > 0 and report["quantize_seconds"] > 0


def test_output_is_compressed_tensors_w4a16_group_128(quantized: dict[str, Any]) -> None:
    config = json.loads((quantized["dir"] / "config.json").read_text())
    quantization = config["quantization_config"]
    assert quantization["quant_method"] == "compressed-tensors" and quantization["format"] == "pack-quantized"
    assert quantization["ignore"] == ["lm_head"]
    (group,) = quantization["config_groups"].values()
    assert group["targets"] == ["Linear"] and group["input_activations"] is None
    weights = group["weights"]
    assert (weights["num_bits"], weights["type"]) == (4, "int")
    assert (weights["strategy"], weights["group_size"]) == ("group", 128)
    assert weights["symmetric"] is False  # W4A16_ASYM, AWQ's usual zero-point scheme
    assert quantized["report"]["quantization_config"]["group_size"] == [128]


def test_output_loads_back_with_transformers_on_cpu(quantized: dict[str, Any], task: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = quantized["dir"]
    model = AutoModelForCausalLM.from_pretrained(directory, device_map="cpu")
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert tokenizer.chat_template and "<|im_end|>" in tokenizer.chat_template
    ids = tokenizer.apply_chat_template(EVAL[0]["messages"][:1], add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
    with torch.inference_mode():
        logits = model(input_ids=ids).logits
    assert torch.isfinite(logits).all() and logits.shape[-1] == model.config.vocab_size
    # the input's generation_config.json (eos ids with the end-of-turn token) travels with the model
    assert json.loads((directory / "generation_config.json").read_text()) == json.loads(
        (task["model"] / "generation_config.json").read_text()
    )


def test_degradation_over_the_bound_fails_the_job(
    task: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a quantization whose eval NLL rises by 0.5 nats (the second measurement is inflated), and a bound of 0.2;
    # round-to-nearest without AWQ keeps this run short (the bound does not depend on the algorithm)
    measure = quantize.mean_token_nll
    calls: list[int] = []

    def inflated(model: Any, samples: list[list[int]], device: str) -> dict[str, float]:
        result = measure(model, samples, device)
        calls.append(1)
        if len(calls) == 2:
            result["mean_token_nll"] += 0.5
        return result

    monkeypatch.setattr(quantize, "mean_token_nll", inflated)
    monkeypatch.setattr(quantize, "awq_recipe", without_awq)
    # WHEN quantized; THEN exit 1, the reason has the numbers and the bound, and no weights are left to deploy
    assert quantize.run(make_args(task, tmp_path, max_nll_increase="0.2")) == 1
    reason = (tmp_path / "message").read_text()
    assert reason.count("\n") == 1
    assert "degraded" in reason and "max_nll_increase=0.2" in reason and "nats" in reason
    out = tmp_path / "quantized"
    report = json.loads((out / "quantize_report.json").read_text())
    assert report["passed"] is False and report["nll"]["increase"] > 0.2
    assert not list(out.glob("*.safetensors*"))


def test_eval_split_missing_measures_on_unused_training_conversations(
    task: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(quantize, "awq_recipe", without_awq)
    assert quantize.run(make_args(task, tmp_path, eval_dir=str(tmp_path / "absent"), scheme="W4A16")) == 0
    report = json.loads((tmp_path / "quantized" / "quantize_report.json").read_text())
    assert report["nll"]["source"] == "training conversations not used for calibration"
    assert report["nll"]["conversations"] == len(TRAIN) - 8
    assert report["quantization_config"]["symmetric"] == [True]


# ---------------------------------------------------------------------------------------------------------------------
# Calibration data and config


def test_calibration_sample_is_seeded_disjoint_and_rendered_with_the_chat_template(task: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    conversations = [row["messages"] for row in TRAIN]
    picked, rest = quantize.split_calibration(conversations, 5, seed=0)
    assert quantize.split_calibration(conversations, 5, seed=0) == (picked, rest)
    assert len(picked) == 5 and len(rest) == len(TRAIN) - 5 and not [c for c in picked if c in rest]
    assert quantize.split_calibration(conversations, 100, seed=0)[0] != conversations  # shuffled, all of them
    tokenizer = AutoTokenizer.from_pretrained(task["model"])
    rendered = quantize.render(tokenizer, picked, 12)
    full = tokenizer.apply_chat_template(picked[0], tokenize=True, return_dict=True)["input_ids"]
    assert rendered[0] == list(full)[:12] and all(len(ids) <= 12 for ids in rendered)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in quantize.render(tokenizer, picked, 1000)[0]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"group_size": "100"}, "group_size must be one of 32, 64, 128, got 100"),
        ({"scheme": "W8A8"}, "scheme must be one of W4A16_ASYM, W4A16, got 'W8A8'"),
        ({"max_nll_increase": "-1"}, "max_nll_increase must be >= 0"),
        ({"num_calibration_samples": "lots"}, "--num_calibration_samples: expected an integer, got 'lots'"),
    ],
)
def test_bad_config_exits_2_naming_the_key(
    task: dict[str, Path], tmp_path: Path, overrides: dict[str, str], message: str
) -> None:
    # WHEN the entrypoint runs as SageMaker would (a process) with a bad option; THEN exit 2 and the key in the reason
    result = subprocess.run(
        [sys.executable, str(ENTRYPOINT), *make_args(task, tmp_path, **overrides)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    reason = (tmp_path / "message").read_text()
    assert reason.startswith("invalid quantization request: ") and message in reason


def test_config_defaults_and_checks() -> None:
    cfg = QuantizeConfig()
    assert (cfg.scheme, cfg.group_size, cfg.failure_file) == ("W4A16_ASYM", 128, "/opt/ml/output/message")
    assert cfg.output_dir == "/opt/ml/processing/output/quantized"
    with pytest.raises(ConfigError, match="max_seq_length"):
        QuantizeConfig(max_seq_length=4)
    assert quantize.load_config(["--max_nll_increase", "inf"]).max_nll_increase == math.inf


def test_an_already_quantized_model_is_refused(
    quantized: dict[str, Any], task: dict[str, Path], tmp_path: Path
) -> None:
    assert quantize.run(make_args(task, tmp_path, model_dir=str(quantized["dir"]))) == 2
    assert "already quantized (compressed-tensors)" in (tmp_path / "message").read_text()


def test_missing_calibration_data_fails_clearly(task: dict[str, Path], tmp_path: Path) -> None:
    assert quantize.run(make_args(task, tmp_path, calibration_dir=str(tmp_path / "none"))) == 1
    assert "no calibration conversations" in (tmp_path / "message").read_text()
