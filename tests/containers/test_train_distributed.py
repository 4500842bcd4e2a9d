"""The training container's data-parallel path (issues 3 and 8) on CPU: `nproc_per_node=2` makes train.py re-run
itself under torchrun with two gloo ranks, which must train exactly as one process does with the same global batch.

Why gradient accumulation is the reference: with packing, the dataset rows are fixed before batching, and the
Trainer (accelerate's batch sharding of one seeded order) gives rank r of N the batches r, r + N, ... So step k of two
ranks with per-device batch B holds exactly the rows of micro-batches 2k and 2k + 1 of one process with batch B and
gradient_accumulation_steps 2, in tensors of the same shapes, and both divide the step's summed token losses by the
step's trained-token count (DDP: each rank's sum x 2 / both ranks' tokens, then the gradients are averaged). One
process with batch 2B holds the same rows too, flattened into one padding-free sequence: equal up to float32
summation order.

Tolerances: rtol 1e-4 on the logged losses, atol 5e-5 on the adapter weights (the largest is ~0.1). Measured on this
task (8 steps, 2 CPU cores): two ranks vs one process with gradient accumulation 2: bit-identical losses, grad norms
and adapter; vs one process with batch 4: 2.3e-7 relative on the losses, 6.7e-7 on the adapter (summation order,
which another BLAS build or thread count could change). The fault the tolerances must catch, a loss averaged per rank
instead of over all ranks' tokens (average_tokens_across_devices off), moved the losses by 4.7e-4 at step 1 (up to
2.9e-2) and the adapter by 8.8e-3.

The failing ranks are injected with a sitecustomize module on PYTHONPATH (imported by every Python process at start;
it acts only in the process whose RANK is 1).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from containers.train import train
from containers.train.train import TrainConfig
from local.tiny_model import write_base_model, write_tiny_weights

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")

ENTRYPOINT = Path(train.__file__)
CODES = {"red": "stop", "green": "go", "blue": "calm", "yellow": "wait", "black": "night", "white": "snow"}
FILLERS = [a + b for a in ("ka", "lo", "mi", "ne", "pu", "ri", "so", "tu") for b in "bdfgkmnp"]
# Answers of 1 to 5 words: the packed rows hold different numbers of trained tokens, so that a loss averaged per rank
# differs from the loss averaged over all ranks' tokens.
TRAIN = [
    {
        "messages": [
            {"role": "user", "content": f"{FILLERS[i % 64]} {colour} x{1 + i % 5}"},
            {"role": "assistant", "content": " ".join([CODES[colour]] * (1 + i % 5))},
        ]
    }
    for i, colour in zip(range(160), list(CODES) * 30, strict=False)
]
# Within the first epoch (the 160 examples pack into 40 rows of <= 128 tokens, 4 rows per step): at an epoch's end
# the ranks' last batches would be evened out with repeated rows, which one process does not see.
STEPS = 8
# Two ranks x 2 rows per step; the one-process reference takes 2 micro-batches of 2 rows.
HYPERPARAMETERS = {
    "max_steps": str(STEPS),
    "learning_rate": "0.003",
    "lora_r": "8",
    "lora_alpha": "16",
    "lora_dropout": "0.0",
    "per_device_batch_size": "2",
    "gradient_accumulation_steps": "1",
    "max_seq_length": "128",
    "warmup_ratio": "0.1",
    "save_steps": "4",
    "logging_steps": "1",
}
SITECUSTOMIZE = """
import os
import signal

if os.environ.get("RANK") == "1" and os.environ.get("INJECT"):
    from transformers import Trainer

    _training_step = Trainer.training_step

    def training_step(self, *args, **kwargs):
        loss = _training_step(self, *args, **kwargs)
        if self.state.global_step == 2:  # during step 3
            if os.environ["INJECT"] == "raise":
                raise RuntimeError("injected fault on rank 1 in step 3")
            if os.environ["INJECT"] == "sigterm" and not getattr(self, "_sigterm_sent", False):
                self._sigterm_sent = True
                os.kill(os.getpid(), signal.SIGTERM)  # this rank only: the other must stop with it
        return loss

    Trainer.training_step = training_step
