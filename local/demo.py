"""`make demo`: the whole pipeline on this machine, with no AWS account and no Docker.

The real template.yaml is deployed into the local cloud (moto, local/cloud); a tiny base model (random weights, a
tokenizer trained on the data, a ChatML template) is put where the stack's BaseModelS3Uri points; a local Slack
webhook receives the notifier's messages. Then the dataset is uploaded to incoming/ and everything else is the
product's own path: the S3 event starts the StartRun Lambda, which starts the real state machine: the Validate
Lambda, the training, merge and evaluation containers as local SageMaker jobs, the gate, the Model Registry, and a
Slack message for every stage, and the Deploy stage: the local cloud's SageMaker endpoint serves the merged model
with an OpenAI-compatible chat API on localhost (``transformers serve`` on the CPU stands in for vLLM). At the end
the deployed endpoint answers a held-out question.

    python -m local.demo                      # the bundled ticket-routing dataset (local/data/demo.jsonl)
    python -m local.demo --data my.jsonl      # your own file: exit 1, with the report, when it is rejected
    python -m local.demo --keep-serving       # then keep the endpoint up (Ctrl-C to stop) to chat with it

A sidecar file next to the data (``my.tuneplane.json``) is uploaded with it; without one, the demo's sidecar
(few steps, short sequences: a tiny model on 2 CPU cores) is used.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEMO_DATA = ROOT / "local" / "data" / "demo.jsonl"
MODEL_BUCKET = "tuneplane-local-models"
MODEL_PREFIX = "tiny-base/"
TIMEOUT_S = 900.0
# A tiny random model on 2 CPU cores: short rows, few steps, a high learning rate.
DEMO_SIDECAR: dict[str, Any] = {
    "training": {
        "max_steps": 60,
        "learning_rate": 0.003,
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "per_device_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "max_seq_length": 128,
        "warmup_ratio": 0.05,
        "save_steps": 30,
        "logging_steps": 10,
    },
    "evaluation": {"max_new_tokens": 16, "min_improvement_over_base": 0.2},
}
STACK_PARAMETERS = {
    "UseSpotTraining": "false",
    "ProcessingInstanceType": "ml.m5.2xlarge",
    "DeployTarget": "vllm",  # locally: a real endpoint on 127.0.0.1 (local/cloud/endpoints.py)
    "EndpointMaxInstances": "1",
}
_STEP = re.compile(r"\bstep=(\d+);.*\btrain_loss=([-+0-9.eainf]+);")


def _environment(work: Path) -> None:
    os.environ.update(
        {
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "POWERTOOLS_TRACE_DISABLED": "1",
            "POWERTOOLS_METRICS_DISABLED": "1",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
            "TMPDIR": str(work),
        }
    )


class Progress:
    """Training progress from the job's metric lines: a bar on a terminal, a line per metric line otherwise."""

    def __init__(self, max_steps: int) -> None:
        self.max_steps = max_steps
        self.lock = threading.Lock()
        self.tty = sys.stdout.isatty()

    def __call__(self, job: Any, line: str) -> None:
        match = _STEP.search(line)
        if not match or job.kind != "training":
            return
        step, loss = int(match[1]), match[2]
        with self.lock:
            done = min(1.0, step / max(1, self.max_steps))
            bar = "#" * int(done * 30)
            text = f"      train [{bar:<30}] step {step}/{self.max_steps}  loss {loss}"
            print(("\r" + text) if self.tty else text, end="" if self.tty and done < 1 else "\n", flush=True)


def _wait_for_execution(state_machine_arn: str) -> dict[str, Any]:
    """The run's execution once it ended, printing each state as it finishes."""
    import boto3

    sfn = boto3.client("stepfunctions")
    deadline = time.monotonic() + TIMEOUT_S
    seen = 0
    while True:
        listed = sfn.list_executions(stateMachineArn=state_machine_arn)["executions"]
        if listed:
            arn = listed[0]["executionArn"]
            history: list[Any] = list(sfn.get_execution_history(executionArn=arn, maxResults=1000)["events"])
            for row in _stage_rows(history)[seen:]:
                print(row, flush=True)
                seen += 1
            execution = sfn.describe_execution(executionArn=arn)
            if execution["status"] != "RUNNING":
                return dict(execution)
        if time.monotonic() > deadline:
            raise TimeoutError(f"no finished execution after {TIMEOUT_S:.0f} s")
        time.sleep(0.25)


