"""Every path of the real state machine: template.yaml deployed into moto, pipeline.asl.json executed by moto's
interpreter, the real Validate and Stage handlers in process, SageMaker jobs with scripted outcomes (harness.py).

Each test asserts on the execution history, the run ledger and the sequence of events on the bus. The tests start
executions themselves, with chosen run ids, so the upload trigger is off (test_start_run_flow.py covers it).

The tests of one stack (template parameters) share it (harness.StackPool; the tests are ordered by stack): each test
has a run id and a dataset of its own, and asserts on its run's events, jobs, ledger and registered model only."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import boto3
import pytest
from tests.statemachine.harness import Cloud

from tuneplane.logic.job_requests import job_prefix

HAPPY_STATES = [
    "Init",
    "StartValidate",
    "Validate",
    "ValidateEngine",
    "FinishValidate",
    "StartTrain",
    "Train",
    "FinishTrain",
    "StartMerge",
    "Merge",
    "FinishMerge",
    "QuantizeWanted",
    "SkipQuantize",
    "StartEvaluate",
    "Evaluate",
    "StartGrading",
    "GradeAnswers",
    "GradingDone",
    "FinishEvaluate",
    "Gate",
    "StartRegister",
    "Register",
    "FinishRegister",
    "DatasetDeployTarget",
    "DeployTarget",
    "SkipDeploy",
    "CompleteRun",
    "Succeeded",
]


@pytest.fixture
def cloud(shared_cloud: Cloud) -> Cloud:
    """The stack of the test's parameters, shared with the other tests of that stack (the module docstring)."""
    return shared_cloud


@pytest.fixture(autouse=True)
def _manual_runs_only(cloud: Cloud) -> None:
    cloud.disable_trigger()


def _dataset(run_id: str) -> str:
    """The run's own dataset key."""
    return f"incoming/reverse-{run_id}.jsonl"


def _bus(cloud: Cloud, run_id: str) -> list[dict[str, Any]]:
    """The run's events on the bus, in order."""
    return [e for e in cloud.bus_events() if e["detail"]["run_id"] == run_id]


def _events(cloud: Cloud, run_id: str) -> list[tuple[str, str, str]]:
    return [(e["detail-type"], e["detail"]["stage"], e["detail"]["status"]) for e in _bus(cloud, run_id)]


def _jobs(cloud: Cloud, run_id: str) -> list[tuple[str, str]]:
    """The run's SageMaker jobs started, in order: (job name, instance type)."""
    return [(name, kind) for name, kind in cloud.jobs.started if name.startswith(f"{job_prefix(run_id)}-")]


def _model_packages(cloud: Cloud) -> list[dict[str, Any]]:
    sagemaker = boto3.client("sagemaker")
    group = cloud.deployment.outputs["ModelPackageGroupName"]
    pages = sagemaker.get_paginator("list_model_packages").paginate(ModelPackageGroupName=group)
    return [dict(package) for page in pages for package in page["ModelPackageSummaryList"]]


def _misspelled_role(lines: list[str]) -> list[str]:
    bad = list(lines)
    bad[4] = bad[4].replace('"assistant"', '"assitant"')
    return bad


