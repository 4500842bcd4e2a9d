"""The sample events in events/: every file is one function's input, parses with the model that function's
``@event_parser`` uses, and (for the Stage and Deploy functions) is the payload the state machine sends, with a
state that carries what the logic needs. Offline: nothing here reads S3 or calls AWS."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools.utilities.parser.models import S3EventNotificationEventBridgeModel
from pydantic import BaseModel

from tuneplane.config import DeploySettings, PipelineSettings
from tuneplane.logic import job_requests
from tuneplane.logic.deploy import serving
from tuneplane.logic.deploy.context import RunArtifacts, endpoint_name, imported_model_prefix, run_resource_name
from tuneplane.logic.notify import PipelineEventBridgeModel
from tuneplane.logic.stage_outcomes import RunView, deploy_outcome, one_line_cause, outcome_of
from tuneplane.logic.stages import _HEADLINE_METRICS, _run_outcome_line, job_spec
from tuneplane.logic.start_run import dataset_stem
from tuneplane.models.deploy import DeployRequest
from tuneplane.models.events import EVENT_SOURCE, PipelineEvent, Stage
from tuneplane.models.pipeline import EvaluationOverrides, GradeRequest, StageRequest
from tuneplane.models.run import RunInput
from tuneplane.models.stage import ValidateRequest

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"
ASL = json.loads((ROOT / "statemachines" / "pipeline.asl.json").read_text())
NOT_SAMPLES = {"README.md"}

# The one run the Stage, Deploy and pipeline-event samples follow.
RUN_ID = "support-v2-3f9c0a1b2d4e5f60"
BUCKET = "tuneplane-dev-data-123456789012"
DATASET = "incoming/support-v2.jsonl"
STACK = "tuneplane-dev"
EXECUTION_ARN = f"arn:aws:states:us-east-1:123456789012:execution:{STACK}-pipeline:{RUN_ID}"
RUNS = f"s3://{BUCKET}/runs/{RUN_ID}/"


@dataclass(frozen=True)
class Sample:
    """Which function a sample file is for, and the model its handler parses the event with."""

    prefix: str
    function: str  # the directory under functions/
    model: type[BaseModel]


RULES = (
    Sample("s3_object_created", "start_run", S3EventNotificationEventBridgeModel),
    Sample("validate_request", "validate", ValidateRequest),
    Sample("stage_", "stage", StageRequest),
    Sample("deploy_", "deploy", DeployRequest),
    Sample("pipeline_event_", "notify", PipelineEventBridgeModel),
    Sample("grade_", "grade", GradeRequest),
)


def _rule(name: str) -> Sample | None:
    if not name.endswith(".json"):
        return None
    return next((rule for rule in RULES if name.startswith(rule.prefix)), None)


def _load(name: str) -> dict[str, Any]:
    document = json.loads((EVENTS / name).read_text(encoding="utf-8"))
    assert isinstance(document, dict), name
    return document


def _names(prefix: str) -> list[str]:
    return sorted(path.name for path in EVENTS.glob(f"{prefix}*.json"))


SAMPLES = sorted(path.name for path in EVENTS.iterdir() if path.name not in NOT_SAMPLES)
STAGE_SAMPLES = _names("stage_")
DEPLOY_SAMPLES = _names("deploy_")


def _pipeline_settings() -> PipelineSettings:
    return PipelineSettings(
        stack_name=STACK,
        data_bucket=BUCKET,
        event_bus_name=f"{STACK}-events",
        ledger_table=f"{STACK}-runs",
        base_model_s3_uri="s3://acme-ml-models/qwen2.5-7b-instruct/",
        sagemaker_role_arn="arn:aws:iam::123456789012:role/tuneplane-dev-sagemaker",
        train_image_uri="123456789012.dkr.ecr.us-east-1.amazonaws.com/tuneplane-dev/train:0.1.0",
        merge_image_uri="123456789012.dkr.ecr.us-east-1.amazonaws.com/tuneplane-dev/merge:0.1.0",
        evaluate_image_uri="123456789012.dkr.ecr.us-east-1.amazonaws.com/tuneplane-dev/evaluate:0.1.0",
        training_instance_types="ml.g5.2xlarge,ml.g6.2xlarge",  # samconfig.toml dev: the types a sidecar may choose
    )


def _deploy_settings() -> DeploySettings:
    """The stack defaults (ServeMode merged on one ml.g5.2xlarge, MaxSeqLength 2048) of the samples' dev stack."""
    return DeploySettings(
        stack_name=STACK,
        data_bucket=BUCKET,
        base_model_s3_uri="s3://acme-ml-models/qwen2.5-7b-instruct/",
        sagemaker_role_arn="arn:aws:iam::123456789012:role/tuneplane-dev-sagemaker",
        serve_image_uri="123456789012.dkr.ecr.us-east-1.amazonaws.com/tuneplane-dev/serve:0.1.0",
    )


