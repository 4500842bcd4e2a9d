"""The entrypoints' shared module (containers/common/jobkit.py): option parsing, the failure path, chat JSONL, the
safe unpacking of a SageMaker model.tar.gz, and the image layout the Dockerfiles build (imports resolve there)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from containers.common import jobkit
from containers.common.jobkit import ConfigError, UnsafeArchiveError

CONTAINERS = Path(jobkit.__file__).resolve().parents[1]
STAGES = ("train", "merge", "evaluate", "quantize")


# ---------------------------------------------------------------------------------------------------------------------
# Options and failures


@dataclass
class Options:
    failure_file: str = jobkit.path_field("/opt/ml/output/message")
    steps: int = dataclasses.field(default=1, metadata={"help": "Steps (~100% of them)."})
    ratio: float = 0.5
    name: str = "x"

    def __post_init__(self) -> None:
        jobkit.check_config(self, [(self.steps >= 1, "steps", ">= 1"), (self.ratio > 0, "ratio", "> 0")])


def test_options_are_typed_by_their_field_and_checked() -> None:
    cfg = jobkit.load_options(Options, ["--steps", "3", "--name", "y"], None)
    assert (cfg.steps, cfg.ratio, cfg.name) == (3, 0.5, "y")
    assert jobkit.load_options(Options, ["--ratio", "2e-1"], None).ratio == 0.2
    with pytest.raises(ConfigError, match=r"--steps: expected an integer, got '2.5'"):
        jobkit.load_options(Options, ["--steps", "2.5"], None)
    with pytest.raises(ConfigError, match=r"steps must be >= 1, got 0"):
        jobkit.load_options(Options, ["--steps", "0"], None)


def test_run_job_writes_one_line_to_the_failure_file_and_exits_non_zero(tmp_path: Path) -> None:
    def main(cfg: Options) -> None:
        raise RuntimeError("broken\n  on two lines")

    def reason(exc: BaseException, cfg: Options | None) -> str:
        return jobkit.one_line(f"{type(exc).__name__}: {exc}")

    def run(argv: list[str], job: Callable[[Options], None] = main) -> int:
        return jobkit.run_job(
            argv,
            load_config=lambda a: jobkit.load_options(Options, a, None),
            main=job,
            failure_reason=reason,
            default_failure_file="/nonexistent/message",
            what="job",
        )

    failure = tmp_path / "out" / "message"
    assert run(["--failure_file", str(failure)]) == 1
    assert failure.read_text(encoding="utf-8") == "RuntimeError: broken on two lines\n"
    # a bad option: exit 2, and the failure file is found in argv although the config could not be built
    assert run([f"--failure_file={failure}", "--steps", "0"]) == 2
    assert "steps must be >= 1" in failure.read_text()
    assert run(["--failure_file", str(failure)], lambda cfg: None) == 0


def test_one_line_is_bounded_for_sagemaker() -> None:
    assert len(jobkit.one_line("x " * 5000)) == jobkit.FAILURE_REASON_LIMIT


def test_read_chat_jsonl_reads_files_and_directories_with_a_limit(tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": str(i)}]} for i in range(5)]
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[2:]))
    (tmp_path / "a.jsonl").write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")
    assert [m[0]["content"] for m in jobkit.read_chat_jsonl(str(tmp_path))] == ["0", "1", "2", "3", "4"]
    assert len(jobkit.read_chat_jsonl(str(tmp_path), 3)) == 3
    assert len(jobkit.read_chat_jsonl(str(tmp_path / "a.jsonl"))) == 2
    assert jobkit.read_chat_jsonl(str(tmp_path / "missing")) == []
    (tmp_path / "c.jsonl").write_text('{"prompt": "x"}\n')
    with pytest.raises(ValueError, match=r"c.jsonl line 1: expected"):
        jobkit.read_chat_jsonl(str(tmp_path))


# ---------------------------------------------------------------------------------------------------------------------
# model.tar.gz


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes = b"{}") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def test_a_sagemaker_model_archive_is_unpacked(tmp_path: Path) -> None:
    # GIVEN what a training job uploads: SM_MODEL_DIR's files at the archive root, "./" prefixed, plus a sub folder
    directory = tmp_path / "input"
    _tar(
        directory / "model.tar.gz",
        [_file("./adapter_config.json", b'{"r": 4}'), _file("./checkpoint/state.json"), _link("./cfg", "checkpoint")],
    )
    # WHEN unpacked; THEN the files are in the scratch directory, which is returned with the archive
    unpacked, archive = jobkit.unpack_model_archive(directory, tmp_path / "scratch")
    assert archive == directory / "model.tar.gz"
    assert json.loads((unpacked / "adapter_config.json").read_text()) == {"r": 4}
    assert (unpacked / "checkpoint" / "state.json").is_file() and (unpacked / "cfg").is_symlink()


def test_a_directory_with_loose_files_is_used_as_is(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text("{}")
    _tar(tmp_path / "model.tar.gz", [_file("adapter_config.json")])
    assert jobkit.unpack_model_archive(tmp_path, tmp_path / "scratch") == (tmp_path, None)
    assert jobkit.unpack_model_archive(tmp_path / "nothing", tmp_path / "s2") == (tmp_path / "nothing", None)


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_file("../evil.json"), "leaves the directory"),
        (_file("a/../../evil.json"), "leaves the directory"),
        (_file("/etc/evil.json"), "absolute path"),
        (_link("escape", "../../outside"), "outside the extraction directory"),
        (_link("abs", "/etc/passwd"), "outside the extraction directory"),
        (_link("hard", "../outside", tarfile.LNKTYPE), "outside the extraction directory"),
        (_link("fifo", "", tarfile.FIFOTYPE), "not a file, directory or link"),
        (_link("dev", "", tarfile.CHRTYPE), "not a file, directory or link"),
    ],
)
def test_unsafe_archive_members_are_refused(
    tmp_path: Path, member: tuple[tarfile.TarInfo, bytes | None], message: str
) -> None:
    # GIVEN an archive with one good file and one unsafe member
    directory = tmp_path / "input"
    _tar(directory / "model.tar.gz", [_file("adapter_config.json"), member])
    # WHEN unpacked; THEN refused with the member's name, nothing is left behind and nothing was written outside
    with pytest.raises(UnsafeArchiveError, match=message) as error:
        jobkit.unpack_model_archive(directory, tmp_path / "scratch" / "adapter")
    assert repr(member[0].name) in str(error.value)
    assert not (tmp_path / "scratch" / "adapter").exists()
    assert not (tmp_path / "evil.json").exists() and not (tmp_path / "scratch" / "evil.json").exists()


def test_a_corrupt_archive_is_reported(tmp_path: Path) -> None:
    (tmp_path / "model.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(UnsafeArchiveError, match="cannot read"):
        jobkit.unpack_model_archive(tmp_path, tmp_path / "scratch")


# ---------------------------------------------------------------------------------------------------------------------
# The image layout


def _copies(dockerfile: Path) -> list[tuple[str, str]]:
    """(source relative to the build context, destination) of each COPY of a Dockerfile."""
    lines = dockerfile.read_text().splitlines()
    return [(line.split()[1], line.split()[2]) for line in lines if line.startswith("COPY ")]


@pytest.mark.parametrize("stage", STAGES)
def test_the_image_layout_resolves_the_shared_module(stage: str, tmp_path: Path) -> None:
    # GIVEN the files each Dockerfile copies from its context (containers/), under a fake image root
    dockerfile = CONTAINERS / stage / "Dockerfile"
    root = tmp_path / "image"
    for source, destination in _copies(dockerfile):
        target = root / destination.lstrip("/")
        if source.endswith("/") or "*" in source:  # a directory, or a wildcard into a directory (as docker does)
            for file in CONTAINERS.glob(source) if "*" in source else (CONTAINERS / source).glob("*.py"):
                target.mkdir(parents=True, exist_ok=True)
                (target / file.name).write_bytes(file.read_bytes())
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((CONTAINERS / source).read_bytes())
    match = re.search(r"^ENTRYPOINT (.+)$", dockerfile.read_text(), re.M)
    assert match, f"{dockerfile} has no ENTRYPOINT"
    entrypoint = json.loads(match.group(1))
    assert entrypoint[:1] == ["python"]
    script = root / entrypoint[1].lstrip("/")
    # WHEN its ENTRYPOINT script runs from elsewhere, without the repository on the path
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60
    )
    # THEN the shared module is found there (the help lists the failure file option)
    assert result.returncode == 0, result.stderr
    assert "--failure_file" in result.stdout
