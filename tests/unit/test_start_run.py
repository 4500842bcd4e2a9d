"""StartRun: run id / execution name derivation, the sidecar file, and the handler on moto (S3 + Step Functions)."""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import boto3
import pytest
from moto import mock_aws

from tuneplane.adapters import s3 as s3_adapter
from tuneplane.adapters import stepfunctions as sfn_adapter
from tuneplane.config import ValidateSettings, start_run_settings
from tuneplane.errors import InvalidConfiguration, InvalidTrainingData
from tuneplane.logic import start_run as start_run_logic
from tuneplane.logic import validate_stage as validate_stage_logic
from tuneplane.logic.start_run import classify_upload, dataset_stem, parse_sidecar, run_name, sidecar_key
from tuneplane.logic.validate_stage import run_validate_stage
from tuneplane.models.run import ObjectVersion
from tuneplane.models.stage import ValidateRequest

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_EVENT = json.loads((ROOT / "events" / "s3_object_created.json").read_text())
BUCKET = SAMPLE_EVENT["detail"]["bucket"]["name"]
NAME = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_-]{0,79}$")
CONTEXT = SimpleNamespace(
    function_name="start-run",
    memory_limit_in_mb=256,
    invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:start-run",
    aws_request_id="req-1",
    get_remaining_time_in_millis=lambda: 29_000,
)


def _version(key: str = "incoming/demo.jsonl", version_id: str | None = "v1", **extra: Any) -> ObjectVersion:
    return ObjectVersion(bucket=BUCKET, key=key, version_id=version_id, **extra)


# ---------------------------------------------------------------------------------------------------------------------
# Run id / execution name


def test_run_name_is_a_readable_slug_plus_a_hash_and_deterministic() -> None:
    # GIVEN one object version WHEN its name is derived twice THEN it is the same, readable and valid
    first, second = run_name(_version()), run_name(_version())
    assert first == second
    assert re.fullmatch(r"demo-[0-9a-f]{16}", first)


def test_versions_keys_and_buckets_each_change_the_name() -> None:
    names = {
        run_name(_version(version_id="v1")),
        run_name(_version(version_id="v2")),
        run_name(_version(key="incoming/demo.jsonl.gz")),
        run_name(ObjectVersion(bucket="other-bucket", key="incoming/demo.jsonl", version_id="v1")),
    }
    assert len(names) == 4


@pytest.mark.parametrize(
    "key",
    [
        "incoming/demo.jsonl",
        "incoming/my data (final) v2.jsonl.gz",
        "incoming/team-a/sub/support.2026-11.jsonl",
        "incoming/données été.jsonl",
        "incoming/" + "x" * 900 + ".jsonl",
        "incoming/---.jsonl",
        "incoming/_leading_underscore.jsonl",
        "incoming/.jsonl",
    ],
)
def test_names_are_valid_step_functions_names(key: str) -> None:
    name = run_name(_version(key=key))
    assert NAME.fullmatch(name), name
    assert len(name) <= 80
    assert ValidateRequest(run_id=name, bucket=BUCKET, key=key).run_id == name  # also a valid run id


def test_subfolders_show_in_the_slug() -> None:
    assert run_name(_version(key="incoming/team-a/support.jsonl")).startswith("team-a-support-")


def test_without_a_version_id_the_etag_and_sequencer_identify_the_upload() -> None:
    # GIVEN two uploads of the same key with no version id (versioning never on) and different sequencers
    first = _version(version_id=None, etag="abc", sequencer="0A")
    again = _version(version_id=None, etag="abc", sequencer="0A")
    later = _version(version_id=None, etag="abc", sequencer="0B")
    # THEN the same event gives the same name, another upload another one; and neither is the versioned name
    assert run_name(first) == run_name(again) != run_name(later)
    assert run_name(first) != run_name(_version(version_id="null"))


@pytest.mark.parametrize(
    ("key", "stem", "sidecar"),
    [
        ("incoming/demo.jsonl", "incoming/demo", "incoming/demo.tuneplane.json"),
        ("incoming/demo.jsonl.gz", "incoming/demo", "incoming/demo.tuneplane.json"),
        ("incoming/a/b.c.jsonl", "incoming/a/b.c", "incoming/a/b.c.tuneplane.json"),
    ],
)
def test_a_dataset_and_its_sidecar_share_the_stem(key: str, stem: str, sidecar: str) -> None:
    assert dataset_stem(key) == stem
    assert sidecar_key(key) == sidecar


