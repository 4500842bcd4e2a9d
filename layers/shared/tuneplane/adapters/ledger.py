"""The run ledger (DynamoDB): one item per (run, stage) plus one for the run itself (stage ``run``).

Key: ``run_id`` (partition) and ``stage`` (sort), so one Query returns a run's whole history. Numbers are stored
as DynamoDB numbers (Decimal). DynamoDB refuses NaN and infinities as numbers, and a string in a numeric field would
reach readers that compute with it: a non-finite float is stored as null and read back as None, as a metric that
was not reported (the job's own report and logs keep the value).

Every string written is cut to ``TEXT_MAX`` characters with a visible marker (``tuneplane.bounds``): the AWS docs
("Service, account, and table quotas in Amazon DynamoDB") limit an item to 400 KB, and a cause or a model's answer
can be larger. A refused write would leave the run's item saying ``started`` for ever.

Bounding each string and map is not enough: many fields of 8,000 characters (a report's problems, several causes)
add up past 400 KB, and DynamoDB then refuses the whole update (ValidationException "Item size to update has exceeded
the maximum allowed size"). So the item as a whole is kept below ``ITEM_BUDGET`` bytes, measured as the AWS docs
("Item sizes and formats") count it: attribute names and values in UTF-8, a number up to 21 bytes, 3 bytes per map or
list plus 1 per element. The longest texts are cut first (halved, with the marker, until it fits), and the item's
``ledger_truncated`` attribute names the fields that were cut. An update lands on an item that may already hold
other attributes: when DynamoDB still finds the result too large, the update is fitted again into the room the
stored attributes leave, once.
"""

from __future__ import annotations

import copy
import heapq
import math
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from functools import cache
from typing import TYPE_CHECKING, Any

import boto3
from botocore.exceptions import ClientError

from tuneplane.bounds import bound_text, bound_utf8
from tuneplane.errors import StorageError

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBServiceResource


@cache
def dynamodb() -> DynamoDBServiceResource:
    """Created lazily so tests start moto first; call dynamodb.cache_clear() between tests."""
    return boto3.resource("dynamodb")


TEXT_MAX = 8000  # characters of one string attribute (or map value): a few of them stay far below 400 KB
KEYS_MAX = 200  # entries of one map or list attribute
ITEM_MAX_BYTES = 400 * 1024  # the AWS docs: an item is at most 400 KB, attribute names and values together
ITEM_BUDGET = 380_000  # what put_stage aims below: room for the keys and for a count a little off
_SHORTEST_CUT = 64  # a text this short is not cut further
TRUNCATED_FIELD = "ledger_truncated"


def item_size(value: Any) -> int:
    """Bytes DynamoDB counts for a value (the AWS docs, "Item sizes and formats"): strings in UTF-8, a number at most
    21 bytes, null and booleans 1, a map or list 3 plus 1 per element plus its elements (and a map's key names)."""
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, bool) or value is None:
        return 1
    if isinstance(value, Decimal | int | float):
        return 21
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, dict):
        return 3 + sum(1 + len(str(k).encode()) + item_size(v) for k, v in value.items())
    if isinstance(value, list | tuple | set):
        return 3 + sum(1 + item_size(v) for v in value)
    return len(str(value).encode())


def _texts(value: Any, field: str, into: list[tuple[int, int, str, Any, Any]]) -> None:
    """Every string inside the map or list ``value`` as (-UTF-8 bytes, order, ``field``, container, key)."""
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        if isinstance(child, str):
            into.append((-len(child.encode()), len(into), field, value, key))
        else:
            _texts(child, field, into)


def fit_item(values: dict[str, Any], budget: int) -> list[str]:
    """Cut the longest texts of ``values`` (attribute name -> DynamoDB value, changed in place) until the attributes
    take at most ``budget`` bytes; returns the names of the attributes cut (empty: it fitted as it was)."""
    total = sum(len(name.encode()) + item_size(value) for name, value in values.items())
    texts: list[tuple[int, int, str, Any, Any]] = []
    for name, value in values.items():
        if isinstance(value, str):
            texts.append((-len(value.encode()), len(texts), name, values, name))
        else:
            _texts(value, name, texts)
    heapq.heapify(texts)  # the longest first; `order` breaks ties, so containers are never compared
    cut: list[str] = []
    while total > budget and texts and -texts[0][0] > _SHORTEST_CUT:
        size, order, field, container, key = heapq.heappop(texts)
        shorter = bound_utf8(container[key], -size // 2)
        container[key] = shorter
        total -= -size - len(shorter.encode())
        heapq.heappush(texts, (-len(shorter.encode()), order, field, container, key))
        if field not in cut:
            cut.append(field)
    return cut


def _to_item(value: Any) -> Any:
    if isinstance(value, str):
        return bound_text(value, TEXT_MAX)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value)) if math.isfinite(value) else None  # DynamoDB has no NaN or infinity
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {bound_text(str(k), TEXT_MAX): _to_item(v) for k, v in list(value.items())[:KEYS_MAX]}
    if isinstance(value, list | tuple):
        return [_to_item(v) for v in list(value)[:KEYS_MAX]]
    return bound_text(str(value), TEXT_MAX)