def test_happy_path_runs_every_stage_and_records_it(cloud: Cloud, reversal_lines: list[str]) -> None:
    # GIVEN a valid dataset and jobs that succeed WHEN the pipeline runs
    execution = cloud.run_dataset("run-ok", reversal_lines)
    # THEN it went through every stage in order and succeeded
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    assert cloud.states_entered(execution["executionArn"]) == HAPPY_STATES
    # AND every stage published Started then Succeeded (Skipped for quantize and deploy), then Run Succeeded
    bus = _bus(cloud, "run-ok")
    seen = [(e["detail-type"], e["detail"]["stage"]) for e in bus]
    assert seen == [
        ("Stage Started", "validate"),
        ("Stage Succeeded", "validate"),
        ("Stage Started", "train"),
        ("Stage Succeeded", "train"),
        ("Stage Started", "merge"),
        ("Stage Succeeded", "merge"),
        ("Stage Skipped", "quantize"),
        ("Stage Started", "evaluate"),
        ("Stage Succeeded", "evaluate"),
        ("Stage Started", "register"),
        ("Stage Succeeded", "register"),
        ("Stage Skipped", "deploy"),
        ("Run Succeeded", "run"),
    ]
    by_stage = {(e["detail-type"], e["detail"]["stage"]): e["detail"] for e in bus}
    assert by_stage[("Stage Succeeded", "train")]["metrics"]["final_train_loss"] == 0.25
    assert by_stage[("Stage Succeeded", "evaluate")]["metrics"]["candidate.exact_match"] == 0.9
    assert by_stage[("Stage Skipped", "deploy")]["message"] == "deploy not configured (DeployTarget=none)"
    # AND the ledger holds every stage with its status, timings and artifact URIs
    ledger = cloud.ledger("run-ok")
    bucket = cloud.deployment.bucket_name
    assert {stage: item["status"] for stage, item in ledger.items()} == {
        "validate": "succeeded",
        "train": "succeeded",
        "merge": "succeeded",
        "quantize": "skipped",
        "evaluate": "succeeded",
        "register": "succeeded",
        "deploy": "skipped",
        "run": "succeeded",
    }
    assert ledger["train"]["artifacts"]["adapter"].startswith(f"s3://{bucket}/runs/run-ok/train/")
    assert ledger["merge"]["artifacts"]["merged"] == f"s3://{bucket}/runs/run-ok/merged/"
    assert ledger["evaluate"]["artifacts"]["evaluation"] == f"s3://{bucket}/runs/run-ok/evaluation/evaluation.json"
    assert ledger["register"]["artifacts"]["model_package"].startswith("arn:aws:sagemaker:")
    assert float(ledger["run"]["duration_s"]) > 0
    # AND the training job was created from the validated split with the stack's tag
    [(train_job, instance)] = [(name, kind) for name, kind in _jobs(cloud, "run-ok") if name.endswith("-train0")]
    assert instance == "ml.g5.2xlarge"


def test_invalid_data_is_rejected_before_any_job(cloud: Cloud, reversal_lines: list[str]) -> None:
    # GIVEN a dataset whose 5th line has a misspelled role WHEN the pipeline runs
    execution = cloud.run_dataset("run-bad", _misspelled_role(reversal_lines))
    # THEN it ends as InvalidTrainingData through the rejection path, and no job was created
    assert execution["status"] == "FAILED" and execution["error"] == "InvalidTrainingData"
    states = cloud.states_entered(execution["executionArn"])
    assert states == ["Init", "StartValidate", "Validate", "RejectValidate", "DataRejected"]
    assert _jobs(cloud, "run-bad") == []
    assert "unrecognized_role" in json.loads(execution["cause"])["errorMessage"]
    # AND the events say rejected, naming the problem, and the ledger agrees
    assert _events(cloud, "run-bad") == [
        ("Stage Started", "validate", "started"),
        ("Stage Failed", "validate", "rejected"),
        ("Run Rejected", "run", "rejected"),
    ]
    assert cloud.ledger("run-bad")["run"]["status"] == "rejected"
    assert "unrecognized_role" in cloud.ledger("run-bad")["validate"]["message"]
    assert cloud.keys("runs/run-bad/data/") == []


def test_a_failed_training_job_fails_the_run_with_the_containers_reason(
    cloud: Cloud, reversal_lines: list[str]
) -> None:
    # GIVEN a training job that fails with the container's own reason
    cloud.jobs.fail["train"] = "CUDA out of memory at seq len 4096, batch 8: lower per_device_batch_size"
    # WHEN the pipeline runs
    execution = cloud.run_dataset("run-oom", reversal_lines)
    # THEN the run failed at train through RecordFailure, and merge never started
    assert execution["status"] == "FAILED" and execution["error"] == "RunFailed"
    states = cloud.states_entered(execution["executionArn"])
    assert states[-4:] == ["TrainCapacityFallback", "TrainFailed", "RecordFailure", "Failed"]
    assert "StartMerge" not in states
    assert "CUDA out of memory at seq len 4096" in execution["cause"]
    # AND Stage Failed / Run Failed carry the one-line cause, as does the ledger
    bus = _bus(cloud, "run-oom")
    assert [(e["detail-type"], e["detail"]["stage"]) for e in bus][-2:] == [
        ("Stage Failed", "train"),
        ("Run Failed", "run"),
    ]
    assert bus[-1]["detail"]["message"].startswith("train: AlgorithmError: CUDA out of memory")
    assert cloud.ledger("run-oom")["train"]["status"] == "failed"


