"""StartRun: one uploaded dataset version -> one pipeline execution.

The execution name (which is also the run id) is derived from bucket, key and version id, so a second delivery
of the same S3 event finds its execution already there and starts nothing, while a new version of the same file
starts a new run. The dataset's optional sidecar file ``<dataset>.tuneplane.json`` is read and checked here; a
broken one does not stop the run from starting: the problem travels in the execution input (``sidecar_error``)
and the Validate stage rejects the run with it, so the uploader hears about it like any other rejection.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from tuneplane.adapters import s3, stepfunctions
from tuneplane.config import StartRunSettings
from tuneplane.errors import InvalidConfiguration, RunAlreadyStarted
from tuneplane.models.run import (
    DATASET_SUFFIXES,
    SIDECAR_SUFFIX,
    DatasetSettings,
    ObjectVersion,
    RunInput,
    StartRunResult,
)
from tuneplane.observability import logger

NAME_MAX = 80  # Step Functions execution names: 1-80 characters of [0-9A-Za-z_-] (we also avoid the ones it allows)
HASH_CHARS = 16  # 64 bits of SHA-256: collisions between distinct object versions are not a practical concern
_SLUG_MAX = NAME_MAX - 1 - HASH_CHARS
_NOT_NAME_CHARS = re.compile(r"[^0-9A-Za-z_]+")


def dataset_stem(key: str) -> str | None:
    """``incoming/a.jsonl`` and ``incoming/a.jsonl.gz`` -> ``incoming/a``; None for a key that is no dataset."""
    for suffix in DATASET_SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix) and not key.endswith("/" + suffix):
            return key[: -len(suffix)]
    return None


def sidecar_key(dataset_key: str) -> str:
    """The sidecar that belongs to a dataset: same folder and stem, ``.tuneplane.json`` instead of ``.jsonl[.gz]``."""
    stem = dataset_stem(dataset_key)
    if stem is None:
        raise ValueError(f"not a dataset key: {dataset_key!r}")
    return stem + SIDECAR_SUFFIX


def run_name(obj: ObjectVersion, incoming_prefix: str = "incoming/") -> str:
    """The execution name and run id of one object version: ``<readable dataset slug>-<16 hex of a hash>``.

    Deterministic (same bucket, key and version: same name), at most 80 characters of ``[0-9A-Za-z_-]``, starting
    with a letter or digit. Without a version id (a bucket that never had versioning on) the ETag and the event's
    sequencer identify the upload instead.
    """
    stem = dataset_stem(obj.key) or obj.key
    if stem.startswith(incoming_prefix):
        stem = stem[len(incoming_prefix) :]
    slug = _NOT_NAME_CHARS.sub("-", stem).strip("-_")[:_SLUG_MAX].rstrip("-_") or "dataset"
    identity = f"version={obj.version_id}" if obj.version_id else f"etag={obj.etag};sequencer={obj.sequencer or ''}"
    digest = hashlib.sha256(f"{obj.bucket}\n{obj.key}\n{identity}".encode()).hexdigest()[:HASH_CHARS]
    return f"{slug}-{digest}"


def _settings_model(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model that the setting at ``loc`` belongs to (``("training", "foo")`` -> TrainingOverrides)."""
    model: type[BaseModel] = DatasetSettings
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _problem(error: ErrorDetails) -> str:
    where = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        model = _settings_model(error["loc"])
        if model is None:
            return f"unknown setting '{where}'"
        allowed = ", ".join(sorted(model.model_fields))
        return f"unknown setting '{where}' (allowed: {allowed})"
    if not where:
        return 'must be a JSON object, e.g. {"validation": {"min_examples": 50}}'
    return f"{where}: {error['msg']}"


