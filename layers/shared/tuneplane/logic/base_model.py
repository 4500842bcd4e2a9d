"""Load what validation needs of the base model (tokenizer, chat template, size) from a directory or S3."""

from __future__ import annotations

import hashlib
import tempfile
from functools import cache
from pathlib import Path

from tuneplane.adapters import s3
from tuneplane.logic.chat_template import TOKENIZER_FILES, ChatTokenizer
from tuneplane.logic.cost import estimate_parameters, load_model_config
from tuneplane.logic.validation.validator import ModelContext


def load_model_context(location: str) -> ModelContext:
    """`location` is a local model directory or an s3:// prefix holding tokenizer.json and friends."""
    directory = _fetch(location) if location.startswith("s3://") else Path(location)
    tokenizer = ChatTokenizer.from_dir(directory)
    return ModelContext(tokenizer=tokenizer, parameters=estimate_parameters(load_model_config(directory)))


@cache
def _fetch(uri: str) -> Path:
    # Cached per warm Lambda container: the base model does not change between runs of one deployment.
    directory = Path(tempfile.gettempdir()) / "base-model" / hashlib.sha256(uri.encode()).hexdigest()[:16]
    s3.download_files(uri, (*TOKENIZER_FILES, "config.json"), directory)
    return directory
