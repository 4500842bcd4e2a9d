"""The validator against the committed corpus: tests/data/bad (one defect a file, expectations in manifest.json)
and tests/data/valid (every format, gzip, BOM, CRLF), plus the policy knobs: max_invalid_fraction,
severity_overrides, the seeded held-out split, a user eval file, and the source never being touched."""

from __future__ import annotations

import bz2
import gzip
import importlib.util
import io
import json
import lzma
import os
import time
import zipfile
import zlib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tuneplane.logic.validation.validator import DatasetSource, ValidationResult, validate_dataset
from tuneplane.models.validation import Code, Severity, ValidationOptions

DATA = Path(__file__).resolve().parents[1] / "data"
BAD, VALID = DATA / "bad", DATA / "valid"
MANIFEST: dict[str, dict[str, Any]] = json.loads((BAD / "manifest.json").read_text(encoding="utf-8"))
EVAL_FILES = {entry["eval_file"] for entry in MANIFEST.values() if "eval_file" in entry}
LINE_ENTRIES = sorted(name for name, entry in MANIFEST.items() if entry["line"] is not None)

# Codes the corpus cannot show: the token-level ones need a tokenizer, too_many_invalid needs a policy (tested below).
TOKENIZER_CODES = {
    Code.EXAMPLE_TOO_MANY_TOKENS,
    Code.CHAT_TEMPLATE_ERROR,
    Code.NO_TRAINED_TOKENS,
    Code.EOS_NOT_TRAINED,
}
# too_large_to_validate is the machine's budget, not a property of a file: test_validation_bounds.py covers it
NOT_IN_CORPUS = TOKENIZER_CODES | {Code.TOO_MANY_INVALID, Code.TOO_LARGE_TO_VALIDATE}

VALID_FILES = ["alpaca.jsonl", "chat.jsonl", "chat_pii_near_misses.jsonl", "prompt_completion.jsonl"]
ENCODING_VARIANTS = ["chat.jsonl.gz", "chat_bom.jsonl", "chat_crlf.jsonl"]


# ---------------------------------------------------------------------------------------------------------------
# helpers


def validate(
    path: Path,
    options: ValidationOptions | None = None,
    *,
    eval_path: Path | None = None,
    out_dir: Path | None = None,
) -> ValidationResult:
    return validate_dataset(
        DatasetSource.local(path),
        options or ValidationOptions(),
        eval_source=DatasetSource.local(eval_path) if eval_path else None,
        out_dir=out_dir,
    )


def validate_entry(name: str, path: Path | None = None, out_dir: Path | None = None) -> ValidationResult:
    """Validate a manifest entry (or a modified copy of it at `path`) with the entry's options and eval file."""
    entry = MANIFEST[name]
    eval_file = entry.get("eval_file")
    return validate(
        path or BAD / name,
        ValidationOptions(**entry.get("options", {})),
        eval_path=BAD / eval_file if eval_file else None,
        out_dir=out_dir,
    )


def rendered(result: ValidationResult) -> str:
    return "\n".join(p.render() for p in result.report.problems) or "(no problems)"


def error_codes(result: ValidationResult) -> set[Code]:
    return {p.code for p in result.report.problems if p.severity is Severity.ERROR}


