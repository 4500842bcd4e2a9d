"""validate_dataset: the whole pre-flight, shared by the Validate Lambda and `tuneplane validate`.

Pass one streams each file once (eval file first, then train), checks every line and spills the usable
examples with their fingerprints to a temporary file. The dataset-wide checks (duplicates, eval/train
overlap, the seeded held-out split, minimum size) then run on the fingerprint arrays, and pass two copies
the spilled examples into ``train.jsonl`` and ``eval.jsonl``.

Temporary disk: the spill holds every usable example once, as normalised JSON (a chat line as it came, other
formats rewritten as {"messages": [...]}, which for the tiniest prompt/completion lines is 2.3 times their size),
and the splits hold it once more. bench/validation_bounds.py measured 2.0 bytes written per input byte for chat
data and 4.6 for tiny prompt/completion lines, so the Validate Lambda's 10 GiB /tmp holds about 4.9 GiB of chat
JSONL (2.1 GiB of the tiniest prompt/completion data), its 1 GB of memory about 5.4 million examples
(scanner.MEMORY_PER_EXAMPLE_BYTES), and its 900 s whatever the throughput allows: the advertised 50 GiB
(max_file_bytes) is not reachable there. ``ResourceBudget`` stops a scan with a clear too_large_to_validate
rejection before the disk, the memory or the time runs out.
"""

from __future__ import annotations

import errno
import io
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tuneplane.adapters import s3
from tuneplane.errors import InvalidConfiguration, PlatformLimitExceeded
from tuneplane.logic.chat_template import ChatTokenizer
from tuneplane.logic.cost import PricingTable, estimate_cost
from tuneplane.logic.validation.formats import Message
from tuneplane.logic.validation.ledger import Ledger
from tuneplane.logic.validation.problems import ProblemLog
from tuneplane.logic.validation.reader import Readable, Reopen
from tuneplane.logic.validation.scanner import FileScanner, Meter, ResourceBudget, ScanOutcome
from tuneplane.logic.validation.splits import SPLIT_FILES, SplitPlan, plan_splits, write_splits
from tuneplane.logic.validation.tokens import TokenStage
from tuneplane.models.validation import (
    FILE_LEVEL_CODES,
    Code,
    CostEstimate,
    Source,
    SplitSummary,
    TemplateCheck,
    TokenStats,
    ValidationOptions,
    ValidationReport,
)


@dataclass(frozen=True)
class DatasetSource:
    """A dataset to read: a display name (path or s3:// URI), how to open it, and its size if known.

    ``reopen(offset)``, when given, opens the same bytes again from an offset, so that a read that fails for a
    transient reason (an S3 read timeout, a reset connection) resumes where it stopped instead of failing the run.
    """

    name: str
    open: Callable[[], Readable]
    size: int | None = None
    reopen: Reopen | None = None

    @classmethod
    def local(cls, path: Path) -> DatasetSource:
        def reopen(offset: int) -> Readable:
            file = path.open("rb")
            file.seek(offset)
            return file

        return cls(str(path), lambda: path.open("rb"), path.stat().st_size, reopen)

    @classmethod
    def s3(cls, bucket: str, key: str, version_id: str | None = None) -> DatasetSource:
        """An S3 object; a resumed read is a ranged GET of the same version (or, unversioned, of the same ETag)."""
        etag, size = s3.object_etag_and_size(bucket, key, version_id)
        if_match = None if version_id else etag

        def open_at(offset: int) -> Readable:
            if offset >= size:  # failed on the very last read: nothing is left to fetch (S3 would answer 416)
                return io.BytesIO()
            # 403, 412 (replaced), 416, 404 raise by their cause (never retried); a 5xx or throttling: StorageError
            return s3.open_object_at(bucket, key, version_id, start=offset, if_match=if_match)  # type: ignore[no-any-return]

        return cls(f"s3://{bucket}/{key}", lambda: s3.open_object(bucket, key, version_id), size, open_at)


@dataclass
class ValidationResult:
    report: ValidationReport
    train_path: Path | None = None
    eval_path: Path | None = None


@dataclass
class ModelContext:
    """What validation knows about the base model: its tokenizer and, for the cost estimate, its size."""

    tokenizer: ChatTokenizer
    parameters: int | None = None


def validate_dataset(
    train: DatasetSource,
    options: ValidationOptions,
    *,
    eval_source: DatasetSource | None = None,
    model: ModelContext | None = None,
    out_dir: Path | None = None,
    pricing: PricingTable | None = None,
    budget: ResourceBudget | None = None,
) -> ValidationResult:
    """Validate `train` (and `eval_source`); when it passes and `out_dir` is given, write the splits there.

    `budget` is what the machine allows (time, memory, temporary disk): a scan that would outrun it stops with a
    too_large_to_validate rejection saying what was read. A full disk all the same raises PlatformLimitExceeded, a
    source that stays unreadable after retries StorageError: neither is reported as a problem with the data.
    """
    try:
        return _validate(train, options, eval_source, model, out_dir, pricing, budget or ResourceBudget())
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise PlatformLimitExceeded(
                f"the temporary disk filled up while validating {train.name}: a limit of the platform, not an error "
                "in the data"
            ) from exc
        raise


