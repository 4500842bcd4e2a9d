"""Pre-flight validation of a fine-tuning dataset: the Validate stage and `tuneplane validate` (``validator``).

This package imports nothing itself: ``pii``'s masking is imported by the event model in every function, which must
not pay for the validator's imports (numpy, tokenizers, jinja2, orjson) on its cold start. Import
``tuneplane.logic.validation.validator`` for ``validate_dataset``, ``DatasetSource`` and ``ResourceBudget``.
"""
