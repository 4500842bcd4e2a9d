"""`tuneplane` command line: the same validator the pipeline runs, offline on a local file.

    tuneplane validate data.jsonl --base-model ./my-base-model --max-seq-length 4096
    tuneplane validate s3://bucket/incoming/data.jsonl.gz --eval-file eval.jsonl --json

Exit codes: 0 valid, 1 invalid, 2 usage error (bad arguments, missing file, unusable base model).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from tuneplane.errors import InvalidConfiguration, TuneplaneError
from tuneplane.models.validation import Code, Severity, ValidationOptions

if TYPE_CHECKING:  # the validator (numpy, tokenizers) is imported only when a command needs it
    from tuneplane.logic.validation import DatasetSource

EXIT_VALID, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuneplane", description="tuneplane: fine-tuning control plane tools")
    commands = parser.add_subparsers(dest="command", required=True)
    validate = commands.add_parser("validate", help="validate a JSONL fine-tuning dataset before uploading it")
    validate.add_argument("file", help="dataset: a path or s3://bucket/key; .jsonl or .jsonl.gz")
    validate.add_argument("--eval-file", help="a separate evaluation set (else a seeded share is held out)")
    validate.add_argument(
        "--base-model", help="base model directory or s3:// prefix with tokenizer.json and chat template"
    )
    validate.add_argument("--max-seq-length", type=int, help="token budget of one example (default 2048)")
    validate.add_argument(
        "--config", type=Path, help='the dataset\'s sidecar file (<dataset>.tuneplane.json): {"validation": {...}}'
    )
    validate.add_argument("--min-examples", type=int, help="minimum number of usable examples (default 10)")
    validate.add_argument("--max-invalid-fraction", type=float, help="share of bad lines to drop instead of rejecting")
    validate.add_argument(
        "--pii", choices=[s.value for s in Severity], help="severity of pii_detected (default warning)"
    )
    validate.add_argument("--instance-type", help="training instance for the cost estimate (default ml.g5.2xlarge)")
    validate.add_argument("--epochs", type=float, help="training epochs for the cost estimate (default 3)")
    validate.add_argument("--out-dir", type=Path, help="write the normalised train.jsonl / eval.jsonl here")
    validate.add_argument("--json", action="store_true", help="print the full report as JSON instead of a summary")
    return parser


def _options(args: argparse.Namespace) -> ValidationOptions:
    values: dict[str, object] = {}
    if args.config:  # the same sidecar rules as the pipeline's StartRun: unknown keys are an error
        from tuneplane.logic.start_run import parse_sidecar

        try:
            values = dict(parse_sidecar(args.config.read_bytes()).validation)
        except TuneplaneError as exc:
            raise InvalidConfiguration(f"{args.config}: {exc}") from exc
    flags = {
        "max_seq_length": args.max_seq_length,
        "min_examples": args.min_examples,
        "max_invalid_fraction": args.max_invalid_fraction,
        "instance_type": args.instance_type,
        "epochs": args.epochs,
    }
    values |= {k: v for k, v in flags.items() if v is not None}
    if args.pii:
        values["severity_overrides"] = {**values.get("severity_overrides", {}), Code.PII_DETECTED.value: args.pii}  # type: ignore[dict-item]
    return ValidationOptions.model_validate(values)


def _source(location: str) -> DatasetSource:
    from tuneplane.logic.validation import DatasetSource

    if location.startswith("s3://"):
        from tuneplane.adapters import s3

        bucket, key = s3.parse_s3_uri(location)
        return DatasetSource(location, partial(s3.open_object, bucket, key), s3.object_size(bucket, key))
    path = Path(location)
    if not path.is_file():
        raise FileNotFoundError(f"{location}: no such file")
    return DatasetSource.local(path)


def _validate(args: argparse.Namespace) -> int:
    from tuneplane.logic.base_model import load_model_context
    from tuneplane.logic.validation import validate_dataset
    from tuneplane.logic.validation.summary import render_summary

    options = _options(args)
    model = load_model_context(args.base_model) if args.base_model else None
    eval_source = _source(args.eval_file) if args.eval_file else None
    result = validate_dataset(_source(args.file), options, eval_source=eval_source, model=model, out_dir=args.out_dir)
    print(result.report.model_dump_json(indent=2) if args.json else render_summary(result.report))
    return EXIT_VALID if result.report.passed else EXIT_INVALID


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _validate(args)
    except (TuneplaneError, FileNotFoundError, ValidationError, json.JSONDecodeError) as exc:
        print(f"tuneplane: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