@pytest.mark.parametrize("key", ["incoming/demo.tuneplane.json", "incoming/demo.json", "incoming/.jsonl", "x.gz"])
def test_other_keys_are_not_datasets(key: str) -> None:
    assert dataset_stem(key) is None
    with pytest.raises(ValueError, match="not a dataset key"):
        sidecar_key(key)


# ---------------------------------------------------------------------------------------------------------------------
# Sidecar file


def test_a_valid_sidecar_parses() -> None:
    raw = json.dumps({"validation": {"min_examples": 50}, "eval_file": "incoming/demo.eval.jsonl"}).encode()
    settings = parse_sidecar(raw)
    assert settings.validation == {"min_examples": 50}
    assert settings.eval_file == "incoming/demo.eval.jsonl"
    assert parse_sidecar(b"{}").validation == {}
    assert parse_sidecar(b'\xef\xbb\xbf{"validation": {}}').validation == {}  # a BOM is tolerated


def test_invalid_json_says_where() -> None:
    raw = b'{\n  "validation": {\n    "min_examples": 50\n    "max_seq_length": 1024\n  }\n}'
    with pytest.raises(InvalidConfiguration) as raised:
        parse_sidecar(raw)
    assert str(raised.value) == "not valid JSON: Expecting ',' delimiter at line 4 column 5"


def test_unknown_keys_are_named_with_the_allowed_ones() -> None:
    with pytest.raises(InvalidConfiguration) as raised:
        parse_sidecar(b'{"epochs": 3, "validation": {}}')
    assert (
        str(raised.value)
        == "unknown setting 'epochs' (allowed: deploy, eval_file, evaluation, rerun, training, validation)"
    )


def test_an_unknown_nested_key_is_named_with_the_allowed_keys_of_its_section() -> None:
    # GIVEN a sidecar with a typo inside the training section and another inside the evaluation section
    raw = b'{"training": {"epochs": 3, "lora_r": 8}, "evaluation": {"min_scor": 0.5}}'
    # WHEN it is parsed
    with pytest.raises(InvalidConfiguration) as raised:
        parse_sidecar(raw)
    # THEN each problem lists the keys its own section allows, not the top-level ones
    training, evaluation = str(raised.value).split("; ")
    assert training.startswith(
        "unknown setting 'training.epochs' (allowed: early_stopping_patience, gradient_accumulation_steps, "
    )
    assert "num_train_epochs" in training and "instance_types" in training and "eval_file" not in training
    assert evaluation.startswith("unknown setting 'evaluation.min_scor' (allowed: graders, max_examples, ")
    assert "min_score" in evaluation and "validation" not in evaluation


def test_training_and_evaluation_sections_parse() -> None:
    raw = json.dumps(
        {
            "training": {"num_train_epochs": 2, "qlora": True, "instance_types": ["ml.g5.2xlarge", "ml.g6.2xlarge"]},
            "evaluation": {"primary_metric": "token_f1", "min_score": 0.4},
        }
    ).encode()
    settings = parse_sidecar(raw)
    assert settings.training.num_train_epochs == 2 and settings.training.qlora is True
    assert settings.training.instance_types == ["ml.g5.2xlarge", "ml.g6.2xlarge"]
    assert settings.evaluation.primary_metric == "token_f1" and settings.evaluation.min_score == 0.4
    assert parse_sidecar(b"{}").training.model_dump(exclude_none=True) == {}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"[1, 2]", "must be a JSON object"),
        (b'{"validation": 5}', "validation: Input should be a valid dictionary"),
        (b'{"eval_file": "../secrets.jsonl"}', "eval_file: String should match pattern"),
        (b'{"eval_file": "runs/x/eval.jsonl"}', "eval_file: String should match pattern"),
        (b'{"training": {"learning_rate": 2}}', "training.learning_rate: Input should be less than 1"),
        (b'{"training": {"instance_types": []}}', "training.instance_types: List should have at least 1 item"),
        (b'{"evaluation": {"primary_metric": "bleu"}}', "evaluation.primary_metric: Input should be"),
        (b'{"validation": {}}\xff', "not UTF-8 text (byte 18)"),
        (b'{"validation": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
        (b'{"training": {"seed": ' + b"9" * 5000 + b"}}", "not a usable JSON value: Exceeds the limit"),
    ],
)
def test_other_sidecar_problems_are_explained(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidConfiguration, match=re.escape(message)):
        parse_sidecar(raw)


