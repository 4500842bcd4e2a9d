"""The evaluate container's entrypoint: the chart and the options, then end-to-end runs on CPU, offline, with a tiny
random Llama-style model as both candidate and base (the metrics, graders.json and the gate: test_graders.py)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from containers.evaluate import charts, evaluate, generation
from containers.evaluate.evaluate import ConfigError, EvaluateConfig
from tests.containers.tiny_adapters import make_adapter

ENTRYPOINT = Path(evaluate.__file__)
EVAL = [
    {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": f"say {word} twice"},
            {"role": "assistant", "content": f"{word} {word}"},
        ]
    }
    for word in ("red", "green", "blue", "yellow", "black")
]
TEXTS = [m["content"] for row in EVAL for m in row["messages"]]


# ---------------------------------------------------------------------------------------------------------------------
# Chart and config (the metrics and the gate: test_graders.py)


def test_png_writer_writes_a_valid_png(tmp_path: Path) -> None:
    metrics = {"candidate": {"exact_match": 0.8}, "base": {"exact_match": 0.2}, "production": {"exact_match": 0.5}}
    legend = charts.bar_chart(tmp_path / "c.png", metrics, ["exact_match"])
    data = (tmp_path / "c.png").read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82")
    assert legend["bars_in_each_group"] == ["candidate", "base", "production"]


def test_config_checks_and_parsing() -> None:
    with pytest.raises(ConfigError, match="primary_metric"):
        EvaluateConfig(primary_metric="bleu")
    cfg = evaluate.load_config(["--max_new_tokens", "7", "--min_improvement_over_base=-inf"])
    assert cfg.max_new_tokens == 7 and cfg.min_improvement_over_base == -math.inf
    assert evaluate.load_config(["--min_improvement_over_base", "-0.05"]).min_improvement_over_base == -0.05


# ---------------------------------------------------------------------------------------------------------------------
# End to end on a tiny model


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("torch")
    from local.tiny_model import write_base_model, write_tiny_weights

    root = tmp_path_factory.mktemp("evaluate-task")
    (root / "eval").mkdir()
    (root / "eval" / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in EVAL))
    base = write_tiny_weights(write_base_model(root / "base", TEXTS, hidden_size=64, num_layers=2))
    return {"eval": root / "eval", "base": base}


def _args(task: dict[str, Path], tmp_path: Path, **overrides: str) -> list[str]:
    values = {
        "candidate_dir": str(task["base"]),
        "base_dir": str(task["base"]),
        "production_dir": "",
        "eval_dir": str(task["eval"]),
        "graders_file": "",  # not SageMaker's default paths: no graders.json unless a test writes one
        "graders_dir": "",
        "regression_dir": "",  # no regression set unless a test writes one
        "adapter_dir": "",  # the candidate is candidate_dir unless a test gives an adapter (ServeMode=lora)
        "output_dir": str(tmp_path / "evaluation"),
        "failure_file": str(tmp_path / "failure"),
        "max_new_tokens": "8",
        "batch_size": "2",
        "min_stop_rate": "0",
        "worst_examples": "3",
        "device": "cpu",
        **overrides,
    }
    return [part for name, value in values.items() for part in (f"--{name}", value)]


def _answers(model_dir: Path, prompts: list[Any], max_new_tokens: int = 8, batch_size: int = 2) -> dict[str, Any]:
    """What the job's generate call gives for ``prompts`` on the CPU in fp32."""
    return generation.generate(
        model_dir, prompts, EvaluateConfig(max_new_tokens=max_new_tokens, batch_size=batch_size), "cpu", "float32"
    )


