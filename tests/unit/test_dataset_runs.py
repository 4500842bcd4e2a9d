"""What is serial per dataset, on moto's DynamoDB: newest upload wins, one deployment lease, identical content once.

The property tests deliver the uploads of one dataset in every order (as EventBridge may) and with repeats (as
Lambda retries do), and check the outcome depends only on the uploads' S3 sequencers.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import boto3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from moto import mock_aws

from tuneplane.adapters import dataset_claims, ledger
from tuneplane.errors import DeploymentInProgress, RunSuperseded, SameContent
from tuneplane.logic import dataset_runs

TABLE = "tuneplane-test-runs"
BUCKET = "data"
KEY = "incoming/support.jsonl"


def _create_table() -> None:
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


@pytest.fixture
def table() -> Iterator[str]:
    with mock_aws():
        _create_table()
        yield TABLE
    ledger.dynamodb.cache_clear()


def _set_status(run_id: str, status: str) -> None:
    ledger.put_stage(TABLE, run_id, "run", {"status": status})


def test_sequencers_of_different_lengths_sort_as_the_uploads_happened() -> None:
    # GIVEN S3 sequencers of different lengths (the AWS docs: left-pad the shorter with zeros, then compare)
    earlier, later = "FFFF", "00010000"
    # WHEN both are turned into upload orders
    # THEN the numerically greater sequencer sorts last, whatever its length
    assert dataset_runs.upload_order(earlier) < dataset_runs.upload_order(later)
    assert dataset_runs.upload_order("00ab") == dataset_runs.upload_order("AB")


@settings(max_examples=25, deadline=None)
@given(
    sequencers=st.lists(st.integers(min_value=1, max_value=2**64), min_size=2, max_size=5, unique=True),
    order=st.randoms(use_true_random=False),
    repeats=st.lists(st.integers(min_value=0, max_value=4), max_size=3),
)
def test_newest_upload_wins_whatever_the_delivery_order(sequencers: list[int], order, repeats: list[int]) -> None:
    with mock_aws():
        _create_table()
        # GIVEN uploads of one dataset, delivered in a random order, some delivered twice (a retried Lambda)
        runs = {f"run-{value:x}": f"{value:X}" for value in sequencers}
        deliveries = list(runs.items())
        order.shuffle(deliveries)
        deliveries += [deliveries[index % len(deliveries)] for index in repeats]
        # WHEN each delivery records its upload
        for run_id, sequencer in deliveries:
            dataset_runs.record_upload(TABLE, BUCKET, KEY, run_id, sequencer)
        # THEN the upload with the greatest sequencer is the newest, and only its run may go on
        newest = f"run-{max(sequencers):x}"
        for run_id, sequencer in runs.items():
            if run_id == newest:
                dataset_runs.ensure_newest(TABLE, BUCKET, KEY, run_id, sequencer)
            else:
                with pytest.raises(RunSuperseded, match=newest):
                    dataset_runs.ensure_newest(TABLE, BUCKET, KEY, run_id, sequencer)
    ledger.dynamodb.cache_clear()


def test_datasets_do_not_supersede_each_other(table: str) -> None:
    # GIVEN a later upload of another dataset
    dataset_runs.record_upload(table, BUCKET, KEY, "run-a", "01")
    dataset_runs.record_upload(table, BUCKET, "incoming/other.jsonl", "run-b", "02")
    # WHEN the first dataset's run checks it is the newest
    # THEN it is: datasets are independent
    dataset_runs.ensure_newest(table, BUCKET, KEY, "run-a", "01")


def test_a_run_started_by_hand_is_outside_the_order_of_uploads(table: str) -> None:
    # GIVEN a run started by hand (no S3 event, so no sequencer), then an upload of the dataset
    assert dataset_runs.record_upload(table, BUCKET, KEY, "by-hand", None) == "by-hand"
    dataset_runs.record_upload(table, BUCKET, KEY, "uploaded", "0062A1B2C3D4E5F601")
    # WHEN each checks it may go on
    # THEN neither is superseded: the hand-started run is not ordered against uploads, and it never blocks one
    dataset_runs.ensure_newest(table, BUCKET, KEY, "by-hand", None)
    dataset_runs.ensure_newest(table, BUCKET, KEY, "uploaded", "0062A1B2C3D4E5F601")


def test_deploy_lease_is_held_by_one_run_until_released_or_expired(table: str) -> None:
    # GIVEN run a holds the lease for 100 s
    dataset_runs.take_deploy_lease(table, BUCKET, KEY, "run-a", hold_s=100, now_s=1000)
    # WHEN run b asks within that time THEN it waits (DeploymentInProgress names the holder)
    with pytest.raises(DeploymentInProgress, match="run-a"):
        dataset_runs.take_deploy_lease(table, BUCKET, KEY, "run-b", hold_s=100, now_s=1050)
    # AND run a renewing its own lease (a retried call) is no conflict
    dataset_runs.take_deploy_lease(table, BUCKET, KEY, "run-a", hold_s=100, now_s=1060)
    # AND b still waits at 1101 (a's renewal moved the expiry to 1160), gets it after the expiry
    with pytest.raises(DeploymentInProgress):
        dataset_runs.take_deploy_lease(table, BUCKET, KEY, "run-b", hold_s=100, now_s=1101)
    dataset_runs.take_deploy_lease(table, BUCKET, KEY, "run-b", hold_s=100, now_s=1161)
    # AND a's late release does not free b's lease
    assert dataset_runs.release_deploy_lease(table, BUCKET, KEY, "run-a") is False
    with pytest.raises(DeploymentInProgress, match="run-b"):
        dataset_runs.take_deploy_lease(table, BUCKET, KEY, "run-c", hold_s=100, now_s=1170)
    # AND after b releases, c gets it at once
    assert dataset_runs.release_deploy_lease(table, BUCKET, KEY, "run-b") is True
    dataset_runs.take_deploy_lease(table, BUCKET, KEY, "run-c", hold_s=100, now_s=1171)


@pytest.mark.parametrize("first_status", ["started", "succeeded"])
def test_identical_content_is_not_trained_twice(table: str, first_status: str) -> None:
    # GIVEN run a trained (or is training) some content
    digest = dataset_runs.content_digest({"train": "aa", "eval": "bb"}, {"training": {"lora_r": 8}})
    dataset_runs.claim_content(table, BUCKET, KEY, "run-a", digest, rerun=False)
    _set_status("run-a", first_status)
    # WHEN run b has the same content (settings given in another key order)
    same = dataset_runs.content_digest({"eval": "bb", "train": "aa"}, {"training": {"lora_r": 8}})
    # THEN it is told it is the same content as run a, and how to retrain anyway
    with pytest.raises(SameContent, match=r"run-a .*rerun"):
        dataset_runs.claim_content(table, BUCKET, KEY, "run-b", same, rerun=False)
    # AND a retried call of run a itself is no conflict
    dataset_runs.claim_content(table, BUCKET, KEY, "run-a", digest, rerun=False)


def test_changed_settings_or_rerun_or_failed_first_run_train_again(table: str) -> None:
    # GIVEN run a succeeded on some content
    digest = dataset_runs.content_digest({"train": "aa"}, {"training": {"lora_r": 8}})
    dataset_runs.claim_content(table, BUCKET, KEY, "run-a", digest, rerun=False)
    _set_status("run-a", "succeeded")
    # WHEN a setting differs THEN it is new content
    changed = dataset_runs.content_digest({"train": "aa"}, {"training": {"lora_r": 16}})
    dataset_runs.claim_content(table, BUCKET, KEY, "run-b", changed, rerun=False)
    # WHEN rerun is asked THEN the same content is claimed again
    dataset_runs.claim_content(table, BUCKET, KEY, "run-c", digest, rerun=True)
    assert dataset_claims.content_owner(table, dataset_claims.dataset_partition(BUCKET, KEY), digest) == "run-c"
    # WHEN the owner failed THEN the next run takes the content over
    _set_status("run-c", "failed")
    dataset_runs.claim_content(table, BUCKET, KEY, "run-d", digest, rerun=False)
    assert dataset_claims.content_owner(table, dataset_claims.dataset_partition(BUCKET, KEY), digest) == "run-d"


def test_only_one_of_many_identical_uploads_trains(table: str) -> None:
    # GIVEN five runs of identical content checking one after another (any interleaving of whole calls)
    digest = dataset_runs.content_digest({"train": "aa"}, {})
    for permutation in itertools.islice(itertools.permutations([f"run-{i}" for i in range(5)]), 6):
        partition = dataset_claims.dataset_partition(BUCKET, permutation[0])
        winners = []
        for run_id in permutation:
            try:
                dataset_runs.claim_content(table, BUCKET, permutation[0], run_id, digest, rerun=False)
                winners.append(run_id)
            except SameContent:
                pass
        # THEN exactly the first trains
        assert winners == [permutation[0]]
        assert dataset_claims.content_owner(table, partition, digest) == permutation[0]


def test_a_newer_upload_of_the_same_content_trains_when_it_will_supersede_the_older_run(table: str) -> None:
    # GIVEN an older upload's run that claimed the content and is still training (before StartRegister)
    digest = dataset_runs.content_digest({"train": "aa"}, {})
    dataset_runs.claim_content(table, BUCKET, KEY, "older", digest, rerun=False, sequencer="01")
    _set_status("older", "started")
    # WHEN the same bytes are uploaded again (a newer upload, which will supersede the older run)
    dataset_runs.claim_content(table, BUCKET, KEY, "newer", digest, rerun=False, sequencer="02")
    # THEN the newer run takes the content over: the older one stops at its next check, so one of them serves
    assert dataset_claims.content_owner(table, dataset_claims.dataset_partition(BUCKET, KEY), digest) == "newer"


def test_a_newer_upload_of_the_same_content_is_skipped_once_the_older_run_registered(table: str) -> None:
    # GIVEN an older upload's run that claimed the content and has reached StartRegister (no check left before it
    # registers; its model will be this content's)
    digest = dataset_runs.content_digest({"train": "aa"}, {})
    dataset_runs.claim_content(table, BUCKET, KEY, "older", digest, rerun=False, sequencer="01")
    _set_status("older", "started")
    ledger.put_stage(TABLE, "older", "register", {"status": "started"})
    # WHEN the same bytes are uploaded again THEN that run is skipped, naming the older run
    with pytest.raises(SameContent, match="older"):
        dataset_runs.claim_content(table, BUCKET, KEY, "newer", digest, rerun=False, sequencer="02")
