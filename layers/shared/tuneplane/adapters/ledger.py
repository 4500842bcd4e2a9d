"""The run ledger (DynamoDB): one item per (run, stage) plus one for the run itself (stage ``run``).

Key: ``run_id`` (partition) and ``stage`` (sort), so one Query returns a run's whole history. Numbers are stored
as DynamoDB numbers (Decimal); NaN and infinities, which DynamoDB refuses, are stored as strings.

Every string written is cut to ``TEXT_MAX`` characters with a visible marker (``tuneplane.bounds``): the AWS docs
("Service, account, and table quotas in Amazon DynamoDB") limit an item to 400 KB, and a cause or a model's answer
can be larger. A refused write would leave the run's item saying ``started`` for ever.
"""

from __future__ import annotations

import math
from datetime import datetime
from decimal import Decimal
from functools import cache
from typing import TYPE_CHECKING, Any

import boto3
from botocore.exceptions import ClientError

from tuneplane.bounds import bound_text
from tuneplane.errors import StorageError

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBServiceResource


@cache
def dynamodb() -> DynamoDBServiceResource:
    """Created lazily so tests start moto first; call dynamodb.cache_clear() between tests."""
    return boto3.resource("dynamodb")


TEXT_MAX = 8000  # characters of one string attribute (or map value): a few of them stay far below 400 KB
KEYS_MAX = 200  # entries of one map or list attribute


def _to_item(value: Any) -> Any:
    if isinstance(value, str):
        return bound_text(value, TEXT_MAX)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value)) if math.isfinite(value) else repr(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {bound_text(str(k), TEXT_MAX): _to_item(v) for k, v in list(value.items())[:KEYS_MAX]}
    if isinstance(value, list | tuple):
        return [_to_item(v) for v in list(value)[:KEYS_MAX]]
    return bound_text(str(value), TEXT_MAX)


def _from_item(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _from_item(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_item(v) for v in value]
    return value


def put_stage(table: str, run_id: str, stage: str, fields: dict[str, Any]) -> None:
    """Create or update the (run, stage) item with ``fields`` (other attributes are kept)."""
    fields = {name: value for name, value in fields.items() if value is not None}
    if not fields:
        return
    names = {f"#f{i}": name for i, name in enumerate(fields)}
    values = {f":v{i}": _to_item(value) for i, value in enumerate(fields.values())}
    expression = "SET " + ", ".join(f"#f{i} = :v{i}" for i in range(len(fields)))
    try:
        dynamodb().Table(table).update_item(
            Key={"run_id": run_id, "stage": stage},
            UpdateExpression=expression,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )
    except ClientError as exc:
        raise StorageError(f"ledger {table}: update {run_id}/{stage}: {exc}") from exc


def get_stage(table: str, run_id: str, stage: str) -> dict[str, Any] | None:
    try:
        item = dynamodb().Table(table).get_item(Key={"run_id": run_id, "stage": stage}, ConsistentRead=True)
    except ClientError as exc:
        raise StorageError(f"ledger {table}: read {run_id}/{stage}: {exc}") from exc
    found = item.get("Item")
    return _from_item(found) if found else None


def run_history(table: str, run_id: str) -> list[dict[str, Any]]:
    """Every item of the run (any order of stages; callers sort by started_at)."""
    from boto3.dynamodb.conditions import Key

    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"KeyConditionExpression": Key("run_id").eq(run_id), "ConsistentRead": True}
    try:
        while True:
            page = dynamodb().Table(table).query(**kwargs)
            items += [_from_item(item) for item in page.get("Items", [])]
            if "LastEvaluatedKey" not in page:
                return items
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    except ClientError as exc:
        raise StorageError(f"ledger {table}: query {run_id}: {exc}") from exc
