"""Which SageMaker instance types have local NVMe instance storage, and so refuse a ``VolumeKmsKeyId``.

SageMaker's API reference (``ResourceConfig.VolumeKmsKeyId``, ``ProcessingClusterConfig.VolumeKmsKeyId``): "Certain
Nitro-based instances include local storage ... Local storage volumes are encrypted using a hardware module on the
instance. You can't request a VolumeKmsKeyId when using an instance type with local storage." The families are those
of the SageMaker developer guide's "Instance storage volumes" table and EC2's instance store table: every family whose
attribute letters include ``d`` (``c5d``, ``m5d``, ``m6id``, ``r5d``, ``g4dn``, ``p3dn``, ``p4d``, ``p4de``), every
``i`` (storage-optimised) family, and the GPU and Trainium families that come with NVMe and no "d" in their name.
"""

from __future__ import annotations

import re

# GPU/accelerator families with NVMe instance storage whose names do not carry the "d" attribute.
_NVME_FAMILIES = frozenset(
    {"dl1", "g5", "g6", "g6e", "gr6", "p5", "p5e", "p5en", "p6", "p6e", "trn1", "trn1n", "trn2"}
)
# ml.<family>.<size>; family = series letters, generation digits, attribute letters (c5d: "c", "5", "d"), and a
# variant after a hyphen (p6-b200, p6e-gb200) that names the accelerator, not the storage.
_INSTANCE_TYPE = re.compile(
    r"^ml\.(?P<series>[a-z]+)(?P<generation>\d+)(?P<attributes>[a-z]*)(?:-[a-z0-9]+)?\.[a-z0-9]+$"
)


def has_local_storage(instance_type: str) -> bool:
    """True when ``instance_type`` (``ml.g5.2xlarge``) comes with NVMe instance storage instead of an EBS volume."""
    match = _INSTANCE_TYPE.match(instance_type)
    if match is None:
        return False
    family = f"{match['series']}{match['generation']}{match['attributes']}"
    return family in _NVME_FAMILIES or "d" in match["attributes"] or match["series"] == "i"
