"""A dataset beyond one Lambda, end to end on the local cloud (issue 15 item 10): the real template, state machine,
Validate Lambda and containers/validate Processing job validate a generated chat JSONL of --size-gb (5 GB by
default), against a baseline of --baseline-mb validated by the Lambda itself in the same run.

    python bench/validate_large.py                           # 5 GB against 250 MB
    python bench/validate_large.py --size-gb 1 --baseline-mb 100

Each file is generated once into bench/out/large/ (varied ~1 KB chat lines, every one distinct, no PII-like digits).
Both are uploaded to the stack's incoming/ prefix and each upload's run is followed until its Validate stage ends;
the jobs after it are scripted to fail at once (this measures validation, not training). Reported per run: which
engine validated it and why, the time of each validation state (the Lambda's decision and copy, the job, the
collect), the bytes per second of the whole stage, and the peak resident memory of this process (moto and the
in-process Lambdas) and of the job's subprocess. The ratio line compares the large run's seconds per byte with the
baseline's: near 1 means validation scales linearly with the data on the larger engine.

The local cloud's S3 is moto's, which keeps objects in temporary files but reads a whole object into memory for
each GET and copy: the large run needs about 2x --size-gb of free memory and 6x of free disk.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "layers" / "shared"), str(ROOT)]
OUT = ROOT / "bench" / "out" / "large"
MODEL_BUCKET, MODEL_PREFIX = "tuneplane-bench-models", "tiny/"
VALIDATION_STATES = ("Validate", "StartValidateJob", "ValidateJob", "CollectValidation", "FinishValidate")
WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec romeo "
    "sierra tango uniform victor whiskey xray yankee zulu river stone cloud maple ember frost harbor lantern meadow"
).split()


def _letters(index: int) -> str:
    """`index` in base 26 letters: distinct lines with no digit runs the PII checks would flag as phone numbers."""
    text = ""
    while True:
        index, digit = divmod(index, 26)
        text = chr(97 + digit) + text
        if index == 0:
            return text


def _line(index: int) -> str:
    tag = _letters(index)
    words = " ".join(WORDS[(index * 7 + k * 13) % len(WORDS)] for k in range(120))
    user = {"role": "user", "content": f"Summarise note {tag}: {words}"}
    assistant = {"role": "assistant", "content": f"Note {tag} is about {WORDS[index % len(WORDS)]} and {words[:300]}"}
    return json.dumps({"messages": [user, assistant]})


def generate(path: Path, size: int) -> Path:
    """A chat JSONL of about `size` bytes (generated once)."""
    if path.is_file() and abs(path.stat().st_size - size) < 4096:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    written, index = 0, 0
    with partial.open("w", encoding="utf-8", buffering=16 * 1024 * 1024) as file:
        while written < size:
            line = _line(index) + "\n"
            file.write(line)
            written += len(line)
            index += 1
    partial.rename(path)
    return path


def _peak_rss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def _state_seconds(history: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds from entering each state to leaving it (the last time it ran)."""
    entered: dict[str, datetime] = {}
    seconds: dict[str, float] = {}
    for event in history:
        details = event.get("stateEnteredEventDetails") or event.get("stateExitedEventDetails")
        if not details:
            continue
        name = details["name"]
        if event["type"].endswith("StateEntered"):
            entered[name] = event["timestamp"]
        elif name in entered:
            seconds[name] = (event["timestamp"] - entered[name]).total_seconds()
    return seconds


