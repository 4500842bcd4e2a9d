"""The evaluation gate decided by the control plane's graders, end to end on the local cloud: the Evaluate job
(scripted) writes its answers, the real Grade function sends them to an LLM judge (an OpenAI-compatible server on
loopback, the stack's JudgeEndpointUrl) and to a custom Lambda grader (a function of the local cloud, listed in the
stack's GraderFunctionArns, invoked under IAM enforcement), and the Gate follows their thresholds.

Both tests share one stack (harness.StackPool): the judge server lives as long as the module, so its URL is a stable
template parameter.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from local.cloud.endpoints import ScriptedEndpointBackend, ScriptedServer
from local.cloud.lambda_runtime import CODE_DIR_TAG
from tests.statemachine.harness import Cloud

GRADER_NAME = "tuneplane-test-grader"
GRADER_ARN = f"arn:aws:lambda:us-east-1:123456789012:function:{GRADER_NAME}"
# The judge prompts' blocks: <<<NAME tag ... NAME tag>>> (tuneplane/logic/grading.py; the tag random per request)
ANSWER = re.compile(r"<<<ANSWER (\w+)\n(.*)\nANSWER \1>>>", re.DOTALL)
PAIR = re.compile(r"<<<ANSWER A (\w+)\n(.*)\nANSWER A \1>>>.*<<<ANSWER B \1\n(.*)\nANSWER B \1>>>", re.DOTALL)


def _verdict(_: Path, request: dict[str, Any]) -> str:
    """The judge: an answer mentioning "reversed" is good (9), any other poor (2); pairwise, the one that does wins."""
    user = request["messages"][-1]["content"]
    if pair := PAIR.search(user):
        first, second = ("reversed" in text for text in (pair[2], pair[3]))
        return "Compared.\nWinner: " + ("tie" if first == second else "A" if first else "B")
    answer = ANSWER.search(user)
    assert answer is not None, user
    return f"Graded.\nScore: {9 if 'reversed' in answer[2] else 2}"


@pytest.fixture(scope="module")
def judge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScriptedServer]:
    server = ScriptedEndpointBackend(reply=_verdict).start(tmp_path_factory.mktemp("judge"), {})
    yield server
    server.stop()


@pytest.fixture
def stack_parameters(judge: ScriptedServer) -> dict[str, str]:
    return {
        "JudgeEndpointUrl": judge.url + "/v1",
        "JudgeEndpointModel": "scripted-judge",
        "JudgePricePerMillionTokens": "10",
        "GraderFunctionArns": GRADER_ARN,
    }


@pytest.fixture
def cloud(shared_cloud: Cloud, stack_parameters: dict[str, str]) -> Cloud:
    """The module's stack (its parameters: ``stack_parameters``, which conftest's shared_cloud reads)."""
    shared_cloud.disable_trigger()
    return shared_cloud


def _grader_function() -> None:
    """The user's grader, created in the local cloud (once per stack) from tests/statemachine/grader_function/."""
    client = boto3.client("lambda")
    if GRADER_NAME in {f["FunctionName"] for f in client.list_functions()["Functions"]}:
        return
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("app.py", (Path(__file__).parent / "grader_function" / "app.py").read_text())
    role = boto3.client("iam").create_role(
        RoleName="tuneplane-test-grader-role",
        AssumeRolePolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
                ],
            }
        ),
    )["Role"]["Arn"]
    client.create_function(
        FunctionName=GRADER_NAME,
        Runtime="python3.12",
        Role=role,
        Handler="app.handler",
        Code={"ZipFile": archive.getvalue()},
        Tags={CODE_DIR_TAG: str(Path(__file__).parent / "grader_function")},
    )


def _grading(cloud: Cloud, run_id: str) -> dict[str, Any]:
    body = cloud.s3.get_object(Bucket=cloud.deployment.bucket_name, Key=f"runs/{run_id}/evaluation/grading.json")
    return dict(json.loads(body["Body"].read()))


def _outcome(cloud: Cloud, run_id: str) -> dict[str, Any]:
    [event] = [
        e["detail"] for e in cloud.bus_events() if e["detail"]["run_id"] == run_id and e["detail"]["stage"] == "run"
    ]
    return dict(event)


