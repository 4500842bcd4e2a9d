"""Runs of one dataset on the local cloud: the newest upload wins, one deployment at a time, identical content once.

The real template, state machine and Stage function; the ledger's conditional writes on moto's DynamoDB."""

from __future__ import annotations

import gzip
import json
import threading
import time
from typing import Any

import boto3
import pytest
from tests.statemachine.harness import Cloud

from tuneplane.adapters import dataset_claims

KEY = "incoming/reverse.jsonl"


@pytest.fixture(autouse=True)
def _manual_runs_only(cloud: Cloud) -> None:
    cloud.disable_trigger()


def _request(cloud: Cloud, run_id: str, version: str, **extra: Any) -> dict[str, Any]:
    return {"run_id": run_id, "bucket": cloud.deployment.bucket_name, "key": KEY, "version_id": version, **extra}


def _run_events(cloud: Cloud) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Each run's events, in order: (detail type, detail)."""
    by_run: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for event in cloud.bus_events():
        by_run.setdefault(event["detail"]["run_id"], []).append((event["detail-type"], event["detail"]))
    return by_run


def _trained(cloud: Cloud) -> list[str]:
    return [name for name, _ in cloud.jobs.started if "-train" in name]


def test_an_older_upload_delivered_late_is_superseded_before_it_trains(
    cloud: Cloud, reversal_lines: list[str]
) -> None:
    # GIVEN two uploads of one dataset; the newer one (greater S3 sequencer) ran first and succeeded
    older = cloud.upload(KEY, reversal_lines)
    newer = cloud.upload(KEY, reversal_lines[:15])
    first = cloud.run("newer-run", _request(cloud, "newer-run", newer, sequencer="00AA00000000000002"))
    assert first["status"] == "SUCCEEDED", first.get("cause")
    # WHEN the older upload's event arrives late (EventBridge does not promise order) and its run starts
    late = cloud.run("older-run", _request(cloud, "older-run", older, sequencer="00AA00000000000001"))
    # THEN that run ends cleanly (SUCCEEDED: nothing failed) through RecordStop, without training
    assert late["status"] == "SUCCEEDED", late.get("cause")
    states = cloud.states_entered(late["executionArn"])
    assert states[-2:] == ["RecordStop", "Stopped"] and "Train" not in states
    assert [name for name in _trained(cloud) if "older" in name] == []
    # AND its one outcome is Run Superseded, naming the newer run; its ledger says superseded
    events = _run_events(cloud)["older-run"]
    outcomes = [(kind, detail) for kind, detail in events if kind.startswith("Run ")]
    assert [kind for kind, _ in outcomes] == ["Run Superseded"]
    assert "newer-run" in outcomes[0][1]["message"]
    assert cloud.ledger("older-run")["run"]["status"] == "superseded"
    # AND the validate stage it did run has its one outcome, and no stage failed
    assert [kind for kind, detail in events if detail["stage"] == "validate"] == ["Stage Started", "Stage Succeeded"]
    assert not [kind for kind, _ in events if kind == "Stage Failed"]


def test_identical_content_is_skipped_unless_rerun_is_asked(cloud: Cloud, reversal_lines: list[str]) -> None:
    # GIVEN a run that trained on a dataset and succeeded
    first_version = cloud.upload(KEY, reversal_lines)
    first = cloud.run("first", _request(cloud, "first", first_version))
    assert first["status"] == "SUCCEEDED", first.get("cause")
    # WHEN the same examples are uploaded again, gzipped and with blank lines between them (the same content)
    again_version = cloud.put(KEY, gzip.compress("".join(line + "\n\n" for line in reversal_lines).encode()))
    again = cloud.run("again", _request(cloud, "again", again_version))
    # THEN the second run ends Run Skipped, "same content as run first", and trains nothing
    assert again["status"] == "SUCCEEDED", again.get("cause")
    assert cloud.states_entered(again["executionArn"])[-2:] == ["RecordStop", "Stopped"]
    events = _run_events(cloud)
    [(kind, detail)] = [(kind, detail) for kind, detail in events["again"] if kind.startswith("Run ")]
    assert kind == "Run Skipped"
    assert "same content as run first" in detail["message"] and "rerun" in detail["message"]
    assert [name for name in _trained(cloud) if "again" in name] == []
    assert cloud.ledger("again")["run"]["status"] == "skipped"
    # WHEN it is uploaded once more with rerun asked (the sidecar's "rerun": true)
    third = cloud.run("third", _request(cloud, "third", again_version, rerun=True))
    # THEN it trains and succeeds
    assert third["status"] == "SUCCEEDED", third.get("cause")
    assert [name for name in _trained(cloud) if "third" in name] != []
    assert [kind for kind, _ in _run_events(cloud)["third"] if kind.startswith("Run ")] == ["Run Succeeded"]


def test_changed_content_trains_again(cloud: Cloud, reversal_lines: list[str]) -> None:
    # GIVEN a run that succeeded
    cloud.run("first", _request(cloud, "first", cloud.upload(KEY, reversal_lines)))
    # WHEN one example is left out
    second = cloud.run("second", _request(cloud, "second", cloud.upload(KEY, reversal_lines[1:])))
    # THEN it is new content: the run trains and succeeds
    assert second["status"] == "SUCCEEDED"
    assert [name for name in _trained(cloud) if "second" in name] != []


@pytest.mark.stack_parameters(DeployTarget="vllm")
def test_a_run_waits_for_another_runs_deployment_of_the_dataset(cloud: Cloud, reversal_lines: list[str]) -> None:
    # GIVEN another run of the dataset holds its deployment lease (it is deploying)
    cloud.endpoints.reply = "olleh"
    table = cloud.deployment.outputs["RunLedgerTableName"]
    partition = dataset_claims.dataset_partition(cloud.deployment.bucket_name, KEY)
    assert dataset_claims.acquire_lease(table, partition, "deploying-run", int(time.time()), 3600) == "deploying-run"
    # WHEN a newer run reaches its deploy stage
    version = cloud.upload(KEY, reversal_lines)
    arn = boto3.client("stepfunctions").start_execution(
        stateMachineArn=cloud.deployment.state_machine_arn,
        name="waiting-run",
        input=json.dumps(_request(cloud, "waiting-run", version)),
    )["executionArn"]
    # THEN it waits at StartDeploy (retrying DeploymentInProgress) instead of failing
    deadline = time.monotonic() + 30
    while "StartDeploy" not in cloud.states_entered(arn) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(2.0)  # several retry rounds (60 s each at the local cloud's time scale)
    assert boto3.client("stepfunctions").describe_execution(executionArn=arn)["status"] == "RUNNING"
    assert "DeployBegin" not in cloud.states_entered(arn)
    # WHEN the other run's deployment ends (it gives the lease back)
    threading.Timer(0, dataset_claims.release_lease, (table, partition, "deploying-run")).start()
    # THEN this run deploys and succeeds, and gives the lease back in its turn
    execution = cloud.wait(arn)
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    assert "DeployBegin" in cloud.states_entered(arn)
    assert dataset_claims.acquire_lease(table, partition, "next-run", int(time.time()), 60) == "next-run"
    # AND only one Stage Started was published for its deploy stage, however many times it asked
    deploy_started = [
        kind for kind, detail in _run_events(cloud)["waiting-run"] if detail["stage"] == "deploy" and "Started" in kind
    ]
    assert deploy_started == ["Stage Started"]