# ---------------------------------------------------------------------------------------------------------------------
# Every file belongs to a function and parses with that function's model


def test_every_file_in_events_is_a_sample_of_a_known_function() -> None:
    # GIVEN every file in events/ (the README aside)
    # WHEN each is mapped to a function by its name
    unmapped = [name for name in SAMPLES if _rule(name) is None]
    # THEN none is left over: a new sample needs a rule here (and so a parse test) before it lands
    assert SAMPLES, "events/ is empty"
    assert unmapped == [], f"files in events/ that no rule maps to a function: {unmapped}"
    # AND every function has at least one sample
    assert [rule.function for rule in RULES if not any(_rule(name) == rule for name in SAMPLES)] == []


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.function)
def test_the_handler_parses_its_event_with_the_model_the_samples_are_checked_against(rule: Sample) -> None:
    # GIVEN the function's handler source
    source = (ROOT / "functions" / rule.function / "app.py").read_text(encoding="utf-8")
    # WHEN the models it parses events with are read (@event_parser, or parse() where it takes several kinds)
    models = re.findall(r"@event_parser\(model=(\w+)\)|\bparse\(event=event, model=(\w+)\)", source)
    # THEN the model this test parses the function's samples with is one of them
    assert rule.model.__name__ in {name for found in models for name in found if name}


@pytest.mark.parametrize("name", SAMPLES)
def test_each_sample_parses_with_its_functions_model(name: str) -> None:
    # GIVEN a sample file and the function it is for
    rule = _rule(name)
    assert rule is not None
    # WHEN it is parsed as that function's event_parser parses it
    parsed = rule.model.model_validate(_load(name))
    # THEN it is valid
    assert isinstance(parsed, rule.model)