def test_a_judge_score_below_its_threshold_rejects_the_run_at_the_gate(
    cloud: Cloud, judge: ScriptedServer, reversal_lines: list[str]
) -> None:
    # GIVEN a job whose candidate answers without "reversed" (the judge scores it 2 of 10) where the base does
    cloud.jobs.answers = {"candidate": "I cannot do that.", "base": "Here it is, reversed."}
    rubric = "Score 10 when the word is correctly reversed; 1 when it is not."
    evaluation = {"graders": {"judge": {"rubric": rubric}}, "thresholds": {"judge_score": 0.6}}
    requests_before = len(judge.requests)
    # WHEN the run goes through Evaluate
    execution = cloud.run_dataset("judged-low", reversal_lines, evaluation=evaluation)
    # THEN the Grade function asked the judge (each answer scored, each comparison twice) and the gate rejected the run
    assert execution["status"] == "FAILED", execution
    entered = cloud.states_entered(execution["executionArn"])
    assert {"StartGrading", "GradeAnswers", "GradingDone", "RejectEvaluate"} <= set(entered)
    examples = len(cloud.jobs.answer_lines)
    asked = judge.requests[requests_before:]
    assert len(asked) == examples * (2 + 2)  # candidate and base scored, then compared in both orders
    assert all(rubric in r["messages"][-1]["content"] for r in asked)
    grading = _grading(cloud, "judged-low")
    assert grading["metrics"]["candidate"]["judge_score"] == pytest.approx(1 / 9)
    assert grading["metrics"]["base"]["judge_score"] == pytest.approx(8 / 9)
    assert grading["metrics"]["candidate"]["judge_win_rate"] == 0.0
    # AND the run's outcome says which grader's threshold failed and by how much
    outcome = _outcome(cloud, "judged-low")
    assert outcome["status"] == "rejected" and outcome["error"] == "GateFailed"
    assert (
        f"candidate judge_score {1 / 9:.4f} is below its threshold 0.6000 (short by {0.6 - 1 / 9:.4f})"
        in (outcome["message"])
    )
    assert float(cloud.ledger("judged-low")["evaluate"]["metrics"]["candidate.judge_score"]) == pytest.approx(1 / 9)


def test_a_custom_lambda_grader_and_the_judge_pass_a_run_through_the_gate(
    cloud: Cloud, judge: ScriptedServer, reversal_lines: list[str]
) -> None:
    # GIVEN the user's grader function, and a candidate whose answers contain the reference's first word
    _grader_function()
    cloud.jobs.answers = {"candidate": "reversed: {reference}", "base": "no idea"}
    evaluation = {
        "graders": {
            "judge": {"rubric": "Score 10 when the word is correctly reversed.", "pairwise": False},
            "custom": {"function": GRADER_NAME},
        },
        "thresholds": {"judge_score": 0.6, "custom_score": 0.9},
    }
    # WHEN the run goes through Evaluate
    execution = cloud.run_dataset("graded-high", reversal_lines, evaluation=evaluation)
    # THEN the gate passed and the run was registered
    assert execution["status"] == "SUCCEEDED", execution
    assert "StartRegister" in cloud.states_entered(execution["executionArn"])
    # AND the custom grader (called by the stack's ARN, under IAM) scored the candidate 1 and the base 0
    grading = _grading(cloud, "graded-high")
    assert grading["graders"]["custom"]["function"] == GRADER_ARN
    assert grading["metrics"]["candidate"]["custom_score"] == 1.0
    assert grading["metrics"]["base"]["custom_score"] == 0.0
    assert grading["passed"] is True and grading["reasons"] == []
    # AND the Slack-bound outcome shows both graders' scores
    evaluate = {
        name: float(value)
        for name, value in cloud.ledger("graded-high")["evaluate"]["metrics"].items()
        if name.startswith("candidate.")
    }
    assert evaluate["candidate.custom_score"] == 1.0 and evaluate["candidate.judge_score"] == pytest.approx(8 / 9)
