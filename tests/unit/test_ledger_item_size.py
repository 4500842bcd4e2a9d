"""The run ledger keeps every (run, stage) item below DynamoDB's 400 KB (moto enforces it as DynamoDB does: an
UpdateItem whose result is larger is refused with ValidationException): the longest texts are cut first and the
item names the fields cut (``ledger_truncated``), so that a stage with many large fields is still recorded."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from tuneplane.adapters import ledger

TABLE = "tuneplane-test-runs"
LIMIT = 400 * 1024


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


def stored_size(item: dict[str, Any]) -> int:
    return sum(len(name.encode()) + ledger.item_size(ledger._to_item(value)) for name, value in item.items())


def test_a_stage_with_many_large_fields_is_recorded_below_400_kb(table: str) -> None:
    # GIVEN a stage's fields: 80 texts of 8,000 characters (each within the per-string bound, 640 KB together),
    # a map of 200 long causes, and small fields that must survive as they are
    fields: dict[str, Any] = {f"detail_{i:02d}": f"{i:02d}" + "x" * 7998 for i in range(80)}
    fields["causes"] = {f"c{i}": "é" * 8000 for i in range(200)}  # 2 bytes a character in UTF-8
    fields |= {"status": "failed", "error": "StorageError", "examples": 1234}
    # WHEN the stage is recorded
    ledger.put_stage(table, "run-1", "validate", fields)
    # THEN DynamoDB took it, the item is below 400 KB, the small fields are intact, the longest texts were cut with
    # the visible marker, and ledger_truncated names what was cut
    item = ledger.get_stage(table, "run-1", "validate")
    assert item is not None
    assert stored_size(item) < LIMIT
    assert (item["status"], item["error"], item["examples"]) == ("failed", "StorageError", 1234)
    assert "causes" in item["ledger_truncated"] and len(item["ledger_truncated"]) > 1
    assert all(name in fields for name in item["ledger_truncated"])
    assert "[truncated:" in item["causes"]["c0"]
    assert item["detail_00"].startswith("00")


def test_an_update_onto_a_large_item_is_fitted_into_the_room_left(table: str) -> None:
    # GIVEN a stage item that already holds 300 KB (the started record) ...
    ledger.put_stage(table, "run-1", "train", {f"started_{i}": "s" * 7500 for i in range(40)})
    # WHEN the ended record adds another 300 KB of other fields
    ledger.put_stage(table, "run-1", "train", {f"ended_{i}": "e" * 7500 for i in range(40)} | {"status": "ok"})
    # THEN both updates were recorded (the second cut to the room the first left), below 400 KB together
    item = ledger.get_stage(table, "run-1", "train")
    assert item is not None and item["status"] == "ok"
    assert stored_size(item) < LIMIT
    assert "ended_0" in item and "started_0" in item
    assert set(item["ledger_truncated"]) <= {f"ended_{i}" for i in range(40)}


def test_an_item_within_the_budget_is_written_as_it_is(table: str) -> None:
    # GIVEN fields far below 400 KB
    fields = {"status": "succeeded", "message": "y" * 8000, "metrics": {"exact_match": 0.5}}
    # WHEN recorded THEN they come back unchanged, with no ledger_truncated
    ledger.put_stage(table, "run-1", "evaluate", fields)
    assert ledger.get_stage(table, "run-1", "evaluate") == {"run_id": "run-1", "stage": "evaluate"} | fields