"""


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ddp-task")
    (root / "train").mkdir()
    (root / "train" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in TRAIN))
    (root / "inject").mkdir()
    (root / "inject" / "sitecustomize.py").write_text(textwrap.dedent(SITECUSTOMIZE))
    texts = [m["content"] for row in TRAIN for m in row["messages"]]
    base = write_tiny_weights(write_base_model(root / "base", texts))
    return {"train": root / "train", "base": base, "inject": root / "inject"}


@pytest.fixture(scope="module")
def reference(task: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One process, in this one: the same rows per optimizer step as two ranks (gradient accumulation 2). One thread,
    as each rank has (2 threads are 3x slower on this tiny model on a busy 2-core machine)."""
    root = tmp_path_factory.mktemp("ddp-reference")
    hyperparameters = root / "hyperparameters.json"
    hyperparameters.write_text(json.dumps({**HYPERPARAMETERS, "gradient_accumulation_steps": "2"}))
    paths = {"train_dir": task["train"], "model_dir": task["base"], "eval_dir": root / "no-eval"}
    paths |= {"output_dir": root / "model", "checkpoint_dir": root / "checkpoints", "failure_file": root / "failure"}
    argv = ["--hyperparameters", str(hyperparameters)] + [f"--{name}={path}" for name, path in paths.items()]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = train.main(train.load_config(argv))
    finally:
        torch.set_num_threads(threads)
    assert summary["loss_curve"][-1]["epoch"] <= 1.0
    return {"summary": summary, "adapter": adapter_tensors(root / "model"), "files": files_in(root / "model")}


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directories of one SageMaker training job with two ranks, interrupted and then restarted."""
    return tmp_path_factory.mktemp("ddp-job")


@pytest.fixture(scope="module")
def interrupted(job: Path, task: dict[str, Path]) -> subprocess.CompletedProcess[str]:
    """The job's first run: SIGTERM reaches rank 1 alone, during step 3 (checkpoints are due every 4 steps)."""
    return run_two_ranks(job, task, inject="sigterm")


@pytest.fixture(scope="module")
def resumed(job: Path, task: dict[str, Path], interrupted: subprocess.CompletedProcess[str]) -> Any:
    """The job restarted (as SageMaker restarts a spot job, with the checkpoint directory restored)."""
    return run_two_ranks(job, task)