def _stage_rows(history: list[Any]) -> list[str]:
    """One row per finished state, with its duration."""
    rows, entered = [], {}
    for event in history:
        when: datetime = event["timestamp"]
        if "stateEnteredEventDetails" in event:
            entered[event["stateEnteredEventDetails"]["name"]] = when
        elif "stateExitedEventDetails" in event:
            name = event["stateExitedEventDetails"]["name"]
            seconds = (when - entered.pop(name, when)).total_seconds()
            rows.append(f"    {name:<24} done   {seconds:7.2f} s")
        elif event["type"] in ("ExecutionFailed", "FailStateEntered"):
            rows += [f"    {name:<24} FAILED" for name in entered]
            entered.clear()
    return rows


def _ledger_table(items: list[dict[str, Any]]) -> list[str]:
    order = ["validate", "train", "merge", "quantize", "evaluate", "register", "deploy", "run"]
    rows = [f"    {'stage':<10} {'status':<10} {'seconds':>8}  key numbers"]
    for item in sorted(items, key=lambda i: order.index(str(i["stage"])) if i["stage"] in order else 99):
        metrics = item.get("metrics") or {}
        numbers = ", ".join(f"{k}={float(v):.4g}" for k, v in metrics.items() if _is_number(v))
        seconds = f"{float(item['duration_s']):8.1f}" if item.get("duration_s") is not None else "       -"
        rows.append(f"    {item['stage']:<10} {item['status']:<10} {seconds}  {numbers or item.get('message', '')}")
    return rows


def _ledger_artifacts(items: list[dict[str, Any]]) -> list[str]:
    return [
        f"    {item['stage']}.{name}: {uri}"
        for item in items
        if item["stage"] != "run"
        for name, uri in sorted((item.get("artifacts") or {}).items())
    ]


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, bool)


def _upload_base_model(data: Path, work: Path) -> None:
    import boto3

    from local.tiny_model import texts_of, write_base_model, write_tiny_weights

    try:
        texts = texts_of(data)
    except ValueError:  # not JSON at all: any tokenizer will do to show the report
        texts = [data.read_bytes()[:100_000].decode("utf-8", "replace")]
    model_dir = write_tiny_weights(write_base_model(work / "base-model", texts))
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=MODEL_BUCKET)
    for file in model_dir.iterdir():
        s3.upload_file(str(file), MODEL_BUCKET, MODEL_PREFIX + file.name)


def _sidecar_of(data: Path) -> tuple[bytes, str]:
    stem = data.name.removesuffix(".gz").removesuffix(".jsonl")
    own = data.with_name(stem + ".tuneplane.json")
    if own.is_file():
        return own.read_bytes(), str(own)
    return json.dumps(DEMO_SIDECAR, indent=2).encode(), "the demo's settings for a tiny model"


def ask_endpoint(endpoint: str, eval_lines: list[str]) -> tuple[str, str, str]:
    """A held-out conversation's question (the second one: the smoke test asked the first), the expected answer and
    what the deployed endpoint says, asked the way a client asks a SageMaker endpoint (InvokeEndpoint)."""
    import boto3

    conversation = json.loads(eval_lines[1 if len(eval_lines) > 1 else 0])["messages"]
    prompt, expected = conversation[:-1], conversation[-1]["content"]
    body = {"messages": prompt, "max_tokens": 16, "temperature": 0}
    response = boto3.client("sagemaker-runtime").invoke_endpoint(
        EndpointName=endpoint, ContentType="application/json", Body=json.dumps(body)
    )
    answer = json.loads(response["Body"].read())["choices"][0]["message"]["content"]
    return str(prompt[-1]["content"]), str(expected), str(answer).strip()


def _serve_until_interrupted(url: str) -> None:
    print(f"\nthe endpoint keeps serving at {url} (OpenAI chat completions); Ctrl-C to stop")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopped")