@pytest.mark.slow
def test_same_model_as_candidate_and_base_gives_zero_deltas(task: dict[str, Path], tmp_path: Path) -> None:
    # WHEN the same tiny random model is evaluated as candidate and base (and production)
    assert evaluate.run(_args(task, tmp_path, production_dir=str(task["base"]))) == 0
    # THEN the report and the chart are written, the metrics are equal and the gate passes
    out = tmp_path / "evaluation"
    report = json.loads((out / "evaluation.json").read_text())
    assert (out / "evaluation.png").read_bytes().startswith(b"\x89PNG")
    assert set(report["metrics"]) == {"candidate", "base", "production"}
    assert report["metrics"]["candidate"] == report["metrics"]["base"] == report["metrics"]["production"]
    assert all(v == 0 for v in report["delta_vs_base"].values())
    assert all(v == 0 for v in report["delta_vs_production"].values())
    assert report["passed"] is True and report["reasons"] == []
    candidate = report["metrics"]["candidate"]
    assert 0.0 <= candidate["stop_rate"] <= 1.0
    assert 0.0 <= candidate["mean_generated_tokens"] <= 8
    assert report["examples"] == len(EVAL) and len(report["worst_examples"]) == 3
    worst = report["worst_examples"][0]
    assert worst["reference"] in {row["messages"][-1]["content"] for row in EVAL}
    assert worst["prompt"][-1]["role"] == "user"
    assert isinstance(worst["candidate"]["answer"], str)
    assert not (tmp_path / "failure").exists()
    # and without a regression set: no regression metric, section, rule or answers file
    assert report["regression"] is None and not (out / "regression_answers.jsonl").exists()
    assert "regression_pass_rate" not in candidate
    assert "regression_pass_rate" not in report["chart"]["groups_left_to_right"]


@pytest.mark.slow
def test_untrained_model_fails_the_gate_with_reasons(task: dict[str, Path], tmp_path: Path) -> None:
    # GIVEN a min score the random model cannot reach and a strict stop rate; WHEN evaluated
    assert evaluate.run(_args(task, tmp_path, min_score="0.5", min_stop_rate="1", max_examples="2")) == 0
    # THEN the job succeeds (it only computes the flag) and the report says why the candidate failed
    report = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    assert report["passed"] is False
    assert any("below the minimum score" in r for r in report["reasons"])
    if report["metrics"]["candidate"]["stop_rate"] < 1:
        assert any("EOS problem" in r for r in report["reasons"])


LABELS = ["red", "green", "blue"]