def _follow(sfn: Any, state_machine_arn: str, known: set[str], timeout_s: float) -> dict[str, Any]:
    """The new execution (one not in `known`) once it has left its validation states (or ended)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        new = [
            e
            for e in sfn.list_executions(stateMachineArn=state_machine_arn)["executions"]
            if e["executionArn"] not in known
        ]
        if new:
            arn = new[0]["executionArn"]
            execution = sfn.describe_execution(executionArn=arn)
            history = sfn.get_execution_history(executionArn=arn, maxResults=1000)["events"]
            left = {
                (e.get("stateExitedEventDetails") or {}).get("name")
                for e in history
                if e["type"].endswith("StateExited")
            }
            entered = {(e.get("stateEnteredEventDetails") or {}).get("name") for e in history}
            if execution["status"] != "RUNNING" or "FinishValidate" in left or "RejectValidate" in entered:
                known.add(arn)
                return {"execution": execution, "history": history}
        time.sleep(1.0)
    raise TimeoutError(f"no run left validation within {timeout_s:.0f} s")


def run_one(cloud: dict[str, Any], data: Path, key: str, timeout_s: float) -> dict[str, Any]:
    import boto3
    from botocore.config import Config

    from tuneplane.adapters import ledger

    # No aws-chunked body (botocore's default checksum for a streamed file): moto reads it quadratically.
    s3 = boto3.client("s3", config=Config(request_checksum_calculation="when_required"))
    sfn, deployment = boto3.client("stepfunctions"), cloud["deployment"]
    # A few training steps: the run's estimate must stay within the stack's limits (5 GB at the default epochs is
    # a 24 h training run, which MaxTrainingRuntimeSeconds refuses); this measures validation.
    stem = key.removesuffix(".jsonl")
    s3.put_object(Bucket=deployment.bucket_name, Key=f"{stem}.tuneplane.json", Body=b'{"training": {"max_steps": 10}}')
    started = time.monotonic()
    with data.open("rb") as body:  # one PUT (up to 5 GB): moto assembles a multipart upload in memory
        s3.put_object(Bucket=deployment.bucket_name, Key=key, Body=body)
    upload_s = time.monotonic() - started
    followed = _follow(sfn, deployment.state_machine_arn, cloud["known"], timeout_s)
    execution, history = followed["execution"], followed["history"]
    seconds = _state_seconds(history)
    items = ledger.run_history(deployment.outputs["RunLedgerTableName"], execution["name"])
    validate = next((item for item in items if item["stage"] == "validate"), {})
    stage_s = sum(seconds.get(state, 0.0) for state in VALIDATION_STATES)
    return {
        "key": key,
        "bytes": data.stat().st_size,
        "upload_s": round(upload_s, 1),
        "status": validate.get("status"),
        "engine": validate.get("engine", "lambda"),
        "handed_on_because": validate.get("handed_on_because"),
        "examples": (validate.get("metrics") or {}).get("examples"),
        "state_s": {state: round(seconds[state], 1) for state in VALIDATION_STATES if state in seconds},
        "stage_s": round(stage_s, 1),
        "mb_per_s": round(data.stat().st_size / 1e6 / stage_s, 2) if stage_s else None,
        "bench_rss_mb": round(_peak_rss_mb(resource.RUSAGE_SELF)),
        "job_rss_mb": round(_peak_rss_mb(resource.RUSAGE_CHILDREN)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=5.0, help="the large dataset, in GB (10^9 bytes)")
    parser.add_argument("--baseline-mb", type=float, default=250.0, help="the baseline dataset, in MB (10^6 bytes)")
    parser.add_argument("--timeout-s", type=float, default=3 * 3600, help="the longest wait for one run")
    args = parser.parse_args(argv)
    if args.size_gb * 1e9 > 5 * 1024**3:
        parser.error("--size-gb: at most 5 GiB (one PutObject; moto assembles multipart uploads in memory)")

    from local.cloud import ContainerExecutor, JobOutcome, LocalJob, deploy, local_cloud
    from local.demo import _environment
    from local.tiny_model import texts_of, write_base_model, write_tiny_weights

    baseline = generate(OUT / f"baseline-{args.baseline_mb:g}mb.jsonl", int(args.baseline_mb * 1e6))
    large = generate(OUT / f"large-{args.size_gb:g}gb.jsonl", int(args.size_gb * 1e9))
    containers = ContainerExecutor()

    def executor(job: LocalJob) -> JobOutcome:
        if job.name.endswith("-validate"):
            return containers(job)
        return JobOutcome("Failed", "AlgorithmError: the benchmark stops after validation")

    with tempfile.TemporaryDirectory(prefix="tuneplane-bench-large-", dir=OUT) as scratch:
        work = Path(scratch)
        _environment(work)
        import boto3

        with local_cloud(time_scale=0.1, executor=executor, work_root=work / "jobs"):
            sample = OUT / "sample.jsonl"
            sample.write_text("".join(_line(i) + "\n" for i in range(2000)), encoding="utf-8")
            model = write_tiny_weights(write_base_model(work / "base-model", texts_of(sample)))
            s3 = boto3.client("s3")
            s3.create_bucket(Bucket=MODEL_BUCKET)
            for file in model.iterdir():
                s3.upload_file(str(file), MODEL_BUCKET, MODEL_PREFIX + file.name)
            parameters = {"BaseModelS3Uri": f"s3://{MODEL_BUCKET}/{MODEL_PREFIX}", "DeployTarget": "none"}
            cloud = {"deployment": deploy(parameters, stack_name="tuneplane-bench"), "known": set()}
            results = []
            for data, key in ((baseline, "incoming/baseline.jsonl"), (large, "incoming/large.jsonl")):
                print(f"validating {data.name} ({data.stat().st_size / 1e9:.2f} GB) ...", flush=True)
                results.append(run_one(cloud, data, key, args.timeout_s))
                print(json.dumps(results[-1], indent=2), flush=True)
    small, big = results
    ratio = (big["stage_s"] / big["bytes"]) / (small["stage_s"] / small["bytes"])
    print(
        f"\nlarge: {big['bytes'] / 1e9:.2f} GB validated by the {big['engine']} engine in {big['stage_s']:.0f} s "
        f"({big['mb_per_s']} MB/s, status {big['status']}); baseline: {small['bytes'] / 1e6:.0f} MB by the "
        f"{small['engine']} engine in {small['stage_s']:.0f} s ({small['mb_per_s']} MB/s)"
    )
    print(f"x time per byte, large / baseline: {ratio:.2f}")
    print(f"peak RSS: this process {big['bench_rss_mb']} MB, the job {big['job_rss_mb']} MB")
    return 0 if big["status"] == "succeeded" and small["status"] == "succeeded" else 1


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
