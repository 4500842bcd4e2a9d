"""The Slack message of every pipeline event: header, overview, the stage's numbers, cause and advice, links."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from local.slack import render_text

from tuneplane.logic.notify import PipelineEventBridgeModel, render
from tuneplane.logic.notify.render import console_url, duration
from tuneplane.models.events import PipelineEvent

ROOT = Path(__file__).resolve().parents[2]
EVENT_FILES = sorted((ROOT / "events").glob("pipeline_event_*.json"))
RUN_ID = "support-v2-3f9c0a1b2d4e5f60"
BUCKET = "tuneplane-dev-data-123456789012"
EXECUTION_ARN = f"arn:aws:states:us-east-1:123456789012:execution:tuneplane-dev-pipeline:{RUN_ID}"
CONSOLE = (
    f"https://us-east-1.console.aws.amazon.com/states/home?region=us-east-1#/v2/executions/details/{EXECUTION_ARN}"
)
REPORT = f"s3://{BUCKET}/runs/{RUN_ID}/validation/report.json"
DATASET_URI = f"s3://{BUCKET}/incoming/support-v2.jsonl"
# Names as the pipeline makes them (job_requests.job_name, deploy.context.endpoint_name / run_resource_name)
TRAIN_JOB = f"{RUN_ID}-474c2f5a3e-train1"
ENDPOINT = "support-v2-1722ed32"
SERVE_MODEL = f"{RUN_ID}-474c2f5a3e-serve"
OOM = (
    "AlgorithmError: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB "
    "(GPU 0; 22.06 GiB total capacity), exit code: 1"
)
REJECTION = (
    f"REJECTED: {DATASET_URI} (chat, 2,000 lines, 1 error, 3 warnings); unrecognized_role x1 (first: 'assitant' "
    f"(expected system, user or assistant; did you mean 'assistant'?)); full report: {REPORT}"
)
CHART = f"s3://{BUCKET}/runs/{RUN_ID}/evaluation/evaluation.png"
CHART_URL = "https://bucket.s3.amazonaws.com/runs/x/evaluation.png?X-Amz-Signature=abc&X-Amz-Expires=43200"


def _sample(name: str) -> tuple[PipelineEvent, str]:
    envelope = PipelineEventBridgeModel.model_validate(json.loads((ROOT / "events" / f"{name}.json").read_text()))
    return envelope.detail, envelope.detail_type


def _event(**fields: Any) -> PipelineEvent:
    base: dict[str, Any] = {
        "run_id": RUN_ID,
        "stage": "train",
        "status": "succeeded",
        "dataset": "incoming/support-v2.jsonl",
        "bucket": BUCKET,
        "execution_arn": EXECUTION_ARN,
    }
    return PipelineEvent.model_validate(base | fields)


def _header(message: dict[str, Any]) -> str:
    header = message["blocks"][0]
    assert header["type"] == "header" and header["text"]["type"] == "plain_text"
    return str(header["text"]["text"])


def _fields(message: dict[str, Any]) -> dict[str, str]:
    """Every section field as {label: value} ("*Label*\\nvalue" in mrkdwn)."""
    found: dict[str, str] = {}
    for block in message["blocks"]:
        for item in block.get("fields", []):
            label, _, value = item["text"].partition("\n")
            found[label.strip("*")] = value
    return found


def _texts(message: dict[str, Any]) -> list[str]:
    return [block["text"]["text"] for block in message["blocks"] if block["type"] == "section" and "text" in block]


def _buttons(message: dict[str, Any]) -> dict[str, str]:
    return {
        element["text"]["text"]: element["url"]
        for block in message["blocks"]
        if block["type"] == "actions"
        for element in block["elements"]
    }


def _context(message: dict[str, Any]) -> str:
    [context] = [block for block in message["blocks"] if block["type"] == "context"]
    return str(context["elements"][0]["text"])


# ---------------------------------------------------------------------------------------------------------------------
# The sample events, one per detail type (snapshot-style: the texts a reader sees)


def test_there_is_a_sample_event_for_every_detail_type() -> None:
    # GIVEN the sample events WHEN their detail types are collected THEN every one the pipeline publishes is there
    detail_types = {json.loads(path.read_text())["detail-type"] for path in EVENT_FILES}
    assert detail_types == {
        "Stage Started",
        "Stage Succeeded",
        "Stage Failed",
        "Stage Skipped",
        "Run Succeeded",
        "Run Rejected",
        "Run Failed",
    }


@pytest.mark.parametrize("path", EVENT_FILES, ids=lambda path: path.stem)
def test_every_sample_renders_one_valid_block_kit_message(path: Path) -> None:
    # GIVEN a sample event WHEN rendered
    event, detail_type = _sample(path.stem)
    message = render(event, detail_type)
    # THEN it is one message: a fallback text, a header first, a context line last, within Block Kit's limits
    assert set(message) == {"text", "blocks"} and message["text"]
    assert message["blocks"][0]["type"] == "header" and message["blocks"][-1]["type"] == "context"
    assert len(message["blocks"]) <= 50 and len(_header(message)) <= 150
    for block in message["blocks"]:
        assert len(block.get("fields", [])) <= 10
        if block["type"] == "section" and "text" in block:
            assert 0 < len(block["text"]["text"]) <= 3000
    # AND dataset, run id and the console link are always there
    assert _fields(message)["Dataset"] == "`incoming/support-v2.jsonl`"
    assert _fields(message)["Run"] == f"`{RUN_ID}`"
    assert _buttons(message)["Open execution"] == CONSOLE
    assert _context(message).startswith(detail_type + " · bucket `tuneplane-dev-data-123456789012`")
    json.dumps(message)  # plain JSON


def test_stage_started_validate() -> None:
    message = render(*_sample("pipeline_event_stage_started_validate"))
    assert _header(message) == ":hourglass_flowing_sand: Validate started · support-v2.jsonl"
    assert message["text"] == f":hourglass_flowing_sand: Validate started: incoming/support-v2.jsonl (run {RUN_ID})"
    # THEN a stage that has not ended shows when it started instead of a duration
    assert _fields(message) == {
        "Dataset": "`incoming/support-v2.jsonl`",
        "Run": f"`{RUN_ID}`",
        "Started": "2026-11-23 15:00:01 UTC",
    }
    assert _context(message) == (
        "Stage Started · bucket `tuneplane-dev-data-123456789012` · version `3HL4kqtJlcpXroDTDmjVBH40Nrjfkd` · "
        "started 2026-11-23 15:00:01 UTC"
    )


def test_stage_succeeded_validate_shows_examples_tokens_and_cost() -> None:
    message = render(*_sample("pipeline_event_stage_succeeded_validate"))
    assert _header(message) == ":white_check_mark: Validate succeeded · support-v2.jsonl"
    fields = _fields(message)
    assert fields["Duration"] == "38 s"
    assert fields["Examples"] == "2,000"
    assert fields["Train / eval"] == "1,800 / 200"
    assert fields["Tokens"] == "1,843,211"
    assert fields["Cost estimate"] == "≈ $2.42 (1.6 h of training)"
    assert fields["Warnings"] == "3"
    # THEN the validator's headline is the message, and a stage without notes has no Notes section
    assert _texts(message) == [
        f"PASSED: {DATASET_URI} (chat, 2,000 lines, 0 errors, 3 warnings, 1,800 train / 200 eval)"
    ]


def test_stage_succeeded_train_shows_loss_throughput_and_instance() -> None:
    message = render(*_sample("pipeline_event_stage_succeeded_train"))
    assert _header(message) == ":white_check_mark: Train succeeded · support-v2.jsonl"
    fields = _fields(message)
    assert fields["Duration"] == "1 h 37 min"
    assert fields["Train loss"] == "0.4123"
    assert fields["Eval loss"] == "0.5871"
    assert fields["Tokens/s"] == "3,120"
    assert fields["Instance"] == "`ml.g5.2xlarge`"
    assert fields["Billable time"] == "1 h 35 min"
    assert fields["GPU memory"] == "19.7 GB"
    assert fields["Attempt"] == "2"
    # THEN the message names the training job (the second attempt's), and the note says why it is the second
    assert _texts(message) == [TRAIN_JOB, "*Notes*\n• trained on ml.g5.2xlarge after 1 capacity fallback(s)"]


def test_stage_succeeded_evaluate_compares_candidate_base_and_production_with_the_chart() -> None:
    # GIVEN the evaluate stage's event and a presigned URL of its chart
    event, detail_type = _sample("pipeline_event_stage_succeeded_evaluate")
    # WHEN rendered
    message = render(event, detail_type, chart_url=CHART_URL)
    # THEN the gate, the scores of the three models with the deltas, and a button to the chart
    assert _header(message) == ":white_check_mark: Evaluate succeeded · support-v2.jsonl"
    assert _fields(message)["Gate"] == ":white_check_mark: passed"
    assert _fields(message)["Eval examples"] == "200"
    [scores] = [text for text in _texts(message) if "candidate" in text]
    assert scores.splitlines() == [
        "`exact_match` (primary): candidate *0.620* · base 0.410 (+0.210) · production 0.580 (+0.040)",
        "`token_f1`: candidate *0.810* · base 0.660 (+0.150) · production 0.790 (+0.020)",
        "`stop_rate`: candidate *0.995* · base 0.970 (+0.025)",
    ]
    assert _buttons(message) == {"Open execution": CONSOLE, "Score chart": CHART_URL}


def test_without_a_presigned_url_the_chart_is_shown_as_its_s3_uri() -> None:
    message = render(*_sample("pipeline_event_stage_succeeded_evaluate"))
    assert "Score chart" not in _buttons(message)
    assert f"*Score chart:* `{CHART}`" in _texts(message)


def test_stage_succeeded_deploy_shows_the_endpoint_and_the_smoke_test_answer() -> None:
    message = render(*_sample("pipeline_event_stage_succeeded_deploy"))
    assert _header(message) == ":white_check_mark: Deploy succeeded · support-v2.jsonl"
    assert _fields(message) == {
        "Dataset": "`incoming/support-v2.jsonl`",
        "Run": f"`{RUN_ID}`",
        "Duration": "18 min 58 s",
        "Endpoint": f"`{ENDPOINT}`",
        "Target": "vllm",
        "Model": f"`{SERVE_MODEL}`",
        "Smoke test latency": "412 ms",
    }
    # THEN the answer is quoted, with Slack's control characters escaped ("Settings > Security"), then the
    # stage's message and the blue/green note
    assert _texts(message) == [
        "*Smoke test answer* to `How do I reset my password?`\n"
        '> Go to Settings &gt; Security and choose "Reset password"; we e-mail you a link.',
        f'{ENDPOINT} answered: Go to Settings &gt; Security and choose "Reset password"; we e-mail you a link.',
        f"*Notes*\n• updating endpoint {ENDPOINT} blue/green from support-v2-8d2e61c0a7b94f13-d4dbcaf11f-serve; "
        f"rolls back on {ENDPOINT}-5xx or {ENDPOINT}-latency",
    ]


def test_stage_skipped() -> None:
    message = render(*_sample("pipeline_event_stage_skipped_quantize"))
    assert _header(message) == ":fast_forward: Quantize skipped · support-v2.jsonl"
    # THEN the reason the state machine gives (SkipQuantize) is the message; a skipped stage has no duration
    assert _texts(message) == ["quantization off (QuantizeEnabled=false)"]
    assert set(_fields(message)) == {"Dataset", "Run"}


def test_stage_failed_train_names_the_stage_the_cause_and_the_platform_team() -> None:
    message = render(*_sample("pipeline_event_stage_failed_train"))
    assert _header(message) == ":x: Train failed · support-v2.jsonl"
    assert message["text"] == f":x: Train failed: incoming/support-v2.jsonl (run {RUN_ID}): {OOM}"
    texts = _texts(message)
    # THEN the cause is the job's FailureReason, under the error name of a failed .sync task
    assert texts[0] == f"*Stage:* train\n*Cause:* {OOM}\n*Error:* `States.TaskFailed`"
    assert texts[1].startswith("*What to do:* nothing to fix in your data")
    assert "platform team" in texts[1] and "Step Functions console (button below)" in texts[1]
    assert len(texts) == 2  # no notes: the failed job was the run's only one, nothing left to stop
    assert _fields(message) == {
        "Dataset": "`incoming/support-v2.jsonl`",
        "Run": f"`{RUN_ID}`",
        "Duration": "16 min 12 s",
    }


def test_stage_rejected_validate_says_fix_the_data_with_the_report() -> None:
    message = render(*_sample("pipeline_event_stage_rejected_validate"))
    assert _header(message) == ":no_entry: Validate rejected · support-v2.jsonl"
    texts = _texts(message)
    # THEN the cause is the validator's rejection (escaped for mrkdwn: nothing to escape here)
    assert texts[0] == f"*Stage:* validate\n*Cause:* {REJECTION}\n*Error:* `InvalidTrainingData`"
    assert texts[1] == (
        "*What to do:* fix the data and upload it again to `incoming/` (every upload starts a new run). "
        f"The report lists every problem with its line: `{REPORT}`"
    )


def test_run_rejected_names_the_stage_from_the_message() -> None:
    # GIVEN a Run Rejected event, whose message is "<stage>: <cause>"
    message = render(*_sample("pipeline_event_run_rejected"))
    # THEN the header and the cause name the stage, and the cause is given without the prefix
    assert _header(message) == ":no_entry: Run rejected at validate · support-v2.jsonl"
    texts = _texts(message)
    assert texts[0] == f"*Stage:* validate\n*Cause:* {REJECTION}\n*Error:* `InvalidTrainingData`"
    assert "fix the data and upload it again" in texts[1] and REPORT in texts[1]
    assert _fields(message)["Duration"] == "12 s"
    # AND the fallback text is cut to its 200 characters of cause
    assert message["text"].startswith(
        f":no_entry: Run rejected at validate: incoming/support-v2.jsonl (run {RUN_ID}): "
    )
    assert message["text"].endswith("…") and REJECTION.startswith(message["text"].split("): ", 1)[1][:-1])


def test_run_failed_names_the_stage_and_the_platform_team() -> None:
    message = render(*_sample("pipeline_event_run_failed"))
    assert _header(message) == ":x: Run failed at train · support-v2.jsonl"
    assert message["text"] == f":x: Run failed at train: incoming/support-v2.jsonl (run {RUN_ID}): {OOM}"
    assert _texts(message)[0] == f"*Stage:* train\n*Cause:* {OOM}\n*Error:* `States.TaskFailed`"
    assert "platform team" in _texts(message)[1]
    assert _fields(message)["Duration"] == "20 min 30 s"


def test_run_succeeded_shows_the_headline_numbers_of_every_stage() -> None:
    event, detail_type = _sample("pipeline_event_run_succeeded")
    message = render(event, detail_type, chart_url=CHART_URL)
    assert _header(message) == ":tada: Run succeeded · support-v2.jsonl"
    assert _fields(message) == {
        "Dataset": "`incoming/support-v2.jsonl`",
        "Run": f"`{RUN_ID}`",
        "Duration": "2 h 23 min",
        "Examples": "2,000",
        "Train loss": "0.4123",
        "Tokens/s": "3,120",
        "Endpoint": f"`{ENDPOINT}`",
        "Target": "vllm",
        "Model": f"`{SERVE_MODEL}`",
    }
    # THEN the candidate's scores, the smoke test, and the run's outcome line (stages._run_outcome_line)
    assert _texts(message) == [
        "`exact_match`: candidate *0.620*\n`token_f1`: candidate *0.810*\n`stop_rate`: candidate *0.995*",
        "*Smoke test answer* to `How do I reset my password?`\n"
        '> Go to Settings &gt; Security and choose "Reset password"; we e-mail you a link.',
        f"deployed to endpoint {ENDPOINT} (updated)",
    ]
    assert _buttons(message)["Score chart"] == CHART_URL


# ---------------------------------------------------------------------------------------------------------------------
# Robustness


def test_missing_and_odd_metrics_leave_fields_out_instead_of_failing() -> None:
    # GIVEN a train event whose metrics are partly missing, None, text, a flag, NaN or infinite
    event = _event(
        metrics={
            "final_train_loss": None,
            "train_loss": "0.25",
            "tokens_per_second": "fast",
            "instance_type": True,
            "final_eval_loss": float("nan"),
            "billable_seconds": float("inf"),
        }
    )
    # WHEN rendered THEN only the usable number shows
    fields = _fields(render(event))
    assert fields.pop("Train loss") == "0.25"
    assert set(fields) == {"Dataset", "Run"}


def test_an_evaluation_without_production_or_base_still_renders() -> None:
    event = _event(stage="evaluate", metrics={"candidate.rouge_l": 0.5, "base.exact_match": 0.2, "passed": False})
    message = render(event)
    assert _fields(message)["Gate"] == ":no_entry: did not pass"
    [scores] = [text for text in _texts(message) if "candidate" in text]
    assert scores.splitlines() == ["`exact_match`: candidate – · base 0.200", "`rouge_l`: candidate *0.500*"]


def test_unknown_metrics_of_a_stage_without_a_layout_are_listed() -> None:
    event = _event(stage="register", metrics={"model_package_version": 3, "approved": True, "group": "a<b"})
    fields = _fields(render(event))
    assert fields["Model package version"] == "3"
    assert fields["Approved"] == "yes"
    assert fields["Group"] == "a&lt;b"


def test_text_from_the_event_is_escaped_for_mrkdwn() -> None:
    # GIVEN a dataset name and a cause with Slack's control characters (a crafted "<!channel>" mention included)
    event = _event(status="failed", dataset="incoming/a&b <c>.jsonl", message="boom <!channel> & more", error="Err<1>")
    message = render(event)
    # THEN they arrive escaped, so nothing is turned into a link or a mention
    assert _fields(message)["Dataset"] == "`incoming/a&amp;b &lt;c&gt;.jsonl`"
    assert "*Cause:* boom &lt;!channel&gt; &amp; more" in _texts(message)[0]
    assert "*Error:* `Err&lt;1&gt;`" in _texts(message)[0]
    assert "<!channel>" not in json.dumps(message)
    # AND the header is plain text: it needs no escaping
    assert _header(message) == ":x: Train failed · a&b <c>.jsonl"


def test_long_texts_are_cut_to_block_kit_limits() -> None:
    event = _event(
        status="failed",
        dataset="incoming/" + "x" * 400 + ".jsonl",
        message="first line\n" + "word " * 300,
        notes=[f"note {i} " + "y" * 400 for i in range(15)],
    )
    message = render(event)
    assert len(_header(message)) == 150 and _header(message).endswith("…")
    cause = _texts(message)[0].split("*Cause:* ")[1].split("\n")[0]
    assert cause.startswith("first line word word") and len(cause) <= 500 and cause.endswith("…")
    [notes] = [text for text in _texts(message) if text.startswith("*Notes*")]
    assert notes.count("\n• ") == 11 and notes.endswith("• … and 5 more")
    assert len(notes) <= 3000


def test_without_an_execution_arn_there_is_no_console_button() -> None:
    event = _event(execution_arn=None, status="failed", message="x")
    message = render(event)
    assert not _buttons(message)
    assert "Step Functions console and send them the run id" in _texts(message)[1]


def test_a_rejection_at_the_evaluation_gate_points_at_the_evaluation_report() -> None:
    event = _event(
        stage="run",
        status="rejected",
        message="evaluate: did not pass the gate: candidate exact_match 0.3 is below the minimum score 0.5",
        error="GateFailed",
        artifacts={"evaluation": f"s3://{BUCKET}/runs/{RUN_ID}/evaluation/evaluation.json", "chart": CHART},
    )
    message = render(event)
    assert _header(message).startswith(":no_entry: Run rejected at evaluate")
    advice = _texts(message)[1]
    assert "did not pass the evaluation gate" in advice and "Improve the data" in advice
    assert f"`s3://{BUCKET}/runs/{RUN_ID}/evaluation/evaluation.json`" in advice


def test_a_run_failure_without_a_stage_prefix_says_the_stage_is_unknown() -> None:
    message = render(_event(stage="run", status="failed", message=None, error=None))
    assert _header(message) == ":x: Run failed · support-v2.jsonl"
    assert _texts(message)[0] == "*Stage:* unknown\n*Cause:* not given"


def test_the_default_detail_type_follows_stage_and_status() -> None:
    assert _context(render(_event(status="rejected"))).startswith("Stage Failed · ")
    assert _context(render(_event(stage="run", status="succeeded"))).startswith("Run Succeeded · ")


@pytest.mark.parametrize(
    ("region", "arn", "expected"),
    [
        (None, EXECUTION_ARN, CONSOLE),
        (
            "eu-west-1",
            EXECUTION_ARN,
            CONSOLE.replace("us-east-1.console", "eu-west-1.console").replace("region=us-east-1", "region=eu-west-1"),
        ),
        (
            None,
            "arn:aws-us-gov:states:us-gov-west-1:123456789012:execution:m:r",
            "https://console.amazonaws-us-gov.com/states/home?region=us-gov-west-1"
            "#/v2/executions/details/arn:aws-us-gov:states:us-gov-west-1:123456789012:execution:m:r",
        ),
        (None, "arn:aws:states:us-east-1:123456789012:stateMachine:m", None),
        (None, "not-an-arn", None),
    ],
)
def test_console_links(region: str | None, arn: str, expected: str | None) -> None:
    assert console_url(arn, region) == expected


def test_the_console_region_can_be_overridden() -> None:
    message = render(_event(), console_region="eu-west-1")
    assert _buttons(message)["Open execution"].startswith("https://eu-west-1.console.aws.amazon.com/states/home")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.4, "0.4 s"), (9.96, "10.0 s"), (45, "45 s"), (60, "1 min 00 s"), (754, "12 min 34 s"), (10920, "3 h 02 min")],
)
def test_durations(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_the_terminal_rendering_of_the_local_receiver_is_readable() -> None:
    # GIVEN the rendered evaluate event WHEN printed the way the local Slack receiver prints it
    event, detail_type = _sample("pipeline_event_stage_succeeded_evaluate")
    text = render_text(render(event, detail_type, chart_url=CHART_URL))
    lines = text.splitlines()
    # THEN header, fields, scores, buttons and context are plain lines
    assert lines[0] == "━━ ✅ Evaluate succeeded · support-v2.jsonl ━━"
    assert lines[1] == f"  Dataset: `incoming/support-v2.jsonl`   Run: `{RUN_ID}`   Duration: 15 min 01 s"
    assert "  Gate: ✅ passed   Eval examples: 200" in lines
    assert f"  [Score chart] {CHART_URL}" in lines
    assert lines[-1].startswith("  Stage Succeeded · bucket")
