"""The evaluate container's entrypoint: metric functions and the gate in pure Python, then an end-to-end run on CPU,
offline, with a tiny random Llama-style model as both candidate and base."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from containers.evaluate import evaluate
from containers.evaluate.evaluate import ConfigError, EvaluateConfig

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
# Metrics


def test_exact_match_ignores_surrounding_whitespace_only() -> None:
    assert evaluate.exact_match("  Paris\n", "Paris") == 1.0
    assert evaluate.exact_match("paris", "Paris") == 0.0


def test_token_f1_is_squad_style_overlap() -> None:
    # GIVEN 2 common tokens of 3 predicted and 4 reference: P=2/3, R=1/2 -> F1 = 4/7
    assert evaluate.token_f1("the cat sat", "the cat is here") == pytest.approx(4 / 7)
    # multiset overlap: "a a" vs "a": P=1/2, R=1 -> 2/3
    assert evaluate.token_f1("a a", "a") == pytest.approx(2 / 3)
    assert evaluate.token_f1("x", "y") == 0.0
    assert evaluate.token_f1("", "") == 1.0
    assert evaluate.token_f1("", "y") == 0.0


def test_rouge_l_uses_the_longest_common_subsequence() -> None:
    # LCS("a b c d", "a c d e") = "a c d" = 3: P = R = 3/4
    assert evaluate.lcs_length("a b c d".split(), "a c d e".split()) == 3
    assert evaluate.rouge_l("a b c d", "a c d e") == pytest.approx(0.75)
    # order matters (unlike F1): LCS("c b a", "a b c") = 1 -> 1/3
    assert evaluate.rouge_l("c b a", "a b c") == pytest.approx(1 / 3)
    assert evaluate.rouge_l("same words", "same words") == 1.0
    assert evaluate.rouge_l("", "x") == 0.0


def test_json_validity_and_schema_match() -> None:
    reference = '{"name": "Ann", "age": 3, "tags": ["x"]}'
    assert evaluate.is_json_reference(reference)
    assert not evaluate.is_json_reference("42")
    assert evaluate.json_valid(' {"a": 1} ') == 1.0
    assert evaluate.json_valid("{'a': 1}") == 0.0
    # same keys and value types (int vs float are both numbers)
    assert evaluate.json_schema_match('{"age": 4.5, "name": "Bo", "tags": []}', reference) == 1.0
    assert evaluate.json_schema_match('{"name": "Bo", "age": "4", "tags": []}', reference) == 0.0  # wrong type
    assert evaluate.json_schema_match('{"name": "Bo", "age": 4}', reference) == 0.0  # missing key
    assert evaluate.json_schema_match('{"name": "Bo", "age": true, "tags": []}', reference) == 0.0  # bool != number
    assert evaluate.json_schema_match("[1, 2]", "[3]") == 1.0
    assert evaluate.json_schema_match("not json", reference) == 0.0


def test_aggregate_means_lengths_and_stop_rate() -> None:
    metrics, per_example = evaluate.aggregate(["a b", "x"], ["a b", "a"], [2, 5], [True, False], json_references=False)
    assert metrics == {
        "exact_match": 0.5,
        "token_f1": 0.5,
        "rouge_l": 0.5,
        "mean_generated_tokens": 3.5,
        "stop_rate": 0.5,
    }
    assert per_example[1] == {"exact_match": 0.0, "token_f1": 0.0, "rouge_l": 0.0}
    json_metrics, _ = evaluate.aggregate(
        ['{"a": 1}', "{"], ['{"a": 2}'] * 2, [1, 1], [True, True], json_references=True
    )
    assert json_metrics["json_valid"] == 0.5
    assert json_metrics["json_schema_match"] == 0.5


def test_png_writer_writes_a_valid_png(tmp_path: Path) -> None:
    metrics = {"candidate": {"exact_match": 0.8}, "base": {"exact_match": 0.2}, "production": {"exact_match": 0.5}}
    legend = evaluate.bar_chart(tmp_path / "c.png", metrics, ["exact_match"])
    data = (tmp_path / "c.png").read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82")
    assert legend["bars_in_each_group"] == ["candidate", "base", "production"]


# ---------------------------------------------------------------------------------------------------------------------
# Gate


def _metrics(
    candidate: float, base: float, production: float | None = None, stop: float = 1.0
) -> dict[str, dict[str, float]]:
    out = {"candidate": {"exact_match": candidate, "stop_rate": stop}, "base": {"exact_match": base, "stop_rate": 1.0}}
    if production is not None:
        out["production"] = {"exact_match": production, "stop_rate": 1.0}
    return out


def _gate(
    metrics: dict[str, dict[str, float]],
    *,
    primary_metric: str = "exact_match",
    min_score: float = 0.0,
    max_regression_vs_production: float = 0.0,
    min_improvement_over_base: float = 0.0,
    min_stop_rate: float = 0.0,
) -> tuple[bool, list[str]]:
    return evaluate.gate(
        metrics,
        primary_metric=primary_metric,
        min_score=min_score,
        max_regression_vs_production=max_regression_vs_production,
        min_improvement_over_base=min_improvement_over_base,
        min_stop_rate=min_stop_rate,
    )


def test_gate_passes_when_every_threshold_holds() -> None:
    assert _gate(_metrics(0.6, 0.4, 0.6), min_score=0.5) == (True, [])


def test_gate_fails_below_min_score() -> None:
    passed, reasons = _gate(_metrics(0.3, 0.1), min_score=0.5)
    assert not passed
    assert reasons == ["candidate exact_match 0.3000 is below the minimum score 0.5000"]


def test_gate_fails_without_enough_improvement_over_base() -> None:
    passed, reasons = _gate(_metrics(0.45, 0.4), min_improvement_over_base=0.1)
    assert not passed and len(reasons) == 1
    assert "improves on the base's 0.4000 by +0.0500, less than the required +0.1000" in reasons[0]


def test_gate_fails_on_regression_vs_production_and_skips_it_without_production() -> None:
    thresholds: dict[str, Any] = {"max_regression_vs_production": 0.05}
    passed, reasons = _gate(_metrics(0.5, 0.4, 0.6), **thresholds)
    assert not passed and len(reasons) == 1
    assert "regresses from production's 0.6000 by 0.1000, more than the allowed 0.0500" in reasons[0]
    assert _gate(_metrics(0.5, 0.4, 0.54), **thresholds) == (True, [])
    assert _gate(_metrics(0.5, 0.4), **thresholds) == (True, [])


def test_gate_flags_a_model_that_never_stops() -> None:
    passed, reasons = _gate(_metrics(0.5, 0.4, stop=0.0), min_stop_rate=0.9)
    assert not passed and len(reasons) == 1
    assert "EOS problem" in reasons[0]


def test_gate_lists_every_failed_threshold() -> None:
    thresholds: dict[str, Any] = {"min_score": 0.9, "min_improvement_over_base": 0.0, "min_stop_rate": 0.5}
    passed, reasons = _gate(_metrics(0.2, 0.3, 0.8, stop=0.1), **thresholds)
    assert not passed and len(reasons) == 4


def test_gate_refuses_a_primary_metric_that_was_not_computed() -> None:
    with pytest.raises(ConfigError, match="json_valid was not computed"):
        _gate(_metrics(0.5, 0.4), primary_metric="json_valid")


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


@pytest.mark.slow
def test_batching_with_left_padding_gives_the_same_answers(task: dict[str, Path]) -> None:
    # GIVEN prompts of different lengths (one without the system message); WHEN generated one by one and batched
    prompts, _ = evaluate.read_eval(str(task["eval"]), 0)
    prompts[0] = prompts[0][1:]
    one = evaluate.generate(task["base"], prompts, EvaluateConfig(max_new_tokens=6, batch_size=1), "cpu", "float32")
    batched = evaluate.generate(
        task["base"], prompts, EvaluateConfig(max_new_tokens=6, batch_size=len(prompts)), "cpu", "float32"
    )
    # THEN the answers, lengths and stop flags are the same
    assert batched["answers"] == one["answers"]
    assert batched["lengths"] == one["lengths"] and batched["stopped"] == one["stopped"]


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
    assert evaluate.run(["--batch_size", "0", "--failure_file", str(tmp_path / "failure")]) == 2
    assert "batch_size must be >= 1" in (tmp_path / "failure").read_text()
