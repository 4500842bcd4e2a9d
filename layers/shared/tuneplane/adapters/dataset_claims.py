"""Per-dataset records in the run ledger (DynamoDB): which upload of a dataset is the newest, who holds the
dataset's deployment lease, and which run first trained a given content.

They live in the run ledger table (no new table, no new permissions) under a partition key that no run id can take
(run ids match ``[0-9A-Za-z][0-9A-Za-z_-]*``; these start with ``dataset#``). Every write is one conditional
``UpdateItem``/``DeleteItem``, so concurrent runs and retried Lambda invocations agree without a lock service:
DynamoDB applies a condition and its update atomically (the AWS docs: "conditional writes ... succeed only if the
item attributes meet one or more expected conditions").
"""

from __future__ import annotations

import hashlib
from typing import Any

from botocore.exceptions import ClientError

from tuneplane.adapters.ledger import dynamodb
from tuneplane.errors import StorageError

LATEST = "latest"
DEPLOY_LEASE = "deploy-lease"
_CONDITION_FAILED = "ConditionalCheckFailedException"


def dataset_partition(bucket: str, key: str) -> str:
    """The ledger partition of one dataset. Hashed: an S3 key may be 1,024 bytes, DynamoDB's partition key 2,048,
    and a readable prefix keeps the console useful."""
    digest = hashlib.sha256(f"{bucket}\n{key}".encode()).hexdigest()[:32]
    return f"dataset#{digest}"


def _failed_condition(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == _CONDITION_FAILED


def _item(exc: ClientError) -> dict[str, Any]:
    """The item as it was when a condition failed (ReturnValuesOnConditionCheckFailure=ALL_OLD)."""
    raw: dict[str, Any] = dict(exc.response.get("Item") or {})  # type: ignore[call-overload]  # not in botocore's stubs
    from boto3.dynamodb.types import TypeDeserializer

    deserializer = TypeDeserializer()
    return {name: deserializer.deserialize(value) for name, value in raw.items()}


def claim_latest(table: str, partition: str, run_id: str, order: str, key: str) -> str:
    """Record ``run_id`` as the dataset's newest upload unless a later one (greater ``order``) is recorded already.

    Returns the run id recorded as newest afterwards: ``run_id`` itself, or the newer run that wins. Claiming again
    with the same run and order (a retried invocation) changes nothing and returns ``run_id``.
    """
    try:
        dynamodb().Table(table).update_item(
            Key={"run_id": partition, "stage": LATEST},
            UpdateExpression="SET latest_run = :run, latest_order = :order, dataset = :key",
            ConditionExpression="attribute_not_exists(latest_order) OR latest_order <= :order",
            ExpressionAttributeValues={":run": run_id, ":order": order, ":key": key},
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
    except ClientError as exc:
        if _failed_condition(exc):
            return str(_item(exc).get("latest_run") or run_id)
        raise StorageError(f"ledger {table}: claim {partition}/{LATEST}: {exc}") from exc
    return run_id


def latest_run(table: str, partition: str) -> str | None:
    try:
        item = dynamodb().Table(table).get_item(Key={"run_id": partition, "stage": LATEST}, ConsistentRead=True)
    except ClientError as exc:
        raise StorageError(f"ledger {table}: read {partition}/{LATEST}: {exc}") from exc
    found = item.get("Item") or {}
    value = found.get("latest_run")
    return str(value) if value else None


def acquire_lease(table: str, partition: str, run_id: str, now_s: int, hold_s: int) -> str:
    """Take (or renew) the dataset's deployment lease for ``run_id`` until ``now_s + hold_s``.

    Returns the holder afterwards: ``run_id``, or the other run that holds an unexpired lease. A run that died
    without releasing its lease (an aborted execution) blocks others only until its lease expires.
    """
    try:
        dynamodb().Table(table).update_item(
            Key={"run_id": partition, "stage": DEPLOY_LEASE},
            UpdateExpression="SET holder = :run, expires_at = :until",
            ConditionExpression="attribute_not_exists(holder) OR holder = :run OR expires_at < :now",
            ExpressionAttributeValues={":run": run_id, ":until": now_s + hold_s, ":now": now_s},
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
    except ClientError as exc:
        if _failed_condition(exc):
            return str(_item(exc).get("holder") or "another run")
        raise StorageError(f"ledger {table}: lease {partition}/{DEPLOY_LEASE}: {exc}") from exc
    return run_id


def release_lease(table: str, partition: str, run_id: str) -> bool:
    """Give the lease back if ``run_id`` holds it; True when it did. Releasing twice, or a lease that another run
    took over after this one's expired, changes nothing."""
    try:
        dynamodb().Table(table).delete_item(
            Key={"run_id": partition, "stage": DEPLOY_LEASE},
            ConditionExpression="holder = :run",
            ExpressionAttributeValues={":run": run_id},
        )
    except ClientError as exc:
        if _failed_condition(exc):
            return False
        raise StorageError(f"ledger {table}: release {partition}/{DEPLOY_LEASE}: {exc}") from exc
    return True


def claim_content(
    table: str, partition: str, digest: str, run_id: str, replacing: str | None = None, order: str = ""
) -> str:
    """Record ``run_id`` as the run that trains the content ``digest``, unless another run is recorded for it.

    Returns the run recorded afterwards. ``replacing`` names a recorded run whose claim may be taken over (one
    that ended without a model), so that a failed run's content can be trained again; if a third run took it over
    meanwhile, that one is returned.
    """
    stage = f"content#{digest}"
    values: dict[str, Any] = {":run": run_id, ":order": order}
    condition = "attribute_not_exists(first_run) OR first_run = :run"
    if replacing:
        values[":replacing"] = replacing
        condition += " OR first_run = :replacing"
    try:
        dynamodb().Table(table).update_item(
            Key={"run_id": partition, "stage": stage},
            UpdateExpression="SET first_run = :run, first_order = :order",
            ConditionExpression=condition,
            ExpressionAttributeValues=values,
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
    except ClientError as exc:
        if _failed_condition(exc):
            return str(_item(exc).get("first_run") or run_id)
        raise StorageError(f"ledger {table}: claim {partition}/{stage}: {exc}") from exc
    return run_id


def content_owner(table: str, partition: str, digest: str) -> str | None:
    return content_claim(table, partition, digest).get("first_run")


def content_claim(table: str, partition: str, digest: str) -> dict[str, str]:
    """The content's claim: ``first_run`` and its upload order ``first_order`` ("" for a run started by hand)."""
    try:
        item = (
            dynamodb()
            .Table(table)
            .get_item(Key={"run_id": partition, "stage": f"content#{digest}"}, ConsistentRead=True)
        )
    except ClientError as exc:
        raise StorageError(f"ledger {table}: read {partition}/content: {exc}") from exc
    found = item.get("Item") or {}
    return {name: str(found[name]) for name in ("first_run", "first_order") if found.get(name) is not None}