def test_a_model_below_the_gate_is_rejected_and_not_registered(cloud: Cloud, reversal_lines: list[str]) -> None:
    # GIVEN an evaluation where the candidate scores below the base (the stack's MinImprovementOverBase is 0)
    # WHEN the pipeline runs
    cloud.jobs.scores = {"candidate": 0.1, "base": 0.2}
    execution = cloud.run_dataset("run-gate", reversal_lines)
    # THEN it ends as GateFailed after the Gate, without registering
    assert execution["status"] == "FAILED" and execution["error"] == "GateFailed"
    states = cloud.states_entered(execution["executionArn"])
    assert states[-3:] == ["Gate", "RejectEvaluate", "GateRejected"]
    assert "StartRegister" not in states
    assert "did not pass the gate" in execution["cause"]
    # AND the events end with the evaluation rejected and Run Rejected
    assert _events(cloud, "run-gate")[-2:] == [
        ("Stage Failed", "evaluate", "rejected"),
        ("Run Rejected", "run", "rejected"),
    ]
    assert cloud.ledger("run-gate")["run"]["status"] == "rejected"


def test_a_stage_that_times_out_fails_the_run_and_its_job_is_stopped(cloud: Cloud, reversal_lines: list[str]) -> None:
    # GIVEN training jobs that may run 2 s (and the state machine waits no longer), and a job that hangs
    cloud.stage_function_environment(MAX_TRAINING_RUNTIME_S="2", JOB_WAIT_MARGIN_S="0", USE_SPOT="false")
    cloud.jobs.hang.add("train")
    # WHEN the pipeline runs
    execution = cloud.run_dataset("run-timeout", reversal_lines)
    # THEN the Train task timed out and the run failed with States.Timeout
    assert execution["status"] == "FAILED"
    assert "States.Timeout" in execution["cause"]
    # AND the failure path stopped the job that was still running
    failed = _bus(cloud, "run-timeout")[-2]["detail"]
    assert failed["stage"] == "train" and any(note.startswith("stopped ") for note in failed["notes"])
    job = _jobs(cloud, "run-timeout")[0][0]
    status = boto3.client("sagemaker").describe_training_job(TrainingJobName=job)
    assert status["TrainingJobStatus"] in ("Stopping", "Stopped")


def test_a_key_with_characters_the_registry_refuses_is_registered(cloud: Cloud, reversal_lines: list[str]) -> None:
    # GIVEN a dataset whose key has parentheses, which CustomerMetadataProperties values may not hold
    key = "incoming/support (v2).jsonl"
    registered_before = {package["ModelPackageArn"] for package in _model_packages(cloud)}
    # WHEN it passes the pipeline
    execution = cloud.run_dataset("run-parens", reversal_lines, key=key)
    # THEN it is registered (one model package more), with the key in a form SageMaker accepts, and the description
    # names the key as it is
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    sagemaker = boto3.client("sagemaker")
    [package] = [p for p in _model_packages(cloud) if p["ModelPackageArn"] not in registered_before]
    described = sagemaker.describe_model_package(ModelPackageName=package["ModelPackageArn"])
    assert described["CustomerMetadataProperties"]["dataset"].startswith("incoming/support _v2_.jsonl@")
    assert described["ModelPackageDescription"] == f"tuneplane run run-parens of {key}"
    # AND without quantization the package holds the merged model
    [container] = described["InferenceSpecification"]["Containers"]
    bucket = cloud.deployment.bucket_name
    assert container["ModelDataSource"]["S3DataSource"]["S3Uri"] == f"s3://{bucket}/runs/run-parens/merged/"


@pytest.mark.parametrize(("required", "status"), [(0.01, "SUCCEEDED"), (0.1, "FAILED")])
def test_the_gate_applies_the_runs_own_thresholds(
    cloud: Cloud, reversal_lines: list[str], required: float, status: str
) -> None:
    # GIVEN a candidate 0.05 better than the base, and a dataset asking for an improvement of `required`
    cloud.jobs.scores = {"candidate": 0.5, "base": 0.45}
    run_id = f"run-thresholds-{status.lower()}"
    version = cloud.upload(_dataset(run_id), reversal_lines)
    request = {
        "run_id": run_id,
        "bucket": cloud.deployment.bucket_name,
        "key": _dataset(run_id),
        "version_id": version,
        "evaluation": {"min_improvement_over_base": required},
    }
    # WHEN the pipeline runs (the evaluate job's gate is the container's, on the arguments the Stage function sent)
    execution = cloud.run(run_id, request)
    # THEN the run passes or is rejected by that threshold, with the container's reason
    assert execution["status"] == status, execution.get("cause")
    if status == "FAILED":
        assert execution["error"] == "GateFailed"
        assert "less than the required +0.1000" in execution["cause"]


