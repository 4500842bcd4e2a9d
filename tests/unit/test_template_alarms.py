"""Every alarm of the stack tells someone: its actions publish to the stack's encrypted alarm topic, which the Notify
function (Slack) and, with AlarmEmail, an email address are subscribed to; and the upload trigger lets StartRun see
every key under incoming/ (so a badly named upload is answered, not ignored)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from local.cfn_yaml import load_cfn_yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = load_cfn_yaml(ROOT / "template.yaml")
RESOURCES: dict[str, Any] = TEMPLATE["Resources"]


def _of_type(resource_type: str) -> dict[str, Any]:
    return {name: resource for name, resource in RESOURCES.items() if resource["Type"] == resource_type}


def test_every_alarm_publishes_to_the_alarm_topic() -> None:
    # GIVEN every CloudWatch alarm of the template
    alarms = _of_type("AWS::CloudWatch::Alarm")
    assert len(alarms) >= 3
    # THEN each has the alarm topic among its alarm actions (an alarm without one tells nobody)
    for name, alarm in alarms.items():
        assert {"Ref": "AlarmTopic"} in alarm["Properties"].get("AlarmActions", []), name
    # AND the dead-letter alarms say when they clear
    for name in ("StartRunDeadLettersAlarm", "NotifyDeadLettersAlarm"):
        assert {"Ref": "AlarmTopic"} in alarms[name]["Properties"]["OKActions"]


def test_the_alarm_topic_is_encrypted_with_a_key_cloudwatch_may_use() -> None:
    # GIVEN the topic and the key it is encrypted with
    topic = RESOURCES["AlarmTopic"]["Properties"]
    assert topic["KmsMasterKeyId"] == {"Fn::GetAtt": ["DataKey", "Arn"]}
    statements = RESOURCES["DataKey"]["Properties"]["KeyPolicy"]["Statement"]
    # THEN the key policy lets CloudWatch encrypt for the stack's alarms (and only them), else nothing is delivered
    [grant] = [s for s in statements if s.get("Principal", {}).get("Service") == "cloudwatch.amazonaws.com"]
    assert {"kms:Decrypt", "kms:GenerateDataKey*"} <= set(grant["Action"])
    assert "${AWS::StackName}-*" in grant["Condition"]["ArnLike"]["aws:SourceArn"]["Fn::Sub"]
    # AND the topic policy lets CloudWatch publish for the same alarms
    policy = RESOURCES["AlarmTopicPolicy"]["Properties"]
    [publish] = [s for s in policy["PolicyDocument"]["Statement"] if s["Effect"] == "Allow"]
    assert publish["Principal"] == {"Service": "cloudwatch.amazonaws.com"} and publish["Action"] == "sns:Publish"
    assert policy["Topics"] == [{"Ref": "AlarmTopic"}]


def test_the_notify_function_and_an_optional_email_receive_the_alarms() -> None:
    events = RESOURCES["NotifyFunction"]["Properties"]["Events"]
    assert {"Type": "SNS", "Properties": {"Topic": {"Ref": "AlarmTopic"}}} in events.values()
    email = RESOURCES["AlarmEmailSubscription"]
    assert email["Condition"] == "HasAlarmEmail"
    assert email["Properties"] == {
        "TopicArn": {"Ref": "AlarmTopic"},
        "Protocol": "email",
        "Endpoint": {"Ref": "AlarmEmail"},
    }
    assert TEMPLATE["Parameters"]["AlarmEmail"]["Default"] == ""


def test_every_upload_under_incoming_reaches_start_run() -> None:
    function = RESOURCES["StartRunFunction"]["Properties"]
    pattern = function["Events"]["DatasetUploaded"]["Properties"]["Pattern"]
    assert pattern["detail"]["object"]["key"] == [{"prefix": "incoming/"}]
    # AND StartRun may answer on the stack's bus and waits for a late sidecar within its timeout
    variables = function["Environment"]["Variables"]
    assert variables["EVENT_BUS_NAME"] == {"Ref": "EventBus"}
    assert 0 < float(variables["SIDECAR_WAIT_S"]) < function["Timeout"] - 5