def test_the_readme_table_lists_every_sample_and_no_other() -> None:
    # GIVEN the README's table of samples
    readme = (EVENTS / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `([^`]+\.json)` \|", readme, flags=re.MULTILINE))
    # WHEN it is compared with the directory THEN each sample has exactly one row
    assert listed == {name for name in SAMPLES if name.endswith(".json")}


# ---------------------------------------------------------------------------------------------------------------------
# StartRun, Validate, Grade and Notify samples


def test_the_grade_sample_is_the_payload_the_state_machine_sends_and_its_graders_are_valid() -> None:
    # GIVEN the Grade sample and the GradeAnswers state's Payload
    sample = GradeRequest.model_validate(_load("grade_pass_judge.json"))
    payload = ASL["States"]["GradeAnswers"]["Parameters"]["Payload"]
    # THEN it carries exactly what the state sends (the execution, the state, where to resume)
    assert {key.removesuffix(".$") for key in payload} == set(sample.model_fields_set)
    assert sample.next == sample.state["grading"]["next"]
    # AND its evaluation settings are a sidecar section the stack would accept (a judge, thresholds on its metrics)
    evaluation = EvaluationOverrides.model_validate(sample.state["evaluation"])
    assert evaluation.graders is not None and evaluation.graders.judge is not None
    assert set(evaluation.thresholds or {}) == {"judge_score", "judge_win_rate"}


def test_the_s3_sample_is_a_dataset_upload_startrun_acts_on() -> None:
    # GIVEN the S3 Object Created sample WHEN parsed with the handler's envelope model
    event = S3EventNotificationEventBridgeModel.model_validate(_load("s3_object_created.json"))
    # THEN it is an upload of a dataset under incoming/ with a version id (the run's identity)
    assert event.detail_type == "Object Created" and event.source == "aws.s3"
    assert event.detail.object.key.startswith("incoming/") and dataset_stem(event.detail.object.key)
    assert event.detail.object.version_id


@pytest.mark.parametrize("name", _names("validate_request"))
def test_validate_samples_are_execution_inputs(name: str) -> None:
    # GIVEN a Validate sample WHEN read as the execution input StartRun builds (RunInput) and as the Validate request
    document = _load(name)
    run_input, request = RunInput.model_validate(document), ValidateRequest.model_validate(document)
    # THEN both views agree on the object to validate
    assert (request.run_id, request.bucket, request.key) == (run_input.run_id, run_input.bucket, run_input.key)


@pytest.mark.parametrize("name", _names("pipeline_event_"))
def test_pipeline_event_samples_are_bus_events_of_the_sample_run(name: str) -> None:
    # GIVEN a pipeline event sample WHEN parsed with the Notify handler's model
    event = PipelineEventBridgeModel.model_validate(_load(name))
    # THEN its envelope says what its detail is, and it belongs to the run the other samples follow
    assert event.source == EVENT_SOURCE
    assert event.detail_type == event.detail.detail_type
    detail = event.detail
    assert (detail.run_id, detail.bucket, detail.dataset) == (RUN_ID, BUCKET, DATASET)
    assert detail.execution_arn == EXECUTION_ARN


# ---------------------------------------------------------------------------------------------------------------------
# Pipeline event samples are what the Stage logic publishes for the states of the Stage samples


def _detail(name: str) -> PipelineEvent:
    return PipelineEventBridgeModel.model_validate(_load(f"{name}.json")).detail


def _completed_run() -> RunView:
    request = StageRequest.model_validate(_load("stage_complete_run.json"))
    return RunView(request.state, request.execution_arn)


@pytest.mark.parametrize("stage", ["validate", "train", "evaluate", "deploy"])
def test_stage_succeeded_samples_carry_the_outcome_the_state_machine_recorded(stage: str) -> None:
    # GIVEN a Stage Succeeded sample and the outcome its Finish state recorded in the completed run's state
    event = _detail(f"pipeline_event_stage_succeeded_{stage}")
    recorded = _completed_run().state["recorded"][stage]["outcome"]
    # WHEN they are compared THEN the event carries exactly that outcome (both are the Stage function's answer)
    assert event.metrics == recorded["metrics"] and event.artifacts == recorded["artifacts"]
    assert (event.message, event.notes) == (recorded["message"], recorded["notes"])


def test_the_recorded_validate_and_deploy_outcomes_are_what_the_stage_logic_makes_now() -> None:
    # GIVEN the completed run's state WHEN the Stage logic makes the validate and deploy outcomes again (no AWS)
    run = _completed_run()
    validate = outcome_of(Stage.VALIDATE, run, _pipeline_settings())
    deploy = deploy_outcome(run)
    # THEN they are the recorded ones the samples carry: metrics, artifacts, message, notes
    for outcome in (validate, deploy):
        recorded = run.state["recorded"][outcome.stage.value]["outcome"]
        assert outcome.model_dump(mode="json") == recorded


def test_the_samples_name_jobs_endpoints_and_models_as_the_pipeline_does() -> None:
    # GIVEN the train and deploy samples
    train, deploy = _detail("pipeline_event_stage_succeeded_train"), _detail("pipeline_event_stage_succeeded_deploy")
    # THEN the training job is the run's second attempt (after the capacity fallback), its adapter under its output
    job = job_requests.job_name(RUN_ID, Stage.TRAIN, 1)
    assert train.message == job and train.metrics["attempt"] == 2
    assert train.artifacts["adapter"] == f"{RUNS}train/{job}/output/model.tar.gz"
    # AND the endpoint is the dataset's, the model and endpoint config the run's
    endpoint = endpoint_name(_deploy_settings(), DATASET)
    assert deploy.metrics["endpoint_name"] == deploy.artifacts["endpoint"] == endpoint
    assert deploy.metrics["model_name"] == deploy.artifacts["endpoint_config"] == run_resource_name(RUN_ID, "serve")


def test_the_skip_sample_gives_the_reason_of_the_asl() -> None:
    event = _detail("pipeline_event_stage_skipped_quantize")
    assert event.message == ASL["States"]["SkipQuantize"]["Parameters"]["Payload"]["reason"]
    assert event.started_at is None and event.duration_s is None  # a skipped stage never started


def test_the_failure_samples_explain_the_failed_job_of_the_fail_train_sample() -> None:
    # GIVEN the RecordFailure sample's $.error, one-lined as the Stage logic does
    error, cause = one_line_cause(_load("stage_fail_train.json")["state"]["error"])
    stage, run = _detail("pipeline_event_stage_failed_train"), _detail("pipeline_event_run_failed")
    # THEN Stage Failed carries the cause, Run Failed the same with the stage in front, both the error name
    assert (stage.error, stage.message) == (error, cause) == ("States.TaskFailed", cause)
    assert (run.error, run.message) == (error, f"train: {cause}")
    assert stage.finished_at is not None and run.started_at is not None and run.started_at < stage.finished_at


def test_the_rejection_samples_carry_the_validators_rejection_and_its_report() -> None:
    stage, run = _detail("pipeline_event_stage_rejected_validate"), _detail("pipeline_event_run_rejected")
    report = {"report": RUNS + "validation/report.json", "summary": RUNS + "validation/summary.txt"}
    assert stage.error == run.error == "InvalidTrainingData"
    assert stage.message and stage.message.startswith(f"REJECTED: s3://{BUCKET}/{DATASET} (chat, 2,000 lines, ")
    assert stage.message.endswith(f"; full report: {report['report']}") and "unrecognized_role x1" in stage.message
    assert run.message == f"validate: {stage.message}"
    assert stage.artifacts == run.artifacts == report


def test_the_run_succeeded_sample_has_the_headline_numbers_and_every_artifact_of_the_recorded_stages() -> None:
    # GIVEN the completed run's recorded outcomes (what the ledger holds) and the Run Succeeded sample
    run = _completed_run()
    recorded = {stage: item["outcome"] for stage, item in run.state["recorded"].items()}
    event = _detail("pipeline_event_run_succeeded")
    # WHEN the Run Succeeded event is made from them as CompleteRun does
    metrics = {
        f"{stage}.{name}": value
        for stage, outcome in recorded.items()
        for name, value in outcome["metrics"].items()
        if f"{stage}.{name}".startswith(_HEADLINE_METRICS)
    }
    artifacts = {
        f"{stage}.{name}": uri for stage, outcome in recorded.items() for name, uri in outcome["artifacts"].items()
    }
    # THEN the sample has exactly those, and the outcome line of a ready vLLM deployment
    assert event.metrics == metrics and event.artifacts == artifacts
    assert event.message == _run_outcome_line(run, _pipeline_settings())
    assert event.message == f"deployed to endpoint {endpoint_name(_deploy_settings(), DATASET)} (updated)"


# ---------------------------------------------------------------------------------------------------------------------
# Stage and Deploy samples are the ASL's payloads


def _tasks_calling(function_arn: str) -> dict[str, dict[str, Any]]:
    """``state name -> Payload`` of every Task that invokes the function (``${StageFunctionArn}`` ...)."""
    return {
        name: state["Parameters"]["Payload"]
        for name, state in ASL["States"].items()
        if state.get("Type") == "Task" and (state.get("Parameters") or {}).get("FunctionName") == function_arn
    }


def _resolve(path: str, sample: dict[str, Any]) -> Any:
    """A payload's JSONPath against the sample: ``$`` is its state, ``$$.Execution.Id`` the execution ARN."""
    if path == "$$.Execution.Id":
        return EXECUTION_ARN
    value: Any = sample["state"]
    for part in path.removeprefix("$").split(".")[1:]:
        if not isinstance(value, dict) or part not in value:
            return _Missing(path)
        value = value[part]
    return value


@dataclass(frozen=True)
class _Missing:
    path: str


def _mismatches(payload: dict[str, Any], sample: dict[str, Any]) -> list[str]:
    """How the sample differs from what the ASL's payload would send, given the sample's state."""
    problems = []
    fields = {name.removesuffix(".$") for name in payload}
    if set(sample) != fields:
        problems.append(f"fields {sorted(sample)} != {sorted(fields)}")
    for name, value in payload.items():
        field = name.removesuffix(".$")
        expected = _resolve(value, sample) if name.endswith(".$") else value
        if field in sample and sample[field] != expected:
            problems.append(f"{field}: {str(sample[field])[:80]!r} != {str(expected)[:80]!r}")
    return problems


def _assert_sent_by_the_asl(function_arn: str, sample: dict[str, Any]) -> str:
    candidates = {
        name: payload
        for name, payload in _tasks_calling(function_arn).items()
        if payload.get("action") == sample["action"]
        and (payload.get("stage") == sample.get("stage") or "stage.$" in payload or "stage" not in sample)
    }
    assert candidates, f"no ASL state calls {function_arn} with action {sample['action']!r}"
    problems = {name: _mismatches(payload, sample) for name, payload in candidates.items()}
    senders = [name for name, found in problems.items() if not found]
    assert senders, f"no ASL state sends this payload: {problems}"
    return senders[0]


def _assert_state_of_the_sample_run(state: dict[str, Any]) -> None:
    assert (state["run_id"], state["bucket"], state["key"]) == (RUN_ID, BUCKET, DATASET)
    RunInput.model_validate({name: state.get(name) for name in RunInput.model_fields})  # the execution input
    assert set(state["pipeline"]) == set(ASL["States"]["Init"]["Result"]), "pipeline is what Init writes"
    summary = state["validation"]["summary"]
    assert summary["train_uri"] == RUNS + "data/train.jsonl" and summary["eval_uri"] == RUNS + "data/eval.jsonl"


@pytest.mark.parametrize("name", STAGE_SAMPLES)
def test_stage_samples_are_what_the_state_machine_sends(name: str) -> None:
    # GIVEN a Stage function sample
    sample = _load(name)
    request = StageRequest.model_validate(sample)
    # WHEN it is compared with the ASL's Stage payloads and read the way the Stage logic reads every state
    sender = _assert_sent_by_the_asl("${StageFunctionArn}", sample)
    run = RunView(request.state, request.execution_arn)
    # THEN one ASL state sends exactly this, and the state is the sample run's, with the validated splits
    assert sender
    assert (run.run_id, run.bucket, run.key, run.execution_arn) == (RUN_ID, BUCKET, DATASET, EXECUTION_ARN)
    _assert_state_of_the_sample_run(request.state)
    assert run.data == {"train_uri": RUNS + "data/train.jsonl", "eval_uri": RUNS + "data/eval.jsonl"}
    instance_types = run.training().instance_types  # the sidecar sections the job requests use are valid
    run.evaluation()
    if "train_job" in request.state:  # the job of this attempt, on this attempt's instance type
        attempt = run.train_attempt
        assert instance_types is not None
        assert request.state["train_job"]["instance_type"] == instance_types[attempt]
        assert request.state["train_job"]["request"]["TrainingJobName"] == job_requests.job_name(
            RUN_ID, Stage.TRAIN, attempt
        )


def test_the_start_train_sample_gets_the_first_instance_type_of_the_sidecar() -> None:
    # GIVEN the StartTrain sample: the state right after Validate, first attempt
    request = StageRequest.model_validate(_load("stage_start_train.json"))
    run = RunView(request.state, request.execution_arn)
    assert request.stage is Stage.TRAIN and run.train_attempt == 0
    assert {"validation", "recorded", "pipeline"} <= set(request.state) and "train_job" not in request.state
    # WHEN the Stage logic builds the training job request from it (pure: no AWS)
    spec = job_spec(Stage.TRAIN, run, _pipeline_settings())
    # THEN it trains on the sidecar's first instance type, with a fallback left, on the validated train split
    assert spec.instance_type == "ml.g6.2xlarge" and spec.has_fallback
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in spec.request["InputDataConfig"]}
    assert channels["train"] == RUNS + "data/train.jsonl" and channels["eval"] == RUNS + "data/eval.jsonl"
    assert spec.request["HyperParameters"]["lora_r"] == "16"


def test_the_fail_train_sample_carries_a_failed_sync_job_the_stage_logic_explains() -> None:
    # GIVEN the RecordFailure sample of a training job that failed on its last instance type
    request = StageRequest.model_validate(_load("stage_fail_train.json"))
    state = request.state
    assert state["failed_stage"] == request.stage.value == "train"
    assert state["train_job"]["has_fallback"] is False  # so TrainCapacityFallback went to TrainFailed
    # WHEN the Stage logic turns $.error ({Error, Cause: DescribeTrainingJob JSON}) into one line
    error, cause = one_line_cause(state["error"])
    # THEN it is the job's FailureReason, under the name Step Functions gives a failed .sync task
    described = json.loads(state["error"]["Cause"])
    assert error == "States.TaskFailed" and described["TrainingJobStatus"] == "Failed"
    assert described["TrainingJobName"] == state["train_job"]["request"]["TrainingJobName"]
    assert cause.startswith("AlgorithmError: torch.OutOfMemoryError: CUDA out of memory")


def test_the_finish_evaluate_sample_points_at_the_report_the_stage_logic_reads() -> None:
    # GIVEN the FinishEvaluate sample (train, merge and evaluate done; quantization skipped)
    request = StageRequest.model_validate(_load("stage_finish_evaluate.json"))
    state = request.state
    assert {"train", "merge", "evaluate"} <= set(state) and "quantize" not in state
    # WHEN the evaluate job's output is compared with where the Stage logic reads evaluation.json
    outputs = state["evaluate_job"]["request"]["ProcessingOutputConfig"]["Outputs"]
    # THEN they are the same folder, and the job named in the state is the run's evaluate job
    assert outputs[0]["S3Output"]["S3Uri"] == job_requests.run_uri(_pipeline_settings(), RUN_ID, "evaluation", "")
    assert state["evaluate"]["job_name"] == job_requests.job_name(RUN_ID, Stage.EVALUATE)
    assert state["recorded"]["merge"]["outcome"]["artifacts"]["merged"] == RUNS + "merged/"


def test_the_skip_and_complete_samples_follow_their_deploy_targets() -> None:
    # GIVEN the SkipDeploy and CompleteRun samples
    skip = StageRequest.model_validate(_load("stage_skip_deploy.json"))
    complete = StageRequest.model_validate(_load("stage_complete_run.json"))
    # WHEN their targets and recorded stages are read
    # THEN the skip is on a DeployTarget=none stack, and the completed run deployed and recorded every stage
    assert skip.state["pipeline"]["deploy_target"] == "none" and skip.reason
    assert complete.stage is Stage.RUN and complete.state["pipeline"]["deploy_target"] != "none"
    assert set(complete.state["recorded"]) == {"validate", "train", "merge", "evaluate", "register", "deploy"}
    assert complete.state["deploy"]["deployment"]["status"] == "ready"


@pytest.mark.parametrize("name", DEPLOY_SAMPLES)
def test_deploy_samples_are_what_the_state_machine_sends(name: str) -> None:
    # GIVEN a Deploy function sample
    sample = _load(name)
    request = DeployRequest.model_validate(sample)
    # WHEN it is compared with the ASL's Deploy payloads and read the way the Deploy logic reads the state
    _assert_sent_by_the_asl("${DeployFunctionArn}", sample)
    run = RunArtifacts.from_state(request.state)
    # THEN one ASL state sends exactly this, and the run has a merged model, its adapter and the eval split
    _assert_state_of_the_sample_run(request.state)
    assert (run.run_id, run.dataset_key, run.merged_uri) == (RUN_ID, DATASET, RUNS + "merged/")
    assert run.adapter_uri and run.eval_uri == RUNS + "data/eval.jsonl"
    assert request.state["recorded"]["evaluate"]["outcome"]["passed"] is True  # the Gate let it through
    assert "ModelPackageArn" in request.state["register"]
    if request.action == "begin":
        assert request.deployment is None
    else:
        assert request.deployment is not None and request.deployment.target == request.target


@pytest.mark.parametrize(
    "name", [name for name in DEPLOY_SAMPLES if name.endswith("_vllm.json") and not name.startswith("deploy_begin")]
)
def test_vllm_deployments_carry_the_names_and_plan_the_deploy_logic_makes(name: str) -> None:
    # GIVEN a vLLM deploy sample with a deployment in progress (begin has none yet)
    request = DeployRequest.model_validate(_load(name))
    assert request.deployment is not None
    deployment, settings = request.deployment, _deploy_settings()
    run = RunArtifacts.from_state(request.state)
    # WHEN the endpoint name, the run's resource names and the serving plan are made again from the state
    name_ = endpoint_name(settings, run.dataset_key)
    plan = serving.plan(settings, run, {"dtype": "bf16"}, lora_name=name_)
    # THEN they are the deployment's
    assert deployment.endpoint_name == name_
    assert deployment.endpoint_config_name == deployment.model_name == run_resource_name(RUN_ID, "serve")
    assert deployment.plan == plan
    assert deployment.mode == "update" and deployment.previous_endpoint_config_name  # blue/green
    assert deployment.polls < deployment.max_polls


def test_the_poll_sample_is_still_pending_and_the_rollback_sample_follows_a_failed_smoke_test() -> None:
    # GIVEN the poll and rollback samples
    poll = DeployRequest.model_validate(_load("deploy_poll_vllm.json"))
    rollback = DeployRequest.model_validate(_load("deploy_rollback_vllm.json"))
    assert poll.deployment is not None and rollback.deployment is not None
    # WHEN their deployments and the rollback's $.error are read
    error, cause = one_line_cause(rollback.state["error"])
    # THEN the poll waits on a pending endpoint, and the rollback follows a ready endpoint's smoke-test failure
    assert poll.deployment.status == "pending" and poll.deployment.polls > 0
    assert rollback.deployment.status == "ready" and rollback.deployment.answer is None
    assert error == "SmokeTestFailed" and cause.startswith(f"endpoint {rollback.deployment.endpoint_name} ")


def test_the_bedrock_smoke_sample_has_the_imported_model_the_smoke_test_calls() -> None:
    # GIVEN the Bedrock smoke-test sample
    request = DeployRequest.model_validate(_load("deploy_smoke_bedrock.json"))
    deployment = request.deployment
    # WHEN its deployment is read
    assert deployment is not None
    # THEN DeployReady let it through (ready), the import's model is named after the dataset, and it has an ARN
    assert deployment.target == "bedrock" and deployment.status == "ready"
    assert deployment.imported_model_arn and deployment.import_job_arn
    prefix = imported_model_prefix(_deploy_settings(), DATASET)
    assert deployment.imported_model_name and deployment.imported_model_name.startswith(prefix + "-")
