"""`tuneplane stage-model`: checks before anything is uploaded, the upload to (moto's) S3, the manifest, overwrite."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from moto import mock_aws
from safetensors.numpy import save_file

from tuneplane.adapters import model_hub, model_store
from tuneplane.adapters import s3 as s3_adapter
from tuneplane.cli import EXIT_USAGE, EXIT_VALID, main
from tuneplane.errors import UnsupportedBaseModel
from tuneplane.logic import stage_model

BUCKET = "tuneplane-models-test"
PREFIX = "base-models/tiny/"
URI = f"s3://{BUCKET}/{PREFIX}"
TOKENIZER_AND_CONFIG = {
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
}


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "model.embed_tokens.weight": rng.standard_normal((16, 8), dtype=np.float32),
        "model.norm.weight": np.ones(8, dtype=np.float32),
        "lm_head.weight": rng.standard_normal((16, 8), dtype=np.float32),
    }


def _shard(directory: Path) -> None:
    """Replace model.safetensors with two shards and their index."""
    tensors = _tensors()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[:2], "model-00002-of-00002.safetensors": names[2:]}
    for shard, members in shards.items():
        save_file({n: tensors[n] for n in members}, str(directory / shard))
    weight_map = {n: shard for shard, members in shards.items() for n in members}
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}, "weight_map": weight_map}
    (directory / stage_model.WEIGHTS_INDEX).write_text(json.dumps(index))
    (directory / "model.safetensors").unlink()


def _edit_json(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def model_dir(tmp_path: Path, base_model_dir: Path) -> Path:
    """The tiny base model (tokenizer, ChatML template, configs) plus small random safetensors weights."""
    directory = tmp_path / "model"
    shutil.copytree(base_model_dir, directory)
    save_file(_tensors(), str(directory / "model.safetensors"))
    return directory


@pytest.fixture
def s3() -> Iterator[Any]:
    with mock_aws():
        s3_adapter.s3_client.cache_clear()
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        yield client
    s3_adapter.s3_client.cache_clear()


def _keys(client: Any, prefix: str = PREFIX) -> set[str]:
    contents = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix) :] for o in contents}


def _manifest(client: Any) -> dict[str, Any]:
    body = client.get_object(Bucket=BUCKET, Key=PREFIX + stage_model.MANIFEST_NAME)["Body"].read()
    return dict(json.loads(body))


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == EXIT_USAGE
    return capsys.readouterr().err


# --- happy paths ---------------------------------------------------------------------------------------------------


def test_stages_a_local_model_with_a_manifest_written_last(
    model_dir: Path, s3: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a complete local model directory with files that training does not need next to it
    (model_dir / "README.md").write_text("# tiny")
    (model_dir / "pytorch_model.bin").write_bytes(b"pickle")  # a pickle copy next to the safetensors one
    calls: list[str] = []
    real_upload, real_put = model_store.upload, model_store.put_json
    monkeypatch.setattr(
        model_store, "upload", lambda path, *a, **k: calls.append(path.name) or real_upload(path, *a, **k)
    )
    monkeypatch.setattr(
        model_store, "put_json", lambda b, key, *a, **k: calls.append(key) or real_put(b, key, *a, **k)
    )
    # WHEN it is staged
    code = main(["stage-model", str(model_dir), URI])
    # THEN exactly the model's files and the manifest are under the prefix, the manifest last
    assert code == EXIT_VALID
    expected = TOKENIZER_AND_CONFIG | {"model.safetensors"}
    assert _keys(s3) == expected | {stage_model.MANIFEST_NAME}
    assert calls[-1] == PREFIX + stage_model.MANIFEST_NAME and set(calls[:-1]) == expected
    # AND the manifest lists every file with its size and sha256, the model's type and the source
    manifest = _manifest(s3)
    files = {f["name"]: f for f in manifest["files"]}
    assert set(files) == expected
    for name, entry in files.items():
        assert entry["sha256"] == _sha256(model_dir / name)
        assert entry["size"] == (model_dir / name).stat().st_size
    assert manifest["model_type"] == "llama" and manifest["architectures"] == ["LlamaForCausalLM"]
    assert manifest["torch_dtype"] == "bfloat16" and manifest["source"] == str(model_dir.resolve())
    assert manifest["revision"] is None and manifest["commit"] is None and manifest["created_at"]
    # AND the uploaded weights are byte-identical
    body = s3.get_object(Bucket=BUCKET, Key=PREFIX + "model.safetensors")["Body"].read()
    assert body == (model_dir / "model.safetensors").read_bytes()
    # AND the summary says what to put into BaseModelS3Uri and what was left behind
    out = capsys.readouterr().out
    assert f"sam deploy --parameter-overrides BaseModelS3Uri={URI}" in out
    assert "6 files" in out and "not copied: README.md, pytorch_model.bin" in out


def test_stages_sharded_weights_and_normalises_the_prefix(model_dir: Path, s3: Any) -> None:
    # GIVEN sharded weights with their index, the chat template only in tokenizer_config.json
    _shard(model_dir)
    template = (model_dir / "chat_template.jinja").read_text()
    (model_dir / "chat_template.jinja").unlink()
    _edit_json(model_dir / "tokenizer_config.json", chat_template=template)
    # WHEN staged to a prefix given without its trailing slash
    assert main(["stage-model", str(model_dir), URI.rstrip("/")]) == EXIT_VALID
    # THEN the shards, the index and the tokenizer files are there, under the prefix that ends in "/"
    shards = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
    expected = (TOKENIZER_AND_CONFIG - {"chat_template.jinja"}) | shards | {stage_model.WEIGHTS_INDEX}
    assert _keys(s3) == expected | {stage_model.MANIFEST_NAME}
    assert {f["name"] for f in _manifest(s3)["files"]} == expected


def test_kms_key_and_multipart_upload(model_dir: Path, s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a KMS key, and a multipart threshold below the weights' size (S3's smallest part is 5 MiB)
    kms_key = boto3.client("kms").create_key()["KeyMetadata"]["Arn"]
    save_file({"lm_head.weight": np.zeros((6 * 1024 * 1024 // 4 + 10,), dtype=np.float32)}, str(model_dir / "m.st"))
    (model_dir / "m.st").replace(model_dir / "model.safetensors")
    small_parts = model_store.TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024)
    monkeypatch.setattr(model_store, "TRANSFER_CONFIG", small_parts)
    # WHEN staged with --kms-key-id
    assert main(["stage-model", str(model_dir), URI, "--kms-key-id", kms_key]) == EXIT_VALID
    # THEN every object, the manifest too, is encrypted with that key, and the weights went up in parts
    for name in _keys(s3):
        head = s3.head_object(Bucket=BUCKET, Key=PREFIX + name)
        assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == kms_key, name
    assert s3.head_object(Bucket=BUCKET, Key=PREFIX + "model.safetensors")["ETag"].strip('"').endswith("-2")


def test_dry_run_lists_the_files_and_uploads_nothing(
    model_dir: Path, s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a valid model directory
    # WHEN staged with --dry-run
    code = main(["stage-model", str(model_dir), URI, "--dry-run"])
    # THEN nothing is uploaded, and the plan lists every file with its size
    assert code == EXIT_VALID
    assert _keys(s3, "") == set()
    out = capsys.readouterr().out
    assert out.startswith("Would upload 6 files") and URI in out
    assert all(name in out for name in TOKENIZER_AND_CONFIG | {"model.safetensors", stage_model.MANIFEST_NAME})


# --- checks on the model -------------------------------------------------------------------------------------------


def test_refuses_pickle_only_weights(model_dir: Path, s3: Any, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a directory with pytorch_model.bin and no safetensors
    (model_dir / "model.safetensors").unlink()
    (model_dir / "pytorch_model.bin").write_bytes(b"pickle")
    # WHEN staged
    err = _refused(["stage-model", str(model_dir), URI], capsys)
    # THEN it is refused with a hint to convert, and nothing is uploaded
    assert "only pickle weights (pytorch_model.bin)" in err and "Convert them to safetensors" in err
    assert _keys(s3, "") == set()


def _truncate(weights: Path) -> None:
    weights.write_bytes(weights.read_bytes()[:-100])


def _drop_second_shard(directory: Path) -> None:
    _shard(directory)
    (directory / "model-00002-of-00002.safetensors").unlink()


def _misplace_a_tensor(directory: Path) -> None:
    _shard(directory)
    weight_map = {n: "model-00001-of-00002.safetensors" for n in _tensors()}  # model.norm.weight is in shard 2
    _edit_json(directory / stage_model.WEIGHTS_INDEX, weight_map=weight_map)


REMOTE_MODEL = {"AutoModelForCausalLM": "modeling_tiny.TinyForCausalLM"}
BREAKAGES: dict[str, tuple[Callable[[Path], object], str]] = {
    "auto_map": (
        lambda d: _edit_json(d / "config.json", auto_map=REMOTE_MODEL),
        "config.json has 'auto_map': the model needs remote code",
    ),
    "tokenizer_auto_map": (
        lambda d: _edit_json(d / "tokenizer_config.json", auto_map={"AutoTokenizer": ["tok.Tok", None]}),
        "tokenizer_config.json has 'auto_map'",
    ),
    "python_file": (
        lambda d: (d / "modeling_tiny.py").write_text("import os\n"),
        "needs remote code (modeling_tiny.py)",
    ),
    "no_tokenizer": (lambda d: (d / "tokenizer.json").unlink(), "tokenizer.json not found"),
    "no_template": (lambda d: (d / "chat_template.jinja").unlink(), "no chat template in"),
    "no_config": (lambda d: (d / "config.json").unlink(), "config.json not found"),
    "bad_config": (lambda d: (d / "config.json").write_text("{not json"), "config.json is not valid JSON"),
    "no_model_type": (lambda d: _edit_json(d / "config.json", model_type=None), "config.json has no 'model_type'"),
    "no_weights": (
        lambda d: (d / "model.safetensors").unlink(),
        "has no weights: expected model.safetensors or model.safetensors.index.json",
    ),
    "truncated": (lambda d: _truncate(d / "model.safetensors"), "model.safetensors is truncated or corrupt"),
    "lfs_pointer": (
        lambda d: (d / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\nsize 1\n"),
        "model.safetensors is a Git LFS pointer",
    ),
    "missing_shard": (_drop_second_shard, "lists 1 shard(s) that are not in"),
    "shard_lacks_tensor": (
        _misplace_a_tensor,
        "lacks tensors that model.safetensors.index.json maps to it: model.norm.weight",
    ),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_refuses_a_model_training_cannot_load(
    breakage: str, model_dir: Path, s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a model directory with one problem
    breaking, message = BREAKAGES[breakage]
    breaking(model_dir)
    # WHEN staged
    err = _refused(["stage-model", str(model_dir), URI], capsys)
    # THEN it is refused with a message naming the problem, and nothing is uploaded
    assert message in err
    assert err.startswith("tuneplane: error:")
    assert _keys(s3, "") == set()


def test_a_missing_shard_is_named(model_dir: Path) -> None:
    # GIVEN sharded weights with the second shard missing
    _shard(model_dir)
    (model_dir / "model-00002-of-00002.safetensors").unlink()
    # WHEN planned
    # THEN the error names the shard
    with pytest.raises(UnsupportedBaseModel, match="model-00002-of-00002.safetensors"):
        stage_model.plan_stage(model_dir)


def test_safetensors_check_accepts_what_the_library_writes(tmp_path: Path) -> None:
    # GIVEN files written by the safetensors library: empty-metadata, metadata, several dtypes
    path = tmp_path / "w.safetensors"
    tensors = {"a": np.zeros((3, 3), dtype=np.float16), "b": np.arange(7, dtype=np.int64)}
    save_file(tensors, str(path), metadata={"format": "pt"})
    # WHEN checked
    # THEN it passes, and a tensor the index expects but the file lacks is reported
    stage_model._check_safetensors(path, {"a", "b"})
    with pytest.raises(UnsupportedBaseModel, match="lacks tensors .*: c"):
        stage_model._check_safetensors(path, {"a", "c"})


# --- the destination -----------------------------------------------------------------------------------------------


def test_non_empty_prefix_is_refused_without_overwrite(
    model_dir: Path, s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a prefix that already holds an (unfinished) copy
    s3.put_object(Bucket=BUCKET, Key=PREFIX + "config.json", Body=b"{}")
    # WHEN staged there without --overwrite
    err = _refused(["stage-model", str(model_dir), URI], capsys)
    # THEN it is refused, saying what is there, how to replace it and that the bucket is versioned
    assert f"{URI} already holds 1 object(s) (config.json; no tuneplane-model.json" in err
    assert "Pass --overwrite" in err and "stay recoverable as noncurrent versions" in err
    assert _keys(s3) == {"config.json"}
    assert s3.get_object(Bucket=BUCKET, Key=PREFIX + "config.json")["Body"].read() == b"{}"


def test_unversioned_bucket_is_called_out(model_dir: Path, s3: Any, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a non-empty prefix in a bucket without versioning
    s3.create_bucket(Bucket="plain-bucket")
    s3.put_object(Bucket="plain-bucket", Key=PREFIX + "model.safetensors", Body=b"x")
    # WHEN staged there without --overwrite
    err = _refused(["stage-model", str(model_dir), f"s3://plain-bucket/{PREFIX}"], capsys)
    # THEN the refusal warns that replaced objects would be lost
    assert "NOT versioned" in err and "replaced objects are lost" in err


def test_overwrite_replaces_the_copy_and_removes_stale_objects(
    model_dir: Path, s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a prefix with an earlier copy: a complete single-file model (its manifest too)
    assert main(["stage-model", str(model_dir), URI]) == EXIT_VALID
    first = _manifest(s3)
    # WHEN the sharded version of the model is staged over it with --overwrite
    _shard(model_dir)
    assert main(["stage-model", str(model_dir), URI, "--overwrite"]) == EXIT_VALID
    # THEN the prefix holds exactly the new copy: the old model.safetensors (which transformers would load
    # before the index) is gone, and the manifest describes the new files
    shards = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", stage_model.WEIGHTS_INDEX}
    assert _keys(s3) == TOKENIZER_AND_CONFIG | shards | {stage_model.MANIFEST_NAME}
    second = _manifest(s3)
    assert {f["name"] for f in second["files"]} == TOKENIZER_AND_CONFIG | shards
    assert second["created_at"] >= first["created_at"]
    assert "deleted 1 object(s) of the earlier copy" in capsys.readouterr().out
    # AND the replaced objects stay as noncurrent versions of the versioned bucket
    versions = s3.list_object_versions(Bucket=BUCKET, Prefix=PREFIX + "model.safetensors")
    assert versions.get("DeleteMarkers") and versions.get("Versions")


def test_overwrite_removes_the_old_manifest_before_uploading(
    model_dir: Path, s3: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a complete earlier copy, and an upload that fails halfway through the overwrite
    assert main(["stage-model", str(model_dir), URI]) == EXIT_VALID
    real_upload = model_store.upload

    def failing(path: Path, *args: Any, **kwargs: Any) -> None:
        if path.name == "model.safetensors":
            raise model_store.StorageError("upload failed: AccessDenied")
        real_upload(path, *args, **kwargs)

    monkeypatch.setattr(model_store, "upload", failing)
    # WHEN staged again with --overwrite
    err = _refused(["stage-model", str(model_dir), URI, "--overwrite"], capsys)
    # THEN it fails with the storage error, and the prefix has no manifest: the copy is recognisably unfinished
    assert "AccessDenied" in err
    assert stage_model.MANIFEST_NAME not in _keys(s3)


def test_overwrite_refuses_a_prefix_holding_other_data(
    model_dir: Path, s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a prefix that is the parent of other models
    s3.put_object(Bucket=BUCKET, Key=PREFIX + "other-model/config.json", Body=b"{}")
    # WHEN staged there with --overwrite
    err = _refused(["stage-model", str(model_dir), URI, "--overwrite"], capsys)
    # THEN it is refused rather than deleting them
    assert "holds objects in sub-prefixes (other-model/config.json)" in err
    assert _keys(s3) == {"other-model/config.json"}


def test_dry_run_reports_a_refusal_too(model_dir: Path, s3: Any, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a non-empty prefix
    s3.put_object(Bucket=BUCKET, Key=PREFIX + "model.safetensors", Body=b"x")
    # WHEN dry-run without, then with --overwrite
    # THEN the first is refused like a real run; the second lists the object that would be deleted
    assert "already holds 1 object(s)" in _refused(["stage-model", str(model_dir), URI, "--dry-run"], capsys)
    _shard(model_dir)
    assert main(["stage-model", str(model_dir), URI, "--dry-run", "--overwrite"]) == EXIT_VALID
    assert "Would delete 1 object(s) not part of this model: model.safetensors" in capsys.readouterr().out
    assert _keys(s3) == {"model.safetensors"}


# --- arguments and sources -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{model}", f"s3://{BUCKET}/"], "give a dedicated prefix for the model"),
        (["{model}", f"s3://{BUCKET}"], "not an S3 URI"),
        (["{model}", "/tmp/out"], "not an S3 URI"),
        (["./no-such-model", URI], "./no-such-model: no such directory"),
        (["{model}", URI, "--revision", "main"], "--revision applies to hub ids only"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], message: str, model_dir: Path, s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN bad arguments
    # WHEN the command runs
    err = _refused(["stage-model", *(a.replace("{model}", str(model_dir)) for a in argv)], capsys)
    # THEN it exits 2 with the message, uploading nothing
    assert message in err
    assert _keys(s3, "") == set()


def test_local_directory_does_not_import_huggingface_hub(
    model_dir: Path, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN huggingface_hub not imported yet
    for name in [m for m in sys.modules if m == "huggingface_hub" or m.startswith("huggingface_hub.")]:
        monkeypatch.delitem(sys.modules, name)
    # WHEN a local directory is staged
    assert main(["stage-model", str(model_dir), URI, "--dry-run"]) == EXIT_VALID
    # THEN the hub library was not needed
    assert "huggingface_hub" not in sys.modules


def test_hub_id_is_downloaded_through_the_adapter(
    model_dir: Path, s3: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a hub repo (the adapter stubbed: no network here) whose snapshot is the model directory
    commit = "a" * 40
    downloads: list[list[str]] = []
    monkeypatch.setattr(
        model_hub, "repo_files", lambda repo, revision: (commit, [p.name for p in model_dir.iterdir()])
    )
    monkeypatch.setattr(
        model_hub, "download", lambda repo, sha, patterns: downloads.append(list(patterns)) or model_dir
    )
    # WHEN staged by hub id and revision
    assert main(["stage-model", "tiny-org/tiny-model", URI, "--revision", "v1"]) == EXIT_VALID
    # THEN metadata comes first, then the weights; the manifest records the id, the revision and the commit
    assert "model.safetensors" not in downloads[0] and "model.safetensors" in downloads[1]
    assert not any(p.endswith((".bin", ".py", "*.safetensors")) or p == "*" for p in downloads[1])
    manifest = _manifest(s3)
    assert (manifest["source"], manifest["revision"], manifest["commit"]) == ("tiny-org/tiny-model", "v1", commit)
    assert "Staged tiny-org/tiny-model@aaaaaaaaaaaa" in capsys.readouterr().out


def test_hub_repo_with_remote_code_is_refused_before_downloading(
    s3: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a hub repo that ships modeling code
    monkeypatch.setattr(
        model_hub,
        "repo_files",
        lambda repo, revision: ("b" * 40, ["config.json", "modeling_x.py", "model.safetensors"]),
    )
    monkeypatch.setattr(model_hub, "download", lambda *a: pytest.fail("downloaded"))
    # WHEN staged
    err = _refused(["stage-model", "org/custom-model", URI], capsys)
    # THEN it is refused from the file listing alone
    assert "org/custom-model@bbbbbbbbbbbb needs remote code (modeling_x.py)" in err


def test_hub_id_recognition() -> None:
    assert stage_model.is_hub_id("Qwen/Qwen2.5-0.5B-Instruct")
    assert stage_model.is_hub_id("gpt2")
    assert not stage_model.is_hub_id("./models/qwen")
    assert not stage_model.is_hub_id("/abs/path")
    assert not stage_model.is_hub_id("a/b/c")
    assert not stage_model.is_hub_id("org/../x")
