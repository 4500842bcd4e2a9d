"""`tuneplane validate`: exit codes, the human summary, JSON output and the splits it writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneplane.cli import EXIT_INVALID, EXIT_USAGE, EXIT_VALID, main


def test_valid_file_exits_0_with_a_summary(write_jsonl, reversal_lines, base_model_dir, capsys, tmp_path) -> None:
    # GIVEN a valid dataset and the tiny base model
    path = write_jsonl(reversal_lines)
    # WHEN validated with the tokenizer and an output directory
    code = main(["validate", str(path), "--base-model", str(base_model_dir), "--out-dir", str(tmp_path / "out")])
    # THEN it exits 0, prints the verdict, token stats and the estimate, and writes the splits
    out = capsys.readouterr().out
    assert code == EXIT_VALID
    assert out.startswith("PASSED:") and "Tokens:" in out and "Estimate: 3 epochs on ml.g5.2xlarge" in out
    written = (tmp_path / "out" / "train.jsonl").read_text().splitlines()
    written += (tmp_path / "out" / "eval.jsonl").read_text().splitlines()
    assert len(written) == 20


def test_invalid_file_exits_1_and_groups_errors_by_code(write_jsonl, reversal_lines, capsys) -> None:
    # GIVEN three lines with the same misspelled role and one broken JSON line
    lines = list(reversal_lines)
    for index in (2, 9, 14):
        lines[index] = lines[index].replace('"assistant"', '"assitant"')
    lines[16] = lines[16][:-5]
    path = write_jsonl(lines)
    # WHEN validated
    code = main(["validate", str(path)])
    # THEN it exits 1 and the summary groups by code with the first line numbers
    out = capsys.readouterr().out
    assert code == EXIT_INVALID
    assert out.startswith("REJECTED:")
    assert "unrecognized_role x3 (lines 3, 10, 15)" in out
    assert "invalid_json x1 (line 17)" in out
    assert "line 3: messages[1].role: unrecognized_role 'assitant'" in out


def test_json_output_is_the_full_report(write_jsonl, reversal_lines, capsys) -> None:
    path = write_jsonl(reversal_lines)
    assert main(["validate", str(path), "--json", "--min-examples", "30"]) == EXIT_INVALID
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is False
    assert [c["code"] for c in report["problem_counts"]] == ["too_few_examples"]
    assert report["options"]["min_examples"] == 30


def test_pii_flag_turns_pii_into_an_error(write_jsonl, reversal_lines, capsys) -> None:
    lines = list(reversal_lines)
    lines[5] = lines[5].replace("reverse", "mail ada@example.org and reverse")
    path = write_jsonl(lines)
    assert main(["validate", str(path)]) == EXIT_VALID
    assert main(["validate", str(path), "--pii", "error"]) == EXIT_INVALID
    out = capsys.readouterr().out
    assert "a***@e***.org" in out and "ada@example.org" not in out


def test_config_sidecar_options_are_used(write_jsonl, reversal_lines, tmp_path: Path, capsys) -> None:
    path = write_jsonl(reversal_lines)
    sidecar = tmp_path / "data.tuneplane.json"
    sidecar.write_text(json.dumps({"validation": {"min_examples": 25}}))
    assert main(["validate", str(path), "--config", str(sidecar)]) == EXIT_INVALID
    assert "at least 25 needed" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["validate", "does-not-exist.jsonl"], "does-not-exist.jsonl: no such file"),
        (["validate", "{data}", "--base-model", "/nonexistent-model"], "tokenizer.json"),
        (["validate", "{data}", "--max-seq-length", "3"], "max_seq_length"),
    ],
)
def test_usage_errors_exit_2(argv, message, write_jsonl, reversal_lines, capsys) -> None:
    path = write_jsonl(reversal_lines)
    code = main([arg.replace("{data}", str(path)) for arg in argv])
    assert code == EXIT_USAGE
    assert message in capsys.readouterr().err


def test_bad_arguments_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["validate"])
    assert raised.value.code == EXIT_USAGE


def test_out_dir_never_overwrites_the_input(tmp_path: Path, reversal_lines, capsys) -> None:
    # GIVEN a dataset named train.jsonl
    source = tmp_path / "train.jsonl"
    source.write_text("\n".join(reversal_lines) + "\n")
    before = source.read_bytes()
    # WHEN the splits would be written next to it
    code = main(["validate", str(source), "--out-dir", str(tmp_path)])
    # THEN it refuses with a usage error and the file is untouched
    assert code == EXIT_USAGE
    assert "would be overwritten" in capsys.readouterr().err
    assert source.read_bytes() == before


def test_the_minimum_counts_examples_before_the_held_out_split(write_jsonl, reversal_lines, capsys) -> None:
    # GIVEN exactly the default minimum of 10 examples, and then 9
    # WHEN validated (one of the ten is held out for evaluation)
    # THEN ten pass and nine are too few
    assert main(["validate", str(write_jsonl(reversal_lines[:10]))]) == EXIT_VALID
    assert main(["validate", str(write_jsonl(reversal_lines[:9], name="nine.jsonl"))]) == EXIT_INVALID
    assert "9 usable training examples; at least 10 needed" in capsys.readouterr().out


def test_config_sidecar_follows_the_pipelines_rules(write_jsonl, reversal_lines, tmp_path: Path, capsys) -> None:
    # GIVEN a sidecar with a misspelled top-level key, as StartRun would reject it
    path = write_jsonl(reversal_lines)
    sidecar = tmp_path / "data.tuneplane.json"
    sidecar.write_text(json.dumps({"validaton": {"min_examples": 25}}))
    # WHEN used with the CLI THEN it is a usage error naming the file and the key
    assert main(["validate", str(path), "--config", str(sidecar)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "data.tuneplane.json" in err and "unknown setting 'validaton'" in err