@pytest.mark.stack_parameters(FallbackTrainingInstanceTypes="ml.g6e.2xlarge")
def test_no_capacity_falls_back_to_the_next_instance_type(cloud: Cloud, reversal_lines: list[str]) -> None:
    # GIVEN a stack with a fallback instance type, and no capacity for the first one
    cloud.jobs.no_capacity.add("ml.g5.2xlarge")
    # WHEN the pipeline runs
    execution = cloud.run_dataset("run-fallback", reversal_lines)
    # THEN the first attempt failed for capacity, the second ran on the fallback, and the run succeeded
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    trains = [(name, kind) for name, kind in _jobs(cloud, "run-fallback") if "-train" in name]
    assert [kind for _, kind in trains] == ["ml.g5.2xlarge", "ml.g6e.2xlarge"]
    assert trains[0][0].endswith("-train0") and trains[1][0].endswith("-train1")
    states = cloud.states_entered(execution["executionArn"])
    assert states.count("StartTrain") == 2 and "NextTrainInstance" in states
    # AND the events say so
    starts = [e["detail"] for e in _bus(cloud, "run-fallback") if e["detail"]["stage"] == "train"]
    assert "CapacityError" in starts[1]["notes"][0] and "ml.g6e.2xlarge" in starts[1]["notes"][0]
    assert "after 1 capacity fallback" in starts[-1]["notes"][0]


@pytest.mark.stack_parameters(FallbackTrainingInstanceTypes="ml.g6e.2xlarge")
def test_out_of_memory_is_not_mistaken_for_no_capacity(cloud: Cloud, reversal_lines: list[str]) -> None:
    # GIVEN a fallback instance type, and a training job that runs out of GPU memory (CUDA says "total capacity")
    cloud.jobs.fail["train"] = "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 22.20 GiB total capacity)"
    # WHEN the pipeline runs
    execution = cloud.run_dataset("run-oom-fallback", reversal_lines)
    # THEN the run fails at once with the container's reason: another instance type would not fix the batch size
    assert execution["status"] == "FAILED"
    assert [kind for name, kind in _jobs(cloud, "run-oom-fallback") if "-train" in name] == ["ml.g5.2xlarge"]
    assert "NextTrainInstance" not in cloud.states_entered(execution["executionArn"])


@pytest.mark.stack_parameters(MaxCapacityWaitMinutes="0")
def test_capacity_errors_with_no_fallback_left_fail_the_run(cloud: Cloud, reversal_lines: list[str]) -> None:
    # GIVEN a stack that does not wait for capacity, and no capacity for the only instance type WHEN the pipeline runs
    cloud.jobs.no_capacity.add("ml.g5.2xlarge")
    execution = cloud.run_dataset("run-nocap", reversal_lines)
    # THEN one attempt, then the failure path: no capacity, naming the stack's setting and the last error
    assert execution["status"] == "FAILED"
    assert "CapacityUnavailable" in execution["cause"] and "MaxCapacityWaitMinutes 0" in execution["cause"]
    assert "CapacityError" in execution["cause"]
    assert len([name for name, _ in _jobs(cloud, "run-nocap") if "-train" in name]) == 1


