"""What the Register step sends SageMaker's Model Registry about a run, in the forms its API accepts.

The dataset's S3 key is the uploader's choice and may hold any character; SageMaker's request constraints
(botocore's service model) refuse most of them: ``CustomerMetadataProperties`` values must match
``[\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*`` and be at most 256 characters, ``ModelPackageDescription`` must match
``[\\p{L}\\p{M}\\p{Z}\\p{S}\\p{N}\\p{P}]*`` and be at most 1024. A refusal there would come after training was
paid for, so every value is made acceptable here, and one that had to change says so with a hash of the original.
"""

from __future__ import annotations

import hashlib
import unicodedata
from typing import Any

METADATA_VALUE_MAX = 256
DESCRIPTION_MAX = 1024
_METADATA_PUNCTUATION = frozenset("_.:/=+-@")


def _metadata_char(char: str) -> bool:
    return unicodedata.category(char)[0] in "LZN" or char in _METADATA_PUNCTUATION


def _description_char(char: str) -> bool:
    return unicodedata.category(char)[0] in "LMZSNP"


def _fit(value: str, allowed: Any, limit: int) -> str:
    """``value`` with each refused character as ``_`` and cut to ``limit``; a changed value ends in ``@<8 hex>`` of
    the original, so two keys that differ only where they were changed stay apart."""
    fitted = "".join(char if allowed(char) else "_" for char in value)
    if fitted == value and len(value) <= limit:
        return value
    tag = "@" + hashlib.sha256(value.encode()).hexdigest()[:8]
    return fitted[: limit - len(tag)] + tag


def metadata_value(value: str) -> str:
    """A ``CustomerMetadataProperties`` value (also a valid SageMaker tag value) that stands for ``value``."""
    return _fit(value, _metadata_char, METADATA_VALUE_MAX)


def registration(run_id: str, dataset_key: str) -> dict[str, Any]:
    """The Register step's user-derived fields: the package description and its customer metadata."""
    return {
        "description": _fit(f"tuneplane run {run_id} of {dataset_key}", _description_char, DESCRIPTION_MAX),
        "metadata": {"run_id": metadata_value(run_id), "dataset": metadata_value(dataset_key)},
    }