def parse_sidecar(raw: bytes) -> DatasetSettings:
    """The sidecar's settings, or ``InvalidConfiguration`` saying what is wrong and where."""
    try:
        document = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise InvalidConfiguration(f"not UTF-8 text (byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise InvalidConfiguration(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except RecursionError as exc:  # the parser recurses per nesting level: thousands of [ or { exhaust the stack
        raise InvalidConfiguration("nested too deeply to be a settings file") from exc
    try:
        return DatasetSettings.model_validate(document)
    except RecursionError as exc:
        raise InvalidConfiguration("nested too deeply to be a settings file") from exc
    except ValidationError as exc:
        raise InvalidConfiguration("; ".join(_problem(error) for error in exc.errors())) from exc


@dataclass(frozen=True)
class Sidecar:
    """A dataset's sidecar file as found: its settings, or why they are unusable."""

    key: str
    version_id: str | None
    settings: DatasetSettings | None
    error: str | None = None


def load_sidecar(bucket: str, dataset_key: str, limit: int) -> Sidecar | None:
    """The dataset's sidecar file (its current version), or None when it has none. Read errors propagate."""
    key = sidecar_key(dataset_key)
    found = s3.read_if_exists(bucket, key, limit)
    if found is None:
        return None
    raw, version_id = found
    if len(raw) > limit:
        return Sidecar(key, version_id, None, f"larger than {limit} bytes")
    try:
        return Sidecar(key, version_id, parse_sidecar(raw))
    except InvalidConfiguration as exc:
        return Sidecar(key, version_id, None, str(exc))


def build_run_input(run_id: str, obj: ObjectVersion, sidecar: Sidecar | None) -> RunInput:
    settings = sidecar.settings if sidecar else None
    return RunInput(
        run_id=run_id,
        bucket=obj.bucket,
        key=obj.key,
        version_id=obj.version_id,
        eval_key=settings.eval_file if settings else None,
        overrides=dict(settings.validation) if settings else {},
        training=settings.training.model_dump(exclude_none=True) if settings else {},
        evaluation=settings.evaluation.model_dump(exclude_none=True) if settings else {},
        deploy_target=settings.deploy.target if settings else None,
        sidecar_key=sidecar.key if sidecar else None,
        sidecar_version_id=sidecar.version_id if sidecar else None,
        sidecar_error=sidecar.error if sidecar else None,
    )


def start_run(obj: ObjectVersion, settings: StartRunSettings) -> StartRunResult:
    """Start the pipeline on one uploaded object version, exactly once however often the event is delivered."""
    if not obj.key.startswith(settings.incoming_prefix) or dataset_stem(obj.key) is None:
        logger.warning("not a dataset upload, ignored", bucket=obj.bucket, key=obj.key)
        return StartRunResult(status="ignored", key=obj.key, version_id=obj.version_id)
    run_id = run_name(obj, settings.incoming_prefix)
    arn = stepfunctions.execution_arn(settings.state_machine_arn, run_id)
    # A STANDARD machine answers StartExecution with the *running* execution of the same name and input instead of
    # an error, so a duplicate delivery is recognised by looking first; ExecutionAlreadyExists covers the race.
    if stepfunctions.execution_exists(arn):
        return _duplicate(obj, run_id, arn)
    sidecar = load_sidecar(obj.bucket, obj.key, settings.max_sidecar_bytes)
    if sidecar and sidecar.error:
        logger.warning("invalid sidecar file", run_id=run_id, sidecar_key=sidecar.key, problem=sidecar.error)
    run_input = build_run_input(run_id, obj, sidecar)
    try:
        arn = stepfunctions.start_execution(settings.state_machine_arn, run_id, run_input.model_dump_json())
    except RunAlreadyStarted as exc:
        return _duplicate(obj, run_id, exc.execution_arn)
    logger.info(
        "run started",
        run_id=run_id,
        execution_arn=arn,
        key=obj.key,
        version_id=obj.version_id,
        sidecar_key=run_input.sidecar_key,
    )
    return StartRunResult(
        status="started",
        run_id=run_id,
        execution_arn=arn,
        key=obj.key,
        version_id=obj.version_id,
        sidecar_error=run_input.sidecar_error,
    )


def _duplicate(obj: ObjectVersion, run_id: str, arn: str) -> StartRunResult:
    logger.info("duplicate delivery", run_id=run_id, execution_arn=arn, key=obj.key, version_id=obj.version_id)
    return StartRunResult(status="duplicate", run_id=run_id, execution_arn=arn, key=obj.key, version_id=obj.version_id)