@pytest.mark.slow
def test_graders_json_adds_classification_pattern_and_thresholds(task: dict[str, Path], tmp_path: Path) -> None:
    # GIVEN a classification eval split (each colour twice: the answer is one word), and graders.json with explicit
    # labels (one reference in upper case), a pattern, macro-F1 as the primary metric and an accuracy threshold of 1
    rows = [
        [{"role": "user", "content": f"say {word} once"}, {"role": "assistant", "content": word}]
        for word in LABELS * 2
    ]
    rows[3][1]["content"] = "RED"
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "eval.jsonl").write_text("".join(json.dumps({"messages": r}) + "\n" for r in rows))
    pattern = {"regex": "^[a-z]", "must_not_contain": ["im_start"]}
    graders_json = {
        "classification": {"labels": LABELS},
        "pattern": pattern,
        "thresholds": {"classification_accuracy": 1.0, "pattern_pass_rate": 0.0},
        "primary_metric": "classification_macro_f1",
    }
    (tmp_path / "graders.json").write_text(json.dumps(graders_json))
    # WHEN the untrained tiny model is evaluated as candidate and base
    args = _args(task, tmp_path, eval_dir=str(tmp_path / "eval"), graders_file=str(tmp_path / "graders.json"))
    assert evaluate.run([*args, "--max_new_tokens", "4", "--batch_size", "6"]) == 0
    out = tmp_path / "evaluation"
    report = json.loads((out / "evaluation.json").read_text())
    lines = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]

    # THEN answers.jsonl has one line per example, in eval order, with every model's answer, stop flag and scores
    assert [line["index"] for line in lines] == list(range(len(rows)))
    assert [line["reference"] for line in lines] == [r[1]["content"] for r in rows]
    assert all(line["prompt"] == rows[i][:1] for i, line in enumerate(lines))
    assert all(
        set(line["answers"]) == set(line["stopped"]) == set(line["scores"]) == {"candidate", "base"} for line in lines
    )
    worst = report["worst_examples"][0]
    assert lines[worst["index"]]["answers"]["candidate"] == worst["candidate"]["answer"]

    # and each confusion matrix counts what the answers imply (rows: reference, columns: answer or "(other)")
    keys = [*LABELS, "(other)"]
    section = report["graders"]
    assert section["classification"]["labels"] == LABELS and section["classification"]["automatic"] is False
    for model in ("candidate", "base"):
        expected = [[0] * len(keys) for _ in keys]
        for line in lines:
            answer = line["answers"][model].strip().casefold()
            expected[keys.index(line["reference"].casefold())][keys.index(answer) if answer in LABELS else 3] += 1
        assert section["classification"]["confusion_matrix"][model] == {"labels": keys, "matrix": expected}
        hits = sum(expected[i][i] for i in range(len(LABELS)))
        assert report["metrics"][model]["classification_accuracy"] == pytest.approx(hits / len(rows))
    assert section["pattern"] == pattern and section["json"] is None

    # and the pattern scores of each answer are the checks of its stripped text
    for line in lines:
        text = line["answers"]["candidate"].strip()
        regex, clean = re.search("^[a-z]", text) is not None, "im_start" not in text
        scores = line["scores"]["candidate"]
        assert (scores["pattern_regex"], scores["pattern_must_not_contain"]) == (float(regex), float(clean))
        assert scores["pattern_pass_rate"] == float(regex and clean)

    # and the gate: macro-F1 is the primary metric, the accuracy threshold fails with its shortfall
    assert report["primary_metric"] == "classification_macro_f1"
    assert report["thresholds"]["metrics"] == graders_json["thresholds"]
    accuracy = report["metrics"]["candidate"]["classification_accuracy"]
    assert accuracy < 1.0  # an untrained model does not name every colour
    assert report["passed"] is False
    assert report["reasons"] == [
        f"candidate classification_accuracy {accuracy:.4f} is below its threshold 1.0000 (short by {1 - accuracy:.4f})"
    ]
    assert "classification_macro_f1" in report["chart"]["groups_left_to_right"]
    assert "pattern_pass_rate" in report["chart"]["groups_left_to_right"]


def test_a_threshold_on_a_metric_not_computed_fails_before_any_model_loads(
    task: dict[str, Path], tmp_path: Path
) -> None:
    # GIVEN free-text references (no classification) and a threshold on classification accuracy, in the graders
    # input's folder as the control plane mounts it (--graders_dir; --graders_file names no file)
    (tmp_path / "graders").mkdir()
    (tmp_path / "graders" / "graders.json").write_text(json.dumps({"thresholds": {"classification_accuracy": 0.5}}))
    # WHEN evaluated with a candidate that is not a model at all (its config.json is enough to pass the path check)
    fake = tmp_path / "fake-model"
    fake.mkdir()
    (fake / "config.json").write_text("{}")
    (fake / "model.safetensors").write_bytes(b"not weights")
    args = _args(task, tmp_path, candidate_dir=str(fake), graders_dir=str(tmp_path / "graders"))
    # THEN a config error (exit 2) naming what is computed, and the fake model was never loaded
    assert evaluate.run(args) == 2
    reason = (tmp_path / "failure").read_text()
    assert "threshold classification_accuracy: not computed; computed: exact_match, token_f1, rouge_l" in reason


@pytest.mark.slow
def test_batching_with_left_padding_gives_the_same_answers(task: dict[str, Path]) -> None:
    # GIVEN prompts of different lengths (one without the system message); WHEN generated one by one and batched
    prompts, _ = evaluate.read_eval(str(task["eval"]), 0)
    prompts[0] = prompts[0][1:]
    one = generation.generate(task["base"], prompts, EvaluateConfig(max_new_tokens=6, batch_size=1), "cpu", "float32")
    batched = generation.generate(
        task["base"], prompts, EvaluateConfig(max_new_tokens=6, batch_size=len(prompts)), "cpu", "float32"
    )
    # THEN the answers, lengths and stop flags are the same
    assert batched["answers"] == one["answers"]
    assert batched["lengths"] == one["lengths"] and batched["stopped"] == one["stopped"]


