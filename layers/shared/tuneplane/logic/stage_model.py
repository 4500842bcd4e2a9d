"""What `tuneplane stage-model` copies to S3, and the checks that the training jobs can load it.

The SageMaker jobs read the base model from the S3 prefix that ``BaseModelS3Uri`` names (their ``model``
channel) with network isolation, ``trust_remote_code=False`` and ``use_safetensors=True``. So a staged model
must have a config.json with a ``model_type``, safetensors weights (one file, or shards listed in
model.safetensors.index.json), a fast tokenizer (tokenizer.json) and a chat template, and no remote code.

A copy is complete only once its manifest, ``tuneplane-model.json`` (:data:`MANIFEST_NAME`), exists: it is
written last and lists every file with its size and sha256. A prefix without it holds a copy that did not
finish (or that was not made by this command); the pipeline may check for it before it starts a job.

Pure: reads the local model directory; no AWS or hub calls (those are in ``adapters/model_store.py`` and
``adapters/model_hub.py``).
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from tuneplane.adapters.s3 import parse_s3_uri
from tuneplane.errors import BaseModelUnavailable, DestinationNotEmpty, InvalidConfiguration, UnsupportedBaseModel
from tuneplane.logic.chat_template import ChatTokenizer

MANIFEST_NAME = "tuneplane-model.json"
MANIFEST_FORMAT = 1

SINGLE_WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)
EXTRA_TEMPLATES_DIR = "additional_chat_templates"  # named templates next to the default one (newer hub repos)
# What is fetched from the hub before the weights: enough to run every check but the shards' own.
HUB_METADATA_PATTERNS = (*CONFIG_FILES, *TOKENIZER_FILES, WEIGHTS_INDEX, f"{EXTRA_TEMPLATES_DIR}/*.jinja")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit on the JSON header
_LFS_POINTER = b"version https://git-lfs"


@dataclass(frozen=True, slots=True)
class StagedFile:
    name: str  # relative to the model directory and to the S3 prefix, with "/" separators
    path: Path
    size: int


@dataclass(frozen=True, slots=True)
class StagePlan:
    directory: Path
    files: tuple[StagedFile, ...]
    model_type: str
    architectures: tuple[str, ...]
    torch_dtype: str | None
    skipped: tuple[str, ...]  # top-level entries of the directory that are not copied

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(f.name for f in self.files)


# --- the source -------------------------------------------------------------------------------------------------


def is_hub_id(source: str) -> bool:
    """``org/name`` (or a legacy ``name``) that is not an existing local path."""
    if Path(source).expanduser().exists() or source.startswith((".", "/", "~")):
        return False
    return bool(_HUB_ID.match(source)) and ".." not in source and "--" not in source


def destination(uri: str) -> tuple[str, str]:
    """``(bucket, prefix)`` with the prefix ending in "/", as the template's BaseModelS3Uri pattern requires."""
    bucket, key = parse_s3_uri(uri)
    prefix = key if key.endswith("/") else key + "/"
    if prefix == "/" or prefix.startswith("/") or "//" in prefix:
        raise InvalidConfiguration(
            f"{uri}: give a dedicated prefix for the model, e.g. s3://{bucket}/base-models/<name>/ "
            "(not the bucket's root, no empty path segments)"
        )
    return bucket, prefix


# --- checks ------------------------------------------------------------------------------------------------------


