"""Which of a run's outputs are intermediates, which the data bucket's lifecycle rule expires.

The rule (``ExpireRunIntermediates`` in template.yaml) expires objects under ``runs/`` tagged
``tuneplane:retention=intermediate`` after ``IntermediateRetentionDays``. SageMaker writes the checkpoints and cannot
tag them, so a run's intermediates are tagged when the run ends, whatever its outcome. Reports, the adapter, the
merged and quantized models stay: an endpoint loads its model data from S3 again whenever it scales out.
"""

from __future__ import annotations

from tuneplane.adapters import s3
from tuneplane.config import PipelineSettings

INTERMEDIATE_TAG = {"tuneplane:retention": "intermediate"}
INTERMEDIATE_FOLDERS = ("data/", "checkpoints/", "validation-input/")  # splits; checkpoints; a validation job's copies


def mark_intermediates(settings: PipelineSettings, run_id: str) -> int:
    """Tag the run's intermediates for expiry; returns how many objects were tagged."""
    prefix = f"{settings.runs_prefix}{run_id}/"
    return sum(
        s3.tag_objects(settings.data_bucket, prefix + folder, INTERMEDIATE_TAG) for folder in INTERMEDIATE_FOLDERS
    )
