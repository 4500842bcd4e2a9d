"""StartRun: one uploaded dataset version -> one pipeline execution.

The execution name (which is also the run id) is derived from bucket, key and version id, so a second delivery
of the same S3 event finds its execution already there and starts nothing, while a new version of the same file
starts a new run. The dataset's optional sidecar file ``<dataset>.tuneplane.json`` is read and checked here; a
broken one does not stop the run from starting: the problem travels in the execution input (``sidecar_error``)
and the Validate stage rejects the run with it, so the uploader hears about it like any other rejection. So does a
sidecar whose ``eval_file`` does not exist; an eval file that does is pinned: its current version id goes into the
execution input (``eval_version_id``) and the Validate stage reads that version, whatever is uploaded later.

Every upload under ``incoming/`` reaches this function. ``<name>.jsonl`` and ``<name>.jsonl.gz`` start a run, the
suffix in any case (``Support.JSONL``: file managers and Windows treat extensions that way, and the content is what
the Validate stage checks). Sidecars, folder markers (``incoming/x/``) and hidden files (``.DS_Store``) are ignored.
Any other name (``incoming/.jsonl``: no name; ``data.json``, ``data.csv``, ``data.jsonl.zip``) starts nothing and is
answered with a ``Run Rejected`` event (and so a Slack message) saying what to rename it to, instead of silence.

A sidecar uploaded just after its dataset (``aws s3 sync`` uploads in alphabetical order, and ``data.jsonl`` sorts
before ``data.tuneplane.json``) would be missed: when a freshly uploaded dataset has no sidecar, StartRun looks
again for up to ``sidecar_wait_s`` seconds after the upload (bounded by the invocation's remaining time).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from tuneplane.adapters import events, s3, stepfunctions
from tuneplane.config import StartRunSettings
from tuneplane.errors import DatasetNotFound, InvalidConfiguration, RunAlreadyStarted
from tuneplane.models.events import PipelineEvent, Stage, Status
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
SIDECAR_POLL_S = 1.0  # how often a missing sidecar is looked for again while waiting for it
_TIME_LEFT_S = 5.0  # what the wait leaves of the invocation's remaining time (start the execution, log, return)
_KEY_SHOWN = 120  # characters of a key (or a name made from it) quoted in a rejection (keys have up to 1024 bytes)
_OTHER_COMPRESSIONS = (".zip", ".bz2", ".xz", ".zst", ".7z", ".tar", ".tgz", ".gzip")


def dataset_stem(key: str) -> str | None:
    """``incoming/a.jsonl`` and ``incoming/a.jsonl.gz`` (suffix in any case) -> ``incoming/a``; None for a key that
    is no dataset, including one with nothing before the suffix (``incoming/.jsonl``)."""
    lowered = key.lower()
    for suffix in DATASET_SUFFIXES:
        if lowered.endswith(suffix):
            stem = key[: -len(suffix)]
            return stem if stem and not stem.endswith("/") else None
    return None


def _shown(key: str) -> str:
    return key if len(key) <= _KEY_SHOWN else key[: _KEY_SHOWN - 1] + "…"


UploadKind = Literal["dataset", "ignored", "rejected"]


def classify_upload(key: str, incoming_prefix: str = "incoming/") -> tuple[UploadKind, str]:
    """What an upload under ``incoming_prefix`` is: a dataset (starts a run), something ignored on purpose (a
    sidecar, a folder marker, a hidden file), or a name that starts nothing; the second value says why, in a line
    meant for the uploader (it says what to rename the file to)."""
    if not key.startswith(incoming_prefix):
        return "ignored", f"not under {incoming_prefix}"
    if key.endswith("/"):
        return "ignored", "a folder marker"
    folder, _, name = key.rpartition("/")
    folder = _shown(folder + "/")
    lowered = name.lower()
    if dataset_stem(key) is not None:
        return "dataset", "a dataset"
    if name.endswith(SIDECAR_SUFFIX) and len(name) > len(SIDECAR_SUFFIX):
        return "ignored", "a sidecar settings file"
    shown = _shown(key)
    if lowered in DATASET_SUFFIXES:
        return "rejected", (
            f"{shown} has no name before {name}, so it starts no run: rename it to {folder}<name>{name} "
            "(the name becomes the run's and the endpoint's)"
        )
    if lowered.endswith(SIDECAR_SUFFIX):
        stem = name[: -len(SIDECAR_SUFFIX)]
        return "rejected", (
            f"{shown} is read by no dataset: a settings file is found by its exact name, rename it to "
            f"{folder}{_shown(stem) or '<name>'}{SIDECAR_SUFFIX} (lower case), then upload the dataset again"
        )
    if name.startswith("."):
        return "ignored", "a hidden file"
    stem = _shown(name.split(".", 1)[0]) or "<name>"
    if ".jsonl." in lowered and lowered.endswith(_OTHER_COMPRESSIONS):
        hint = f"compress it with gzip as {folder}{stem}.jsonl.gz, or upload it uncompressed as {folder}{stem}.jsonl"
    elif lowered.endswith((".json", ".ndjson", ".jsonlines", ".txt")):
        hint = f"if it holds one JSON example per line, rename it to {folder}{stem}.jsonl"
    else:
        hint = f"convert it to JSON Lines (one chat example per line) named {folder}{stem}.jsonl or .jsonl.gz"
    return "rejected", f"{shown} is not a dataset, so it starts no run: {hint}"


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
    sequencer identify the upload instead. The readable part has PII in the file name masked (a run id travels in
    every event, job name and ledger key): ``incoming/cust 4111 1111 1111 1111.jsonl`` gives ``cust-1111-...``.
    """
    from tuneplane.logic.validation.pii import redact

    stem = dataset_stem(obj.key) or obj.key
    if stem.startswith(incoming_prefix):
        stem = stem[len(incoming_prefix) :]
    stem = redact(stem[:1024])
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
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits (Python's int conversion limit)
        raise InvalidConfiguration(f"not a usable JSON value: {str(exc)[:200]}") from exc
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


def _sleep(seconds: float) -> None:
    """Waits between looks for a late sidecar (the local cloud compresses them; unit tests record them)."""
    time.sleep(seconds)


def load_sidecar_waiting(bucket: str, dataset_key: str, limit: int, wait_s: float) -> Sidecar | None:
    """``load_sidecar``, looking again every ``SIDECAR_POLL_S`` for up to ``wait_s`` seconds while there is none."""
    sidecar = load_sidecar(bucket, dataset_key, limit)
    polls = math.ceil(wait_s / SIDECAR_POLL_S) if wait_s > 0 else 0
    for poll in range(1, polls + 1):
        if sidecar is not None:
            break
        _sleep(SIDECAR_POLL_S)
        sidecar = load_sidecar(bucket, dataset_key, limit)
        if sidecar is not None:
            logger.info("sidecar arrived after the dataset", sidecar_key=sidecar.key, waited_polls=poll)
    return sidecar


def pin_eval_file(bucket: str, sidecar: Sidecar | None) -> tuple[Sidecar | None, str | None]:
    """The eval file's current version id; a missing eval file makes the sidecar unusable (the uploader's to fix)."""
    eval_file = sidecar.settings.eval_file if sidecar and sidecar.settings else None
    if sidecar is None or eval_file is None:
        return sidecar, None
    try:
        return sidecar, s3.current_version(bucket, eval_file)
    except DatasetNotFound:
        problem = (
            f"eval_file {eval_file} does not exist in s3://{bucket}/: upload it first (it starts a run of its own "
            "too), or correct eval_file"
        )
        return replace(sidecar, settings=None, error=problem), None


def sidecar_wait(uploaded_at: datetime | None, wait_s: float, time_left_s: float | None) -> float:
    """How long a dataset without a sidecar may still wait for one: ``wait_s`` after the upload (an event delivered
    late, or again, waits no more), within the invocation's remaining time."""
    age = max((datetime.now(UTC) - uploaded_at).total_seconds(), 0.0) if uploaded_at else 0.0
    wait = wait_s - age
    if time_left_s is not None:
        wait = min(wait, time_left_s - _TIME_LEFT_S)
    return max(wait, 0.0)


def build_run_input(
    run_id: str, obj: ObjectVersion, sidecar: Sidecar | None, eval_version_id: str | None = None
) -> RunInput:
    settings = sidecar.settings if sidecar else None
    return RunInput(
        run_id=run_id,
        bucket=obj.bucket,
        key=obj.key,
        version_id=obj.version_id,
        eval_key=settings.eval_file if settings else None,
        eval_version_id=eval_version_id if settings and settings.eval_file else None,
        overrides=dict(settings.validation) if settings else {},
        training=settings.training.model_dump(exclude_none=True) if settings else {},
        evaluation=settings.evaluation.model_dump(exclude_none=True) if settings else {},
        deploy_target=settings.deploy.target if settings else None,
        sidecar_key=sidecar.key if sidecar else None,
        sidecar_version_id=sidecar.version_id if sidecar else None,
        sidecar_error=sidecar.error if sidecar else None,
        sequencer=obj.sequencer,
        rerun=settings.rerun if settings else False,
    )


def start_run(
    obj: ObjectVersion,
    settings: StartRunSettings,
    uploaded_at: datetime | None = None,
    time_left_s: float | None = None,
) -> StartRunResult:
    """Start the pipeline on one uploaded object version, exactly once however often the event is delivered.

    ``uploaded_at`` (the S3 event's time) and ``time_left_s`` (the invocation's remaining time) bound the wait for
    a sidecar that is still being uploaded.
    """
    kind, why = classify_upload(obj.key, settings.incoming_prefix)
    if kind == "ignored":
        logger.info("not a dataset upload, ignored", bucket=obj.bucket, key=obj.key, reason=why)
        return StartRunResult(status="ignored", key=obj.key, version_id=obj.version_id)
    run_id = run_name(obj, settings.incoming_prefix)
    if kind == "rejected":
        return _reject_upload(obj, run_id, why, settings)
    arn = stepfunctions.execution_arn(settings.state_machine_arn, run_id)
    # A STANDARD machine answers StartExecution with the *running* execution of the same name and input instead of
    # an error, so a duplicate delivery is recognised by looking first; ExecutionAlreadyExists covers the race.
    if stepfunctions.execution_exists(arn):
        return _duplicate(obj, run_id, arn)
    wait_s = sidecar_wait(uploaded_at, settings.sidecar_wait_s, time_left_s)
    sidecar = load_sidecar_waiting(obj.bucket, obj.key, settings.max_sidecar_bytes, wait_s)
    sidecar, eval_version_id = pin_eval_file(obj.bucket, sidecar)
    if sidecar and sidecar.error:
        logger.warning("invalid sidecar file", run_id=run_id, sidecar_key=sidecar.key, problem=sidecar.error)
    run_input = build_run_input(run_id, obj, sidecar, eval_version_id)
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
        sidecar_version_id=run_input.sidecar_version_id,
        eval_key=run_input.eval_key,
        eval_version_id=run_input.eval_version_id,
    )
    return StartRunResult(
        status="started",
        run_id=run_id,
        execution_arn=arn,
        key=obj.key,
        version_id=obj.version_id,
        sidecar_error=run_input.sidecar_error,
    )