def check_file_names(names: Collection[str], where: str) -> None:
    """Refuse remote code and pickle-only weights from a file listing (a hub repo's, before downloading it)."""
    top_level = [n for n in names if "/" not in n]
    code = sorted(n for n in top_level if n.endswith(".py"))
    if code:
        raise UnsupportedBaseModel(
            f"{where} needs remote code ({', '.join(code)}): training loads models with trust_remote_code=False, "
            "so only architectures built into transformers can be staged"
        )
    if SINGLE_WEIGHTS in names or WEIGHTS_INDEX in names:
        return
    pickles = sorted(n for n in top_level if n.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise UnsupportedBaseModel(
            f"{where} has only pickle weights ({_some(pickles)}), no safetensors: training loads safetensors only "
            "(pickle files can run code when loaded). Convert them to safetensors first, e.g. load the model with "
            "transformers and save_pretrained(out_dir, safe_serialization=True), or stage a hub revision that has "
            "safetensors (--revision refs/pr/<n> of the hub's safetensors conversion)"
        )
    raise UnsupportedBaseModel(f"{where} has no weights: expected {SINGLE_WEIGHTS} or {WEIGHTS_INDEX} with its shards")


def check_metadata(directory: Path) -> dict[str, Any]:
    """Every check that does not need the weights: config.json, remote code, tokenizer and chat template.

    Returns the parsed config.json.
    """
    config = _json_object(directory / "config.json", required=True)
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise UnsupportedBaseModel(f"{directory / 'config.json'} has no 'model_type': not a transformers model config")
    for name, document in (("config.json", config), ("tokenizer_config.json", _tokenizer_config(directory))):
        if "auto_map" in document:
            raise UnsupportedBaseModel(
                f"{directory / name} has 'auto_map': the model needs remote code, and training loads models with "
                f"trust_remote_code=False. If transformers supports model_type {model_type!r} natively, stage a "
                "copy without 'auto_map' and the *.py files"
            )
    # tokenizer.json loads, a chat template compiles, an end-of-turn token is known: what Validate needs.
    ChatTokenizer.from_dir(directory)
    return config


def weight_names(directory: Path) -> list[str]:
    """The safetensors files the model needs: its index's shards, or model.safetensors (which transformers
    prefers when both are there)."""
    index_path = directory / WEIGHTS_INDEX
    if (directory / SINGLE_WEIGHTS).is_file() or not index_path.is_file():
        return [SINGLE_WEIGHTS]
    return sorted(set(_weight_map(index_path).values()))


def plan_stage(directory: Path) -> StagePlan:
    """Check a local model directory and list the files to copy; raises UnsupportedBaseModel/BaseModelUnavailable."""
    if not directory.is_dir():
        raise BaseModelUnavailable(f"{directory}: no such directory")
    check_file_names([p.name for p in directory.iterdir() if p.is_file()], str(directory))
    config = check_metadata(directory)
    weights = weight_names(directory)
    if weights == [SINGLE_WEIGHTS]:
        _check_safetensors(directory / SINGLE_WEIGHTS, set())
    else:
        _check_shards(directory)
        weights.append(WEIGHTS_INDEX)
    names = [n for n in (*CONFIG_FILES, *TOKENIZER_FILES) if (directory / n).is_file()]
    templates = directory / EXTRA_TEMPLATES_DIR
    if templates.is_dir():
        names += [f"{EXTRA_TEMPLATES_DIR}/{p.name}" for p in templates.glob("*.jinja") if p.is_file()]
    names += weights
    files = tuple(StagedFile(n, directory / n, (directory / n).stat().st_size) for n in sorted(set(names)))
    staged_top = {n.split("/")[0] for n in names}
    skipped = tuple(sorted(p.name for p in directory.iterdir() if p.name not in staged_top))
    architectures = config.get("architectures")
    return StagePlan(
        directory=directory,
        files=files,
        model_type=str(config["model_type"]),
        architectures=tuple(str(a) for a in architectures) if isinstance(architectures, list) else (),
        torch_dtype=_dtype(config),
        skipped=skipped,
    )


def _check_shards(directory: Path) -> None:
    weight_map = _weight_map(directory / WEIGHTS_INDEX)
    by_shard: dict[str, set[str]] = {}
    for tensor, shard in weight_map.items():
        by_shard.setdefault(shard, set()).add(tensor)
    missing = sorted(s for s in by_shard if not (directory / s).is_file())
    if missing:
        raise UnsupportedBaseModel(
            f"{directory / WEIGHTS_INDEX} lists {len(missing)} shard(s) that are not in {directory}: "
            f"{_some(missing)} (an incomplete download?)"
        )
    for shard, tensors in sorted(by_shard.items()):
        _check_safetensors(directory / shard, tensors)


def _weight_map(index_path: Path) -> dict[str, str]:
    weight_map = _json_object(index_path, required=True).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise UnsupportedBaseModel(f"{index_path} has no 'weight_map' (tensor name -> shard file)")
    for shard in set(weight_map.values()):
        path = PurePosixPath(shard) if isinstance(shard, str) else None
        if path is None or path.is_absolute() or ".." in path.parts or not str(path).endswith(".safetensors"):
            raise UnsupportedBaseModel(f"{index_path}: {shard!r} is not a safetensors shard file name")
    return {str(k): str(v) for k, v in weight_map.items()}


def _check_safetensors(path: Path, expected_tensors: set[str]) -> None:
    """The file is a complete safetensors file (header + every tensor's bytes) holding ``expected_tensors``."""
    if not path.is_file():
        raise UnsupportedBaseModel(f"{path} not found")
    size = path.stat().st_size
    with path.open("rb") as file:
        head = file.read(len(_LFS_POINTER))
        if head.startswith(_LFS_POINTER):
            raise UnsupportedBaseModel(f"{path} is a Git LFS pointer, not the weights: run `git lfs pull` first")
        header_size = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else 0
        if not 0 < header_size <= min(_MAX_HEADER, size - 8):
            raise UnsupportedBaseModel(f"{path} is not a safetensors file (or is truncated): bad header length")
        file.seek(8)
        try:
            header = json.loads(file.read(header_size))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UnsupportedBaseModel(f"{path} is not a safetensors file: unreadable header ({exc})") from exc
    if not isinstance(header, dict):
        raise UnsupportedBaseModel(f"{path} is not a safetensors file: the header is not a JSON object")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    data_size = size - 8 - header_size
    described = max((_data_end(v) for v in tensors.values()), default=0)
    if described != data_size:
        raise UnsupportedBaseModel(
            f"{path} is truncated or corrupt: its header describes {described} bytes of tensor data, "
            f"the file holds {data_size}"
        )
    absent = sorted(expected_tensors - tensors.keys())
    if absent:
        raise UnsupportedBaseModel(f"{path} lacks tensors that {WEIGHTS_INDEX} maps to it: {_some(absent)}")


def _data_end(entry: Any) -> int:
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    if isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets):
        return int(offsets[1])
    return -1