def read_records(path: Path) -> list[dict[str, Any]]:
    """The source file's records, read independently of the validator (gzip, BOM, CRLF, blank lines)."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    text = raw.decode("utf-8-sig")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def normalise(record: dict[str, Any]) -> list[dict[str, str]]:
    """The oracle: what any valid record of the three formats must become."""
    if "messages" in record:
        return [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
    if "prompt" in record:
        return [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["completion"]}]
    extra = record.get("input") or ""
    prompt = f"{record['instruction']}\n\n{extra}" if extra.strip() else record["instruction"]
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]


def canonical(messages: list[dict[str, str]]) -> str:
    return json.dumps(messages, ensure_ascii=False, sort_keys=True)


def written(path: Path | None) -> list[dict[str, Any]]:
    if path is None:
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def written_examples(result: ValidationResult) -> list[str]:
    return [canonical(row["messages"]) for row in written(result.train_path) + written(result.eval_path)]


def prompt_of(messages: list[dict[str, str]]) -> str:
    return canonical(messages[:-1])


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def chat_line(user: str, assistant: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]})


def load_fixture_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_binary_fixtures", DATA / "make_binary_fixtures.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------------------------
# the corpus itself


def test_corpus_covers_every_code_that_needs_no_tokenizer() -> None:
    # GIVEN the manifest and the files in tests/data/bad
    on_disk = {p.name for p in BAD.iterdir()} - {"manifest.json"}
    # WHEN they are compared
    # THEN every file is either a manifest entry or an entry's eval file, and every entry exists
    assert on_disk == set(MANIFEST) | EVAL_FILES
    assert len(MANIFEST) >= 35
    # AND every code that needs no tokenizer has at least one file
    covered = {Code(entry["code"]) for entry in MANIFEST.values()}
    assert set(Code) - NOT_IN_CORPUS - covered == set()
    # AND every entry is well formed: known keys, a real severity, options that ValidationOptions accepts
    for name, entry in MANIFEST.items():
        assert set(entry) <= {"code", "line", "path", "severity", "options", "eval_file"}, name
        assert entry["severity"] in {"error", "warning"}, name
        ValidationOptions(**entry.get("options", {}))


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_bad_file_reports_its_one_defect(name: str, tmp_path: Path) -> None:
    # GIVEN a corpus file with one defect and its expectation
    entry = MANIFEST[name]
    code, severity = Code(entry["code"]), Severity(entry["severity"])
    # WHEN it is validated
    result = validate_entry(name, out_dir=tmp_path / "out")
    # THEN the code is reported once, at that line and field path, with that severity
    found = [(p.line, p.path, p.severity, p.source) for p in result.report.problems if p.code is code]
    assert found == [(entry["line"], entry["path"], severity, "train")], rendered(result)
    # AND no other error is reported, so the file really has one defect
    assert error_codes(result) <= {code}, rendered(result)
    # AND an error rejects the file (no splits written) while a warning does not
    assert result.report.passed is (severity is Severity.WARNING), rendered(result)
    assert (result.train_path is not None) is result.report.passed


@pytest.mark.parametrize("name", LINE_ENTRIES)
def test_bad_file_is_clean_without_its_defect_line(name: str, tmp_path: Path) -> None:
    # GIVEN a corpus file with its defect line removed (bytes, so the not-UTF-8 file works too)
    lines = (BAD / name).read_bytes().split(b"\n")
    del lines[MANIFEST[name]["line"] - 1]
    repaired = tmp_path / name
    repaired.write_bytes(b"\n".join(lines))
    # WHEN it is validated with the same options
    result = validate_entry(name, path=repaired)
    # THEN it passes without a single problem: the defect line was the only defect
    assert result.report.passed, rendered(result)
    assert result.report.problems == [], rendered(result)


def test_rendered_problem_names_line_field_code_and_value() -> None:
    # GIVEN a chat file whose line 12 misspells 'assistant'
    # WHEN it is validated
    result = validate_entry("unrecognized_role.jsonl")
    # THEN the problem reads like the example, with the expected roles and a suggestion
    (problem,) = result.report.problems
    assert problem.render().startswith(
        "line 12: messages[2].role: unrecognized_role 'assitant' (expected system, user or assistant"
    )
    assert "did you mean 'assistant'" in problem.message


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("pii_email.jsonl", "jane.doe@example.com"),
        ("pii_phone.jsonl", "415-555-0132"),
        ("pii_card.jsonl", "4111 1111 1111 1111"),
        ("pii_aws_key.jsonl", "AKIAIOSFODNN7EXAMPLE"),
    ],
)
def test_pii_is_reported_masked(name: str, secret: str) -> None:
    # GIVEN a file with one piece of personal data or a secret
    # WHEN it is validated
    result = validate_entry(name)
    # THEN the report (which travels to S3 and Slack) never contains the value itself
    assert [p.code for p in result.report.problems] == [Code.PII_DETECTED]
    assert secret not in result.report.model_dump_json()
    assert secret[-4:] in result.report.problems[0].message


def test_luhn_invalid_card_number_is_not_flagged(tmp_path: Path) -> None:
    # GIVEN two otherwise equal files: one quotes a 16-digit number that fails the Luhn check, one that passes it
    base = [chat_line(f"What is word {word}?", f"It is {word}.") for word in "abcdefghijkl"]
    invalid = write_lines(tmp_path / "invalid.jsonl", [*base, chat_line("Is 4111 1111 1111 1112 a card?", "No.")])
    valid = write_lines(tmp_path / "valid.jsonl", [*base, chat_line("Is 4111 1111 1111 1111 a card?", "Yes.")])
    # WHEN both are validated
    not_a_card, a_card = validate(invalid), validate(valid)
    # THEN only the Luhn-valid number is reported as a card number
    assert not_a_card.report.problems == [], rendered(not_a_card)
    assert [(p.code, p.line) for p in a_card.report.problems] == [(Code.PII_DETECTED, 13)]
    assert "card number" in a_card.report.problems[0].message


def test_pii_scan_stays_fast_on_long_unbroken_text(tmp_path: Path) -> None:
    # GIVEN an example whose answer is one 100,000-character word followed by an '@' that starts no email
    # (an unbounded email pattern takes seconds here: quadratic in the length of the run)
    base = [chat_line(f"What is word {word}?", f"It is {word}.") for word in "abcdefghijkl"]
    path = write_lines(tmp_path / "long.jsonl", [*base, chat_line("Print a long word.", "x" * 100_000 + " @ home.")])
    # WHEN it is validated
    started = time.perf_counter()
    result = validate(path)
    elapsed = time.perf_counter() - started
    # THEN it passes, nothing is reported, and it takes well under a second (2 s allows for a slow machine)
    assert result.report.passed and result.report.problems == [], rendered(result)
    assert elapsed < 2.0


def test_committed_binary_fixtures_match_the_generator() -> None:
    # GIVEN the fixture script
    script = load_fixture_script()
    # WHEN it builds the fixtures from valid/chat.jsonl again
    built: dict[str, bytes] = script.build(DATA)
    # THEN every committed file holds the same (decompressed) content: the fixtures are up to date
    assert len(built) >= 8
    for relative, content in built.items():
        assert _payload(relative, (DATA / relative).read_bytes()) == _payload(relative, content), relative


def _payload(relative: str, content: bytes) -> bytes:
    """Compare compressed files by what they hold: compressed bytes may differ between zlib builds."""
    if relative.endswith(".gz"):
        return zlib.decompressobj(wbits=31).decompress(content)  # tolerates the truncated one
    if "bzip2" in relative:
        return bz2.decompress(content)
    if "_xz_" in relative:
        return lzma.decompress(content)
    if relative.endswith(".zip"):
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            return b"".join(name.encode() + b"\0" + archive.read(name) for name in archive.namelist())
    return content


# ---------------------------------------------------------------------------------------------------------------
# valid files


@pytest.mark.parametrize("name", VALID_FILES + ENCODING_VARIANTS)
def test_valid_file_passes_and_writes_normalised_splits(name: str, tmp_path: Path) -> None:
    # GIVEN a valid file, and what its examples must become, worked out independently of the validator
    expected = {canonical(normalise(record)) for record in read_records(VALID / name)}
    # WHEN it is validated with an output directory
    result = validate(VALID / name, out_dir=tmp_path / "out")
    report = result.report
    # THEN it passes without any problem, not even a warning
    assert report.passed, rendered(result)
    assert report.problems == [], rendered(result)
    # AND both splits are written, every line a {"messages": [...]} of role/content messages only
    assert result.train_path is not None and result.eval_path is not None
    rows = written(result.train_path) + written(result.eval_path)
    for row in rows:
        assert list(row) == ["messages"]
        assert all(list(message) == ["role", "content"] for message in row["messages"])
    # AND train + eval hold each distinct example exactly once
    assert sorted(written_examples(result)) == sorted(expected)
    assert report.split is not None
    assert report.split.train_examples + report.split.eval_examples == len(expected)
    assert report.split.eval_source == "held_out"
    assert report.examples_valid == len(expected)


@pytest.mark.parametrize("variant", ENCODING_VARIANTS)
def test_gzip_bom_and_crlf_parse_like_the_plain_file(variant: str, tmp_path: Path) -> None:
    # GIVEN valid/chat.jsonl and a variant of it (gzip-compressed, with a UTF-8 BOM, or with CRLF line endings)
    # WHEN both are validated with the same options
    plain = validate(VALID / "chat.jsonl", out_dir=tmp_path / "plain")
    other = validate(VALID / variant, out_dir=tmp_path / "variant")
    # THEN they read the same lines and write byte-identical splits
    assert other.report.passed and other.report.problems == [], rendered(other)
    assert (other.report.lines_read, other.report.examples_valid, other.report.format) == (
        plain.report.lines_read,
        plain.report.examples_valid,
        plain.report.format,
    )
    assert plain.train_path and other.train_path and plain.eval_path and other.eval_path
    assert other.train_path.read_bytes() == plain.train_path.read_bytes()
    assert other.eval_path.read_bytes() == plain.eval_path.read_bytes()


# ---------------------------------------------------------------------------------------------------------------
# policy


def _file_with_two_bad_lines(tmp_path: Path) -> tuple[Path, list[int]]:
    lines = [chat_line(f"Say the word {word}.", word) for word in ("apple", "banana", "cherry", "damson", "elder")]
    lines += [chat_line(f"Spell {word} backwards.", word[::-1]) for word in ("fig", "grape", "hazel", "iris", "jade")]
    lines += [chat_line(f"Capitalise {word}.", word.upper()) for word in ("kiwi", "lime", "mango", "nectar", "olive")]
    lines.insert(
        3, '{"messages": [{"role": "user", "content": "DROPPED-MARKER-A"}, {"role": "assitant", "content": "x"}]}'
    )
    lines.insert(11, '{"messages": [{"role": "user", "content": "DROPPED-MARKER-B"}')
    return write_lines(tmp_path / "two_bad.jsonl", lines), [4, 12]


def test_max_invalid_fraction_drops_bad_lines_and_passes(tmp_path: Path) -> None:
    # GIVEN 15 valid lines and 2 bad ones (lines 4 and 12), and a policy that tolerates 20% bad lines
    path, bad_lines = _file_with_two_bad_lines(tmp_path)
    options = ValidationOptions(max_invalid_fraction=0.2)
    # WHEN it is validated
    result = validate(path, options, out_dir=tmp_path / "out")
    # THEN it passes, the two lines are still reported as errors and listed as dropped
    assert result.report.passed, rendered(result)
    assert [(p.line, p.code) for p in result.report.problems] == [
        (4, Code.UNRECOGNIZED_ROLE),
        (12, Code.INVALID_JSON),
    ]
    assert result.report.lines_dropped == bad_lines
    assert result.report.lines_dropped_count == 2
    # AND the splits hold the 15 good examples and nothing of the dropped lines
    assert result.train_path is not None and result.eval_path is not None
    text = result.train_path.read_text(encoding="utf-8") + result.eval_path.read_text(encoding="utf-8")
    assert "DROPPED-MARKER" not in text
    assert len(written_examples(result)) == 15


def test_max_invalid_fraction_exceeded_rejects_with_too_many_invalid(tmp_path: Path) -> None:
    # GIVEN the same file (2 of 17 lines bad, 11.8%) and a policy that tolerates only 10%
    path, _ = _file_with_two_bad_lines(tmp_path)
    options = ValidationOptions(max_invalid_fraction=0.1)
    # WHEN it is validated
    result = validate(path, options, out_dir=tmp_path / "out")
    # THEN it is rejected with a file-level too_many_invalid, and nothing is written
    assert not result.report.passed
    too_many = [p for p in result.report.problems if p.code is Code.TOO_MANY_INVALID]
    assert [(p.line, p.severity) for p in too_many] == [(None, Severity.ERROR)], rendered(result)
    assert result.train_path is None and not (tmp_path / "out").exists()


def test_overlapping_training_example_is_left_out_when_tolerated(tmp_path: Path) -> None:
    # GIVEN a training file whose line 6 asks a question that is also in the eval file, and a tolerant policy
    entry = MANIFEST["eval_train_overlap.jsonl"]
    train_path, eval_path = BAD / "eval_train_overlap.jsonl", BAD / entry["eval_file"]
    # WHEN both are validated
    result = validate(train_path, ValidationOptions(max_invalid_fraction=0.1), eval_path=eval_path, out_dir=tmp_path)
    # THEN it passes, line 6 is dropped, and its prompt is in eval only: scores would not be inflated
    assert result.report.passed, rendered(result)
    assert result.report.lines_dropped == [entry["line"]]
    train_prompts = {prompt_of(row["messages"]) for row in written(result.train_path)}
    eval_prompts = set(_eval_prompts(result))
    assert len(train_prompts) == len(read_records(train_path)) - 1
    assert train_prompts.isdisjoint(eval_prompts)


def test_compression_is_recognised_by_name_alone(tmp_path: Path) -> None:
    # GIVEN valid JSONL text in a file named like a zip archive (no zip signature in it)
    path = tmp_path / "data.jsonl.zip"
    path.write_bytes((VALID / "chat.jsonl").read_bytes())
    # WHEN it is validated
    result = validate(path)
    # THEN the name is enough to reject it as an unsupported compression
    assert [(p.code, p.line) for p in result.report.problems] == [(Code.UNSUPPORTED_COMPRESSION, None)]
    assert "zip" in result.report.problems[0].message


def test_pii_severity_override_to_error_rejects(tmp_path: Path) -> None:
    # GIVEN a file with an email address, which is a warning by default
    path = BAD / "pii_email.jsonl"
    default = validate(path)
    assert default.report.passed
    # WHEN it is validated with pii_detected made an error
    strict = validate(path, ValidationOptions(severity_overrides={Code.PII_DETECTED: Severity.ERROR}))
    # THEN the same finding is an error and the file is rejected
    assert not strict.report.passed
    assert [(p.code, p.severity, p.line) for p in strict.report.problems] == [(Code.PII_DETECTED, Severity.ERROR, 5)]


def test_duplicate_is_reported_and_written_once(tmp_path: Path) -> None:
    # GIVEN a file whose line 9 repeats line 3 (a warning)
    # WHEN it is validated
    result = validate_entry("duplicate_example.jsonl", out_dir=tmp_path / "out")
    # THEN it passes, and the 13 lines become 12 distinct examples in the splits
    assert result.report.passed
    assert result.report.duplicates_dropped == 1
    examples = written_examples(result)
    assert len(examples) == len(set(examples)) == 12


def _qa_dataset(tmp_path: Path, prompts: int, answers_per_prompt: int = 1) -> Path:
    words = [f"{a}{b}" for a in "bcdfghjklm" for b in "aeiou"][:prompts]
    lines = [
        json.dumps({"prompt": f"Define the word {word}.", "completion": f" Meaning number {'ivx'[k]} of {word}."})
        for word in words
        for k in range(answers_per_prompt)
    ]
    return write_lines(tmp_path / "qa.jsonl", lines)


def _eval_prompts(result: ValidationResult) -> list[str]:
    return [prompt_of(row["messages"]) for row in written(result.eval_path)]


def test_held_out_split_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    # GIVEN 50 examples and a seed
    path = _qa_dataset(tmp_path, 50)
    options = ValidationOptions(seed=7, eval_fraction=0.2)
    # WHEN it is validated twice
    first = validate(path, options, out_dir=tmp_path / "a")
    second = validate(path, options, out_dir=tmp_path / "b")
    # THEN both runs hold out the same 10 examples and write identical files
    assert first.eval_path and second.eval_path and first.train_path and second.train_path
    assert len(written(first.eval_path)) == 10
    assert first.eval_path.read_bytes() == second.eval_path.read_bytes()
    assert first.train_path.read_bytes() == second.train_path.read_bytes()


def test_held_out_split_changes_with_the_seed(tmp_path: Path) -> None:
    # GIVEN 50 examples
    path = _qa_dataset(tmp_path, 50)
    # WHEN it is validated with two different seeds
    one = validate(path, ValidationOptions(seed=7, eval_fraction=0.2), out_dir=tmp_path / "a")
    other = validate(path, ValidationOptions(seed=8, eval_fraction=0.2), out_dir=tmp_path / "b")
    # THEN the held-out examples differ (same size)
    assert len(_eval_prompts(one)) == len(_eval_prompts(other)) == 10
    assert set(_eval_prompts(one)) != set(_eval_prompts(other))


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 42])
def test_held_out_split_never_puts_a_prompt_on_both_sides(seed: int, tmp_path: Path) -> None:
    # GIVEN 20 prompts with 3 different answers each
    path = _qa_dataset(tmp_path, 20, answers_per_prompt=3)
    # WHEN it is validated
    result = validate(path, ValidationOptions(seed=seed, eval_fraction=0.15), out_dir=tmp_path / "out")
    # THEN no prompt is in both splits, all three answers of a held-out prompt go to eval, and nothing is lost
    assert result.report.passed, rendered(result)
    train = {prompt_of(row["messages"]) for row in written(result.train_path)}
    held_out = _eval_prompts(result)
    assert held_out and train.isdisjoint(held_out)
    assert len(held_out) == 3 * len(set(held_out))
    assert len(written_examples(result)) == 60


def test_eval_file_becomes_the_eval_split(tmp_path: Path) -> None:
    # GIVEN a valid training file and a separate eval file that shares no prompt with it
    eval_path = BAD / "eval_train_overlap.eval.jsonl"
    train_path = VALID / "chat.jsonl"
    # WHEN both are validated
    result = validate(train_path, eval_path=eval_path, out_dir=tmp_path / "out")
    # THEN the eval split is the eval file (normalised) and every training example stays in train
    report = result.report
    assert report.passed, rendered(result)
    assert report.split is not None and report.split.eval_source == "eval_file"
    assert report.eval_dataset == str(eval_path)
    expected_eval = [canonical(normalise(r)) for r in read_records(eval_path)]
    assert [canonical(row["messages"]) for row in written(result.eval_path)] == expected_eval
    expected_train = [canonical(normalise(r)) for r in read_records(train_path)]
    assert [canonical(row["messages"]) for row in written(result.train_path)] == expected_train


def test_source_file_is_never_modified(tmp_path: Path) -> None:
    # GIVEN a copy of a valid file with a known old modification time
    source = tmp_path / "data.jsonl"
    original = (VALID / "chat.jsonl").read_bytes()
    source.write_bytes(original)
    os.utime(source, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    # WHEN it is validated and its splits are written next to it
    result = validate(source, out_dir=tmp_path / "out")
    # THEN its bytes and its modification time are unchanged
    assert result.report.passed
    assert source.read_bytes() == original
    assert source.stat().st_mtime_ns == 1_600_000_000_000_000_000


@pytest.mark.parametrize("where", ["record", "message"])
def test_a_huge_key_is_reported_without_being_copied(tmp_path: Path, where: str) -> None:
    # GIVEN lines whose only (or an extra message) key is 100 KB long
    key = "k" * 100_000
    record = {key: 1} if where == "record" else {"messages": [{"role": "user", "content": "hi", key: 1}]}
    path = tmp_path / "keys.jsonl"
    path.write_text("\n".join(json.dumps(record) for _ in range(20)) + "\n")
    # WHEN it is validated
    report = validate(path).report
    # THEN every line is reported, and no problem repeats the key: the report stays small
    assert not report.passed
    text = report.model_dump_json()
    assert len(text) < 100_000, len(text)
    assert key not in text