def _reject_upload(obj: ObjectVersion, run_id: str, problem: str, settings: StartRunSettings) -> StartRunResult:
    """Answer an upload that starts nothing with a Run Rejected event (no execution, no ledger item), so the
    uploader hears why (Slack) instead of nothing."""
    logger.warning("upload starts no run", key=obj.key, version_id=obj.version_id, problem=problem)
    if settings.event_bus_name:
        event = PipelineEvent(
            run_id=run_id,
            stage=Stage.RUN,
            status=Status.REJECTED,
            dataset=obj.key,
            bucket=obj.bucket,
            version_id=obj.version_id,
            finished_at=datetime.now(UTC),
            metrics={"failed_stage": "upload"},
            message=problem[:2000],
            error="UnusableUploadName",
        )
        events.publish(settings.event_bus_name, event)
    return StartRunResult(status="rejected", run_id=run_id, key=obj.key, version_id=obj.version_id, problem=problem)


def _duplicate(obj: ObjectVersion, run_id: str, arn: str) -> StartRunResult:
    logger.info("duplicate delivery", run_id=run_id, execution_arn=arn, key=obj.key, version_id=obj.version_id)
    return StartRunResult(status="duplicate", run_id=run_id, execution_arn=arn, key=obj.key, version_id=obj.version_id)
