"""The merge container's entrypoint on CPU, offline: a tiny random Llama-style base and a LoRA adapter made with PEFT
directly (lora_B perturbed so that the adapter changes the logits), no training."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from containers.merge import merge
from containers.merge.merge import MergeConfig
from local.tiny_model import write_base_model, write_tiny_weights

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")

ENTRYPOINT = Path(merge.__file__)
EVAL = [
    {
        "messages": [
            {"role": "user", "content": f"say {word} twice"},
            {"role": "assistant", "content": f"{word} {word}"},
        ]
    }
    for word in ("red", "green", "blue", "yellow", "black")
]
TEXTS = [m["content"] for row in EVAL for m in row["messages"]]


def make_adapter(base_dir: Path, adapter_dir: Path, *, seed: int = 0, r: int = 4) -> Path:
    """A LoRA adapter on every linear layer of the base, lora_B random (non-zero delta), saved with the tokenizer."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(
        model, LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    peft_model.save_pretrained(adapter_dir)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(adapter_dir)
    return adapter_dir


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("merge-task")
    (root / "eval").mkdir()
    (root / "eval" / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in EVAL))
    base = write_tiny_weights(write_base_model(root / "base", TEXTS))
    other = write_tiny_weights(write_base_model(root / "other-base", TEXTS, hidden_size=64, num_layers=2))
    return {
        "eval": root / "eval",
        "base": base,
        "adapter": make_adapter(base, root / "adapter"),
        "other_adapter": make_adapter(other, root / "other-adapter"),
    }


@pytest.fixture
def args(task: dict[str, Path], tmp_path: Path) -> Callable[..., list[str]]:
    def make(adapter: Path | None = None, **overrides: str) -> list[str]:
        values = {
            "model_dir": str(task["base"]),
            "adapter_dir": str(adapter or task["adapter"]),
            "eval_dir": str(task["eval"]),
            "output_dir": str(tmp_path / "merged"),
            "failure_file": str(tmp_path / "failure"),
            "dtype": "fp32",
            "max_shard_size": "200KB",
            "device": "cpu",
        }
        values.update(overrides)
        return [item for key, value in values.items() for item in (f"--{key}", value)]

    return make


