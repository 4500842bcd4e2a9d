"""The training container's entrypoint on CPU, offline, with a tiny random Llama-style base model.

The task: the user turn is `<filler> <colour> <filler reversed>`, the answer is the code word of the colour. Held-out
examples use filler words never seen in training, so a model that answers them has learned the mapping and to
ignore the filler (and to stop: the end-of-turn token is trained).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import signal
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from containers.train import train
from containers.train.train import ConfigError, TrainConfig
from local.tiny_model import write_base_model, write_tiny_weights

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")

ENTRYPOINT = Path(train.__file__)
CODES = {
    "red": "stop",
    "green": "go",
    "blue": "calm",
    "yellow": "wait",
    "black": "night",
    "white": "snow",
    "pink": "rose",
    "brown": "earth",
}
FILLERS = [a + b for a in ("ka", "lo", "mi", "ne", "pu", "ri", "so", "tu", "va", "ze") for b in "bdfgkmnp"]
random.Random(0).shuffle(FILLERS)
COLOURS = list(CODES)


def example(colour: str, filler: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": f"{filler} {colour} {filler[::-1]}"},
            {"role": "assistant", "content": CODES[colour]},
        ]
    }


TRAIN = [example(COLOURS[i % 8], FILLERS[i % 60]) for i in range(160)]
EVAL = [example(COLOURS[i % 8], FILLERS[60 + i % 20]) for i in range(40)]  # unseen fillers


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train-task")
    for name, rows in (("train", TRAIN), ("eval", EVAL)):
        (root / name).mkdir()
        (root / name / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    texts = [m["content"] for row in TRAIN + EVAL for m in row["messages"]]
    base = write_tiny_weights(write_base_model(root / "base", texts))
    return {"train": root / "train", "eval": root / "eval", "base": base}


@pytest.fixture
def make_cfg(task: dict[str, Path], tmp_path: Path) -> Callable[..., TrainConfig]:
    def make(name: str = "run", **overrides: Any) -> TrainConfig:
        values: dict[str, Any] = {
            "train_dir": str(task["train"]),
            "eval_dir": str(task["eval"]),
            "model_dir": str(task["base"]),
            "output_dir": str(tmp_path / name / "model"),
            "checkpoint_dir": str(tmp_path / name / "checkpoints"),
            "failure_file": str(tmp_path / name / "failure"),
            "max_steps": 60,
            "learning_rate": 3e-3,
            "lora_r": 8,
            "lora_alpha": 16,
            "lora_dropout": 0.0,
            "per_device_batch_size": 4,
            "gradient_accumulation_steps": 1,
            "max_seq_length": 128,
            "warmup_ratio": 0.05,
            "save_steps": 1000,
            "logging_steps": 10,
        }
        values.update(overrides)
        return TrainConfig(**values)

    return make


def exact_match(model: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> float:
    hits = 0
    for row in rows:
        prompt = tokenizer.apply_chat_template(
            row["messages"][:1], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
        answer = tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
        hits += answer.strip() == row["messages"][1]["content"]
    return hits / len(rows)


def adapter_tensors(directory: str) -> dict[str, Any]:
    from safetensors.torch import load_file

    return dict(load_file(str(Path(directory) / "adapter_model.safetensors")))


# ---------------------------------------------------------------------------------------------------------------------
# Learning


def test_learns_held_out_mapping_and_stops(make_cfg: Callable[..., TrainConfig], task: dict[str, Path]) -> None:
    # GIVEN a random tiny base and 160 examples; WHEN 60 LoRA steps run (about 10 s on 2 cores)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = make_cfg(eval_steps=30)
    summary = train.main(cfg)

    # THEN the eval loss on unseen fillers drops from the base's (~6) to under a tenth of it and under 0.2
    base_loss, final_loss = summary["final_metrics"]["base_eval_loss"], summary["final_metrics"]["eval_loss"]
    assert final_loss < 0.1 * base_loss and final_loss < 0.2, (base_loss, final_loss)
    assert summary["loss_curve"][-1]["train_loss"] < summary["loss_curve"][0]["train_loss"] / 10
    # AND greedy generation reproduces >= 90% of the held-out answers exactly (and stops), the base none
    tokenizer = AutoTokenizer.from_pretrained(cfg.output_dir)
    base = AutoModelForCausalLM.from_pretrained(cfg.model_dir)
    assert exact_match(base, tokenizer, EVAL) == 0.0
    tuned = PeftModel.from_pretrained(base, cfg.output_dir)
    assert exact_match(tuned, tokenizer, EVAL) >= 0.9


def test_the_best_checkpoint_is_handed_on_and_training_stops_when_eval_stops_improving(
    make_cfg: Callable[..., TrainConfig], task: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN an eval split that contradicts the training data (each colour answered with the next colour's code): its
    # loss falls while the model learns the answers' form, then rises as it learns the training codes
    cfg = make_cfg(eval_dir=_contradicting_eval(tmp_path), eval_steps=3, early_stopping_patience=2, save_total_limit=1)
    # WHEN it trains for at most 60 steps with early stopping
    summary = train.main(cfg)
    # THEN it stopped before the 60 steps, saying how many it saved
    early, best = summary["early_stopping"], summary["best_checkpoint"]
    assert early["stopped_early"] and early["planned_steps"] == 60
    assert early["stopped_at_step"] == summary["global_step"] < 60
    assert early["steps_saved"] == 60 - summary["global_step"]
    # AND the adapter handed on is the checkpoint with the lowest eval loss, `patience` evaluations before the stop
    trained = [point for point in summary["eval_curve"] if point["step"] > 0]
    lowest = min(trained, key=lambda point: point["eval_loss"])
    assert best["step"] == lowest["step"] == summary["global_step"] - 2 * 3
    assert best["eval_loss"] == pytest.approx(lowest["eval_loss"]) == summary["final_metrics"]["eval_loss"]
    # (the best checkpoint survived the rotation (kept: 2 at least, the newest and the best), and the adapter written
    # is that one)
    kept = adapter_tensors(str(Path(cfg.checkpoint_dir) / f"checkpoint-{best['step']}"))
    written = adapter_tensors(cfg.output_dir)
    assert kept.keys() == written.keys() and all(torch.equal(kept[k], written[k]) for k in kept)
    # AND the job printed them for SageMaker's MetricDefinitions (the Train stage's event shows them)
    printed = capsys.readouterr().out
    final = {
        d["Name"]: float(found[-1])
        for d in train.METRIC_DEFINITIONS
        if (found := re.findall(d["Regex"], printed))
        and d["Name"] in ("best_step", "best_eval_loss", "last_step", "steps_saved")
    }
    assert final == {
        "best_step": best["step"],
        "best_eval_loss": pytest.approx(best["eval_loss"]),
        "last_step": summary["global_step"],
        "steps_saved": early["steps_saved"],
    }
    assert best["beats_base"] is True and summary["final_metrics"]["base_eval_loss"] > best["eval_loss"]


def _contradicting_eval(tmp_path: Path) -> str:
    """An eval split whose answers are each the next colour's code: a model learning the training data gets its form
    right first (eval loss falls), then its codes (eval loss rises)."""
    rows = [
        {"messages": [row["messages"][0], {"role": "assistant", "content": CODES[COLOURS[(i + 1) % 8]]}]}
        for i, row in enumerate(EVAL)
    ]
    (tmp_path / "contradicting").mkdir(exist_ok=True)
    (tmp_path / "contradicting" / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(tmp_path / "contradicting")


def test_early_stopping_goes_on_where_it_was_after_a_spot_restart(
    make_cfg: Callable[..., TrainConfig], tmp_path: Path
) -> None:
    from transformers import TrainerCallback

    class SigtermAt(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if state.global_step == 4:
                os.kill(os.getpid(), signal.SIGTERM)

    common = {"eval_dir": _contradicting_eval(tmp_path), "eval_steps": 3, "early_stopping_patience": 2}
    # GIVEN an uninterrupted run with early stopping
    reference = train.main(make_cfg("reference", **common))
    assert reference["global_step"] > 5 and reference["early_stopping"]["stopped_early"]
    # WHEN another is interrupted during step 5 (a checkpoint is written at its end) and restarted
    interrupted = make_cfg("interrupted", **common)
    with pytest.raises(InterruptedError, match="SIGTERM at step 5"):
        train.main(interrupted, extra_callbacks=[SigtermAt()])
    summary = train.main(interrupted)
    # THEN it resumed there and stopped where the uninterrupted run stopped, handing on the same best checkpoint
    # (the count of evaluations without improvement was restored, the base model was not evaluated again)
    assert summary["resumed_from"] == "checkpoint-5"
    assert summary["global_step"] == reference["global_step"]
    assert summary["best_checkpoint"]["step"] == reference["best_checkpoint"]["step"]
    assert summary["final_metrics"]["base_eval_loss"] == pytest.approx(reference["final_metrics"]["base_eval_loss"])
    assert all(point["step"] > 5 for point in summary["eval_curve"])
    ours, theirs = adapter_tensors(interrupted.output_dir), adapter_tensors(make_cfg("reference").output_dir)
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-6)


def test_without_keep_best_the_last_step_is_handed_on(make_cfg: Callable[..., TrainConfig]) -> None:
    # GIVEN keep_best off; WHEN a short run evaluates on the way
    summary = train.main(make_cfg(max_steps=6, eval_steps=3, keep_best=False))
    # THEN no best checkpoint is chosen and the final eval loss is the last step's
    assert summary["best_checkpoint"] is None and summary["early_stopping"] is None
    assert summary["final_metrics"]["eval_loss"] == summary["eval_curve"][-1]["eval_loss"]
    assert summary["eval_curve"][-1]["step"] == 6


def test_loss_covers_assistant_tokens_and_end_of_turn_only(make_cfg: Callable[..., TrainConfig]) -> None:
    # GIVEN the trainer the entrypoint builds (packing, padding-free)
    trainer, context = train.build_trainer(make_cfg("mask"))
    tokenizer = context["tokenizer"]
    batch = next(iter(trainer.get_train_dataloader()))
    ids, labels = batch["input_ids"].flatten().tolist(), batch["labels"].flatten().tolist()
    # THEN the trained tokens are exactly the answers, each followed by <|im_end|>; user tokens carry -100
    trained = tokenizer.decode([i for i, label in zip(ids, labels, strict=True) if label != -100])
    answers = re.findall(r"(\w+)<\|im_end\|>", trained)
    assert trained == "".join(a + "<|im_end|>" for a in answers)
    assert set(answers) <= set(CODES.values()) and len(answers) >= 4
    ignored = tokenizer.decode([i for i, label in zip(ids, labels, strict=True) if label == -100])
    assert "<|im_start|>user" in ignored and any(colour in ignored for colour in COLOURS)
    assert trained.count("<|im_end|>") == ignored.count("<|im_start|>assistant")  # one trained end per turn


# ---------------------------------------------------------------------------------------------------------------------
# Spot interruption and resume


def test_sigterm_checkpoints_and_restart_matches_uninterrupted_run(make_cfg: Callable[..., TrainConfig]) -> None:
    from transformers import TrainerCallback

    class SigtermAt(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if state.global_step == 7:
                os.kill(os.getpid(), signal.SIGTERM)

    common = {"max_steps": 12, "save_steps": 5, "lora_dropout": 0.1, "eval_dir": "/nonexistent"}
    # GIVEN an uninterrupted run
    reference = make_cfg("reference", **common)
    train.main(reference)
    # WHEN a second run gets SIGTERM during step 8 (sent after step 7; a checkpoint exists at step 5)
    interrupted = make_cfg("interrupted", **common)
    with pytest.raises(InterruptedError, match="SIGTERM at step 8"):
        train.main(interrupted, extra_callbacks=[SigtermAt()])
    # THEN it saved a complete checkpoint at the end of step 8, and a restart resumes from it
    assert train.newest_complete_checkpoint(interrupted.checkpoint_dir) == Path(interrupted.checkpoint_dir) / (
        "checkpoint-8"
    )
    summary = train.main(interrupted)
    assert summary["resumed_from"] == "checkpoint-8" and summary["global_step"] == 12
    # AND the final adapter equals the uninterrupted one's
    ours, theirs = adapter_tensors(interrupted.output_dir), adapter_tensors(reference.output_dir)
    assert ours.keys() == theirs.keys() and ours
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-6)


def test_half_written_checkpoint_is_skipped(tmp_path: Path) -> None:
    for step, complete in ((5, True), (10, False)):
        directory = tmp_path / f"checkpoint-{step}"
        directory.mkdir()
        (directory / "trainer_state.json").write_text("{}")
        if complete:
            (directory / train.CHECKPOINT_COMPLETE).write_text(str(step))
    assert train.newest_complete_checkpoint(str(tmp_path)) == tmp_path / "checkpoint-5"
    assert train.newest_complete_checkpoint(str(tmp_path / "missing")) is None


# ---------------------------------------------------------------------------------------------------------------------
# Hyperparameters


def test_hyperparameter_strings_become_typed_values() -> None:
    parsed = train.parse_hyperparameters(
        {"lora_r": "8", "learning_rate": "2e-4", "packing": "False", "lr_scheduler_type": '"linear"', "max_steps": 5}
    )
    assert parsed == {
        "lora_r": 8,
        "learning_rate": 2e-4,
        "packing": False,
        "lr_scheduler_type": "linear",
        "max_steps": 5,
    }


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"lora_rank": "8"}, r"unknown hyperparameter\(s\) lora_rank; known: .*lora_r,"),
        ({"lora_r": "abc"}, "hyperparameter 'lora_r': expected an integer, got 'abc'"),
        ({"lora_r": "8.5"}, "hyperparameter 'lora_r': expected an integer"),
        ({"packing": "maybe"}, "hyperparameter 'packing': expected true or false"),
        ({"learning_rate": "nan"}, "hyperparameter 'learning_rate': expected a number"),
        ({"train_dir": "/x"}, "unknown hyperparameter"),  # paths come from the SageMaker contract
    ],
)
def test_bad_hyperparameters_name_the_key(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        train.parse_hyperparameters(values)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lora_r": 0}, "lora_r must be > 0, got 0"),
        ({"lora_alpha": -1}, "lora_alpha must be > 0"),
        ({"lora_dropout": 1.0}, r"lora_dropout must be in \[0, 1\)"),
        ({"learning_rate": 0.0}, "learning_rate must be > 0"),
        ({"num_train_epochs": 0.0}, "num_train_epochs must be > 0"),
        ({"max_steps": 0}, "max_steps must be > 0 or -1"),
        ({"early_stopping_patience": 2, "keep_best": False}, "early_stopping_patience must be 0 unless keep_best"),
        ({"early_stopping_patience": -1}, "early_stopping_patience must be >= 0"),
        ({"precision": "int8"}, "precision must be one of"),
        ({"liger_kernels": "yes please"}, "liger_kernels must be one of auto, true, false"),
        ({"gradient_checkpointing": "sometimes"}, "gradient_checkpointing must be one of auto, true, false"),
        (
            {"attn_implementation": "torch_varlen", "packing": False, "padding_free": False},
            "torch_varlen needs padding-free batches: set packing=true or padding_free=true",
        ),
    ],
)
def test_config_checks(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**overrides)


@pytest.mark.skipif(torch.cuda.is_available(), reason="QLoRA is refused only without a GPU")
def test_qlora_on_cpu_is_refused() -> None:
    with pytest.raises(ConfigError, match="qlora=true needs a CUDA GPU"):
        TrainConfig(qlora=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="Liger is refused only without a GPU")
def test_liger_on_cpu_is_refused_and_auto_leaves_it_off() -> None:
    # GIVEN no GPU WHEN Liger's kernels are asked for THEN the config says why it cannot use them
    with pytest.raises(ConfigError, match="liger_kernels=true needs a CUDA GPU"):
        TrainConfig(liger_kernels="true")
    # AND auto (the default) trains without them, as does false
    assert not train.use_liger(TrainConfig(), cuda=False)
    assert not train.use_liger(TrainConfig(liger_kernels="false"), cuda=True)
    # AND so are torch's FlashAttention kernels, asked for by name
    with pytest.raises(ConfigError, match="torch_varlen needs a CUDA GPU"):
        TrainConfig(attn_implementation="torch_varlen")


def _tiny_lora_base() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4
    )
    return LlamaForCausalLM(config)


def test_auto_gradient_checkpointing_on_a_cpu_follows_qlora_and_an_explicit_choice_wins() -> None:
    # GIVEN the default gradient_checkpointing=auto, settled for a model (here without a GPU to fit)
    def settled(cfg: TrainConfig) -> bool:
        train.resolve_batch(cfg, _tiny_lora_base(), cuda=False)
        return {"true": True, "false": False}[cfg.gradient_checkpointing]

    cfg = TrainConfig()
    # THEN full-precision LoRA trains without recomputation (speed), QLoRA with it (it is chosen for memory)
    assert not settled(cfg)
    cfg = TrainConfig()
    cfg.qlora = True  # set after construction: QLoRA itself is refused on this CPU
    assert settled(cfg)
    # AND an explicit choice wins either way, booleans from Python callers included
    explicit_off = TrainConfig(gradient_checkpointing="false")
    explicit_off.qlora = True
    assert not settled(explicit_off)
    assert settled(TrainConfig(gradient_checkpointing=True))  # type: ignore[arg-type]


def test_every_sidecar_training_setting_reaches_the_container() -> None:
    # GIVEN a sidecar's training section with every setting set
    from tuneplane.models.pipeline import TrainingOverrides

    overrides = TrainingOverrides(
        num_train_epochs=2,
        max_steps=10,
        learning_rate=1e-4,
        lora_r=8,
        lora_alpha=16,
        lora_dropout=0.1,
        per_device_batch_size=2,
        gradient_accumulation_steps=2,
        max_seq_length=512,
        warmup_ratio=0.1,
        qlora=False,
        gradient_checkpointing=True,
        seed=7,
        save_steps=5,
        logging_steps=5,
        keep_best=False,
        early_stopping_patience=0,
    )
    assert set(overrides.model_fields_set) == set(TrainingOverrides.model_fields) - {"instance_types"}
    # WHEN the container parses the hyperparameters the Train stage sends
    cfg = TrainConfig(**train.parse_hyperparameters(overrides.hyperparameters()))  # type: ignore[arg-type]
    # THEN each arrives with its value
    assert (cfg.lora_r, cfg.lora_dropout, cfg.per_device_batch_size, cfg.max_seq_length) == (8, 0.1, 2, 512)
    assert cfg.gradient_checkpointing == "true" and not cfg.qlora and cfg.seed == 7
    assert cfg.keep_best is False and cfg.early_stopping_patience == 0


def test_attention_choice() -> None:
    # GIVEN the default attn_implementation=auto
    config = types.SimpleNamespace(sliding_window=None)
    # WHEN there is no GPU THEN sdpa; WHEN the user names one THEN that one
    assert train.choose_attention(TrainConfig(), cuda=False, model_config=config) == "sdpa"
    assert train.choose_attention(TrainConfig(attn_implementation="eager"), cuda=True, model_config=config) == "eager"
    # AND padded batches never get the padding-free kernels, even on a GPU
    padded = TrainConfig(packing=False, padding_free=False)
    assert train.choose_attention(padded, cuda=True, model_config=config) in ("sdpa", "flash_attention_2")


def test_half_precision_turns_peft_input_casts_off() -> None:
    # GIVEN a PEFT LoRA model (fp32 adapter weights, input casts on by default)
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_tiny_lora_base(), LoraConfig(r=2, target_modules="all-linear"))
    lora_layers = [m for m in model.modules() if hasattr(m, "cast_input_dtype_enabled")]
    assert len(lora_layers) == 7 and all(m.cast_input_dtype_enabled for m in lora_layers)
    # WHEN the container prepares it for bf16/fp16 autocast THEN every LoRA layer keeps its input's dtype
    train.keep_lora_inputs_in_half_precision(model)
    assert not any(m.cast_input_dtype_enabled for m in lora_layers)
    # AND the adapter weights stay fp32 (the optimizer's master copy)
    assert {p.dtype for n, p in model.named_parameters() if "lora_" in n} == {torch.float32}


def sagemaker_env(root: Path, task: dict[str, Path] | None = None) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.update(
        {
            "SM_MODEL_DIR": str(root / "model"),
            "TUNEPLANE_CHECKPOINT_DIR": str(root / "checkpoints"),
            "TUNEPLANE_FAILURE_FILE": str(root / "output" / "failure"),
            "TUNEPLANE_HYPERPARAMETERS": str(root / "config" / "hyperparameters.json"),
        }
    )
    if task:
        env.update({"SM_CHANNEL_TRAIN": str(task["train"]), "SM_CHANNEL_EVAL": str(task["eval"])})
        env["SM_CHANNEL_MODEL"] = str(task["base"])
    return env


def run_entrypoint(
    root: Path, hyperparameters: dict[str, str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    (root / "config").mkdir(parents=True, exist_ok=True)
    (root / "config" / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    return subprocess.run(
        [sys.executable, str(ENTRYPOINT), "train"], env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.parametrize(
    ("hyperparameters", "reason"),
    [
        ({"lora_r": "0"}, "invalid hyperparameters: lora_r must be > 0, got 0"),
        ({"epochs": "3"}, "invalid hyperparameters: unknown hyperparameter(s) epochs; known: "),
        ({"qlora": "true"}, "invalid hyperparameters: qlora=true needs a CUDA GPU"),
    ],
)
def test_entrypoint_writes_failure_file_and_exits_non_zero(
    tmp_path: Path, hyperparameters: dict[str, str], reason: str
) -> None:
    if "qlora" in hyperparameters and torch.cuda.is_available():
        pytest.skip("QLoRA is refused only without a GPU")
    result = run_entrypoint(tmp_path, hyperparameters, sagemaker_env(tmp_path))
    assert result.returncode == 2, result.stderr
    failure = (tmp_path / "output" / "failure").read_text()
    assert failure.startswith(reason) and failure.count("\n") == 1


def test_failure_reason_for_cuda_oom_says_what_to_lower() -> None:
    class OutOfMemoryError(RuntimeError):
        pass

    cfg = TrainConfig(max_seq_length=4096, per_device_batch_size=8)
    reason = train.failure_reason(OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), cfg)
    assert reason.startswith(
        "CUDA out of memory at seq len 4096, batch 8: lower per_device_batch_size or max_seq_length"
    )


def test_nan_loss_stops_with_a_clear_message() -> None:
    with pytest.raises(train.NonFiniteLossError, match="train loss became nan at step 3: lower learning_rate"):
        train._metric_fields({"loss": float("nan")}, 3)


# ---------------------------------------------------------------------------------------------------------------------
# The SageMaker contract, end to end in a subprocess


def test_sagemaker_contract(tmp_path: Path, task: dict[str, Path]) -> None:
    # GIVEN SM_* channels, a hyperparameters file of strings; WHEN SageMaker runs `train.py train`
    hyperparameters = {"max_steps": "12", "learning_rate": "0.003", "lora_r": "4", "max_seq_length": "128"}
    hyperparameters |= {
        "logging_steps": "4",
        "save_steps": "6",
        "eval_steps": "6",
        "early_stopping_patience": "5",  # prints steps_saved too (0 here)
    }  # the batch is left to auto
    result = run_entrypoint(tmp_path, hyperparameters, sagemaker_env(tmp_path, task))
    assert result.returncode == 0, result.stderr[-3000:]
    # THEN the model dir has the adapter, the tokenizer with its chat template, and the summary
    model = tmp_path / "model"
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "chat_template.jinja"):
        assert (model / name).is_file(), name
    assert not list(model.glob("*.bin"))
    assert json.loads((model / "adapter_config.json").read_text())["r"] == 4
    summary = json.loads((model / "training_summary.json").read_text())
    assert summary["global_step"] == 12 and summary["tokens_seen"] > 0 and summary["wall_time_s"] > 0
    assert summary["config"]["lora_r"] == 4 and len(summary["loss_curve"]) == 3
    # AND the auto batch was settled and recorded: on a CPU, 4 rows at once, no recomputation
    config = summary["config"]
    assert (config["per_device_batch_size"], config["gradient_accumulation_steps"]) == (4, 1)
    assert summary["batch_plan"].startswith("4 row(s) x 1 micro-batch(es), gradient checkpointing off")
    assert summary["final_metrics"]["eval_loss"] < summary["final_metrics"]["base_eval_loss"]
    assert summary["peak_memory_gb"] > 0
    # AND checkpoints went to the checkpoint dir, and no failure file was written
    assert train.newest_complete_checkpoint(str(tmp_path / "checkpoints")) is not None
    assert not (tmp_path / "output" / "failure").exists()
    # AND every MetricDefinitions regex finds its metric in the log
    for definition in train.METRIC_DEFINITIONS:
        if definition["Name"] == "grad_norm":
            continue
        values = re.findall(definition["Regex"], result.stdout)
        assert values, definition["Name"]
        assert all(float(v) == float(v) for v in values)  # parseable, not NaN


def test_entrypoint_trains_on_lines_that_str_splitlines_would_cut(tmp_path: Path, task: dict[str, Path]) -> None:
    # GIVEN channels whose records hold U+2028, U+2029 and U+0085 raw in strings and CR between tokens, with CRLF
    # endings and a BOM: JSON lines the validator accepts, which str.splitlines() cut in two (issue 15)
    breaks = ["\u2028", "\u2029", "\x85", "\r", "\x0b", "\x1c"]
    channels = dict(task)
    for name, rows in (("train", TRAIN[:12]), ("eval", EVAL[:4])):
        channels[name] = tmp_path / "channels" / name
        channels[name].mkdir(parents=True)
        lines = []
        for index, row in enumerate(rows):
            user, answer = row["messages"]
            content = user["content"].replace(" ", breaks[index % len(breaks)], 1)
            record = {"messages": [{**user, "content": content}, answer]}
            lines.append(json.dumps(record, ensure_ascii=False, separators=(",\r", ":")).encode())
        (channels[name] / f"{name}.jsonl").write_bytes(b"\xef\xbb\xbf" + b"".join(line + b"\r\n" for line in lines))
    # WHEN SageMaker runs `train.py train` for one step
    hyperparameters = {"max_steps": "1", "lora_r": "4", "max_seq_length": "128", "logging_steps": "1"}
    result = run_entrypoint(tmp_path, hyperparameters, sagemaker_env(tmp_path, channels))
    # THEN it trains on every example of each channel, whole
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "model" / "training_summary.json").read_text())
    assert (summary["train_examples"], summary["eval_examples"], summary["global_step"]) == (12, 4, 1)
    assert train.read_chat_rows(str(channels["train"]))[0]["messages"][0]["content"] == (
        TRAIN[0]["messages"][0]["content"].replace(" ", "\u2028", 1)
    )


def test_gpu_benchmark_smoke_runs_on_cpu() -> None:
    bench = Path(__file__).resolve().parents[2] / "bench" / "train_gpu.py"
    result = subprocess.run(
        [sys.executable, str(bench), "--model-size", "tiny", "--steps", "2", "--seq-len", "256"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"ratio \d+\.\d+x", result.stdout)


def test_help_lists_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN the entrypoint WHEN asked for --help THEN it prints every config field (help texts hold "%" signs)
    from containers.train.train import TrainConfig, load_config

    with pytest.raises(SystemExit) as raised:
        load_config(["--help"])
    assert raised.value.code == 0
    out = capsys.readouterr().out
    assert all(f"--{field.name}" in out for field in dataclasses.fields(TrainConfig))