@pytest.mark.stack_parameters(FallbackTrainingInstanceTypes="ml.g6e.2xlarge", MaxCapacityWaitMinutes="120")
def test_a_run_waits_for_capacity_visibly_and_trains_when_it_comes(cloud: Cloud, reversal_lines: list[str]) -> None:
    # GIVEN no capacity for either instance type of the run, for a while (the account's quota is taken)
    cloud.stage_function_environment(CAPACITY_RETRY_INTERVAL_S="60")  # 0.6 s at the local cloud's time scale
    cloud.jobs.no_capacity |= {"ml.g5.2xlarge", "ml.g6e.2xlarge"}

    def capacity_comes_back() -> None:  # during the second wait (the ledger counts them), not as a job starts
        deadline = time.monotonic() + 60
        while cloud.ledger("run-queued").get("train", {}).get("capacity_waits") != 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        cloud.jobs.no_capacity.clear()

    threading.Thread(target=capacity_comes_back, daemon=True).start()
    # WHEN the pipeline runs
    execution = cloud.run_dataset("run-queued", reversal_lines)
    # THEN it tried both types, waited, tried both again, waited, and trained on the first type of the third round
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    trains = [(name.rsplit("-", 1)[-1], kind) for name, kind in _jobs(cloud, "run-queued") if "-train" in name]
    assert trains == [
        ("train0", "ml.g5.2xlarge"),
        ("train1", "ml.g6e.2xlarge"),
        ("train2", "ml.g5.2xlarge"),
        ("train3", "ml.g6e.2xlarge"),
        ("train4", "ml.g5.2xlarge"),
    ]
    assert cloud.states_entered(execution["executionArn"]).count("WaitForCapacity") == 2
    # AND each wait was said: two Stage Waiting events naming the error and the time left, then one Run Succeeded
    events = [(e["detail-type"], e["detail"]) for e in _bus(cloud, "run-queued")]
    waiting = [detail for kind, detail in events if kind == "Stage Waiting"]
    assert [detail["stage"] for detail in waiting] == ["train", "train"]
    assert "CapacityError" in waiting[0]["message"] and "wait 1;" in waiting[0]["message"]
    assert "wait 2;" in waiting[1]["message"]
    assert [kind for kind, detail in events if detail["stage"] == "run"] == ["Run Succeeded"]
    assert cloud.ledger("run-queued")["train"]["capacity_waits"] == 2


@pytest.mark.stack_parameters(MaxCapacityWaitMinutes="3")
def test_the_wait_for_capacity_is_bounded(cloud: Cloud, reversal_lines: list[str]) -> None:
    # GIVEN a stack that waits at most 3 minutes in all, rounds 1 minute apart, and capacity that never comes
    cloud.stage_function_environment(CAPACITY_RETRY_INTERVAL_S="60")
    cloud.jobs.no_capacity.add("ml.g5.2xlarge")
    # WHEN the pipeline runs
    execution = cloud.run_dataset("run-never", reversal_lines)
    # THEN it waited within the bound, then failed saying so (for the platform team: quota or instance types)
    assert execution["status"] == "FAILED"
    assert "CapacityUnavailable" in execution["cause"] and "MaxCapacityWaitMinutes 3" in execution["cause"]
    waits = cloud.states_entered(execution["executionArn"]).count("WaitForCapacity")
    assert 1 <= waits <= 3
    outcomes = [e["detail-type"] for e in _bus(cloud, "run-never") if e["detail"]["stage"] == "run"]
    assert outcomes == ["Run Failed"]


@pytest.mark.stack_parameters(QuantizeEnabled="true")
def test_quantization_runs_when_the_stack_asks_for_it(cloud: Cloud, reversal_lines: list[str]) -> None:
    # GIVEN a stack that quantizes (AWQ for a vLLM target) WHEN a run passes
    execution = cloud.run_dataset("run-awq", reversal_lines)
    # THEN a quantize job ran on the merged model between merge and evaluate, and the ledger has its output
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    states = cloud.states_entered(execution["executionArn"])
    assert states[states.index("QuantizeWanted") : states.index("StartEvaluate")] == [
        "QuantizeWanted",
        "StartQuantize",
        "Quantize",
        "FinishQuantize",
    ]
    assert [name for name, _ in _jobs(cloud, "run-awq") if name.endswith("-quantize")]
    bucket = cloud.deployment.bucket_name
    assert cloud.ledger("run-awq")["quantize"]["artifacts"]["quantized"] == f"s3://{bucket}/runs/run-awq/quantized/"
    # AND the evaluate job judged the quantized model (what the endpoint serves) beside the merged one it came from
    [evaluate_job] = [name for name, _ in _jobs(cloud, "run-awq") if name.endswith("-evaluate")]
    inputs = boto3.client("sagemaker").describe_processing_job(ProcessingJobName=evaluate_job)["ProcessingInputs"]
    uris = {i["InputName"]: i["S3Input"]["S3Uri"] for i in inputs}
    assert uris["candidate"] == f"s3://{bucket}/runs/run-awq/quantized/"
    assert uris["unquantized"] == f"s3://{bucket}/runs/run-awq/merged/"
    # AND the registry's package holds the quantized weights its quality metrics were measured on
    package = cloud.ledger("run-awq")["register"]["artifacts"]["model_package"]
    described = boto3.client("sagemaker").describe_model_package(ModelPackageName=package)
    [container] = described["InferenceSpecification"]["Containers"]
    assert container["ModelDataSource"]["S3DataSource"]["S3Uri"] == f"s3://{bucket}/runs/run-awq/quantized/"