def run(data: Path, keep_serving: bool = False) -> int:
    import boto3

    from local.cloud import ContainerExecutor, deploy, endpoint_url, local_cloud
    from local.slack import local_slack_webhook
    from tuneplane.adapters import ledger

    sidecar, sidecar_source = _sidecar_of(data)
    max_steps = int(json.loads(sidecar).get("training", {}).get("max_steps", 0) or 0)
    with tempfile.TemporaryDirectory(prefix="tuneplane-demo-") as scratch:
        work = Path(scratch)
        _environment(work)
        executor = ContainerExecutor(on_line=Progress(max_steps))
        # Wait states 10x shorter than on AWS: the endpoint is checked every 3 s instead of 30 s.
        with (
            local_slack_webhook(echo=True) as slack,
            local_cloud(time_scale=0.1, executor=executor, work_root=work / "jobs"),
        ):
            print(f"1/6 building a tiny base model (random weights, tokenizer + ChatML template from {data.name})")
            _upload_base_model(data, work)
            secret_arn = boto3.client("secretsmanager").create_secret(Name="tuneplane/slack", SecretString=slack.url)[
                "ARN"
            ]
            print("2/6 deploying template.yaml into the local cloud (moto), Slack webhook -> a local receiver")
            parameters = {
                "BaseModelS3Uri": f"s3://{MODEL_BUCKET}/{MODEL_PREFIX}",
                "SlackWebhookSecretArn": secret_arn,
                **STACK_PARAMETERS,
            }
            deployment = deploy(parameters, stack_name="tuneplane-demo")
            s3 = boto3.client("s3")
            stem = data.name.removesuffix(".gz").removesuffix(".jsonl")
            s3.put_object(Bucket=deployment.bucket_name, Key=f"incoming/{stem}.tuneplane.json", Body=sidecar)
            key = f"incoming/{data.name}"
            print(
                f"3/6 uploading s3://{deployment.bucket_name}/{key} (sidecar: {sidecar_source}): "
                "the upload starts the run"
            )
            body = data.read_bytes()
            version = s3.put_object(Bucket=deployment.bucket_name, Key=key, Body=body)["VersionId"]
            print("4/6 the pipeline (each state as it ends; Slack messages as they arrive):")
            execution = _wait_for_execution(deployment.state_machine_arn)
            run_id = execution["name"]
            print(f"\n5/6 run {run_id}: {execution['status']}")
            history = ledger.run_history(deployment.outputs["RunLedgerTableName"], run_id)
            print("\n".join(_ledger_table(history)))
            print("artifacts (run ledger):")
            print("\n".join(_ledger_artifacts(history)))
            summary_key = f"runs/{run_id}/validation/summary.txt"
            summary = s3.get_object(Bucket=deployment.bucket_name, Key=summary_key)["Body"].read().decode()
            print("\nvalidation report:\n    " + summary.replace("\n", "\n    "))
            stored = s3.get_object(Bucket=deployment.bucket_name, Key=key, VersionId=version)["Body"].read()
            untouched = stored == body
            print(f"uploaded object untouched: {'yes' if untouched else 'NO'}")
            print(f"Slack messages received: {len(slack.messages)}")
            succeeded = execution["status"] == "SUCCEEDED"
            if not succeeded:
                print(f"\n{execution.get('error', 'FAILED')}: {execution.get('cause', '')}")
                print("\nNOT DEPLOYED: see the report and the Slack messages above")
                return 1
            [deployed] = [item for item in history if item["stage"] == "deploy"]
            endpoint = str(deployed["artifacts"]["endpoint"])
            url = endpoint_url(endpoint)
            eval_key = f"runs/{run_id}/data/eval.jsonl"
            eval_text = s3.get_object(Bucket=deployment.bucket_name, Key=eval_key)["Body"].read().decode()
            eval_lines = [line for line in eval_text.split("\n") if line.strip()]  # lines end at "\n" only
            question, expected, answer = ask_endpoint(endpoint, eval_lines)
            print(f"\n6/6 the deployed endpoint {endpoint} ({url}) answers a held-out question:")
            print(f"    question: {question}\n    expected: {expected}\n    answer:   {answer}")
            print(f"    (any OpenAI client works too: curl {url}/chat/completions -d '{{\"messages\": [...]}}')")
            print("\nPASSED: trained, merged, evaluated (beats the base), registered, deployed, answered")
            if keep_serving:
                _serve_until_interrupted(url)
            return 0 if untouched else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEMO_DATA, help="a .jsonl or .jsonl.gz dataset")
    parser.add_argument("--keep-serving", action="store_true", help="keep the endpoint up at the end, until Ctrl-C")
    args = parser.parse_args(argv)
    if not args.data.is_file():
        print(f"demo: error: {args.data}: no such file", file=sys.stderr)
        return 2
    return run(args.data, keep_serving=args.keep_serving)


if __name__ == "__main__":
    sys.exit(main())
