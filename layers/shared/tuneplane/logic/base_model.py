"""Load what validation needs of the base model (tokenizer, chat template, size) from a directory or S3."""

from __future__ import annotations

import hashlib
import tempfile
from functools import cache
from pathlib import Path

from tuneplane.adapters import s3
from tuneplane.errors import BaseModelUnavailable
from tuneplane.logic.chat_template import TOKENIZER_FILES, ChatTokenizer
from tuneplane.logic.cost import estimate_parameters, load_model_config
from tuneplane.logic.validation.validator import ModelContext


def load_model_context(location: str) -> ModelContext:
    """`location` is a local model directory or an s3:// prefix holding tokenizer.json and friends."""
    directory = _fetch(location) if location.startswith("s3://") else Path(location)
    tokenizer = ChatTokenizer.from_dir(directory)
    return ModelContext(tokenizer=tokenizer, parameters=_parameters(directory))


def _parameters(directory: Path) -> int | None:
    """The parameter estimate from config.json (None when it has no usable shape); an unreadable config.json is
    named, not a traceback."""
    path = directory / "config.json"
    try:
        config = load_model_config(directory)
    except UnicodeDecodeError as exc:
        raise BaseModelUnavailable(f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from exc
    except ValueError as exc:  # json.JSONDecodeError
        raise BaseModelUnavailable(f"{path} is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise BaseModelUnavailable(f"{path} is nested too deeply to be read as JSON") from exc
    try:
        return estimate_parameters(config)
    except (TypeError, ValueError, OverflowError, ZeroDivisionError):  # e.g. "head_dim": "x"
        return None


@cache
def _fetch(uri: str) -> Path:
    # Cached per warm Lambda container: the base model does not change between runs of one deployment.
    directory = Path(tempfile.gettempdir()) / "base-model" / hashlib.sha256(uri.encode()).hexdigest()[:16]
    s3.download_files(uri, (*TOKENIZER_FILES, "config.json"), directory)
    return directory
