"""Pre-flight validation of a fine-tuning dataset: the Validate stage and `tuneplane validate`."""

from tuneplane.logic.validation.validator import DatasetSource, ValidationResult, validate_dataset

__all__ = ["DatasetSource", "ValidationResult", "validate_dataset"]
