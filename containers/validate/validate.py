"""Validate a dataset too large for the Validate Lambda, under the SageMaker Processing contract.

The Validate Lambda hands a dataset beyond its 10 GiB of /tmp, its memory or its 900 s to this job
(tuneplane/logic/validation_engine.py). It runs the very same validation (``validate_and_store``: the checks, the
seeded split, the whole run's cost estimate against the stack's limits) with this instance's budget instead:

- input ``/opt/ml/processing/input/job``: ``job.json`` (the run's request, the stack's settings, the price table),
  ``train/<file>`` and ``eval/<file>`` (the versions StartRun pinned, copied inside S3) and ``model/`` (the base
  model's tokenizer files and config.json, not its weights);
- outputs ``/opt/ml/processing/output/validation`` (report.json, summary.txt, result.json) and
  ``/opt/ml/processing/output/data`` (train.jsonl, eval.jsonl when it passed), which SageMaker uploads to the keys the
  Lambda would have written under runs/<run-id>/;
- ``result.json`` holds the stage's summary, or the rejection: data that fails validation is an answer, not a failed
  job (exit 0). Anything else is a failure: its one-line cause goes to /opt/ml/output/message (the job's ExitMessage)
  and the job exits non-zero.

Temporary files go to ``--work_dir``, inside the input's directory: File-mode inputs are copied onto the job's ML
storage volume (sized from the data by the Stage function), so the spill and the splits are there too, not on the
container's small root filesystem.

Outside SageMaker give the paths explicitly (any field of ``ValidateJobConfig`` is a ``--name value`` argument), e.g.
with the inputs a run handed on, downloaded with ``aws s3 cp --recursive s3://<bucket>/runs/<run-id>/validation-input/
/tmp/job``:

```bash
PYTHONPATH=layers/shared python containers/validate/validate.py --job_dir /tmp/job \
    --output_dir /tmp/validation --data_dir /tmp/data --work_dir /tmp/work --failure_file /tmp/validate-failure
```
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: the directory holding containers/ (the repository, /opt/program in the image)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "layers" / "shared"))

from containers.common import jobkit
from containers.common.jobkit import ConfigError

SM_DEFAULTS = {
    "job_dir": "/opt/ml/processing/input/job",
    "output_dir": "/opt/ml/processing/output/validation",
    "data_dir": "/opt/ml/processing/output/data",
    "work_dir": "/opt/ml/processing/input/job/.work",  # on the ML storage volume, with the inputs
    "failure_file": jobkit.PROCESSING_FAILURE_FILE,
}
# Left to write the outputs once the scan stops: the job's MaxRuntimeInSeconds must not cut the upload.
RUNTIME_MARGIN_S = 600


def _path_default(name: str) -> Any:
    return jobkit.path_field(SM_DEFAULTS[name])


@dataclass
class ValidateJobConfig:
    job_dir: str = _path_default("job_dir")
    output_dir: str = _path_default("output_dir")
    data_dir: str = _path_default("data_dir")
    work_dir: str = _path_default("work_dir")
    failure_file: str = _path_default("failure_file")
    max_runtime_s: int = field(
        default=0, metadata={"help": "The job's MaxRuntimeInSeconds: the scan stops in time to write (0: no limit)."}
    )

    def __post_init__(self) -> None:
        if self.max_runtime_s < 0:
            raise ConfigError(f"--max_runtime_s: must be >= 0, got {self.max_runtime_s}")
        if self.max_runtime_s and self.max_runtime_s <= RUNTIME_MARGIN_S:
            raise ConfigError(f"--max_runtime_s: must be over {RUNTIME_MARGIN_S} s to leave time for the outputs")


def load_config(argv: list[str] | None = None) -> ValidateJobConfig:
    """`--name value` arguments, one per ValidateJobConfig field."""
    return jobkit.load_options(ValidateJobConfig, argv, __doc__)


class OutputDirs:
    """The Processing job's output directories standing in for S3: a key under runs/<run-id>/validation/ or
    data/ is written to the matching directory, and its URI is the one SageMaker uploads it to."""

    def __init__(self, bucket: str, run_prefix: str, validation_dir: Path, data_dir: Path) -> None:
        self.bucket, self.run_prefix = bucket, run_prefix
        self.dirs = {"validation/": validation_dir, "data/": data_dir}

    def _path(self, key: str) -> Path:
        relative = key.removeprefix(self.run_prefix)
        for folder, directory in self.dirs.items():
            if relative.startswith(folder) and "/" not in relative.removeprefix(folder):
                directory.mkdir(parents=True, exist_ok=True)
                return directory / relative.removeprefix(folder)
        raise ValueError(f"{key} is not an output of the validation job")

    def file(self, path: Path, key: str) -> str:
        shutil.move(path, self._path(key))  # same volume: a rename, not a second copy of the split on disk
        return f"s3://{self.bucket}/{key}"

    def json(self, key: str, document: Any) -> str:
        self._path(key).write_text(json.dumps(document, ensure_ascii=False, indent=2), encoding="utf-8")
        return f"s3://{self.bucket}/{key}"

    def text(self, key: str, text: str) -> str:
        self._path(key).write_text(text, encoding="utf-8")
        return f"s3://{self.bucket}/{key}"


def _only_file(directory: Path, what: str) -> Path:
    files = sorted(path for path in directory.iterdir() if path.is_file()) if directory.is_dir() else []
    if len(files) != 1:
        raise ConfigError(f"{directory}: expected the {what} file, found {[f.name for f in files]}")
    return files[0]


def _memory_bytes() -> int | None:
    """The container's memory limit (cgroup v2, then v1), else the machine's."""
    for limit in (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")):
        try:
            text = limit.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            return int(text)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None


def main(cfg: ValidateJobConfig) -> dict[str, Any]:
    """Validate the pinned copies with this instance's budget; write the outputs and result.json."""
    from tuneplane.config import ValidateSettings
    from tuneplane.errors import InvalidTrainingData
    from tuneplane.logic.base_model import load_model_context
    from tuneplane.logic.cost import PricingTable
    from tuneplane.logic.validate_stage import plan_validation, validate_and_store
    from tuneplane.logic.validation.scanner import ResourceBudget
    from tuneplane.logic.validation.validator import DatasetSource
    from tuneplane.logic.validation_engine import RESULT_FILE, result_document
    from tuneplane.models.stage import ValidateRequest

    job_dir = Path(cfg.job_dir)
    try:
        job = json.loads((job_dir / "job.json").read_text(encoding="utf-8"))
        request = ValidateRequest.model_validate(job["request"])
        settings = ValidateSettings.model_validate(job["settings"])
        pricing = PricingTable.model_validate(job["pricing"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{job_dir / 'job.json'}: not a validation job ({type(exc).__name__}: {exc})") from exc
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(work)  # the spill and the splits go to the ML storage volume
    output = OutputDirs(
        settings.data_bucket, f"{settings.runs_prefix}{request.run_id}/", Path(cfg.output_dir), Path(cfg.data_dir)
    )

    def source(folder: str, key: str) -> DatasetSource:
        # Problems name the uploaded object, as when the Lambda validates it, not the job's local copy.
        local = DatasetSource.local(_only_file(job_dir / folder, folder))
        return DatasetSource(f"s3://{request.bucket}/{key}", local.open, local.size, local.reopen)

    train = source("train", request.key)
    evaluation = source("eval", request.eval_key) if request.eval_key else None
    budget = ResourceBudget(
        seconds=cfg.max_runtime_s - RUNTIME_MARGIN_S if cfg.max_runtime_s else None, memory_bytes=_memory_bytes()
    )
    model = load_model_context(str(job_dir / "model"))
    summary, rejection = None, None
    try:
        plan = plan_validation(request, settings, pricing)
        summary = validate_and_store(plan, train, evaluation, model, output, budget)
        summary = summary.model_copy(update={"engine": "processing"})
    except InvalidTrainingData as exc:
        rejection = str(exc)
    document = result_document(request.run_id, summary, rejection)
    output.json(f"{output.run_prefix}validation/{RESULT_FILE}", document)
    print(
        f"validation {'passed' if summary else 'rejected'}: {summary.headline if summary else rejection}", flush=True
    )
    return document


def failure_reason(exc: BaseException, cfg: ValidateJobConfig | None = None) -> str:
    """One line for SageMaker's ExitMessage: the cause, not the data (a rejection is not a failure)."""
    if isinstance(exc, ConfigError):
        return jobkit.one_line(f"invalid validation job: {exc}")
    if isinstance(exc, MemoryError):
        return jobkit.one_line("out of memory while validating: choose a ValidationInstanceType with more memory")
    return jobkit.one_line(f"{type(exc).__name__}: {exc}")


def run(argv: list[str] | None = None) -> int:
    """Load the config, validate; on failure write the reason to the failure file and return 1 (2: bad config)."""
    return jobkit.run_job(
        argv,
        load_config=load_config,
        main=main,
        failure_reason=failure_reason,
        default_failure_file=SM_DEFAULTS["failure_file"],
        what="validation",
    )


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(run())