def test_merge_matches_base_plus_adapter_and_ships_a_plain_model(
    args: Callable[..., list[str]], task: dict[str, Path], tmp_path: Path
) -> None:
    # GIVEN a tiny base and a non-zero LoRA adapter; WHEN the entrypoint merges them in fp32
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert merge.run(args()) == 0
    out = tmp_path / "merged"
    report = json.loads((out / "merge_report.json").read_text())

    # THEN the adapter really changes the logits, and the merged model matches base+adapter within the tolerance
    check = report["verification"]
    assert check["prompts"] == len(EVAL) and check["prompts_source"] == "eval split"
    assert check["adapter_effect_vs_base"]["max_abs"] > 0.05
    assert check["merged_vs_base_plus_adapter"]["max_abs"] <= check["tolerance_max_abs"] == 1e-3
    assert check["reloaded_vs_merged_in_memory"]["max_abs"] <= 1e-3
    assert check["cast_to_dtype_vs_base_plus_adapter"] is None  # fp32 output: no cast
    # AND the output is sharded safetensors that load in plain transformers (no adapter files), with a chat template
    assert len(report["shards"]) > 1 and (out / "model.safetensors.index.json").is_file()
    assert not (out / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    assert not hasattr(model, "peft_config") and type(model).__name__ == "LlamaForCausalLM"
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template and "<|im_end|>" in tokenizer.chat_template
    # AND generation_config.json stops on the chat template's end-of-turn token
    eos = json.loads((out / "generation_config.json").read_text())["eos_token_id"]
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in (eos if isinstance(eos, list) else [eos])
    # AND the report has time, memory, size and a Bedrock verdict: fp32 is not importable, with the reason
    assert report["wall_time_s"] > 0 and report["peak_memory_gb"] > 0 and report["output_bytes"] > 0
    bedrock = report["bedrock_custom_model_import"]
    assert bedrock["compatible"] is False
    assert any("float32" in reason for reason in bedrock["reasons"])
    assert any("LlamaForCausalLM is supported" in reason for reason in bedrock["reasons"])
    assert not (tmp_path / "failure").exists()


def test_bf16_merge_is_bedrock_compatible(args: Callable[..., list[str]], tmp_path: Path) -> None:
    # GIVEN the default dtype (bf16); WHEN merged on CPU
    assert merge.run(args(dtype="bf16", max_shard_size="5GB", verify_prompts="2")) == 0
    report = json.loads((tmp_path / "merged" / "merge_report.json").read_text())
    # THEN one shard, bf16, and Bedrock's format checks pass; the logits agree within the bf16 tolerance
    assert report["shards"] == ["model.safetensors"]
    assert report["bedrock_custom_model_import"]["compatible"] is True, report["bedrock_custom_model_import"]
    check = report["verification"]
    assert check["merge_precision"] == "fp32" and check["merged_vs_base_plus_adapter"]["max_abs"] <= 1e-3
    assert check["cast_to_dtype_vs_base_plus_adapter"]["max_abs"] > 0  # bf16 rounding, measured and reported


def test_merge_in_bf16_itself_uses_the_coarse_tolerance(args: Callable[..., list[str]], tmp_path: Path) -> None:
    assert merge.run(args(dtype="bf16", merge_precision="same", verify_prompts="2")) == 0
    check = json.loads((tmp_path / "merged" / "merge_report.json").read_text())["verification"]
    assert check["merge_precision"] == "bf16" and check["tolerance_max_abs"] == 1.0
    assert check["merged_vs_base_plus_adapter"]["max_abs"] <= 1.0


def test_qlora_adapter_is_merged_onto_full_precision_base_and_recorded(
    args: Callable[..., list[str]], task: dict[str, Path], tmp_path: Path
) -> None:
    # GIVEN an adapter whose training summary says QLoRA
    adapter = shutil.copytree(task["adapter"], tmp_path / "qlora-adapter")
    (adapter / "training_summary.json").write_text(json.dumps({"config": {"qlora": True}}))
    # WHEN merged; THEN it merges onto the full-precision base and the report says so
    assert merge.run(args(adapter, verify_prompts="1")) == 0
    report = json.loads((tmp_path / "merged" / "merge_report.json").read_text())
    assert report["adapter_trained_on_quantized_base"] is True
    assert "full-precision" in report["merged_onto"]


def test_adapter_uploaded_as_model_tar_gz_is_unpacked(
    args: Callable[..., list[str]], task: dict[str, Path], tmp_path: Path
) -> None:
    # GIVEN the adapter as a training job uploads SM_MODEL_DIR (<output>/<job>/output/model.tar.gz, "./" names), which
    # a Processing input mounts as it is
    adapter_input = tmp_path / "adapter-input"
    adapter_input.mkdir()
    with tarfile.open(adapter_input / "model.tar.gz", "w:gz") as tar:
        tar.add(task["adapter"], arcname=".")
    # WHEN merged; THEN the archive is unpacked and merged like the directory, and the report names it
    assert merge.run(args(adapter_input, verify_prompts="2")) == 0
    report = json.loads((tmp_path / "merged" / "merge_report.json").read_text())
    assert report["adapter_archive"] == str(adapter_input / "model.tar.gz")
    assert report["lora_modules"] > 0 and report["verification"]["adapter_effect_vs_base"]["max_abs"] > 0.05
    assert report["config"]["adapter_dir"] == str(adapter_input)


def test_adapter_archive_that_escapes_its_directory_is_refused(
    args: Callable[..., list[str]], task: dict[str, Path], tmp_path: Path
) -> None:
    # GIVEN a model.tar.gz holding the adapter and a member whose name climbs out of the extraction directory
    adapter_input = tmp_path / "adapter-input"
    adapter_input.mkdir()
    with tarfile.open(adapter_input / "model.tar.gz", "w:gz") as tar:
        tar.add(task["adapter"], arcname=".")
        tar.add(task["adapter"] / "adapter_config.json", arcname="../../escaped.json")
    # WHEN merged; THEN the job fails naming the member, and nothing was written outside
    assert merge.run(args(adapter_input)) == 1
    reason = (tmp_path / "failure").read_text()
    assert "'../../escaped.json'" in reason and "leaves the directory" in reason
    assert not list(tmp_path.parent.glob("escaped.json")) and not (tmp_path / "merged").exists()


def test_quantized_base_is_refused(args: Callable[..., list[str]], task: dict[str, Path], tmp_path: Path) -> None:
    # GIVEN a base directory whose config says 4-bit bitsandbytes weights
    base = shutil.copytree(task["base"], tmp_path / "base-4bit")
    config = json.loads((base / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (base / "config.json").write_text(json.dumps(config))
    # WHEN merged; THEN exit 2 and the failure file says why
    assert merge.run(args(model_dir=str(base))) == 2
    reason = (tmp_path / "failure").read_text()
    assert "quantized" in reason and "full-precision" in reason and reason.count("\n") == 1


def test_corrupted_adapter_fails_with_the_module_and_shapes(
    args: Callable[..., list[str]], task: dict[str, Path], tmp_path: Path
) -> None:
    # GIVEN an adapter whose q_proj lora_A of layer 0 has a wrong shape
    from safetensors.torch import load_file, save_file

    adapter = shutil.copytree(task["adapter"], tmp_path / "broken-adapter")
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    key = next(k for k in tensors if "layers.0.self_attn.q_proj.lora_A" in k)
    tensors[key] = torch.zeros(4, 100)
    save_file(tensors, str(adapter / "adapter_model.safetensors"))
    # WHEN the entrypoint runs as SageMaker would (a process); THEN non-zero exit, one clear line in the failure file
    result = subprocess.run(
        [sys.executable, str(ENTRYPOINT), *args(adapter)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1, result.stderr
    reason = (tmp_path / "failure").read_text()
    assert reason.count("\n") == 1
    assert "model.layers.0.self_attn.q_proj" in reason and "[4, 100]" in reason and "wrong shapes" in reason
    assert not (tmp_path / "merged" / "merge_report.json").exists()


def test_adapter_for_a_different_base_fails_clearly(
    args: Callable[..., list[str]], task: dict[str, Path], tmp_path: Path
) -> None:
    # GIVEN an adapter trained on a base with hidden size 64 (ours: 128); WHEN merged
    assert merge.run(args(task["other_adapter"])) == 1
    # THEN the failure file names the mismatch
    reason = (tmp_path / "failure").read_text()
    assert "adapter does not fit the base" in reason and "different base model" in reason


def test_adapter_with_nan_is_reported_as_corrupted(
    args: Callable[..., list[str]], task: dict[str, Path], tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    # GIVEN an adapter with a NaN in one lora_B
    adapter = shutil.copytree(task["adapter"], tmp_path / "nan-adapter")
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    key = next(k for k in tensors if "lora_B" in k)
    tensors[key][0, 0] = float("nan")
    save_file(tensors, str(adapter / "adapter_model.safetensors"))
    assert merge.run(args(adapter)) == 1
    assert "NaN" in (tmp_path / "failure").read_text()


def test_adapter_trained_with_another_vocabulary_fails_clearly(
    args: Callable[..., list[str]], task: dict[str, Path], tmp_path: Path
) -> None:
    # GIVEN a base with the same shapes but a different vocabulary, and an adapter (with its tokenizer) made on it
    words = [f"{a}{b}{c}" for a in "qxzjv" for b in "aeiou" for c in "kpt"]
    other = write_tiny_weights(write_base_model(tmp_path / "other-vocab-base", [" ".join(words)] * 4))
    adapter = make_adapter(other, tmp_path / "other-vocab-adapter")
    # WHEN merged onto our base; THEN the tokenizer mismatch is named
    assert merge.run(args(adapter)) == 1
    reason = (tmp_path / "failure").read_text()
    assert "different tokenizer" in reason and "different base model" in reason, reason


def test_peft_size_mismatch_is_translated() -> None:
    error = RuntimeError(
        "Error(s) in loading state_dict for PeftModelForCausalLM:\n\tsize mismatch for "
        "base_model.model.model.layers.0.mlp.up_proj.lora_A.default.weight: copying a param with shape "
        "torch.Size([4, 64]) from checkpoint, the shape in current model is torch.Size([4, 128])."
    )
    translated = merge.translate_error(error)
    assert isinstance(translated, merge.AdapterMismatchError)
    assert "mlp.up_proj.lora_A" in str(translated) and "[4, 64]" in str(translated) and "[4, 128]" in str(translated)
    other = ValueError("something else")
    assert merge.translate_error(other) is other


def test_merge_verification_failure_reports_the_numbers(
    args: Callable[..., list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a merge that silently goes wrong (merge_and_unload returns the model with a perturbed head)
    from peft.tuners.lora import LoraModel

    original = LoraModel.merge_and_unload

    def broken(self: Any, *a: Any, **k: Any) -> Any:
        model = original(self, *a, **k)
        with torch.no_grad():
            model.lm_head.weight.add_(0.5)
        return model

    monkeypatch.setattr(LoraModel, "merge_and_unload", broken)
    # WHEN merged; THEN the job fails with the max abs diff and the tolerance, and writes no model
    assert merge.run(args(verify_prompts="1")) == 1
    reason = (tmp_path / "failure").read_text()
    assert "max abs diff" in reason and "tolerance 0.001" in reason
    assert not (tmp_path / "merged").exists()


def test_config_validation() -> None:
    with pytest.raises(merge.ConfigError, match="dtype"):
        MergeConfig(dtype="int4")
    with pytest.raises(merge.ConfigError, match="max_shard_size"):
        MergeConfig(max_shard_size="lots")
    assert MergeConfig().max_abs_tolerance() == 1e-3 and MergeConfig(tolerance=0.01).max_abs_tolerance() == 0.01
    assert MergeConfig(merge_precision="same").max_abs_tolerance() == 1.0
