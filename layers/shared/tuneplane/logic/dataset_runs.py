"""What must be serial per dataset: the newest upload wins, one deployment at a time, identical content once.

- **Newest wins.** The first stage of every run records it as its dataset's newest upload unless a later upload is
  recorded already (uploads are ordered by their S3 event ``sequencer``: the AWS docs say that for one object key
  the event with the greater sequencer happened later, after left-padding the shorter value with zeros). Before it
  trains, registers or deploys, a run checks it is still the newest; an older run ends *superseded*, cleanly, and
  never replaces the newer model on the endpoint.
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
# The run outcomes after which the same content may be trained again: nothing of that run serves or was kept.
_RETRAINABLE = frozenset({"failed", "rejected", "superseded"})


def upload_order(sequencer: str | None, started_ns: int | None = None) -> str:
    """A string that sorts as the uploads happened: the S3 sequencer left-padded with zeros. A run started without
    an S3 event (no sequencer) is ordered by when it started, after every S3 sequencer of the same length."""
    if sequencer:
        return sequencer.upper().rjust(SEQUENCER_WIDTH, "0")
    return "~" + f"{started_ns if started_ns is not None else time.time_ns():020d}"


def record_upload(table: str, bucket: str, key: str, run_id: str, sequencer: str | None) -> str:
    """Record the run as its dataset's newest upload (unless a later one is); returns the newest run's id."""
    partition = dataset_claims.dataset_partition(bucket, key)
    return dataset_claims.claim_latest(table, partition, run_id, upload_order(sequencer), key)


def ensure_newest(table: str, bucket: str, key: str, run_id: str) -> None:
    """Raise ``RunSuperseded`` when a newer upload of the dataset started a run after this one."""
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


def claim_content(table: str, bucket: str, key: str, run_id: str, digest: str, rerun: bool) -> None:
    """Raise ``SameContent`` when an earlier run that succeeded or is still running trained the same content.

    A claim held by a run that ended without a model (failed, rejected, superseded) is taken over. With ``rerun``
    the run claims the content whatever the earlier run did.
    """
    partition = dataset_claims.dataset_partition(bucket, key)
    owner = dataset_claims.claim_content(table, partition, digest, run_id)
    for _ in range(3):  # a takeover can race with another run's; three rounds settle any realistic contention
        if owner == run_id:
            return
        status = _run_status(table, owner)
        if not rerun and status not in _RETRAINABLE:
            raise SameContent(
                f"same content as run {owner} ({status or 'status unknown'}): the same examples and settings are not "
                'trained again; to retrain them, set "rerun": true in the dataset\'s sidecar file and upload again'
            )
        owner = dataset_claims.claim_content(table, partition, digest, run_id, replacing=owner)
    if owner != run_id:
        raise SameContent(f"same content as run {owner}, which claimed it while this run was checking")
