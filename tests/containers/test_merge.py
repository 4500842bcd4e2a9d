"""The merge container's entrypoint on CPU, offline: a tiny random Llama-style base and a LoRA adapter made with PEFT
directly (lora_B perturbed so that the adapter changes the logits), no training. Both methods: in memory (PEFT
merge_and_unload) and streaming (containers/merge/streaming.py, on a base saved in several small shards), whose output
must equal PEFT's merge tensor by tensor for every LoRA feature it accepts."""

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
from containers.merge import merge, streaming
from containers.merge.merge import MergeConfig
from local.tiny_model import write_base_model, write_tiny_weights
from tests.containers.tiny_adapters import make_adapter

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


def reshard(base_dir: Path, out: Path, max_shard_size: str) -> Path:
    """A copy of a base directory whose weights are saved again in shards of at most max_shard_size."""
    from transformers import AutoModelForCausalLM

    shutil.copytree(base_dir, out, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).save_pretrained(
        out, max_shard_size=max_shard_size
    )
    return out


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
        "sharded_base": reshard(base, root / "sharded-base", "300KB"),
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
    # AND it says where the supported list comes from in its own words, citing no document outside the report
    assert "Bedrock Custom Model Import's documentation" in bedrock["source"] and ".md" not in bedrock["source"]
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
    with pytest.raises(merge.ConfigError, match="method"):
        MergeConfig(method="fast")
    with pytest.raises(merge.ConfigError, match="verify_precision"):
        MergeConfig(verify_precision="fp8")
    assert MergeConfig().streamed_tolerance() == 1.0 and MergeConfig(dtype="fp32").streamed_tolerance() == 1e-3


# ---------------------------------------------------------------------------------------------------------------------
# Streaming


