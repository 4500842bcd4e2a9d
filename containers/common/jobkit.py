"""What every container entrypoint (containers/<stage>/<stage>.py) shares: the config error and its checks, the
`--name value` parsing of the processing jobs, the failure file and the run() failure path, chat JSONL input, the
end-of-turn markers, device / dtype / memory helpers and the safe unpacking of a SageMaker `model.tar.gz`.

Import it as `containers.common.jobkit`. An entrypoint runs as a script (`python containers/merge/merge.py` from the
repository, `/opt/program/containers/merge/merge.py` in its image: each Dockerfile copies containers/common next to
the stage's directory), so before that import it puts the directory holding `containers/` on sys.path:

    if not __package__:  # run as a script, not imported as containers.<stage>.<stage>
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

Standard library only at import time; torch is imported inside the functions that need it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tarfile
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, TypeVar

FAILURE_REASON_LIMIT = 1000  # SageMaker's FailureReason / ExitMessage hold 1024 characters / 1 KB
# SageMaker Processing reports the first 1 KB of this file as the job's ExitMessage (training jobs: /opt/ml/output/
# failure becomes FailureReason).
PROCESSING_FAILURE_FILE = "/opt/ml/output/message"
# End-of-turn markers of common chat templates: any that the template uses and the vocabulary has ends a turn.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>")
# What SageMaker training jobs upload from SM_MODEL_DIR (<output path>/<job>/output/model.tar.gz).
MODEL_ARCHIVE = "model.tar.gz"


class ConfigError(ValueError):
    """An option, hyperparameter or path that cannot be used; the message names the key."""


class UnsafeArchiveError(ValueError):
    """A model archive with a member that would land outside the extraction directory (or is not a plain file)."""


# ---------------------------------------------------------------------------------------------------------------------
# Config


def check_config(config: object, checks: Sequence[tuple[bool, str, str]]) -> None:
    """Raise ConfigError for the first (ok, name, expected) that is not ok: '<name> must be <expected>, got <v>'."""
    for ok, name, expected in checks:
        if not ok:
            raise ConfigError(f"{name} must be {expected}, got {getattr(config, name)!r}")


def path_field(default: str, description: str | None = None) -> Any:
    """A dataclass field for a path with a fixed default (SageMaker's), marked as a path."""
    return dataclasses.field(default=default, metadata={"help": description or f"(default: {default})", "path": True})


def convert_option(name: str, text: str, kind: type) -> object:
    """A `--name value` string as an int, a float or the string itself."""
    try:
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        return text
    except ValueError:
        raise ConfigError(f"--{name}: expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None


def help_text(field: dataclasses.Field[Any]) -> str | None:
    """A field's help for argparse, with "%" escaped (argparse %-formats help strings)."""
    text = field.metadata.get("help")
    return None if text is None else str(text).replace("%", "%%")


C = TypeVar("C")


def load_options(config_class: type[C], argv: list[str] | None, description: str | None) -> C:
    """A processing job's config from `--name value` arguments, one per dataclass field (int/float/str)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    fields = dataclasses.fields(config_class)  # type: ignore[arg-type]
    for f in fields:
        parser.add_argument(f"--{f.name}", dest=f.name, default=None, help=help_text(f))
    args = vars(parser.parse_args(argv))
    kinds: dict[str, type] = {f.name: {"int": int, "float": float}.get(str(f.type), str) for f in fields}
    values = {k: convert_option(k, v, kinds[k]) for k, v in args.items() if v is not None}
    return config_class(**values)


# ---------------------------------------------------------------------------------------------------------------------
# Failures


class HasFailureFile(Protocol):
    failure_file: str


F = TypeVar("F", bound=HasFailureFile)


def failure_file_of(argv: list[str], default: str) -> Path:
    """The failure file even when the config itself cannot be parsed."""
    for i, arg in enumerate(argv):
        if arg == "--failure_file" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--failure_file="):
            return Path(arg.split("=", 1)[1])
    return Path(default)


def one_line(reason: str) -> str:
    """A reason as one line of at most FAILURE_REASON_LIMIT characters."""
    return " ".join(reason.split())[:FAILURE_REASON_LIMIT]


def is_out_of_memory(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or "CUDA out of memory" in str(exc)


def write_failure(path: Path, reason: str) -> None:
    """One UTF-8 line (SageMaker fails a job whose message file is not UTF-8); a write error is only printed."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(reason + "\n", encoding="utf-8")
    except OSError as write_error:
        print(f"could not write {path}: {write_error}", file=sys.stderr)


def run_job(
    argv: list[str] | None,
    *,
    load_config: Callable[[list[str]], F],
    main: Callable[[F], object],
    failure_reason: Callable[[BaseException, F | None], str],
    default_failure_file: str,
    what: str,
) -> int:
    """Parse the config and run main; on any failure write the reason to the failure file and return non-zero
    (2 for a ConfigError, else 1). A clean SystemExit (--help) passes through."""
    argv = sys.argv[1:] if argv is None else argv
    cfg: F | None = None
    try:
        cfg = load_config(argv)
        main(cfg)
        return 0
    except BaseException as exc:  # every failure must reach the failure file
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            raise
        traceback.print_exc()
        reason = failure_reason(exc, cfg)
        write_failure(Path(cfg.failure_file) if cfg else failure_file_of(argv, default_failure_file), reason)
        print(f"{what} failed: {reason}", file=sys.stderr, flush=True)
        return 2 if isinstance(exc, ConfigError) else 1


# ---------------------------------------------------------------------------------------------------------------------
# Inputs


def jsonl_files(location: str) -> list[Path]:
    """A .jsonl file, or the .jsonl files of a directory (sorted); none when the location does not exist."""
    path = Path(location)
    return sorted(path.glob("*.jsonl")) if path.is_dir() else [path] if path.is_file() else []


UTF8_BOM = b"\xef\xbb\xbf"


def iter_jsonl(file: Path) -> Iterator[tuple[int, Any]]:
    r"""(1-based line number, parsed value) of every non-blank line of a JSONL file: the one definition of a line
    that every container reads with, the Validate stage's (tuneplane/logic/validation/reader.py), so a file it
    accepted is read back record for record.

    A line is the bytes up to b"\n" (one "\r" before it, or at the end of the file, is a CRLF ending; a UTF-8 BOM
    before the first line is dropped); blank means empty or ASCII whitespace only, as the validator counts it.
    Never str.splitlines(): it also ends a line at "\r", "\v", "\f", "\x1c"-"\x1e", U+0085, U+2028 and U+2029,
    and U+0085/U+2028/U+2029 are legal raw inside a JSON string (RFC 8259 requires escaping only U+0000-U+001F),
    "\r" between tokens, so it cut valid records in two. Streams the file (binary iteration splits on b"\n" only)."""
    with file.open("rb") as stream:
        for number, line in enumerate(stream, 1):
            if number == 1 and line.startswith(UTF8_BOM):
                line = line[len(UTF8_BOM) :]
            line = line.removesuffix(b"\n").removesuffix(b"\r")
            if not line or line.isspace():
                continue
            try:
                yield number, json.loads(line.decode("utf-8"))
            except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError: say where
                raise ValueError(f"{file.name} line {number}: not a JSON line ({exc})") from None


def read_chat_jsonl(location: str, limit: int = 0) -> list[list[dict[str, Any]]]:
    """The `messages` of every `{"messages": [...]}` line (the first `limit` if > 0) of a .jsonl file or of a
    directory's .jsonl files (sorted)."""
    conversations: list[list[dict[str, Any]]] = []
    for file in jsonl_files(location):
        for number, record in iter_jsonl(file):
            if limit and len(conversations) >= limit:
                return conversations
            if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
                raise ValueError(f'{file.name} line {number}: expected {{"messages": [...]}}')
            conversations.append(record["messages"])
    return conversations


def _check_member(member: tarfile.TarInfo, root: Path) -> None:
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith("/") or ".." in parts:
        raise UnsafeArchiveError(f"{MODEL_ARCHIVE} member {name!r} is an absolute path or leaves the directory")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise UnsafeArchiveError(f"{MODEL_ARCHIVE} member {name!r} is not a file, directory or link")
    if member.issym() or member.islnk():
        link = PurePosixPath(member.linkname)
        # A symlink is relative to its own directory, a hard link to the archive root.
        base = (root / name).parent if member.issym() else root
        target = (base / link).resolve() if not link.is_absolute() else Path(link)
        if link.is_absolute() or not target.is_relative_to(root.resolve()):
            raise UnsafeArchiveError(
                f"{MODEL_ARCHIVE} member {name!r} links to {member.linkname!r}, outside the extraction directory"
            )


def unpack_model_archive(directory: Path, scratch: Path) -> tuple[Path, Path | None]:
    """The directory to load from: `directory` itself, or, when it holds a SageMaker `model.tar.gz` (a training
    job's SM_MODEL_DIR; Processing inputs do not unpack it) and no loose config, that archive extracted into
    `scratch`. Absolute names, `..`, links that leave `scratch` and special files are refused. Returns (directory,
    archive or None)."""
    archive = directory / MODEL_ARCHIVE
    loose = any((directory / name).is_file() for name in ("config.json", "adapter_config.json"))
    if loose or not archive.is_file():
        return directory, None
    scratch.mkdir(parents=True, exist_ok=True)
    root = scratch.resolve()
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, root)
            # The "data" filter (Python >= 3.11.4) repeats these checks and drops modes and owners.
            extract: Any = tar.extractall
            if hasattr(tarfile, "data_filter"):
                extract(root, members=members, filter="data")
            else:  # pragma: no cover - older 3.11 patch releases; every member was checked above
                extract(root, members=members)
    except tarfile.TarError as exc:
        shutil.rmtree(root, ignore_errors=True)
        raise UnsafeArchiveError(f"cannot read {archive}: {exc}") from None
    except UnsafeArchiveError:
        shutil.rmtree(root, ignore_errors=True)
        raise
    print(f"unpacked {archive} ({len(members)} members) into {root}", flush=True)
    return root, archive


# ---------------------------------------------------------------------------------------------------------------------
# Devices, dtypes, sizes


def resolve_device(device: str) -> str:
    """'cuda' or 'cpu' for a device option auto | cpu | cuda; cuda without a GPU is a ConfigError."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but this machine has no CUDA GPU")
    return "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"


def torch_dtype(name: str) -> Any:
    """The torch dtype of bf16 | fp16 | fp32."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def peak_memory_gb(cuda: bool) -> float:
    """Peak CUDA memory allocated (cuda) or the process's peak RSS, in GiB."""
    if cuda:
        import torch

        return float(torch.cuda.max_memory_allocated()) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def directory_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
