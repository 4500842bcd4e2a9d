"""Pre-flight validation of a fine-tuning dataset: the Validate stage and `tuneplane validate`.

The validator (numpy, tokenizers, jinja2) is imported on first use: ``pii``'s masking is imported by the event model
in every function, which must not pay for the validator's imports on its cold start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tuneplane.logic.validation.scanner import ResourceBudget
from tuneplane.logic.validation.validator import DatasetSource, ValidationResult, validate_dataset

__all__ = ["DatasetSource", "ResourceBudget", "ValidationResult", "validate_dataset"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from tuneplane.logic.validation import validator

        return getattr(validator, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