def _json_object(path: Path, *, required: bool) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise UnsupportedBaseModel(f"{path} not found")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UnsupportedBaseModel(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise UnsupportedBaseModel(f"{path} is not a JSON object")
    return data


def _tokenizer_config(directory: Path) -> dict[str, Any]:
    return _json_object(directory / "tokenizer_config.json", required=False)


def _dtype(config: Mapping[str, Any]) -> str | None:
    value = config.get("torch_dtype", config.get("dtype"))  # transformers 5 writes "dtype"
    return str(value) if value is not None else None


# --- the destination ---------------------------------------------------------------------------------------------


def check_destination(
    existing: Collection[str], prefix: str, plan: StagePlan, *, overwrite: bool, uri: str, versioning: str | None
) -> None:
    """Refuse a prefix that already holds objects unless ``overwrite``; refuse always one that holds other data.

    ``existing`` are the keys under ``prefix``; ``versioning`` the bucket's versioning status (None: unknown).
    """
    if not existing:
        return
    relative = sorted(k[len(prefix) :] for k in existing)
    if not overwrite:
        state = (
            "a complete copy" if MANIFEST_NAME in relative else f"no {MANIFEST_NAME}: an unfinished or foreign copy"
        )
        raise DestinationNotEmpty(
            f"{uri} already holds {len(relative)} object(s) ({_some(relative)}; {state}). Nothing was uploaded. "
            f"Pass --overwrite to replace them: {_versioning_note(versioning)}"
        )
    ours = plan.names | {MANIFEST_NAME}
    nested = [r for r in relative if "/" in r and r not in ours]
    if nested:
        raise DestinationNotEmpty(
            f"{uri} holds objects in sub-prefixes ({_some(nested)}): it looks like a parent of other data, not a "
            "model prefix, and --overwrite would delete them. Stage to a dedicated prefix"
        )


def _versioning_note(status: str | None) -> str:
    if status == "Enabled":
        return "the bucket is versioned, so the replaced and deleted objects stay recoverable as noncurrent versions"
    if status is None:
        return "the bucket's versioning status could not be read; unless it is versioned, replaced objects are lost"
    return "the bucket is NOT versioned (versioning " + (status or "never enabled") + "): replaced objects are lost"


def stale_keys(existing: Iterable[str], prefix: str, plan: StagePlan) -> list[str]:
    """Keys under the prefix that are not part of the new copy (SageMaker would download them into the job)."""
    ours = {prefix + n for n in plan.names} | {prefix + MANIFEST_NAME}
    return sorted(k for k in existing if k not in ours)


# --- manifest and output -----------------------------------------------------------------------------------------


def sha256_file(path: Path, chunk: int = 8 * 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def build_manifest(
    plan: StagePlan,
    *,
    source: str,
    revision: str | None,
    commit: str | None,
    hashes: Mapping[str, str],
    created_at: datetime,
) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "source": source,
        "revision": revision,
        "commit": commit,
        "model_type": plan.model_type,
        "architectures": list(plan.architectures),
        "torch_dtype": plan.torch_dtype,
        "files": [{"name": f.name, "size": f.size, "sha256": hashes[f.name]} for f in plan.files],
        "total_size": plan.total_size,
        "created_at": created_at.isoformat(),
    }


def format_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def describe_model(plan: StagePlan) -> str:
    details = ", ".join([*plan.architectures, *([plan.torch_dtype] if plan.torch_dtype else [])])
    return f"{plan.model_type} ({details})" if details else plan.model_type


def render_plan(plan: StagePlan, uri: str, stale: Collection[str], prefix: str) -> str:
    width = max(len(f.name) for f in plan.files)
    lines = [
        f"Would upload {len(plan.files)} files ({format_size(plan.total_size)}) of {describe_model(plan)} to {uri}"
    ]
    lines += [f"  {f.name:<{width}}  {format_size(f.size):>10}" for f in plan.files]
    lines.append(f"  {MANIFEST_NAME:<{width}}  {'(last)':>10}")
    if stale:
        lines.append(
            f"Would delete {len(stale)} object(s) not part of this model: {_some([k[len(prefix) :] for k in stale])}"
        )
    if plan.skipped:
        lines.append(f"Not copied from {plan.directory}: {_some(list(plan.skipped))}")
    return "\n".join(lines)


def render_summary(plan: StagePlan, uri: str, source: str, deleted: Collection[str]) -> str:
    lines = [
        f"Staged {source}: {describe_model(plan)}, {len(plan.files)} files, {format_size(plan.total_size)}",
        f"  to {uri} (manifest: {uri}{MANIFEST_NAME})",
    ]
    if deleted:
        lines.append(f"  deleted {len(deleted)} object(s) of the earlier copy")
    if plan.skipped:
        lines.append(f"  not copied: {_some(list(plan.skipped))}")
    lines += [
        "Point the stack at it (BaseModelS3Uri):",
        f"  sam deploy --parameter-overrides BaseModelS3Uri={uri}",
    ]
    return "\n".join(lines)


def _some(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
