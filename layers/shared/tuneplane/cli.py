"""`tuneplane` command line: the same validator the pipeline runs, offline on a local file; base model staging;
read-only checks of a deployed stack.

    tuneplane validate data.jsonl --base-model ./my-base-model --max-seq-length 4096
    tuneplane validate s3://bucket/incoming/data.jsonl.gz --eval-file eval.jsonl --json
    tuneplane stage-model Qwen/Qwen2.5-7B-Instruct s3://my-models/qwen2.5-7b-instruct/ --kms-key-id alias/x
    tuneplane doctor --stack-name tuneplane-dev --region us-east-1 --json

Exit codes: 0 valid (or staged, or no error found), 1 invalid (or an error found), 2 usage error (bad arguments,
missing, unreadable or wrong kind of file, unusable base model, a refused or failed staging), 3 AWS could not be
used (no credentials or region, AWS unreachable, a call refused): one line on stderr says which, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from tuneplane.errors import InvalidConfiguration, TuneplaneError
from tuneplane.models.validation import Code, Severity, ValidationOptions

if TYPE_CHECKING:  # the validator (numpy, tokenizers) is imported only when a command needs it
    from tuneplane.logic.validation.validator import DatasetSource

EXIT_VALID, EXIT_INVALID, EXIT_USAGE, EXIT_AWS = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # the shell's convention for Ctrl-C


class UsageError(Exception):
    """A path or argument the command cannot use; the message says what is wrong with it."""


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
    _stage_model_parser(commands)
    _doctor_parser(commands)
    return parser


def _stage_model_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    stage = commands.add_parser(
        "stage-model",
        help="copy a base model to S3 for training (the BaseModelS3Uri prefix)",
        description="Check a base model and copy what training needs (safetensors weights, config.json, "
        "generation_config.json, tokenizer files, chat template) to an S3 prefix: the training jobs run with "
        "network isolation and read it as their `model` channel. Nothing is uploaded unless every check passes. "
        "The manifest tuneplane-model.json (files, sizes, sha256, source, model type) is written last: a prefix "
        "without it holds an unfinished copy.",
        epilog="A hub id needs the huggingface_hub package (not in the Lambda layer's requirements; .venv has it "
        "as a dependency of transformers, requirements/ml.txt); gated models need `hf auth login` or HF_TOKEN. "
        "Files are downloaded to the Hugging Face cache (HF_HOME). Exit codes: 0 staged (or dry run passed), "
        "2 refused or failed.",
    )
    stage.add_argument("source", help="a local model directory, or a Hugging Face hub id (org/name)")
    stage.add_argument("destination", help="s3://bucket/prefix/ to copy to: the stack's BaseModelS3Uri")
    stage.add_argument("--revision", help="hub branch, tag or commit (default: main); hub ids only")
    stage.add_argument(
        "--kms-key-id",
        help="encrypt with this KMS key (SSE-KMS), e.g. the stack's data key, which the SageMaker role may use; "
        "default: the bucket's default encryption",
    )
    stage.add_argument(
        "--overwrite",
        action="store_true",
        help="replace what the prefix holds (objects not part of this model are deleted); on a versioned bucket "
        "the earlier objects stay recoverable as noncurrent versions",
    )
    stage.add_argument(
        "--dry-run",
        action="store_true",
        help="run every check and list the files; upload nothing (a hub model is still downloaded)",
    )


def _doctor_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    doctor = commands.add_parser(
        "doctor",
        help="check a deployed stack before its first run (quotas, images, Bedrock, Slack secret, base model)",
        description="Read-only checks of a deployed stack with your own AWS credentials: the SageMaker quotas of its "
        "instance types, its container images at ImageTag, Bedrock Custom Model Import (DeployTarget=bedrock), the "
        "Slack webhook secret (described, never read) and the staged base model (tuneplane-model.json and its "
        "files). One line per finding: OK, WARN or ERROR, what was found and what to do. A check that cannot run "
        "(access denied, a service not answering) is a WARN naming the IAM action it needs.",
        epilog="Exit codes: 0 no error (warnings allowed), 1 at least one error, 2 usage error. The permissions it "
        "needs are listed in docs/deploy-to-aws.md (Check a deployment first). Credentials and profile: the usual AWS "
        "environment (AWS_PROFILE, ...).",
    )
    doctor.add_argument("--stack-name", required=True, help="the stack sam deploy created, e.g. tuneplane-dev")
    doctor.add_argument("--region", help="the stack's region (default: AWS_REGION / AWS_DEFAULT_REGION / profile)")
    doctor.add_argument("--json", action="store_true", help="print the findings as JSON")


def _doctor(args: argparse.Namespace) -> int:
    import boto3

    from tuneplane.adapters.account import AwsAccount
    from tuneplane.logic import doctor

    region = args.region or boto3.session.Session().region_name
    if not region:
        raise InvalidConfiguration("no region: pass --region (or set AWS_REGION)")
    report = doctor.diagnose(AwsAccount(region), args.stack_name)
    print(doctor.render_json(report) if args.json else doctor.render_text(report))
    return report.exit_code


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
    from tuneplane.logic.validation.validator import DatasetSource

    if location.startswith("s3://"):
        from tuneplane.adapters import s3

        bucket, key = s3.parse_s3_uri(location)
        return DatasetSource.s3(bucket, key)
    return DatasetSource.local(readable_file(location))


def readable_file(location: str) -> Path:
    """``location`` as a file this process can read, or UsageError saying why not (missing, a directory, ...)."""
    path = Path(location).expanduser()
    if path.is_dir():
        raise UsageError(f"{location} is a directory, not a dataset file: give the .jsonl or .jsonl.gz file in it")
    if not path.exists():
        raise UsageError(f"{location}: no such file")
    if not path.is_file():
        raise UsageError(f"{location} is not a regular file")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{location}: permission denied (cannot read it)")
    return path


def _validate(args: argparse.Namespace) -> int:
    from tuneplane.logic.base_model import load_model_context
    from tuneplane.logic.validation.summary import render_summary
    from tuneplane.logic.validation.validator import validate_dataset

    options = _options(args)
    model = load_model_context(args.base_model) if args.base_model else None
    eval_source = _source(args.eval_file) if args.eval_file else None
    result = validate_dataset(_source(args.file), options, eval_source=eval_source, model=model, out_dir=args.out_dir)
    print(result.report.model_dump_json(indent=2) if args.json else render_summary(result.report))
    return EXIT_VALID if result.report.passed else EXIT_INVALID


def _stage_model(args: argparse.Namespace) -> int:
    from tuneplane.adapters import model_store
    from tuneplane.logic import stage_model as stage

    bucket, prefix = stage.destination(args.destination)  # before any download
    uri = f"s3://{bucket}/{prefix}"
    directory, commit = _model_directory(args.source, args.revision)
    plan = stage.plan_stage(directory)
    existing = model_store.list_keys(bucket, prefix)
    versioning = model_store.bucket_versioning(bucket) if existing else None
    stage.check_destination(existing, prefix, plan, overwrite=args.overwrite, uri=uri, versioning=versioning)
    stale = stage.stale_keys(existing, prefix, plan)
    if args.dry_run:
        print(stage.render_plan(plan, uri, stale, prefix))
        return EXIT_VALID
    manifest_key = prefix + stage.MANIFEST_NAME
    if manifest_key in existing:  # first: an interrupted overwrite must not look complete
        model_store.delete_keys(bucket, [manifest_key])
    hashes: dict[str, str] = {}
    for number, file in enumerate(plan.files, 1):
        print(f"[{number}/{len(plan.files)}] {file.name} ({stage.format_size(file.size)})", file=sys.stderr)
        hashes[file.name] = stage.sha256_file(file.path)
        model_store.upload(file.path, bucket, prefix + file.name, kms_key_id=args.kms_key_id)
    model_store.delete_keys(bucket, stale)  # after the upload: SageMaker would copy them into the job
    source = args.source if commit else str(directory.resolve())
    manifest = stage.build_manifest(
        plan, source=source, revision=args.revision, commit=commit, hashes=hashes, created_at=datetime.now(UTC)
    )
    model_store.put_json(bucket, manifest_key, manifest, kms_key_id=args.kms_key_id)  # last
    print(stage.render_summary(plan, uri, f"{source}@{commit[:12]}" if commit else source, stale))
    return EXIT_VALID


def _model_directory(source: str, revision: str | None) -> tuple[Path, str | None]:
    """The local directory to stage, and the hub commit it was downloaded at (None for a local directory)."""
    from tuneplane.logic import stage_model as stage

    if not stage.is_hub_id(source):
        if revision:
            raise InvalidConfiguration(f"--revision applies to hub ids only, and {source} is a local path")
        path = Path(source).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"{source}: no such directory (and not a hub id: org/name)")
        return path, None
    from tuneplane.adapters import model_hub

    commit, names = model_hub.repo_files(source, revision)
    stage.check_file_names(names, f"{source}@{commit[:12]}")  # before downloading anything
    directory = model_hub.download(source, commit, stage.HUB_METADATA_PATTERNS)
    stage.check_metadata(directory)  # before downloading the weights
    weights = stage.weight_names(directory)
    return model_hub.download(source, commit, [*stage.HUB_METADATA_PATTERNS, *weights]), commit


def _aws_problem(exc: Exception) -> str | None:
    """One line for an AWS SDK error (no credentials, no region, unreachable, refused), or None for anything else."""
    from botocore import exceptions as aws

    if isinstance(exc, aws.NoCredentialsError | aws.PartialCredentialsError | aws.CredentialRetrievalError):
        return (
            f"no usable AWS credentials ({exc}): s3:// paths and AWS commands need them; configure them "
            "(aws configure, AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) or use local files"
        )
    if isinstance(exc, aws.ProfileNotFound):
        return f"{exc}: check AWS_PROFILE (aws configure list-profiles)"
    if isinstance(exc, aws.NoRegionError):
        return "no AWS region: set AWS_REGION (or pass --region where the command has it)"
    if isinstance(exc, aws.EndpointConnectionError | aws.ConnectTimeoutError | aws.ReadTimeoutError):
        return f"cannot reach AWS: {exc}"
    if isinstance(exc, aws.ClientError):
        error = exc.response.get("Error", {})
        return f"AWS refused {exc.operation_name}: {error.get('Code', '?')}: {error.get('Message', '')}".rstrip(": ")
    if isinstance(exc, aws.BotoCoreError):
        return f"AWS: {exc}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        commands = {"stage-model": _stage_model, "doctor": _doctor, "validate": _validate}
        return commands[args.command](args)
    except (TuneplaneError, UsageError, FileNotFoundError, ValidationError, json.JSONDecodeError) as exc:
        print(f"tuneplane: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except IsADirectoryError as exc:
        print(f"tuneplane: error: {exc.filename} is a directory, not a file", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # PermissionError, a full disk for --out-dir, ...
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"tuneplane: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("tuneplane: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        problem = _aws_problem(exc)
        if problem is None:
            raise
        print(f"tuneplane: error: {problem}", file=sys.stderr)
        return EXIT_AWS


if __name__ == "__main__":
    sys.exit(main())