def _validate(
    train: DatasetSource,
    options: ValidationOptions,
    eval_source: DatasetSource | None,
    model: ModelContext | None,
    out_dir: Path | None,
    pricing: PricingTable | None,
    budget: ResourceBudget,
) -> ValidationResult:
    started = time.perf_counter()
    if out_dir is not None:
        _refuse_to_overwrite(out_dir, [train, eval_source])
    problems = ProblemLog(options)
    with tempfile.TemporaryDirectory(prefix="tuneplane-validate-") as spill_dir, ExitStack() as stack:
        meter = Meter(budget, _disk_copies(Path(spill_dir), out_dir), Path(spill_dir))
        tokens = TokenStage(model.tokenizer, options.max_seq_length, problems) if model else None
        if tokens is not None:
            stack.callback(tokens.shutdown)
        outcomes: dict[Source, ScanOutcome] = {}
        ledgers: dict[Source, Ledger] = {}
        sources: dict[Source, DatasetSource] = {"train": train}
        if eval_source:
            sources["eval"] = eval_source
        for role in ("eval", "train"):
            if role not in sources:
                continue
            ledger = ledgers[role] = Ledger(Path(spill_dir) / f"{role}.jsonl", options.seed)
            stack.callback(ledger.close)
            if all(outcome.complete for outcome in outcomes.values()):
                outcomes[role] = _scan(sources[role], role, options, problems, ledger, tokens, meter)
            else:  # the eval file stopped the validation: the train file is not read
                ledger.close()
                outcomes[role] = ScanOutcome(complete=False)
        plan = plan_splits(ledgers, options, problems)
        if all(outcome.complete for outcome in outcomes.values()):  # counts of a partial read would mislead
            _check_sizes(plan, outcomes, options, problems)
        template = _template_check(tokens, model, problems)
        passed = _passed(problems, outcomes, options)
        train_path = eval_path = None
        if passed and out_dir is not None:
            train_path, eval_path = write_splits(ledgers, plan, out_dir)
        token_stats = _token_stats(ledgers, plan, tokens) if tokens else None
        report = ValidationReport(
            dataset=train.name,
            eval_dataset=eval_source.name if eval_source else None,
            passed=passed,
            format=outcomes["train"].format,
            lines_read=outcomes["train"].lines_read,
            examples_valid=len(ledgers["train"]),
            lines_dropped=problems.dropped_lines["train"],
            lines_dropped_count=problems.dropped_count["train"],
            duplicates_dropped=plan.duplicates["train"],
            problems=problems.listed(),
            problem_counts=problems.counts(),
            tokens=token_stats,
            template=template,
            cost=_cost(token_stats, model, options, pricing, plan),
            split=SplitSummary(
                train_examples=plan.train_count,
                eval_examples=plan.eval_count,
                eval_source=plan.eval_source,
                train_uri=str(train_path) if train_path else None,
                eval_uri=str(eval_path) if eval_path else None,
            ),
            options=options,
            seconds=round(time.perf_counter() - started, 3),
        )
    return ValidationResult(report, train_path, eval_path)


def _refuse_to_overwrite(out_dir: Path, sources: list[DatasetSource | None]) -> None:
    outputs = {(out_dir / name).resolve() for name in SPLIT_FILES}
    for source in sources:
        if source is not None and Path(source.name).resolve() in outputs:
            raise InvalidConfiguration(
                f"{source.name} would be overwritten by the normalised splits: choose another output directory"
            )


def _scan(
    source: DatasetSource,
    role: Source,
    options: ValidationOptions,
    problems: ProblemLog,
    ledger: Ledger,
    tokens: TokenStage | None,
    meter: Meter,
) -> ScanOutcome:
    scanner = FileScanner(options, problems, role, meter)

    def usable(line: int, messages: list[Message], example_json: bytes) -> None:
        if tokens is None:
            ledger.append(line, messages, example_json)
        else:
            tokens.add(line, messages, example_json, role, ledger.append)

    with source.open() as raw:  # type: ignore[attr-defined]
        outcome = scanner.scan(source.name, raw, source.size, usable, reopen=source.reopen)
    if tokens is not None:
        tokens.flush(ledger.append)
    ledger.close()
    return outcome


def _disk_copies(spill_dir: Path, out_dir: Path | None) -> int:
    """How many copies of the usable examples the spill's filesystem holds at the end: the spill, and the splits
    when they are written to the same filesystem (the Lambda writes both to /tmp)."""
    if out_dir is None:
        return 1
    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return 2 if os.stat(existing).st_dev == os.stat(spill_dir).st_dev else 1