def test_a_training_instance_type_without_the_ml_prefix_is_rejected_naming_the_field() -> None:
    # GIVEN a sidecar whose training instance types list an EC2 name ("g5.2xlarge") instead of a SageMaker one
    raw = json.dumps({"training": {"instance_types": ["g5.2xlarge"]}}).encode()
    # WHEN it is parsed
    with pytest.raises(InvalidConfiguration) as raised:
        parse_sidecar(raw)
    # THEN the problem names the item of the field and the pattern it must match, before any job is requested
    assert str(raised.value).startswith("training.instance_types.0: String should match pattern")
    assert "ml\\." in str(raised.value)


def test_the_validate_stage_rejects_a_run_whose_sidecar_is_unusable() -> None:
    # GIVEN the execution input StartRun builds for a dataset with a broken sidecar (the sample event)
    request = ValidateRequest.model_validate(
        json.loads((ROOT / "events" / "validate_request_invalid_sidecar.json").read_text())
    )
    settings = ValidateSettings(data_bucket=BUCKET, base_model_s3_uri="s3://models/tiny/")
    # WHEN the Validate stage runs THEN it rejects the run before reading anything, naming the file and the problem
    with pytest.raises(InvalidTrainingData) as raised:
        run_validate_stage(request, settings)
    assert str(raised.value).startswith(
        f"invalid dataset settings file s3://{BUCKET}/incoming/demo.tuneplane.json: unknown setting 'epochs'"
    )
    assert "upload the dataset again" in str(raised.value)


# ---------------------------------------------------------------------------------------------------------------------
# The handler on moto


def _load_handler() -> ModuleType:
    spec = importlib.util.spec_from_file_location("start_run_app", ROOT / "functions" / "start_run" / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _clear_caches() -> None:
    s3_adapter.s3_client.cache_clear()
    sfn_adapter.sfn_client.cache_clear()
    start_run_settings.cache_clear()


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[SimpleNamespace]:
    """moto with the data bucket (versioned) and a state machine; STATE_MACHINE_ARN set as the template sets it."""
    with mock_aws():
        _clear_caches()
        s3, sfn = boto3.client("s3"), boto3.client("stepfunctions")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        machine = sfn.create_state_machine(
            name="tuneplane-test-pipeline",
            definition=json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}),
            roleArn="arn:aws:iam::123456789012:role/pipeline",
        )["stateMachineArn"]
        monkeypatch.setenv("STATE_MACHINE_ARN", machine)
        yield SimpleNamespace(s3=s3, sfn=sfn, machine=machine, handler=_load_handler().handler)
    _clear_caches()


def _event(key: str = "incoming/demo.jsonl", version_id: str | None = "3HL4kqtJlcpXroDTDmjVBH40Nrjfkd") -> Any:
    event = copy.deepcopy(SAMPLE_EVENT)
    event["detail"]["object"]["key"] = key
    event["detail"]["object"]["version-id"] = version_id
    return event


def _execution_input(aws: SimpleNamespace, arn: str) -> Any:
    return json.loads(aws.sfn.describe_execution(executionArn=arn)["input"])


def test_the_sample_event_starts_an_execution_with_the_object_version(aws: SimpleNamespace) -> None:
    # WHEN the handler gets the sample S3 Object Created event (no sidecar in the bucket)
    result = aws.handler(copy.deepcopy(SAMPLE_EVENT), CONTEXT)
    # THEN it started one execution, named after the dataset and the object version
    assert result["status"] == "started"
    run_id = run_name(_version(version_id="3HL4kqtJlcpXroDTDmjVBH40Nrjfkd"))
    assert result["run_id"] == run_id
    assert result["execution_arn"] == aws.machine.replace(":stateMachine:", ":execution:") + f":{run_id}"
    assert _execution_input(aws, result["execution_arn"]) == {
        "run_id": run_id,
        "bucket": BUCKET,
        "key": "incoming/demo.jsonl",
        "version_id": "3HL4kqtJlcpXroDTDmjVBH40Nrjfkd",
        "eval_key": None,
        "eval_version_id": None,
        "overrides": {},
        "training": {},
        "evaluation": {},
        "deploy_target": None,
        "sidecar_key": None,
        "sidecar_version_id": None,
        "sidecar_error": None,
        "sequencer": SAMPLE_EVENT["detail"]["object"]["sequencer"],
        "rerun": False,
    }