@pytest.mark.slow
def test_a_batch_that_runs_out_of_memory_is_split_and_answers_the_same(
    task: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a model whose generate runs out of CUDA memory on more than two rows (the memory estimate was short)
    import torch
    from transformers import GenerationMixin

    real_generate = GenerationMixin.generate
    widths: list[int] = []

    def short_of_memory(self: Any, *args: Any, **kwargs: Any) -> Any:
        widths.append(len(kwargs["input_ids"]))
        if len(kwargs["input_ids"]) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_generate(self, *args, **kwargs)

    prompts, _ = evaluate.read_eval(str(task["eval"]), 0)
    two_at_a_time = generation.generate(
        task["base"], prompts, EvaluateConfig(max_new_tokens=6, batch_size=2), "cpu", "float32"
    )
    monkeypatch.setattr(GenerationMixin, "generate", short_of_memory)
    # WHEN the job plans all five prompts as one batch
    result = generation.generate(
        task["base"], prompts, EvaluateConfig(max_new_tokens=6, batch_size=5), "cpu", "float32"
    )
    # THEN the batch was halved until it fit (5 -> 2 + 3 -> 2 + 1 + 2) and every prompt got the answer it gets anyway
    assert widths == [5, 2, 3, 1, 2]
    assert result["split_batches"] == 2 and result["batches"] == 1 and result["largest_batch"] == 5
    assert result["answers"] == two_at_a_time["answers"] and result["stopped"] == two_at_a_time["stopped"]


@pytest.mark.slow
def test_out_of_memory_on_one_prompt_still_fails_the_job(
    task: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a model that runs out of memory even on a single prompt
    import torch
    from transformers import GenerationMixin

    def never_fits(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(GenerationMixin, "generate", never_fits)
    prompts, _ = evaluate.read_eval(str(task["eval"]), 0)
    # WHEN generated; THEN the out-of-memory error is raised (the job's failure says what to do), not swallowed
    with pytest.raises(torch.cuda.OutOfMemoryError):
        generation.generate(
            task["base"], prompts[:2], EvaluateConfig(max_new_tokens=4, batch_size=2), "cpu", "float32"
        )


@pytest.fixture(scope="module")
def lora(task: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A LoRA adapter on the tiny base, uploaded as the training job leaves it (model.tar.gz), and the model PEFT's
    merge_and_unload makes of the two (what ServeMode=merged would serve)."""
    import tarfile

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("lora")
    adapter = make_adapter(task["base"], root / "adapter", std=0.5)
    (root / "upload").mkdir()
    with tarfile.open(root / "upload" / "model.tar.gz", "w:gz") as tar:
        for file in adapter.iterdir():
            tar.add(file, arcname=file.name)
    merged = root / "merged"
    shutil.copytree(task["base"], merged, ignore=shutil.ignore_patterns("*.safetensors"))
    base = AutoModelForCausalLM.from_pretrained(task["base"])
    PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().save_pretrained(merged)
    return {"adapter": adapter, "upload": root / "upload", "merged": merged}


@pytest.mark.slow
def test_serve_mode_lora_evaluates_the_base_with_the_adapter_unmerged(
    task: dict[str, Path], lora: dict[str, Path], tmp_path: Path
) -> None:
    # GIVEN the run's adapter as the training job uploaded it, and no candidate model input (ServeMode=lora)
    args = _args(task, tmp_path, candidate_dir=str(tmp_path / "no-candidate"), adapter_dir=str(lora["upload"]))
    # WHEN evaluated
    assert evaluate.run(args) == 0, (tmp_path / "failure").read_text()
    report = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    answers = [json.loads(line) for line in (tmp_path / "evaluation" / "answers.jsonl").read_text().splitlines()]
    # THEN the candidate is the base with the adapter applied (PEFT's layers, not a merged copy), through transformers
    candidate = report["models"]["candidate"]
    assert candidate["path"] == str(task["base"]) and candidate["adapter"] and candidate["engine"] == "transformers"
    assert report["models"]["base"]["adapter"] is None
    # and it answers as the merged model does (fp32: merging changes no greedy token here), unlike the bare base
    merged = _answers(lora["merged"], evaluate.read_eval(str(task["eval"]), 0)[0])
    candidate_answers = [row["answers"]["candidate"] for row in answers]
    assert candidate_answers == merged["answers"]
    assert candidate_answers != [row["answers"]["base"] for row in answers]


@pytest.mark.slow
def test_an_adapter_input_without_an_adapter_is_a_clear_failure(task: dict[str, Path], tmp_path: Path) -> None:
    # GIVEN an adapter input holding something else than a LoRA adapter
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "notes.txt").write_text("not an adapter")
    # WHEN evaluated; THEN the job fails, naming the input and the missing file
    assert evaluate.run(_args(task, tmp_path, adapter_dir=str(tmp_path / "adapter"))) == 1
    reason = (tmp_path / "failure").read_text()
    assert "no LoRA adapter in" in reason and "adapter_config.json missing" in reason


@pytest.mark.slow
def test_bad_input_path_writes_the_failure_file(task: dict[str, Path], tmp_path: Path) -> None:
    # WHEN the entrypoint runs as SageMaker would (a process) with a missing candidate
    result = subprocess.run(
        [sys.executable, str(ENTRYPOINT), *_args(task, tmp_path, candidate_dir=str(tmp_path / "missing"))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    # THEN non-zero exit and one clear line in the failure file
    assert result.returncode == 1
    reason = (tmp_path / "failure").read_text()
    assert "no candidate model" in reason and "missing" in reason
    assert not (tmp_path / "evaluation" / "evaluation.json").exists()


def test_bad_option_exits_2_with_the_reason(tmp_path: Path) -> None:
    assert evaluate.run(["--batch_size", "-1", "--failure_file", str(tmp_path / "failure")]) == 2
    assert "batch_size must be >= 0" in (tmp_path / "failure").read_text()


# ---------------------------------------------------------------------------------------------------------------------
# The regression set (parsing, expectations and the drop rule: test_regression.py)


@pytest.fixture(scope="module")
def other_model(task: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with other random weights: a candidate whose answers differ from the base's."""
    from local.tiny_model import write_tiny_weights

    directory = tmp_path_factory.mktemp("other-model") / "model"
    shutil.copytree(task["base"], directory)
    return write_tiny_weights(directory, seed=1)


@pytest.mark.slow
def test_a_quantized_candidate_that_loses_too_much_fails_the_gate_in_the_graders_terms(
    task: dict[str, Path], other_model: Path, tmp_path: Path
) -> None:
    # GIVEN an eval split whose references are what the unquantized model answers (it scores exact match 1.0), and a
    # "quantized" candidate that answers otherwise (the tiny model with other weights)
    prompts, _ = evaluate.read_eval(str(task["eval"]), 0)
    references = _answers(task["base"], prompts)["answers"]
    (tmp_path / "eval").mkdir()
    rows = [
        {"messages": [*prompt, {"role": "assistant", "content": ref}]}
        for prompt, ref in zip(prompts, references, strict=True)
    ]
    (tmp_path / "eval" / "eval.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = _args(
        task,
        tmp_path,
        candidate_dir=str(other_model),
        unquantized_dir=str(task["base"]),
        eval_dir=str(tmp_path / "eval"),
        max_new_tokens="8",
    )
    # WHEN evaluated with the stack's MaxQuantizationDrop
    assert evaluate.run([*args, "--min_improvement_over_base=-inf", "--max_quantization_drop", "0.05"]) == 0, (
        tmp_path / "failure"
    ).read_text()
    report = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    # THEN the gate fails, saying what quantization cost on the primary metric, and what to do
    metrics = report["metrics"]
    assert metrics["unquantized"]["exact_match"] == 1.0 and metrics["candidate"]["exact_match"] < 0.95
    lost = 1.0 - metrics["candidate"]["exact_match"]
    assert report["passed"] is False and report["thresholds"]["max_quantization_drop"] == 0.05
    quantized = metrics["candidate"]["exact_match"]
    [reason] = [r for r in report["reasons"] if r.startswith("quantization lost")]
    assert f"{lost:.4f} of exact_match (1.0000 unquantized -> {quantized:.4f} quantized)" in reason
    assert reason.endswith(
        ": more than max_quantization_drop 0.05; serve the merged model (QuantizeEnabled=false) or raise "
        "MaxQuantizationDrop"
    )
    # AND a primary metric quantization does not hurt (the dataset's choice) does not hide the loss
    assert evaluate.run([*args, "--primary_metric", "stop_rate", "--min_improvement_over_base=-inf"]) == 0
    report = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    assert report["passed"] is False
    assert any(f"{lost:.4f} of exact_match" in r for r in report["reasons"] if r.startswith("quantization lost"))
    # AND with the rule off (inf) that reason is gone while the cost is still said
    assert evaluate.run([*args, "--min_improvement_over_base=-inf", "--max_quantization_drop", "inf"]) == 0
    report = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    assert not any(reason.startswith("quantization lost") for reason in report["reasons"])
    assert report["quantization"]["lost"]["exact_match"] == pytest.approx(lost)


REGRESSION_PROMPTS = {
    "free": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say red twice"}],
    "a_general:2": [{"role": "user", "content": "name a colour"}],
    "kept-1": [{"role": "user", "content": "say hi"}],
    "kept-2": [{"role": "user", "content": "say blue once"}],
    "stops": [{"role": "user", "content": "stop now"}],
}


@pytest.mark.slow
def test_regression_set_scores_every_model_and_gates_what_the_candidate_lost(
    task: dict[str, Path], other_model: Path, tmp_path: Path
) -> None:
    # GIVEN what base and candidate answer (the eval split plus the regression prompts, generated as the job does)
    eval_prompts, _ = evaluate.read_eval(str(task["eval"]), 0)
    all_prompts = eval_prompts + list(REGRESSION_PROMPTS.values())
    seen = {
        "base": _answers(task["base"], all_prompts),
        "candidate": _answers(other_model, all_prompts),
    }
    kept = {name: seen["base"]["answers"][len(eval_prompts) + i].strip() for i, name in ((2, "kept-1"), (3, "kept-2"))}
    candidate_kept = [seen["candidate"]["answers"][len(eval_prompts) + i].strip() for i in (2, 3)]
    assert all(kept[name] != answer for name, answer in zip(kept, candidate_kept, strict=True))
    # and a regression set in two files (plus a file that is not *.jsonl): a prompt every answer passes, one no answer
    # passes (default id), two only the base's exact answers pass, one that must stop
    expects: dict[str, dict[str, Any]] = {
        "free": {"max_words": 100000},
        "a_general:2": {"must_contain": ["\u2603 never said"]},
        "kept-1": {"regex": "\\A" + re.escape(kept["kept-1"]) + "\\Z"},
        "kept-2": {"regex": "\\A" + re.escape(kept["kept-2"]) + "\\Z"},
        "stops": {"stops": True},
    }

    def line(name: str, with_id: bool = True) -> str:
        record = {"id": name} if with_id else {}
        return json.dumps(record | {"messages": REGRESSION_PROMPTS[name], "expect": expects[name]}) + "\n"

    folder = tmp_path / "regression"
    folder.mkdir()
    (folder / "b_more.jsonl").write_text(line("kept-2") + line("stops"))
    (folder / "a_general.jsonl").write_text(line("free") + line("a_general:2", with_id=False) + "\n" + line("kept-1"))
    (folder / "README.md").write_text("not read")

    # WHEN the candidate is evaluated against the base with that set, allowing a drop of 0.15
    args = _args(
        task, tmp_path, candidate_dir=str(other_model), regression_dir=str(folder), max_regression_drop="0.15"
    )
    assert evaluate.run(args) == 0
    out = tmp_path / "evaluation"
    report = json.loads((out / "evaluation.json").read_text())
    lines = [json.loads(text) for text in (out / "regression_answers.jsonl").read_text().splitlines()]

    # THEN regression_answers.jsonl has every prompt in set order with the answers the models give it, the eval
    # split's answers are still its own, and each verdict follows from the answer
    ids = list(REGRESSION_PROMPTS)
    assert [record["id"] for record in lines] == ids
    assert [record["messages"] for record in lines] == list(REGRESSION_PROMPTS.values())
    assert [record["expect"] for record in lines] == [expects[name] for name in ids]
    answers = [json.loads(text) for text in (out / "answers.jsonl").read_text().splitlines()]
    for model, result in seen.items():
        assert [record["answers"][model] for record in lines] == result["answers"][len(eval_prompts) :]
        assert [record["stopped"][model] for record in lines] == result["stopped"][len(eval_prompts) :]
        assert [record["answers"][model] for record in answers] == result["answers"][: len(eval_prompts)]
    by_id = {record["id"]: record for record in lines}
    for model in ("candidate", "base"):
        assert by_id["free"]["passed"][model] is True and by_id["free"]["failed"][model] == []
        assert by_id["a_general:2"]["failed"][model] == ["must_contain"]
        assert by_id["stops"]["passed"][model] is by_id["stops"]["stopped"][model]
    for name in ("kept-1", "kept-2"):
        assert by_id[name]["passed"] == {"candidate": False, "base": True}
        assert by_id[name]["failed"] == {"candidate": ["regex"], "base": []}

    # and evaluation.json's regression section and each model's regression_pass_rate agree with those verdicts
    section = report["regression"]
    assert section["examples"] == 5 and section["files"] == ["a_general.jsonl", "b_more.jsonl"]
    for model in ("candidate", "base"):
        rate = sum(1 for record in lines if record["passed"][model]) / 5
        assert report["metrics"][model]["regression_pass_rate"] == rate
        assert section["per_model"][model] == {
            "pass_rate": rate,
            "failed": [record["id"] for record in lines if not record["passed"][model]],
        }
    lost = [r["id"] for r in lines if r["passed"]["base"] and not r["passed"]["candidate"]]
    assert section["lost"] == lost and lost[:2] == ["kept-1", "kept-2"]
    assert "regression_pass_rate" in report["chart"]["groups_left_to_right"]

    # and the candidate, at least 0.2 below the base (2 of 5 lost; "stops" may move it by 0.2 either way), fails the
    # allowance of 0.15, naming what it lost
    base_rate, candidate_rate = (section["per_model"][m]["pass_rate"] for m in ("base", "candidate"))
    assert report["thresholds"]["max_regression_drop"] == 0.15 and report["passed"] is False
    assert [r for r in report["reasons"] if "regression_pass_rate" in r] == [
        f"candidate regression_pass_rate {candidate_rate:.4f} is {base_rate - candidate_rate:.4f} below the base's "
        f"{base_rate:.4f} (allowed drop 0.1500): it no longer passes {', '.join(lost)}"
    ]


def test_a_bad_regression_line_fails_before_any_model_loads(task: dict[str, Path], tmp_path: Path) -> None:
    # GIVEN a regression file whose second line ends on an assistant turn, and a candidate that is not a model at all
    (tmp_path / "regression").mkdir()
    good = {"messages": [{"role": "user", "content": "hi"}], "expect": {"stops": True}}
    bad = {"messages": [{"role": "assistant", "content": "hi"}], "expect": {"stops": True}}
    (tmp_path / "regression" / "general.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    fake = tmp_path / "fake-model"
    fake.mkdir()
    (fake / "config.json").write_text("{}")
    (fake / "model.safetensors").write_bytes(b"not weights")
    # WHEN evaluated THEN a config error (exit 2) naming file:line
    args = _args(task, tmp_path, candidate_dir=str(fake), regression_dir=str(tmp_path / "regression"))
    assert evaluate.run(args) == 2
    assert "general.jsonl:2: the last message must be the user's" in (tmp_path / "failure").read_text()


def _ending_turns_on_an_unserved_token(model_dir: Path, copy: Path) -> Path:
    """A copy of the tiny model whose chat template ends turns with <|im_end|> (as the original's does), but whose
    tokenizer eos and generation_config.json name <|endoftext|>: a server, which stops on those only, runs on."""
    shutil.copytree(model_dir, copy)
    tokenizer_config = json.loads((copy / "tokenizer_config.json").read_text())
    tokenizer_config["eos_token"] = "<|endoftext|>"
    (copy / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    vocab = json.loads((copy / "tokenizer.json").read_text())["model"]["vocab"]
    (copy / "generation_config.json").write_text(json.dumps({"eos_token_id": [vocab["<|endoftext|>"]]}))
    return copy


@pytest.mark.slow
def test_a_candidate_the_endpoint_would_not_stop_fails_the_gate(task: dict[str, Path], tmp_path: Path) -> None:
    # GIVEN a candidate whose chat template ends turns with <|im_end|>, but whose tokenizer eos and
    # generation_config.json name another token (the server, which stops on those only, would run on)
    candidate = _ending_turns_on_an_unserved_token(task["base"], tmp_path / "candidate")
    # WHEN evaluated
    assert evaluate.run(_args(task, tmp_path, candidate_dir=str(candidate), max_examples="2")) == 0
    report = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    # THEN the gate fails on the mismatch, naming the marker, and the base (served the same way) has none
    assert report["passed"] is False
    assert any(r.startswith("the endpoint would not stop at <|im_end|>") for r in report["reasons"])
    assert report["models"]["candidate"]["unserved_end_of_turn"] == ["<|im_end|>"]
    assert report["models"]["base"]["unserved_end_of_turn"] == []


def test_the_served_stop_ids_are_whole_numbers_from_generation_config_or_else_config(tmp_path: Path) -> None:
    from types import SimpleNamespace

    tokenizer = SimpleNamespace(eos_token_id=2)
    # GIVEN a generation_config.json whose eos_token_id mixes ids with values no server can stop on
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, "5", 1.5, True, None, [9], 7]}))
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 11}))
    # WHEN read; THEN the tokenizer's eos and the whole numbers, once each (config.json is not read beside it)
    assert generation.served_stop_ids(tokenizer, tmp_path) == [2, 7]
    # AND without a generation_config.json, config.json's eos_token_id counts (vLLM derives the config from it)
    (tmp_path / "generation_config.json").unlink()
    assert generation.served_stop_ids(tokenizer, tmp_path) == [2, 11]
    # AND with neither file only the tokenizer's eos
    (tmp_path / "config.json").unlink()
    assert generation.served_stop_ids(tokenizer, tmp_path) == [2]
    # AND a file that is not JSON is an error naming it
    (tmp_path / "generation_config.json").write_text("{eos_token_id: 2,}")
    with pytest.raises(ValueError, match=r"generation_config.json is not valid JSON"):
        generation.served_stop_ids(tokenizer, tmp_path)


@pytest.mark.slow
def test_a_lora_endpoint_that_would_not_stop_fails_the_gate_saying_how_to_fix_it(
    task: dict[str, Path], tmp_path: Path
) -> None:
    # GIVEN a base model whose chat template ends turns with <|im_end|> but whose eos ids name another token, and an
    # adapter for it (ServeMode=lora serves that base's own files)
    base = _ending_turns_on_an_unserved_token(task["base"], tmp_path / "base")
    adapter = make_adapter(base, tmp_path / "adapter")
    # WHEN the base + adapter candidate is evaluated
    args = _args(task, tmp_path, base_dir=str(base), adapter_dir=str(adapter), max_examples="2")
    assert evaluate.run(args) == 0, (tmp_path / "failure").read_text()
    report = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    # THEN the gate fails on the base's files, saying what to change
    [reason] = [r for r in report["reasons"] if r.startswith("the endpoint would not stop at <|im_end|>")]
    assert "ServeMode=lora serves the base model's own files" in reason and "ServeMode=merged" in reason
