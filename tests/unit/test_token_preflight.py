"""Token-level pre-flight: counts, truncation, trained tokens and the end-of-turn check."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from local.tiny_model import UNTRAINED_END_TEMPLATE

from tuneplane.logic.base_model import load_model_context
from tuneplane.logic.validation.validator import DatasetSource, validate_dataset
from tuneplane.models.validation import Code, Severity, ValidationOptions


def _validate(path: Path, model_dir: Path, **options: object):
    model = load_model_context(str(model_dir))
    return validate_dataset(
        DatasetSource.local(path), ValidationOptions.model_validate(options), model=model, out_dir=path.parent / "out"
    )


def test_token_stats_and_cost_on_a_valid_file(write_jsonl, reversal_lines, base_model_dir: Path) -> None:
    # GIVEN twenty valid reversal examples and the tiny base model
    path = write_jsonl(reversal_lines)
    # WHEN validated with the tokenizer
    report = _validate(path, base_model_dir).report
    # THEN it passes, token statistics are consistent and the cost estimate covers the train split
    assert report.passed, [p.render() for p in report.problems]
    tokens = report.tokens
    assert tokens is not None and tokens.examples == 20
    assert 0 < tokens.min <= tokens.p50 <= tokens.p95 <= tokens.max
    assert tokens.min * 20 <= tokens.total <= tokens.max * 20
    assert 0 < tokens.trained_total < tokens.total
    assert report.template is not None and report.template.end_of_turn_trained
    assert report.cost is not None and report.cost.tokens_per_epoch < tokens.total  # eval split excluded
    assert report.cost.cost_usd >= 0 and report.cost.instance_type == "ml.g5.2xlarge"


def test_example_over_max_seq_length_is_reported_with_the_excess(write_jsonl, reversal_lines, base_model_dir) -> None:
    # GIVEN one example far longer than the others, at line 7
    lines = list(reversal_lines)
    lines[6] = json.dumps(
        {
            "messages": [
                {"role": "user", "content": "reverse " + "hello world " * 40},
                {"role": "assistant", "content": "dlrow olleh"},
            ]
        }
    )
    path = write_jsonl(lines)
    # WHEN validated with a max_seq_length that only the long one exceeds
    report = _validate(path, base_model_dir, max_seq_length=64).report
    # THEN exactly that line is reported, saying by how much it is over
    problems = [p for p in report.problems if p.code is Code.EXAMPLE_TOO_MANY_TOKENS]
    assert [p.line for p in problems] == [7]
    total = int(problems[0].message.split()[0])
    assert f"{total - 64} over max_seq_length 64" in problems[0].message
    assert report.tokens is not None and report.tokens.over_max_seq_length == 1
    assert report.examples_valid == 19 and 7 in report.lines_dropped
    assert not report.passed


def test_too_long_as_warning_keeps_the_example(write_jsonl, reversal_lines, base_model_dir) -> None:
    # GIVEN the same long example, and a dataset that accepts truncation
    lines = list(reversal_lines)
    lines[2] = json.dumps(
        {"messages": [{"role": "user", "content": "x " * 200}, {"role": "assistant", "content": "y"}]}
    )
    path = write_jsonl(lines)
    # WHEN example_too_many_tokens is loosened to a warning
    report = _validate(
        path, base_model_dir, max_seq_length=64, severity_overrides={"example_too_many_tokens": "warning"}
    ).report
    # THEN the file passes and the example stays in the splits
    assert report.passed
    assert report.split is not None and report.split.train_examples + report.split.eval_examples == 20
    assert {c.code: c.severity for c in report.problem_counts}[Code.EXAMPLE_TOO_MANY_TOKENS] is Severity.WARNING


def test_end_of_turn_outside_trained_span_rejects_the_file(
    write_jsonl,
    reversal_lines,
    base_model_factory: Callable[..., Path],
) -> None:
    # GIVEN a template that renders <|im_end|> after the {% generation %} block (never trained)
    path = write_jsonl(reversal_lines)
    # WHEN validated
    report = _validate(path, base_model_factory(UNTRAINED_END_TEMPLATE)).report
    # THEN the file is rejected with eos_not_trained, naming the token and the first line
    assert not report.passed
    problem = next(p for p in report.problems if p.code is Code.EOS_NOT_TRAINED)
    assert "<|im_end|>" in problem.message and "first: line 1" in problem.message
    assert "in 20 of 20 examples" in problem.message
    assert report.template is not None and not report.template.end_of_turn_trained


def test_template_error_is_reported_per_line(tmp_path: Path, write_jsonl, reversal_lines, base_model_dir) -> None:
    # GIVEN a template that refuses system prompts and one example with a system prompt at line 4
    model = tmp_path / "model"
    model.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja"):
        (model / name).write_bytes((base_model_dir / name).read_bytes())
    template = (model / "chat_template.jinja").read_text()
    (model / "chat_template.jinja").write_text(
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system prompts, please') }}{% endif %}"
        + template
    )
    lines = list(reversal_lines)
    lines[3] = json.dumps(
        {
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "u"},
                {"role": "assistant", "content": "a"},
            ]
        }
    )
    # WHEN validated
    report = _validate(write_jsonl(lines), model).report
    # THEN line 4 carries the template's own message
    problems = [p for p in report.problems if p.code is Code.CHAT_TEMPLATE_ERROR]
    assert [(p.line, p.message) for p in problems] == [(4, "no system prompts, please")]


@pytest.mark.parametrize("batch", [1, 3, 600])
def test_results_do_not_depend_on_batching(
    monkeypatch: pytest.MonkeyPatch,
    write_jsonl,
    base_model_dir: Path,
    batch: int,
) -> None:
    # GIVEN 25 examples of different lengths, one too long (line 13)
    from tuneplane.logic.validation import tokens as token_stage

    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "hello " * (i + 1)},
                    {"role": "assistant", "content": "world " * (i % 4 + 1)},
                ]
            }
        )
        for i in range(25)
    ]
    lines[12] = json.dumps(
        {"messages": [{"role": "user", "content": "fox " * 100}, {"role": "assistant", "content": "a"}]}
    )
    # WHEN validated with different encode batch sizes
    monkeypatch.setattr(token_stage, "BATCH_SIZE", batch)
    report = _validate(write_jsonl(lines), base_model_dir, max_seq_length=96).report
    # THEN the same line is flagged and the same token totals come out
    assert [p.line for p in report.problems if p.code is Code.EXAMPLE_TOO_MANY_TOKENS] == [13]
    assert report.template is not None and report.template.examples_checked == 25
    assert report.tokens is not None and report.tokens.examples == 24