def adapter_tensors(directory: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return dict(load_file(str(directory / "adapter_model.safetensors")))


def files_in(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def run_two_ranks(root: Path, task: dict[str, Path], inject: str | None = None) -> subprocess.CompletedProcess[str]:
    """`train.py train` as SageMaker runs it, with nproc_per_node=2 in the hyperparameters file."""
    (root / "config").mkdir(parents=True, exist_ok=True)
    (root / "config" / "hyperparameters.json").write_text(json.dumps({**HYPERPARAMETERS, "nproc_per_node": "2"}))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    for name in ("WORLD_SIZE", "LOCAL_RANK", "RANK", "NCCL_NVLS_ENABLE", "OMP_NUM_THREADS", "INJECT"):
        env.pop(name, None)
    env.update(
        {
            "SM_CHANNEL_TRAIN": str(task["train"]),
            "SM_CHANNEL_EVAL": str(root / "no-eval"),
            "SM_CHANNEL_MODEL": str(task["base"]),
            "SM_MODEL_DIR": str(root / "model"),
            "TUNEPLANE_CHECKPOINT_DIR": str(root / "checkpoints"),
            "TUNEPLANE_FAILURE_FILE": str(root / "output" / "failure"),
            "TUNEPLANE_HYPERPARAMETERS": str(root / "config" / "hyperparameters.json"),
        }
    )
    if inject:
        env["INJECT"] = inject
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(task["inject"]), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, str(ENTRYPOINT), "train"], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def logged_losses(stdout: str) -> dict[int, float]:
    """The train_loss of every metric line (the lines SageMaker's MetricDefinitions read), by step."""
    lines = re.findall(r"^step=(\d+); train_loss=(\S+);", stdout, flags=re.MULTILINE)
    steps = [int(step) for step, _ in lines]
    assert len(steps) == len(set(steps)), "a step was logged twice: more than one rank prints"
    return {int(step): float(loss) for step, loss in lines}


def losses(curve: list[dict[str, Any]]) -> dict[int, float]:
    return {point["step"]: point["train_loss"] for point in curve}


# ---------------------------------------------------------------------------------------------------------------------


def test_sigterm_on_one_rank_stops_both_after_the_same_step_with_one_checkpoint(
    job: Path, interrupted: subprocess.CompletedProcess[str]
) -> None:
    # GIVEN train.py run with nproc_per_node=2 on a CPU (two gloo ranks under torchrun)
    # WHEN SIGTERM reaches rank 1 alone, during step 3
    result = interrupted
    assert "--nproc_per_node=2" in result.stdout
    # THEN both ranks stop after step 3 and the launcher exits non-zero, saying so on one line
    assert result.returncode == 1, result.stderr[-4000:]
    failure = (job / "output" / "failure").read_text()
    assert re.fullmatch(r"stopped by SIGTERM at step 3; checkpoint saved in \S+: .* \(rank [01] of 2\)\n", failure)
    assert sorted(logged_losses(result.stdout)) == [1, 2, 3]
    # AND they wrote one checkpoint together, complete with both ranks' RNG states, and no outputs
    checkpoints = sorted(p.name for p in (job / "checkpoints").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-3"]
    newest = train.newest_complete_checkpoint(str(job / "checkpoints"))
    assert newest is not None and {"rng_state_0.pth", "rng_state_1.pth", "optimizer.pt"} <= files_in(newest)
    assert not (job / "model").exists()


def test_two_ranks_train_as_one_process_with_the_same_global_batch(
    job: Path,
    interrupted: subprocess.CompletedProcess[str],
    resumed: subprocess.CompletedProcess[str],
    reference: dict[str, Any],
) -> None:
    # GIVEN the interrupted two-rank job WHEN it restarts
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    summary = json.loads((job / "model" / "training_summary.json").read_text())
    assert summary["resumed_from"] == "checkpoint-3" and summary["world_size"] == 2
    expected = reference["summary"]
    # THEN its loss curve (steps 1-3 printed by the first run, 4-8 by the restart) is the one-process run's
    curve = logged_losses(interrupted.stdout) | losses(summary["loss_curve"])
    assert curve.keys() == losses(expected["loss_curve"]).keys() == set(range(1, STEPS + 1))
    assert logged_losses(resumed.stdout) == pytest.approx(losses(summary["loss_curve"]), rel=1e-5)
    torch.testing.assert_close(curve, losses(expected["loss_curve"]), rtol=1e-4, atol=0)
    # AND so are its adapter weights (the largest is ~0.1)
    ours, theirs = adapter_tensors(job / "model"), reference["adapter"]
    assert ours.keys() == theirs.keys() and ours
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=5e-5)
    # AND it counted both ranks' tokens: the one-process run's count (tokens/s counts them too)
    assert summary["tokens_seen"] == expected["tokens_seen"] > 0
    assert summary["tokens_per_second"] > 0 and len(summary["peak_memory_gb_per_rank"]) == 2
    # AND it wrote one set of outputs, the files one process writes, and no failure
    assert files_in(job / "model") == reference["files"]
    assert not (job / "output" / "failure").exists()
    assert train.newest_complete_checkpoint(str(job / "checkpoints")) == job / "checkpoints" / f"checkpoint-{STEPS}"


def test_a_failing_rank_fails_the_job_with_its_reason(tmp_path: Path, task: dict[str, Path]) -> None:
    # GIVEN two ranks, WHEN rank 1 raises in step 3 (rank 0 then loses its peer in the gradient all-reduce)
    result = run_two_ranks(tmp_path, task, inject="raise")
    # THEN the launcher exits non-zero and the failure file holds rank 1's reason, on one line, and nothing else
    assert result.returncode == 1, result.stderr[-4000:]
    failure = (tmp_path / "output" / "failure").read_text()
    assert failure == "RuntimeError: injected fault on rank 1 in step 3 (rank 1 of 2)\n"
    assert "training failed: RuntimeError: injected fault on rank 1" in result.stderr
    assert not (tmp_path / "model" / "adapter_model.safetensors").exists()


# ---------------------------------------------------------------------------------------------------------------------
# The settings and the launcher's decisions, without launching


def test_trainer_averages_the_loss_over_all_ranks_tokens(task: dict[str, Path], tmp_path: Path) -> None:
    # GIVEN the trainer the entrypoint builds
    cfg = TrainConfig(
        train_dir=str(task["train"]),
        model_dir=str(task["base"]),
        eval_dir=str(tmp_path / "no-eval"),
        output_dir=str(tmp_path / "model"),
        checkpoint_dir=str(tmp_path / "checkpoints"),
    )
    trainer, _ = train.build_trainer(cfg)
    # THEN the loss of a step is the mean over every rank's tokens, and DDP does not search for unused weights
    assert trainer.args.average_tokens_across_devices is True
    assert trainer.args.ddp_find_unused_parameters is False
    assert trainer.args.include_num_input_tokens_seen == "non_padding"  # summed over the ranks


def test_nproc_per_node_is_auto_or_a_positive_integer() -> None:
    # GIVEN hyperparameter strings THEN auto (the default) and integers >= 1 pass, anything else names the key
    assert TrainConfig().nproc_per_node == "auto"
    assert train.parse_hyperparameters({"nproc_per_node": "2"}) == {"nproc_per_node": "2"}
    assert train.parse_hyperparameters({"nproc_per_node": 2}) == {"nproc_per_node": "2"}
    for bad in ("0", "all", "-1", "1.5"):
        with pytest.raises(train.ConfigError, match=f"nproc_per_node must be auto or an integer >= 1, got '{bad}'"):
            TrainConfig(nproc_per_node=bad)


@pytest.mark.parametrize(
    ("gpus", "nproc_per_node", "launched"),
    [
        (0, "auto", None),  # a CPU: train in this process
        (1, "auto", None),
        (0, "2", 2),  # two gloo ranks on a CPU
        (4, "auto", 4),  # one rank per GPU
        (4, "2", 2),  # the first two GPUs
        (4, "1", 1),  # one GPU, not DataParallel over four
    ],
)
def test_when_the_entrypoint_launches_ranks(
    monkeypatch: pytest.MonkeyPatch, gpus: int, nproc_per_node: str, launched: int | None
) -> None:
    # GIVEN a machine with `gpus` GPUs WHEN the entrypoint starts (not as a rank)
    calls: list[Any] = []
    monkeypatch.setattr(train, "visible_gpus", lambda: gpus)
    monkeypatch.setattr(train, "main", lambda cfg: calls.append("main"))
    monkeypatch.setattr(train, "launch", lambda cfg, argv, processes: calls.append(processes))
    for name in ("WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    train.train_or_launch(TrainConfig(nproc_per_node=nproc_per_node), ["train"])
    # THEN it trains here or launches that many ranks
    assert calls == ["main" if launched is None else launched]


def test_more_ranks_than_gpus_are_refused() -> None:
    with pytest.raises(train.ConfigError, match="nproc_per_node must be at most the 4 visible GPU"):
        TrainConfig(nproc_per_node="8").processes(4)


def test_a_rank_does_not_launch_again(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN the environment torchrun gives its ranks WHEN a rank runs THEN it trains in its process
    calls: list[str] = []
    monkeypatch.setattr(train, "visible_gpus", lambda: 4)
    monkeypatch.setattr(train, "main", lambda cfg: calls.append("main"))
    monkeypatch.setattr(train, "launch", lambda *a: pytest.fail("a rank launched"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    train.train_or_launch(TrainConfig(nproc_per_node="2"), [])
    assert calls == ["main"]


class FakeTorchrun:
    """Stands in for subprocess.Popen(torchrun): records the command and environment, then 'runs' `ranks`."""

    seen: dict[str, Any] = {}
    ranks: Any = None

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        FakeTorchrun.seen = {"command": command, "env": env}

    def wait(self) -> int:
        return int(FakeTorchrun.ranks())

    def send_signal(self, signum: int) -> None:
        pass


def test_launch_passes_the_arguments_and_nvls_off_unless_the_user_set_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(train.subprocess, "Popen", FakeTorchrun)
    FakeTorchrun.ranks = lambda: 0
    cfg = TrainConfig(failure_file=str(tmp_path / "failure"))
    for user_value in (None, "1"):
        if user_value:
            monkeypatch.setenv("NCCL_NVLS_ENABLE", user_value)
        else:
            monkeypatch.delenv("NCCL_NVLS_ENABLE", raising=False)
        # WHEN the launcher starts two ranks
        train.launch(cfg, ["train", "--lora_r", "4"], 2)
        # THEN NCCL_NVLS_ENABLE is 0 unless the user set it, and the ranks run this script with the same arguments
        command, env = FakeTorchrun.seen["command"], FakeTorchrun.seen["env"]
        assert env["NCCL_NVLS_ENABLE"] == (user_value or "0")
        assert command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        assert command[-4:] == [str(ENTRYPOINT.resolve()), "train", "--lora_r", "4"]


def test_the_launcher_exits_as_the_first_failing_rank_would(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train.subprocess, "Popen", FakeTorchrun)
    failure = tmp_path / "failure"
    argv = ["train", "--nproc_per_node", "2", "--failure_file", str(failure), "--hyperparameters", "/nonexistent"]

    def rank_refuses_a_setting() -> int:
        assert not failure.exists()  # a stale reason of an earlier run was removed before the launch
        train.write_first_failure(failure, "invalid hyperparameters: precision=bf16 needs a GPU (rank 0 of 2)")
        assert not train.write_first_failure(failure, "RuntimeError: lost peer (rank 1 of 2)")  # the second
        return 1

    # GIVEN a stale failure file, WHEN a rank refuses a setting THEN the launcher exits 2, as one process would,
    # with that rank's reason
    failure.write_text("stale reason of an earlier run\n")
    FakeTorchrun.ranks = rank_refuses_a_setting
    assert train.run(argv) == 2
    assert failure.read_text() == "invalid hyperparameters: precision=bf16 needs a GPU (rank 0 of 2)\n"
    # GIVEN torchrun fails with no rank's reason (a rank killed by the kernel) THEN the launcher says where to look
    FakeTorchrun.ranks = lambda: 1
    assert train.run(argv) == 1
    assert failure.read_text().startswith("a training process failed without writing a reason (torchrun exit code 1)")