def _check_sizes(
    plan: SplitPlan, outcomes: dict[Source, ScanOutcome], options: ValidationOptions, problems: ProblemLog
) -> None:
    # Counted before the held-out split: the minimum is about the data the user gave us.
    usable = plan.train_count + (plan.eval_count if plan.eval_source == "held_out" else 0)
    if outcomes["train"].non_blank_lines and usable < options.min_examples:
        problems.add(
            Code.TOO_FEW_EXAMPLES,
            f"{usable} usable training examples; at least {options.min_examples} needed (min_examples)",
            source="train",
        )
    if "eval" in outcomes and outcomes["eval"].non_blank_lines and plan.eval_count == 0:
        problems.add(Code.TOO_FEW_EXAMPLES, "the eval file has no usable example", source="eval")
    for role, outcome in outcomes.items():
        bad = problems.error_lines[role]
        if not bad or bad <= options.max_invalid_fraction * outcome.non_blank_lines:
            continue
        # With max_invalid_fraction 0 the line errors themselves say why the file is rejected; but a code downgraded
        # to a warning (severity_overrides) still leaves its lines out, and then no error would name the reason.
        if options.max_invalid_fraction > 0 or not problems.has_line_errors(role, FILE_LEVEL_CODES):
            downgraded = problems.downgraded(role)
            why = (
                f" ({', '.join(downgraded)}: made warnings by severity_overrides, such lines are still left out)"
                if downgraded
                else ""
            )
            problems.add(
                Code.TOO_MANY_INVALID,
                f"{bad} of {outcome.non_blank_lines} lines ({bad / outcome.non_blank_lines:.1%}) cannot be used"
                f"{why}; max_invalid_fraction allows {options.max_invalid_fraction:.1%}",
                source=role,
            )


def _passed(problems: ProblemLog, outcomes: dict[Source, ScanOutcome], options: ValidationOptions) -> bool:
    if problems.has_errors(file_level_only=FILE_LEVEL_CODES):
        return False
    # Lines with errors are tolerated (and left out) only up to max_invalid_fraction of each file.
    return all(
        problems.error_lines[role] <= options.max_invalid_fraction * outcome.non_blank_lines
        for role, outcome in outcomes.items()
    )


def _template_check(
    tokens: TokenStage | None, model: ModelContext | None, problems: ProblemLog
) -> TemplateCheck | None:
    if tokens is None or model is None:
        return None
    tally = tokens.tally
    chat = model.tokenizer
    if tally.examples_without_end_of_turn:
        problems.add(
            Code.EOS_NOT_TRAINED,
            f"in {tally.examples_without_end_of_turn} of {tally.examples_checked} examples (first: line "
            f"{tally.first_line_without_end_of_turn}) no end-of-turn token ({', '.join(chat.end_of_turn_tokens)}) "
            "is inside the trained assistant tokens, so the model would not learn to stop; the chat template must "
            "put it inside the {% generation %} block",
            source="train",
        )
    return TemplateCheck(
        end_of_turn_tokens=chat.end_of_turn_tokens,
        uses_generation_blocks=chat.uses_generation_blocks,
        examples_checked=tally.examples_checked,
        examples_without_end_of_turn=tally.examples_without_end_of_turn,
        end_of_turn_trained=tally.examples_checked > 0 and tally.examples_without_end_of_turn == 0,
    )


def _token_stats(ledgers: dict[Source, Ledger], plan: SplitPlan, tokens: TokenStage) -> TokenStats | None:
    selected: list[npt.NDArray[np.uint32]] = []
    trained = 0
    for role, ledger in ledgers.items():
        arrays = ledger.as_arrays()
        mask = plan.keep[role]
        selected.append(arrays.tokens[mask])
        trained += int(arrays.trained_tokens[mask].sum())
    counts = np.concatenate(selected) if selected else np.zeros(0, dtype=np.uint32)
    if counts.size == 0:
        return None
    return TokenStats(
        examples=int(counts.size),
        total=int(counts.sum(dtype=np.int64)),
        min=int(counts.min()),
        p50=int(np.percentile(counts, 50, method="nearest")),
        p95=int(np.percentile(counts, 95, method="nearest")),
        max=int(counts.max()),
        over_max_seq_length=tokens.tally.over_max_seq_length,
        trained_total=trained,
    )


def _cost(
    stats: TokenStats | None,
    model: ModelContext | None,
    options: ValidationOptions,
    pricing: PricingTable | None,
    plan: SplitPlan,
) -> CostEstimate | None:
    if stats is None or model is None:
        return None
    return estimate_cost(
        tokens_per_epoch=plan.train_tokens,
        epochs=options.epochs,
        instance_type=options.instance_type,
        pricing=pricing or PricingTable.bundled(),
        parameters=model.parameters,
        spot=options.spot,
    )
