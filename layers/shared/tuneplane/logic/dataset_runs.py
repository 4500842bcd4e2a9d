"""What must be serial per dataset: the newest upload wins, one deployment at a time, identical content once.

- **Newest wins.** A run whose upload passed validation records it as its dataset's newest upload unless a later
  upload is recorded already, so a newer upload that is rejected supersedes nothing. Uploads are ordered by their
  S3 event ``sequencer``: the AWS docs say that for one object key the event with the greater sequencer happened
  later, after left-padding the shorter value with zeros. Before it trains, registers or deploys, a run checks it
  is still the newest; an older run ends *superseded*, cleanly, and never replaces the newer model on the endpoint.
  A run started by hand (no S3 event, no sequencer) is outside this order.
- **One deployment at a time.** A run takes the dataset's deployment lease before it touches the endpoint and
  gives it back when it ends; a second run waits for it (the state machine retries ``DeploymentInProgress``)
  instead of failing on SageMaker's "endpoint is being updated". The lease expires, so a run that died holding it
  does not block the dataset for ever.
- **Identical content once.** When validation finds the same examples and the same settings as an earlier run that
  succeeded or is still running, the run ends *unchanged* ("same content as run X") instead of training again,
  unless the sidecar says ``rerun: true``.

Every record is a conditional write in the run ledger (``adapters/dataset_claims.py``), so retried Lambda
invocations and concurrent runs agree.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from tuneplane.adapters import dataset_claims, ledger
from tuneplane.errors import DeploymentInProgress, RunSuperseded, SameContent

SEQUENCER_WIDTH = 32
# The run outcomes after which the same content may be trained again: the run ended without a verdict on the model
# (a gate rejection is a verdict: the same examples and settings would be rejected again).
_RETRAINABLE = frozenset({"failed", "superseded"})


def upload_order(sequencer: str) -> str:
    """A string that sorts as the uploads of one key happened: the S3 sequencer, upper case, left-padded with zeros."""
    return sequencer.upper().rjust(SEQUENCER_WIDTH, "0")


def record_upload(table: str, bucket: str, key: str, run_id: str, sequencer: str | None) -> str:
    """Record the run as its dataset's newest upload (unless a later one is); returns the newest run's id.

    A run started without an S3 event (by hand: no sequencer) has no place in the order of the uploads (a
    sequencer orders only events of one key, the AWS docs say): it records nothing and is never superseded.
    """
    if not sequencer:
        return run_id
    partition = dataset_claims.dataset_partition(bucket, key)
    return dataset_claims.claim_latest(table, partition, run_id, upload_order(sequencer), key)


def ensure_newest(table: str, bucket: str, key: str, run_id: str, sequencer: str | None) -> None:
    """Raise ``RunSuperseded`` when a newer upload of the dataset passed validation after this one did."""
    if not sequencer:
        return
    newest = dataset_claims.latest_run(table, dataset_claims.dataset_partition(bucket, key))
    if newest and newest != run_id:
        raise RunSuperseded(
            f"a newer upload of {key} started run {newest}; this run stops here so that the newer one's model is the "
            "one that serves"
        )


def take_deploy_lease(table: str, bucket: str, key: str, run_id: str, hold_s: int, now_s: int | None = None) -> None:
    """Hold the dataset's deployment lease for ``hold_s`` seconds, or raise ``DeploymentInProgress``."""
    now = int(time.time()) if now_s is None else now_s
    holder = dataset_claims.acquire_lease(table, dataset_claims.dataset_partition(bucket, key), run_id, now, hold_s)
    if holder != run_id:
        raise DeploymentInProgress(f"run {holder} is deploying {key}; this run deploys when it has finished")


def release_deploy_lease(table: str, bucket: str, key: str, run_id: str) -> bool:
    return dataset_claims.release_lease(table, dataset_claims.dataset_partition(bucket, key), run_id)


def content_digest(file_digests: dict[str, str | None], settings: dict[str, Any]) -> str:
    """One digest of what a run trains on and how: the normalised splits' SHA-256s and every setting that changes
    the result (base model, training, evaluation, deploy target). Key order does not matter."""
    identity = {"files": file_digests, "settings": settings}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def _run_status(table: str, run_id: str) -> str | None:
    item = ledger.get_stage(table, run_id, "run") or {}
    status = item.get("status")
    return str(status) if status else None


def _supersedes(table: str, owner: str, owner_order: str, order: str) -> bool:
    """Whether this upload (``order``) will supersede the run that owns the content: a later upload of the dataset,
    while the owner is still running and before its last check (StartRegister), so it never registers or deploys.
    Then the owner's model would not serve, and this run must train the content instead of being skipped."""
    if not order or not owner_order or order <= owner_order:
        return False
    if _run_status(table, owner) != "started":
        return False
    return ledger.get_stage(table, owner, "register") is None


def claim_content(
    table: str, bucket: str, key: str, run_id: str, digest: str, rerun: bool, sequencer: str | None = None
) -> None:
    """Raise ``SameContent`` when an earlier run that succeeded, was rejected at the gate, or is still running (and
    will not be superseded by this one) trained the same content.

    A claim held by a run that ended without a verdict (failed, superseded) is taken over, so is one of an older
    upload that this one will supersede before it registers; with ``rerun`` the run claims the content whatever the
    earlier run did.
    """
    partition = dataset_claims.dataset_partition(bucket, key)
    order = upload_order(sequencer) if sequencer else ""
    owner = dataset_claims.claim_content(table, partition, digest, run_id, order=order)
    for _ in range(3):  # a takeover can race with another run's; three rounds settle any realistic contention
        if owner == run_id:
            return
        status = _run_status(table, owner)
        owner_order = dataset_claims.content_claim(table, partition, digest).get("first_order", "")
        retrain = rerun or status in _RETRAINABLE or _supersedes(table, owner, owner_order, order)
        if not retrain:
            running = " (still running: its outcome will be this content's)" if status == "started" else ""
            raise SameContent(
                f"same content as run {owner} ({status or 'status unknown'}){running}: the same examples and settings "
                'are not trained again; to retrain them, set "rerun": true in the dataset\'s sidecar file and upload '
                "again"
            )
        owner = dataset_claims.claim_content(table, partition, digest, run_id, replacing=owner, order=order)
    if owner != run_id:
        raise SameContent(f"same content as run {owner}, which claimed it while this run was checking")