def stored_tensors(directory: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    tensors: dict[str, Any] = {}
    for path in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return tensors


def peft_merged(base_dir: Path, adapter_dir: Path, dtype: Any) -> dict[str, Any]:
    """What the in-memory method merges: the base in fp32, PEFT merge_and_unload(safe_merge), cast to dtype."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload(safe_merge=True)
    return {name: tensor.to(dtype) for name, tensor in merged.state_dict().items()}


def stream(base_dir: Path, adapter_dir: Path, out: Path, dtype: str = "fp32") -> streaming.Plan:
    """The streaming merge alone (no verification), as merge.choose_method plans it."""
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    cfg = MergeConfig(model_dir=str(base_dir), method="streaming")
    method, _, plan = merge.choose_method(cfg, adapter_dir, adapter_config)
    assert method == "streaming" and plan is not None
    streaming.stream_merge(base_dir, adapter_dir, out, plan, dtype)
    return plan


def assert_same_as_peft(base_dir: Path, adapter_dir: Path, out: Path, dtype: str = "fp32") -> streaming.Plan:
    plan = stream(base_dir, adapter_dir, out, dtype)
    streamed, expected = stored_tensors(out), peft_merged(base_dir, adapter_dir, merge.jobkit.torch_dtype(dtype))
    assert set(streamed) == set(stored_tensors(base_dir))  # the base's tensors, no more, no fewer
    for name, tensor in streamed.items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-6, atol=1e-7, msg=name)
    return plan


@pytest.fixture(scope="module")
def gpt2_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 (Conv1D layers, [in, out] weights: PEFT's fan_in_fan_out), sharded, no tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=64, bos_token_id=0, eos_token_id=0)
    directory = tmp_path_factory.mktemp("gpt2-base")
    GPT2LMHeadModel(config).save_pretrained(directory, max_shard_size="20KB")
    return directory


LORA_VARIANTS: dict[str, dict[str, Any]] = {
    "plain LoRA on all linear layers": {},
    "rslora": {"use_rslora": True, "r": 8, "lora_alpha": 4, "target_modules": ["q_proj", "k_proj", "v_proj"]},
    "rank_pattern and alpha_pattern": {
        "target_modules": ["q_proj", "v_proj", "down_proj"],
        "rank_pattern": {"q_proj": 2, "layers.1.mlp.down_proj": 8},
        "alpha_pattern": {"v_proj": 3, "model.layers.2.self_attn.q_proj": 32},
    },
    "modules_to_save (lm_head)": {"target_modules": ["q_proj", "v_proj"], "modules_to_save": ["lm_head"]},
    "LoRA on the embedding": {"target_modules": ["embed_tokens", "o_proj"]},
    "layers_to_transform": {"target_modules": ["q_proj", "up_proj"], "layers_to_transform": [0, 3]},
}


@pytest.mark.parametrize("variant", sorted(LORA_VARIANTS))
def test_streaming_equals_peft_merge_and_unload(variant: str, task: dict[str, Path], tmp_path: Path) -> None:
    # GIVEN a base saved in ~10 shards and an adapter using one LoRA feature (random, non-zero deltas)
    adapter = make_adapter(task["base"], tmp_path / "adapter", **LORA_VARIANTS[variant])
    # WHEN streamed; THEN every tensor equals PEFT's merge_and_unload on the loaded base (the in-memory method)
    plan = assert_same_as_peft(task["sharded_base"], adapter, tmp_path / "out")
    assert len(plan.files) > 3 and plan.lora
    if "modules_to_save" in variant:
        assert plan.replace == {"lm_head.weight": "base_model.model.lm_head.weight"}
    if "embedding" in variant:
        assert plan.lora["model.embed_tokens.weight"].transpose  # (B @ A)^T, and PEFT's saved base_layer copy
        assert plan.replace == {"model.embed_tokens.weight": "base_model.model.model.embed_tokens.base_layer.weight"}


def test_streaming_fan_in_fan_out_conv1d_equals_peft(gpt2_base: Path, tmp_path: Path) -> None:
    # GIVEN GPT-2's Conv1D layers ([in, out] weights) and an adapter made with fan_in_fan_out=True
    adapter = make_adapter(gpt2_base, tmp_path / "adapter", target_modules=["c_attn", "c_proj", "c_fc"],
                           fan_in_fan_out=True)  # fmt: skip
    # THEN the streamed merge transposes the delta exactly as PEFT does (c_attn is [32, 96]: not square)
    plan = assert_same_as_peft(gpt2_base, adapter, tmp_path / "out")
    assert all(target.transpose for target in plan.lora.values()) and len(plan.lora) == 8


def test_streaming_and_in_memory_entrypoints_ship_the_same_model(
    args: Callable[..., list[str]], task: dict[str, Path], tmp_path: Path
) -> None:
    # GIVEN a sharded base: method=auto streams it; the same merge in memory is the baseline
    assert merge.run(args(model_dir=str(task["sharded_base"]), dtype="bf16")) == 0
    assert merge.run(args(model_dir=str(task["sharded_base"]), dtype="bf16", method="in_memory",
                          output_dir=str(tmp_path / "in-memory"))) == 0  # fmt: skip
    out = tmp_path / "merged"
    report = json.loads((out / "merge_report.json").read_text())
    baseline = json.loads((tmp_path / "in-memory" / "merge_report.json").read_text())
    assert report["method"] == "streaming" and report["method_reason"].startswith("auto:")
    assert baseline["method"] == "in_memory"

    # THEN the bf16 weights are bit-identical, the configs equal, the base's shard layout kept, with an index
    streamed, in_memory = stored_tensors(out), stored_tensors(tmp_path / "in-memory")
    assert streamed.keys() == in_memory.keys() and all(torch.equal(streamed[k], in_memory[k]) for k in streamed)
    assert json.loads((out / "config.json").read_text()) == json.loads(
        (tmp_path / "in-memory/config.json").read_text()
    )
    base_shards = sorted(p.name for p in task["sharded_base"].glob("*.safetensors"))
    assert report["shards"] == base_shards and len(base_shards) > 3
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(base_shards) and index["weight_map"].keys() == streamed.keys()
    # AND the same other outputs: tokenizer + chat template, generation_config with the end-of-turn token, Bedrock
    assert report["eos_token_id"] == baseline["eos_token_id"] and (out / "chat_template.jinja").is_file()
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == report["eos_token_id"]
    assert report["bedrock_custom_model_import"]["compatible"] is True
    # AND the verification: every changed tensor within one rounding of PEFT's merge; the written model's logits near
    # base+adapter (its weights are bf16) while the adapter moves them a lot
    check = report["verification"]
    assert check["passed"] and check["weights_vs_peft_merge"]["tensors"] == report["lora_modules"] == 28
    assert check["weights_vs_peft_merge"]["max_error_in_eps"] <= 0.5
    assert check["merged_vs_base_plus_adapter"]["max_abs"] <= check["tolerance_max_abs"] == 1.0
    assert check["adapter_effect_vs_base"]["max_abs"] > 0.05
    # AND per-file timings, per-phase peaks
    files = report["streaming"]["files"]
    assert [f["file"] for f in files] == base_shards and sum(f["lora_merged"] for f in files) == 28
    assert set(report["phases"]) == {"prepare", "merge", "verify_reference", "verify_output"}
    assert 0 < report["streaming"]["peak_host_rss_gb"] <= report["peak_host_rss_gb"]


def test_streaming_in_fp32_checks_logits_sharply(
    args: Callable[..., list[str]], task: dict[str, Path], tmp_path: Path
) -> None:
    assert merge.run(args(model_dir=str(task["sharded_base"]), method="streaming", verify_prompts="2")) == 0
    check = json.loads((tmp_path / "merged" / "merge_report.json").read_text())["verification"]
    assert check["tolerance_max_abs"] == 1e-3 and check["merged_vs_base_plus_adapter"]["max_abs"] <= 1e-3


def test_auto_merges_a_single_file_base_or_a_dora_adapter_in_memory(task: dict[str, Path], tmp_path: Path) -> None:
    # GIVEN a one-file base, and a DoRA adapter on a sharded one
    dora = make_adapter(task["base"], tmp_path / "dora", target_modules=["q_proj"], use_dora=True)
    config = json.loads((dora / "adapter_config.json").read_text())
    plain = json.loads((task["adapter"] / "adapter_config.json").read_text())
    # WHEN method=auto; THEN in memory, with the reason
    method, reason, _ = merge.choose_method(MergeConfig(model_dir=str(task["base"])), task["adapter"], plain)
    assert method == "in_memory" and "not sharded" in reason
    method, reason, _ = merge.choose_method(MergeConfig(model_dir=str(task["sharded_base"])), dora, config)
    assert method == "in_memory" and "use_dora" in reason


def test_streaming_refuses_dora_with_the_reason(
    args: Callable[..., list[str]], task: dict[str, Path], tmp_path: Path
) -> None:
    # GIVEN a DoRA adapter; WHEN method=streaming; THEN exit 2, the failure names DoRA and what to do instead
    dora = make_adapter(task["base"], tmp_path / "dora", target_modules=["q_proj"], use_dora=True)
    assert merge.run(args(dora, model_dir=str(task["sharded_base"]), method="streaming")) == 2
    reason = (tmp_path / "failure").read_text()
    assert "cannot merge by streaming" in reason and "use_dora" in reason and "DoRA" in reason
    assert "method=auto or in_memory" in reason and not (tmp_path / "merged").exists()


def test_streaming_refuses_a_target_tied_to_another_weight(task: dict[str, Path], tmp_path: Path) -> None:
    # GIVEN a base whose lm_head is tied to the embedding (one stored tensor) and an adapter that replaces lm_head
    base = shutil.copytree(task["sharded_base"], tmp_path / "tied-base")
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    adapter = make_adapter(task["base"], tmp_path / "adapter", target_modules=["q_proj"], modules_to_save=["lm_head"])
    # THEN streaming refuses it, naming the weight
    with pytest.raises(streaming.StreamingUnsupported, match=r"lm_head\.weight, which is tied"):
        stream(base, adapter, tmp_path / "out")


def test_adapter_module_that_matches_no_base_weight_is_named(task: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    # GIVEN an adapter on q_proj that also holds LoRA weights for gate_proj, which its target_modules do not select
    adapter = make_adapter(task["base"], tmp_path / "adapter", target_modules=["q_proj"])
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    extra = "base_model.model.model.layers.1.mlp.gate_proj"
    tensors[f"{extra}.lora_A.weight"], tensors[f"{extra}.lora_B.weight"] = torch.ones(4, 128), torch.ones(256, 4)
    save_file(tensors, str(adapter / "adapter_model.safetensors"))
    # THEN the merge fails naming that module (PEFT would silently drop it)
    with pytest.raises(
        merge.AdapterMismatchError, match=r"adapter module model\.layers\.1\.mlp\.gate_proj matches no"
    ):
        stream(task["sharded_base"], adapter, tmp_path / "out")


def test_streaming_adapter_for_a_missing_layer_fails_naming_it(
    args: Callable[..., list[str]], task: dict[str, Path], tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    # GIVEN an adapter with LoRA weights for layer 7 (the base has 4 layers); WHEN streamed
    adapter = shutil.copytree(task["adapter"], tmp_path / "adapter")
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    tensors.update({k.replace("layers.0.", "layers.7."): v.clone() for k, v in tensors.items() if "layers.0." in k})
    save_file(tensors, str(adapter / "adapter_model.safetensors"))
    # THEN exit 1 and the failure file names the module
    assert merge.run(args(adapter, model_dir=str(task["sharded_base"]), method="streaming")) == 1
    assert "model.layers.7." in (tmp_path / "failure").read_text()


def test_streaming_verification_catches_a_wrong_merge_and_ships_nothing(
    args: Callable[..., list[str]], task: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a streaming merge that silently scales every delta by 1.05
    original = streaming.lora_delta
    monkeypatch.setattr(streaming, "lora_delta", lambda target, adapter: original(target, adapter) * 1.05)
    # WHEN merged in bf16 (whose logit tolerance alone would let this pass); THEN the weight check fails it
    assert merge.run(args(model_dir=str(task["sharded_base"]), dtype="bf16", verify_prompts="1")) == 1
    reason = (tmp_path / "failure").read_text()
    assert "differ from PEFT's merge" in reason and not (tmp_path / "merged").exists()


def test_verification_can_be_skipped_only_when_streaming(
    args: Callable[..., list[str]], task: dict[str, Path], tmp_path: Path
) -> None:
    assert merge.run(args(model_dir=str(task["sharded_base"]), verify_prompts="0")) == 0
    report = json.loads((tmp_path / "merged" / "merge_report.json").read_text())
    assert report["verification"]["skipped"] is True and "verification skipped" in report["warnings"][0]
    assert set(report["phases"]) == {"prepare", "merge"}
    assert merge.run(args(verify_prompts="0", output_dir=str(tmp_path / "in-memory"))) == 2
    assert "streaming method only" in (tmp_path / "failure").read_text()


def test_unsupported_lora_features_are_listed() -> None:
    assert streaming.unsupported_features({"r": 8, "lora_alpha": 16, "use_rslora": True, "rank_pattern": {}}) == []
    problems = streaming.unsupported_features(
        {
            "use_dora": True,
            "init_lora_weights": "pissa",
            "bias": "all",
            "lora_bias": True,
            "layer_replication": [[0, 2]],
        }
    )
    assert [p.split("=")[0] for p in problems] == ["use_dora", "init_lora_weights", "bias", "layer_replication",
                                                   "lora_bias"]  # fmt: skip