def test_sidecar_settings_go_into_the_execution_input(aws: SimpleNamespace) -> None:
    # GIVEN a sidecar next to a gzip dataset
    sidecar = {"validation": {"min_examples": 50}, "eval_file": "incoming/demo.eval.jsonl"}
    eval_version = aws.s3.put_object(Bucket=BUCKET, Key="incoming/demo.eval.jsonl", Body=b"{}\n")["VersionId"]
    version = aws.s3.put_object(Bucket=BUCKET, Key="incoming/demo.tuneplane.json", Body=json.dumps(sidecar))
    # WHEN the dataset's event arrives
    result = aws.handler(_event("incoming/demo.jsonl.gz"), CONTEXT)
    # THEN the execution input carries the overrides, the eval file and which sidecar version applied
    run_input = _execution_input(aws, result["execution_arn"])
    assert run_input["overrides"] == {"min_examples": 50}
    assert run_input["eval_key"] == "incoming/demo.eval.jsonl"
    assert run_input["sidecar_key"] == "incoming/demo.tuneplane.json"
    assert run_input["sidecar_version_id"] == version["VersionId"]
    assert run_input["sidecar_error"] is None
    # AND the eval file's version current at run start is pinned
    assert run_input["eval_version_id"] == eval_version


def test_the_sidecars_deploy_target_goes_into_the_execution_input(aws: SimpleNamespace) -> None:
    # GIVEN a sidecar turning deploying off for this dataset
    sidecar = {"deploy": {"target": "none"}}
    aws.s3.put_object(Bucket=BUCKET, Key="incoming/demo.tuneplane.json", Body=json.dumps(sidecar))
    # WHEN the dataset's event arrives / THEN the execution input says so, for the state machine's choice
    result = aws.handler(_event(), CONTEXT)
    assert _execution_input(aws, result["execution_arn"])["deploy_target"] == "none"


def test_an_unknown_deploy_target_in_the_sidecar_is_named() -> None:
    # GIVEN a sidecar with a deploy target that does not exist / WHEN parsed / THEN the error names the field
    with pytest.raises(InvalidConfiguration) as raised:
        parse_sidecar(b'{"deploy": {"target": "lambda"}}')
    assert "deploy.target" in str(raised.value)


def test_training_and_evaluation_settings_go_into_the_execution_input(aws: SimpleNamespace) -> None:
    # GIVEN a sidecar with training and evaluation sections
    sidecar = {
        "training": {"num_train_epochs": 2, "qlora": False, "instance_types": ["ml.g6.2xlarge"]},
        "evaluation": {"min_score": 0.5, "primary_metric": "token_f1"},
    }
    aws.s3.put_object(Bucket=BUCKET, Key="incoming/demo.tuneplane.json", Body=json.dumps(sidecar))
    # WHEN the dataset's event arrives
    result = aws.handler(_event(), CONTEXT)
    # THEN the execution input carries both sections as given (unset settings left out), for the Stage function
    run_input = _execution_input(aws, result["execution_arn"])
    assert run_input["training"] == sidecar["training"]
    assert run_input["evaluation"] == sidecar["evaluation"]
    assert run_input["overrides"] == {} and run_input["sidecar_error"] is None


def test_an_invalid_sidecar_still_starts_the_run_with_the_problem(aws: SimpleNamespace) -> None:
    # GIVEN a sidecar that is not JSON
    aws.s3.put_object(Bucket=BUCKET, Key="incoming/demo.tuneplane.json", Body=b'{"validation": {"min_examples": 5')
    # WHEN the dataset's event arrives THEN the run starts, and its input says what is wrong with which file
    result = aws.handler(_event(), CONTEXT)
    assert result["status"] == "started"
    assert result["sidecar_error"].startswith("not valid JSON: Expecting")
    run_input = _execution_input(aws, result["execution_arn"])
    assert run_input["sidecar_key"] == "incoming/demo.tuneplane.json"
    assert run_input["sidecar_error"] == result["sidecar_error"] and run_input["overrides"] == {}


