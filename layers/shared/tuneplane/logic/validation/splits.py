"""Dataset-wide checks on pass one's fingerprints, and the train/eval split they lead to.

- duplicate_example: the same normalised conversation twice; the first is kept, later ones left out.
- eval_train_overlap: a training prompt that is also in the user's eval file (it would inflate scores).
- held-out split: when there is no eval file, the examples whose seeded prompt fingerprint is among the
  k smallest go to eval. Same seed, same split; the same prompt never lands on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from tuneplane.logic.validation.ledger import Ledger
from tuneplane.logic.validation.problems import ProblemLog
from tuneplane.models.validation import Code, Severity, Source, ValidationOptions

Mask = npt.NDArray[np.bool_]
SPLIT_FILES = ("train.jsonl", "eval.jsonl")


@dataclass
class SplitPlan:
    keep: dict[Source, Mask] = field(default_factory=dict)
    to_eval: dict[Source, Mask] = field(default_factory=dict)
    duplicates: dict[Source, int] = field(default_factory=lambda: {"train": 0, "eval": 0})
    eval_source: Literal["eval_file", "held_out", "none"] = "none"
    train_count: int = 0
    eval_count: int = 0
    train_tokens: int = 0


def _drop_duplicates(role: Source, ledger: Ledger, problems: ProblemLog) -> tuple[Mask, int]:
    arrays = ledger.as_arrays()
    fingerprints, lines = arrays.example_fps, arrays.lines
    keep = np.ones(len(fingerprints), dtype=bool)
    if len(fingerprints) == 0:
        return keep, 0
    _, first, inverse = np.unique(fingerprints, return_index=True, return_inverse=True)
    original = first[inverse]
    repeats = np.flatnonzero(original != np.arange(len(fingerprints)))
    for index in repeats:
        line = int(lines[index])
        severity = problems.add(
            Code.DUPLICATE_EXAMPLE, f"same example as line {int(lines[original[index]])}", source=role, line=line
        )
        problems.drop_line(role, line, had_error=severity is Severity.ERROR)
    keep[repeats] = False
    return keep, int(len(repeats))


def _drop_overlap(train: Ledger, eval_ledger: Ledger, keep: Mask, problems: ProblemLog) -> None:
    eval_arrays = eval_ledger.as_arrays()
    eval_prompts, first = np.unique(eval_arrays.prompt_fps, return_index=True)
    train_arrays = train.as_arrays()
    overlap = np.flatnonzero(keep & np.isin(train_arrays.prompt_fps, eval_prompts))
    positions = np.searchsorted(eval_prompts, train_arrays.prompt_fps[overlap])
    for index, position in zip(overlap, positions, strict=True):
        line = int(train_arrays.lines[index])
        eval_line = int(eval_arrays.lines[first[position]])
        message = f"the same prompt is in the eval file at line {eval_line}"
        severity = problems.add(Code.EVAL_TRAIN_OVERLAP, message, source="train", line=line)
        problems.drop_line("train", line, had_error=severity is Severity.ERROR)
    keep[overlap] = False


def _hold_out(prompts: npt.NDArray[np.uint64], keep: Mask, options: ValidationOptions) -> Mask:
    to_eval = np.zeros(len(prompts), dtype=bool)
    kept = int(keep.sum())
    if options.eval_fraction == 0 or kept < 2:
        return to_eval
    distinct = np.unique(prompts[keep])
    wanted = min(options.max_eval_examples, max(1, round(options.eval_fraction * kept)), len(distinct) - 1)
    if wanted < 1:
        return to_eval
    threshold = distinct[wanted - 1]
    held_out: Mask = keep & (prompts <= threshold)
    return held_out


def plan_splits(ledgers: dict[Source, Ledger], options: ValidationOptions, problems: ProblemLog) -> SplitPlan:
    plan = SplitPlan()
    for role, ledger in ledgers.items():
        plan.keep[role], plan.duplicates[role] = _drop_duplicates(role, ledger, problems)
    train_arrays = ledgers["train"].as_arrays()
    if "eval" in ledgers:
        _drop_overlap(ledgers["train"], ledgers["eval"], plan.keep["train"], problems)
        plan.to_eval["eval"] = plan.keep["eval"]
        plan.to_eval["train"] = np.zeros(len(ledgers["train"]), dtype=bool)
        plan.eval_source = "eval_file"
    else:
        plan.to_eval["train"] = _hold_out(train_arrays.prompt_fps, plan.keep["train"], options)
        plan.eval_source = "held_out" if plan.to_eval["train"].any() else "none"
    train_mask = plan.keep["train"] & ~plan.to_eval["train"]
    plan.train_count = int(train_mask.sum())
    plan.eval_count = sum(int(mask.sum()) for mask in plan.to_eval.values())
    plan.train_tokens = int(train_arrays.tokens[train_mask].sum(dtype=np.int64))
    return plan


def write_splits(ledgers: dict[Source, Ledger], plan: SplitPlan, out_dir: Path) -> tuple[Path, Path | None]:
    """Pass two: copy each kept example from the spill files into train.jsonl / eval.jsonl. A spilled line ends at
    its b"\\n" only (binary iteration splits there and nowhere else) and holds no other line break (Ledger.append)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    train_path, eval_path = (out_dir / name for name in SPLIT_FILES)
    with train_path.open("wb") as train_out, eval_path.open("wb") as eval_out:
        for role, ledger in ledgers.items():
            keep, to_eval = plan.keep[role].tolist(), plan.to_eval[role].tolist()
            with ledger.spill_path.open("rb") as spill:
                for line, kept, goes_to_eval in zip(spill, keep, to_eval, strict=True):
                    if kept:
                        (eval_out if goes_to_eval else train_out).write(line)
    if plan.eval_count == 0:
        eval_path.unlink()
        return train_path, None
    return train_path, eval_path
