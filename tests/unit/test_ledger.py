"""The run ledger on moto's DynamoDB: what goes in comes back (numbers, datetimes; NaN as None), updates keep the
rest."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime

import boto3
import pytest
from moto import mock_aws

from tuneplane.adapters import ledger
from tuneplane.errors import StorageError

TABLE = "tuneplane-test-runs"


@pytest.fixture
def table() -> Iterator[str]:
    with mock_aws():
        ledger.dynamodb.cache_clear()
        boto3.client("dynamodb").create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "run_id", "KeyType": "HASH"}, {"AttributeName": "stage", "KeyType": "RANGE"}],
            AttributeDefinitions=[
                {"AttributeName": "run_id", "AttributeType": "S"},
                {"AttributeName": "stage", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        yield TABLE
    ledger.dynamodb.cache_clear()


def test_numbers_nan_and_datetimes_round_trip(table: str) -> None:
    # GIVEN a stage's fields with ints, floats, bools, NaN, infinity, a datetime and nested values
    started = datetime(2026, 11, 23, 17, 5, 3, 123456, tzinfo=UTC)
    fields = {
        "started_at": started,
        "duration_s": 12.5,
        "metrics": {
            "examples": 118,
            "loss": 0.1 + 0.2,
            "tiny": 1e-12,
            "exact": 3.0,
            "passed": True,
            "eval_loss": math.nan,
            "ratio": -math.inf,
            "scores": [0.5, 1, None],
        },
        "message": "ok",
    }
    # WHEN it is written and read back
    ledger.put_stage(table, "run-1", "train", fields)
    item = ledger.get_stage(table, "run-1", "train")
    # THEN numbers come back as Python numbers with every digit, NaN and infinities (which DynamoDB refuses as
    # numbers) as None, never as text a reader would compute with; the datetime as its ISO text
    assert item is not None
    assert item["metrics"]["examples"] == 118 and isinstance(item["metrics"]["examples"], int)
    assert item["metrics"]["loss"] == 0.1 + 0.2 and isinstance(item["metrics"]["loss"], float)
    assert item["metrics"]["tiny"] == 1e-12
    assert item["metrics"]["exact"] == 3  # an integral float comes back as an int
    assert item["metrics"]["passed"] is True
    assert item["metrics"]["eval_loss"] is None and item["metrics"]["ratio"] is None
    assert item["metrics"]["scores"] == [0.5, 1, None]
    assert datetime.fromisoformat(item["started_at"]) == started
    assert item["duration_s"] == 12.5 and item["message"] == "ok"
    assert (item["run_id"], item["stage"]) == ("run-1", "train")


def test_an_update_keeps_the_other_attributes_and_skips_none(table: str) -> None:
    # GIVEN a started stage
    ledger.put_stage(table, "run-1", "train", {"status": "started", "started_at": "t0", "job_name": "job-train0"})
    # WHEN it finishes (fields set to None are left alone, not erased)
    ledger.put_stage(table, "run-1", "train", {"status": "succeeded", "error": None, "metrics": {"loss": 0.4}})
    # THEN the update changed what it named and kept the rest
    assert ledger.get_stage(table, "run-1", "train") == {
        "run_id": "run-1",
        "stage": "train",
        "status": "succeeded",
        "started_at": "t0",
        "job_name": "job-train0",
        "metrics": {"loss": 0.4},
    }


def test_a_non_finite_number_replaces_an_earlier_one_with_null(table: str) -> None:
    # GIVEN a stage that recorded a finite eval loss
    ledger.put_stage(table, "run-1", "train", {"eval_loss": 0.5, "tokens_per_second": 100.0})
    # WHEN a later write reports it as NaN and another number as infinite
    ledger.put_stage(table, "run-1", "train", {"eval_loss": math.nan, "tokens_per_second": math.inf})
    # THEN both read back as None: neither the stale number nor a string a reader would compute with
    item = ledger.get_stage(table, "run-1", "train")
    assert item is not None and item["eval_loss"] is None and item["tokens_per_second"] is None


def test_nothing_to_write_writes_nothing(table: str) -> None:
    ledger.put_stage(table, "run-1", "merge", {"error": None})
    assert ledger.get_stage(table, "run-1", "merge") is None


def test_a_runs_history_is_every_stage_of_that_run_only(table: str) -> None:
    for stage in ("run", "validate", "train"):
        ledger.put_stage(table, "run-1", stage, {"status": "started"})
    ledger.put_stage(table, "run-2", "validate", {"status": "started"})
    history = ledger.run_history(table, "run-1")
    assert sorted(item["stage"] for item in history) == ["run", "train", "validate"]
    assert ledger.run_history(table, "run-3") == []


def test_a_missing_table_is_a_storage_error(table: str) -> None:
    with pytest.raises(StorageError, match="ledger no-such-table: update run-1/train"):
        ledger.put_stage("no-such-table", "run-1", "train", {"status": "started"})
    with pytest.raises(StorageError, match="read run-1/train"):
        ledger.get_stage("no-such-table", "run-1", "train")