def _to_items(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` as DynamoDB attribute values. A field set to None is left alone (not erased); one holding a
    non-finite float is written as null, so an earlier number does not outlive it."""
    return {name: _to_item(value) for name, value in fields.items() if value is not None}


def _from_item(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _from_item(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_item(v) for v in value]
    return value


def put_stage(table: str, run_id: str, stage: str, fields: dict[str, Any]) -> None:
    """Create or update the (run, stage) item with ``fields`` (other attributes are kept), the whole item kept below
    DynamoDB's 400 KB by cutting the longest texts first (``ledger_truncated`` names them)."""
    items = _to_items(fields)
    if not items:
        return
    key = {"run_id": run_id, "stage": stage}
    budget = ITEM_BUDGET - item_size(key)
    try:
        _update(table, key, _fitted(items, budget))
    except ClientError as exc:
        if not _too_large(exc):
            raise StorageError(f"ledger {table}: update {run_id}/{stage}: {exc}") from exc
        # The stored attributes this update keeps (those it does not set) left too little room: fit into the rest.
        stored = get_stage(table, run_id, stage) or {}
        kept = {name: _to_item(value) for name, value in stored.items() if name not in items and name not in key}
        room = budget - sum(len(name.encode()) + item_size(value) for name, value in kept.items())
        try:
            _update(table, key, _fitted(items, max(room, 0)))
        except ClientError as again:
            raise StorageError(f"ledger {table}: update {run_id}/{stage}: {again}") from again


def _fitted(items: dict[str, Any], budget: int) -> dict[str, Any]:
    """A copy of ``items`` cut to ``budget`` bytes, with ``ledger_truncated`` naming what was cut (when anything)."""
    fitted = copy.deepcopy(items)
    marker_room = len(TRUNCATED_FIELD) + 3 + sum(1 + len(name.encode()) for name in items) + 16
    cut = fit_item(fitted, budget - marker_room)
    if cut:
        fitted[TRUNCATED_FIELD] = cut
    return fitted


def _too_large(exc: ClientError) -> bool:
    error = exc.response.get("Error", {})
    return error.get("Code") == "ValidationException" and "size" in str(error.get("Message", "")).lower()


def _update(table: str, key: dict[str, str], items: dict[str, Any]) -> None:
    names = {f"#f{i}": name for i, name in enumerate(items)}
    values = {f":v{i}": value for i, value in enumerate(items.values())}
    expression = "SET " + ", ".join(f"#f{i} = :v{i}" for i in range(len(items)))
    dynamodb().Table(table).update_item(
        Key=key, UpdateExpression=expression, ExpressionAttributeNames=names, ExpressionAttributeValues=values
    )


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


def runs_with_status(table: str, status: str) -> list[dict[str, Any]]:
    """Every run item (stage "run") whose status is ``status``: a Scan with a filter, for the hourly sweep of runs
    whose execution ended unrecorded (their number is small; the scan reads the table once an hour)."""
    found: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {
        "FilterExpression": "#stage = :run AND #status = :status",
        "ExpressionAttributeNames": {"#stage": "stage", "#status": "status"},
        "ExpressionAttributeValues": {":run": "run", ":status": status},
    }
    try:
        while True:
            page = dynamodb().Table(table).scan(**kwargs)
            found += [_from_item(item) for item in page.get("Items", [])]
            if "LastEvaluatedKey" not in page:
                return found
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    except ClientError as exc:
        raise StorageError(f"ledger {table}: scan for {status} runs: {exc}") from exc


def record_outcome(table: str, run_id: str, fields: dict[str, Any], outcomes: Iterable[str]) -> bool:
    """Write the run item's outcome (``fields["status"]``) unless it records another outcome already; False when it
    does. One conditional write decides between the paths that may end a run at the same moment (the execution's own
    last state and the reconciler of a stopped execution); the same outcome again (a retried task) is allowed."""
    items = _fitted(_to_items(fields), ITEM_BUDGET // 2)
    names = {f"#f{i}": name for i, name in enumerate(items)} | {"#status": "status"}
    values = {f":v{i}": value for i, value in enumerate(items.values())}
    ended = {f":o{i}": outcome for i, outcome in enumerate(outcomes)}
    values |= ended | {":this": fields["status"]}
    expression = "SET " + ", ".join(f"#f{i} = :v{i}" for i in range(len(items)))
    condition = f"attribute_not_exists(#status) OR #status = :this OR NOT (#status IN ({', '.join(ended)}))"
    try:
        dynamodb().Table(table).update_item(
            Key={"run_id": run_id, "stage": "run"},
            UpdateExpression=expression,
            ConditionExpression=condition,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
            return False
        raise StorageError(f"ledger {table}: record the outcome of {run_id}: {exc}") from exc
    return True
