"""`make demo`: the pipeline as far as it exists, on this machine with no AWS account.

Today that is the Validate stage: a tiny base model (tokenizer + chat template) is built from the data,
the dataset is uploaded to an in-process S3 (moto), and the real Validate Lambda handler runs on it and
writes its report and train/eval splits under runs/<run-id>/. Later stages join as they are built.

    python -m local.demo                      # the bundled demo dataset
    python -m local.demo --data my.jsonl      # your own file; exit 1 with the report when it is rejected
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
DEMO_DATA = ROOT / "local" / "data" / "demo.jsonl"
BUCKET = "tuneplane-local-data"
MODEL_PREFIX = "models/tiny-base/"


def _fake_aws_environment(work: Path) -> None:
    os.environ.update(
        {
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "POWERTOOLS_SERVICE_NAME": "tuneplane-local",
            "POWERTOOLS_METRICS_NAMESPACE": "TuneplaneLocal",
            "POWERTOOLS_TRACE_DISABLED": "1",
            "POWERTOOLS_METRICS_DISABLED": "1",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
            "DATA_BUCKET": BUCKET,
            "BASE_MODEL_S3_URI": f"s3://{BUCKET}/{MODEL_PREFIX}",
            "TMPDIR": str(work),
        }
    )


def _validate_handler():  # noqa: ANN202 - the Lambda module's handler, loaded the way Lambda loads it
    spec = importlib.util.spec_from_file_location("validate_app", ROOT / "functions" / "validate" / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.handler


def run(data: Path) -> int:
    from moto import mock_aws

    from local.tiny_model import texts_of, write_base_model

    with tempfile.TemporaryDirectory(prefix="tuneplane-demo-") as scratch, mock_aws():
        work = Path(scratch)
        _fake_aws_environment(work)
        import boto3

        from tuneplane.errors import InvalidTrainingData

        print(f"1/4 building a tiny base model (tokenizer + ChatML template) from {data.name}")
        try:
            texts = texts_of(data)
        except ValueError:  # the file is not JSON at all: any tokenizer will do to show the report
            texts = [data.read_bytes()[:100_000].decode("utf-8", "replace")]
        model_dir = write_base_model(work / "base-model", texts)
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        for file in model_dir.iterdir():
            s3.upload_file(str(file), BUCKET, MODEL_PREFIX + file.name)
        key = f"incoming/{data.name}"
        print(f"2/4 uploading s3://{BUCKET}/{key} (local S3)")
        body = data.read_bytes()
        version = s3.put_object(Bucket=BUCKET, Key=key, Body=body)["VersionId"]
        print("3/4 running the Validate Lambda handler")
        event = {"run_id": "local-demo", "bucket": BUCKET, "key": key, "version_id": version}
        context = SimpleNamespace(
            function_name="validate",
            memory_limit_in_mb=1024,
            aws_request_id="demo",
            invoked_function_arn="arn:aws:lambda:us-east-1:000000000000:function:validate",
        )
        passed = True
        try:
            summary = _validate_handler()(event, context)
        except InvalidTrainingData:
            passed = False
        report_text = s3.get_object(Bucket=BUCKET, Key="runs/local-demo/validation/summary.txt")["Body"].read()
        print("4/4 validation report (the text Slack will show):\n")
        print("    " + report_text.decode().replace("\n", "\n    "))
        print("\nrun artifacts:")
        for item in s3.list_objects_v2(Bucket=BUCKET, Prefix="runs/local-demo/").get("Contents", []):
            print(f"    s3://{BUCKET}/{item['Key']}  ({item['Size']:,} bytes)")
        unchanged = s3.get_object(Bucket=BUCKET, Key=key, VersionId=version)["Body"].read() == body
        print(f"\nsource object untouched: {'yes' if unchanged else 'NO'}")
        if passed:
            print(
                f"\nPASSED: {summary['train_examples']} train / {summary['eval_examples']} eval examples ready for "
                "training (the training stages arrive with the next issues)"
            )
        else:
            print("\nREJECTED: fix the problems above and upload again")
        return 0 if passed and unchanged else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEMO_DATA, help="a .jsonl or .jsonl.gz dataset")
    args = parser.parse_args(argv)
    if not args.data.is_file():
        print(f"demo: error: {args.data}: no such file", file=sys.stderr)
        return 2
    return run(args.data)


if __name__ == "__main__":
    sys.exit(main())