def test_an_oversized_sidecar_is_a_sidecar_problem(aws: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_SIDECAR_BYTES", "16")
    aws.s3.put_object(Bucket=BUCKET, Key="incoming/demo.tuneplane.json", Body=b'{"validation": {"seed": 1234567}}')
    assert aws.handler(_event(), CONTEXT)["sidecar_error"] == "larger than 16 bytes"


def test_a_duplicate_delivery_starts_nothing_and_says_so(
    aws: SimpleNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN an event that started a run
    first = aws.handler(_event(), CONTEXT)
    # WHEN the same event is delivered again
    with caplog.at_level(logging.INFO):
        again = aws.handler(_event(), CONTEXT)
    # THEN nothing new started, the result says "duplicate" with the existing execution, and so does the log
    assert again["status"] == "duplicate"
    assert again["execution_arn"] == first["execution_arn"] and again["run_id"] == first["run_id"]
    assert len(aws.sfn.list_executions(stateMachineArn=aws.machine)["executions"]) == 1
    [record] = [r for r in caplog.records if r.getMessage() == "duplicate delivery"]
    assert record.execution_arn == first["execution_arn"]  # type: ignore[attr-defined]


def test_a_duplicate_that_races_past_the_check_is_still_a_duplicate(
    aws: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a run started, then its sidecar changed (so a second StartExecution would not be idempotent)
    first = aws.handler(_event(), CONTEXT)
    aws.s3.put_object(Bucket=BUCKET, Key="incoming/demo.tuneplane.json", Body=b'{"validation": {"seed": 7}}')
    # WHEN a second delivery does not see the execution yet (two deliveries at once)
    monkeypatch.setattr(sfn_adapter, "execution_exists", lambda arn: False)
    again = aws.handler(_event(), CONTEXT)
    # THEN StartExecution's ExecutionAlreadyExists makes it a duplicate too
    assert again["status"] == "duplicate" and again["execution_arn"] == first["execution_arn"]


def test_a_new_version_of_the_same_key_starts_a_new_run(aws: SimpleNamespace) -> None:
    first = aws.handler(_event(version_id="v1"), CONTEXT)
    second = aws.handler(_event(version_id="v2"), CONTEXT)
    assert first["status"] == second["status"] == "started"
    assert first["run_id"] != second["run_id"]


def test_keys_that_are_not_datasets_are_ignored(aws: SimpleNamespace) -> None:
    # GIVEN events the rule should never deliver (a sidecar, an output under runs/)
    for key in ("incoming/demo.tuneplane.json", "runs/x/data/train.jsonl"):
        # WHEN they arrive anyway THEN nothing starts
        assert aws.handler(_event(key), CONTEXT)["status"] == "ignored"
    assert aws.sfn.list_executions(stateMachineArn=aws.machine)["executions"] == []


def test_a_malformed_event_is_refused(aws: SimpleNamespace) -> None:
    from aws_lambda_powertools.utilities.parser import ValidationError

    event = _event()
    del event["detail"]["object"]["key"]
    with pytest.raises(ValidationError):
        aws.handler(event, CONTEXT)


# ---------------------------------------------------------------------------------------------------------------------
# Upload names, late sidecars, the eval file's version (issue 15)


@pytest.mark.parametrize(
    ("key", "stem"),
    [
        ("incoming/Support.JSONL", "incoming/Support"),
        ("incoming/x.jsonl.GZ", "incoming/x"),
        ("incoming/x.Jsonl.Gz", "incoming/x"),
        ("incoming/a/b.JSONL", "incoming/a/b"),
    ],
)
def test_a_differently_cased_suffix_is_a_dataset(key: str, stem: str) -> None:
    # GIVEN a dataset whose suffix is in another case WHEN it is classified THEN it is a dataset with that stem
    assert dataset_stem(key) == stem
    assert classify_upload(key) == ("dataset", "a dataset")
    assert sidecar_key(key) == stem + ".tuneplane.json"


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("incoming/.jsonl", "rename it to incoming/<name>.jsonl"),
        ("incoming/team/.JSONL.gz", "rename it to incoming/team/<name>.JSONL.gz"),
        ("incoming/data.json", "rename it to incoming/data.jsonl"),
        ("incoming/data.csv", "named incoming/data.jsonl or .jsonl.gz"),
        ("incoming/data.jsonl.zip", "compress it with gzip as incoming/data.jsonl.gz"),
        ("incoming/data.Tuneplane.JSON", "rename it to incoming/data.tuneplane.json (lower case)"),
    ],
)
def test_a_name_that_starts_nothing_is_rejected_saying_what_to_rename_it_to(key: str, expected: str) -> None:
    kind, problem = classify_upload(key)
    assert kind == "rejected"
    assert key in problem and expected in problem


@pytest.mark.parametrize(
    "key", ["incoming/demo.tuneplane.json", "incoming/sub/", "incoming/.DS_Store", "runs/x/data/train.jsonl"]
)
def test_sidecars_folder_markers_and_hidden_files_are_ignored(key: str) -> None:
    assert classify_upload(key)[0] == "ignored"


def test_a_rejected_name_is_cut_in_the_message() -> None:
    kind, problem = classify_upload("incoming/" + "x" * 1000 + ".csv")
    assert kind == "rejected" and len(problem) < 600


@pytest.fixture
def bus(aws: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The stack's bus with a rule copying every event to a queue; EVENT_BUS_NAME set as the template sets it."""
    from tuneplane.adapters import events as events_adapter

    events, sqs = boto3.client("events"), boto3.client("sqs")
    events.create_event_bus(Name="tuneplane-test-events")
    queue = sqs.create_queue(QueueName="bus")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="all", EventBusName="tuneplane-test-events", EventPattern='{"source": ["tuneplane"]}')
    events.put_targets(Rule="all", EventBusName="tuneplane-test-events", Targets=[{"Id": "q", "Arn": arn}])
    monkeypatch.setenv("EVENT_BUS_NAME", "tuneplane-test-events")
    events_adapter.events_client.cache_clear()
    start_run_settings.cache_clear()
    yield queue
    events_adapter.events_client.cache_clear()


def _bus_events(queue: str) -> list[dict[str, Any]]:
    messages = boto3.client("sqs").receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
    return [json.loads(message["Body"]) for message in messages]


def test_an_upload_with_no_name_is_answered_with_run_rejected(aws: SimpleNamespace, bus: str) -> None:
    # WHEN incoming/.jsonl arrives
    result = aws.handler(_event("incoming/.jsonl"), CONTEXT)
    # THEN no execution started, and a Run Rejected event on the bus says what to rename it to
    assert result["status"] == "rejected" and "rename it to incoming/<name>.jsonl" in result["problem"]
    assert aws.sfn.list_executions(stateMachineArn=aws.machine)["executions"] == []
    [event] = _bus_events(bus)
    assert event["detail-type"] == "Run Rejected"
    detail = event["detail"]
    assert detail["dataset"] == "incoming/.jsonl" and detail["status"] == "rejected" and detail["stage"] == "run"
    assert detail["message"] == result["problem"] and detail["metrics"] == {"failed_stage": "upload"}
    assert detail["run_id"] == result["run_id"]


def test_an_upper_case_suffix_starts_a_run(aws: SimpleNamespace, bus: str) -> None:
    result = aws.handler(_event("incoming/Support.JSONL"), CONTEXT)
    assert result["status"] == "started" and result["run_id"].startswith("Support-")
    assert _bus_events(bus) == []


def test_a_sidecar_upload_is_ignored_without_an_event(aws: SimpleNamespace, bus: str) -> None:
    assert aws.handler(_event("incoming/demo.tuneplane.json"), CONTEXT)["status"] == "ignored"
    assert _bus_events(bus) == []


def _fresh_event(key: str = "incoming/demo.jsonl") -> Any:
    event = _event(key)
    event["time"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return event


def test_a_sidecar_uploaded_just_after_the_dataset_is_waited_for(
    aws: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a dataset just uploaded without its sidecar, which arrives while StartRun waits (as with aws s3 sync)
    slept: list[float] = []

    def sidecar_arrives(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 2:
            aws.s3.put_object(
                Bucket=BUCKET, Key="incoming/demo.tuneplane.json", Body=b'{"validation": {"min_examples": 7}}'
            )

    monkeypatch.setattr(start_run_logic, "_sleep", sidecar_arrives)
    # WHEN its event arrives
    result = aws.handler(_fresh_event(), CONTEXT)
    # THEN StartRun looked again until the sidecar was there, and the run has its settings and version
    assert slept == [start_run_logic.SIDECAR_POLL_S] * 2
    run_input = _execution_input(aws, result["execution_arn"])
    assert run_input["overrides"] == {"min_examples": 7}
    assert run_input["sidecar_key"] == "incoming/demo.tuneplane.json" and run_input["sidecar_version_id"]


def test_the_wait_for_a_sidecar_is_bounded(aws: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a fresh dataset that never gets a sidecar, and SIDECAR_WAIT_S=3
    slept: list[float] = []
    monkeypatch.setattr(start_run_logic, "_sleep", slept.append)
    monkeypatch.setenv("SIDECAR_WAIT_S", "3")
    start_run_settings.cache_clear()
    # WHEN its event arrives THEN StartRun looks again for at most 3 s, then starts the run without settings
    result = aws.handler(_fresh_event(), CONTEXT)
    assert 2 <= len(slept) <= 3
    assert _execution_input(aws, result["execution_arn"])["sidecar_key"] is None


def test_an_old_event_and_little_remaining_time_do_not_wait() -> None:
    now = datetime.now(UTC)
    assert start_run_logic.sidecar_wait(now - timedelta(minutes=5), 10, None) == 0
    assert start_run_logic.sidecar_wait(now, 10, 7.0) == pytest.approx(2.0, abs=0.1)
    assert start_run_logic.sidecar_wait(now, 10, 3.0) == 0
    assert start_run_logic.sidecar_wait(now, 10, None) == pytest.approx(10, abs=0.1)


def test_a_sample_event_of_long_ago_does_not_wait(aws: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(start_run_logic, "_sleep", slept.append)
    assert aws.handler(_event(), CONTEXT)["status"] == "started"
    assert slept == []


def test_a_missing_eval_file_is_a_sidecar_problem_naming_it(aws: SimpleNamespace) -> None:
    # GIVEN a sidecar naming an eval file that was never uploaded
    sidecar = {"eval_file": "incoming/demo.eval.jsonl"}
    aws.s3.put_object(Bucket=BUCKET, Key="incoming/demo.tuneplane.json", Body=json.dumps(sidecar))
    # WHEN the dataset arrives
    result = aws.handler(_event(), CONTEXT)
    # THEN the run starts with the problem, for the Validate stage to reject (the uploader's to fix)
    run_input = _execution_input(aws, result["execution_arn"])
    assert "eval_file incoming/demo.eval.jsonl does not exist" in run_input["sidecar_error"]
    assert run_input["eval_key"] is None and run_input["eval_version_id"] is None
    request = ValidateRequest.model_validate(run_input)
    settings = ValidateSettings(data_bucket=BUCKET, base_model_s3_uri="s3://models/tiny/")
    with pytest.raises(InvalidTrainingData, match="eval_file incoming/demo.eval.jsonl does not exist"):
        run_validate_stage(request, settings)


def test_the_validate_stage_reads_the_pinned_eval_version(aws: SimpleNamespace) -> None:
    # GIVEN an eval file pinned at run start, then overwritten with another version
    first = aws.s3.put_object(Bucket=BUCKET, Key="incoming/demo.eval.jsonl", Body=b"first version\n")["VersionId"]
    aws.s3.put_object(Bucket=BUCKET, Key="incoming/demo.eval.jsonl", Body=b"second, longer version\n")
    # WHEN the Validate stage builds the eval file's source from the request
    request = ValidateRequest(
        run_id="demo-1",
        bucket=BUCKET,
        key="incoming/demo.jsonl",
        eval_key="incoming/demo.eval.jsonl",
        eval_version_id=first,
    )
    source = validate_stage_logic._source(request.bucket, str(request.eval_key), request.eval_version_id)
    # THEN it is the pinned version
    assert source.size == len(b"first version\n")
    body = source.open()
    assert body.read() == b"first version\n"


@pytest.mark.parametrize(
    ("key", "secret"),
    [("incoming/cust 4111 1111 1111 1111.jsonl", "4111 1111"), ("incoming/john.doe@example.com.jsonl", "john")],
)
def test_a_run_id_does_not_carry_pii_from_the_file_name(key: str, secret: str) -> None:
    # GIVEN an upload whose file name holds a card number or an email address
    # WHEN its run id is made (it travels in every event, job name and ledger key)
    run_id = run_name(ObjectVersion(bucket=BUCKET, key=key, version_id="v1"))
    # THEN the readable part is masked, and the id is still unique per object version
    assert secret.replace(" ", "-") not in run_id and secret not in run_id
    assert run_id != run_name(ObjectVersion(bucket=BUCKET, key=key, version_id="v2"))
