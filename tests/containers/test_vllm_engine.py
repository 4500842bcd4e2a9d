"""The Evaluate job's vLLM glue (containers/evaluate/vllm_engine.py) against vLLM's documented interface.

vLLM does not install here (no CUDA), so these tests put a fake ``vllm`` package in ``sys.modules``: it records how it
is called and answers with outputs of vLLM 0.33's shape (RequestOutput.outputs[0].token_ids / .finish_reason, the stop
token still in token_ids, in prompt order). They test our glue, what we ask of vLLM and how we read its answers, not
vLLM itself: that the engine behaves as the fake does is what vllm_engine.py's comments cite from vLLM's source.
"""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from containers.evaluate import vllm_engine

EOS, END_OF_TURN = 2, 7
STOPS = [EOS, END_OF_TURN]


@dataclass
class Completion:  # vllm/outputs.py CompletionOutput: the fields we read
    token_ids: list[int]
    finish_reason: str | None


@dataclass
class RequestOutput:  # vllm/outputs.py RequestOutput: one completion per prompt (n=1)
    outputs: list[Completion]


@dataclass
class LoRARequest:  # vllm/lora/request.py
    lora_name: str
    lora_int_id: int
    lora_path: str = ""


class FakeVllm:
    """What the fake package saw, and the replies it gives: prompt ids -> (generated ids, finish_reason)."""

    def __init__(self, replies: dict[tuple[int, ...], tuple[list[int], str]]) -> None:
        self.replies = replies
        self.engine_kwargs: dict[str, Any] = {}
        self.generate_calls: list[dict[str, Any]] = []
        self.events: list[str] = []
        self.fail_generate: Exception | None = None

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        fake = self

        class SamplingParams:
            def __init__(self, **kwargs: Any) -> None:
                self.kwargs = kwargs

        class EngineCore:
            def shutdown(self) -> None:
                fake.events.append("engine_core.shutdown")

        class LLMEngine:
            engine_core = EngineCore()

        class LLM:
            def __init__(self, **kwargs: Any) -> None:
                fake.engine_kwargs = kwargs
                fake.events.append("LLM")
                self.llm_engine = LLMEngine()

            def generate(self, prompts: Any, sampling_params: Any = None, **kwargs: Any) -> list[RequestOutput]:
                fake.events.append("generate")
                fake.generate_calls.append({"prompts": prompts, "params": sampling_params.kwargs, **kwargs})
                if fake.fail_generate is not None:
                    raise fake.fail_generate
                return [RequestOutput([Completion(*fake.replies[tuple(p["prompt_token_ids"])])]) for p in prompts]

        def cleanup_dist_env_and_memory(shutdown_ray: bool = False) -> None:
            fake.events.append("cleanup_dist_env_and_memory")

        def tokens_prompt(**kwargs: Any) -> dict[str, Any]:  # a TypedDict in vllm/inputs/llm.py
            return dict(kwargs)

        modules: dict[str, dict[str, Any]] = {
            "vllm": {"LLM": LLM, "SamplingParams": SamplingParams},
            "vllm.inputs": {"TokensPrompt": tokens_prompt},
            "vllm.lora": {},
            "vllm.lora.request": {"LoRARequest": LoRARequest},
            "vllm.distributed": {},
            "vllm.distributed.parallel_state": {"cleanup_dist_env_and_memory": cleanup_dist_env_and_memory},
        }
        for name, attributes in modules.items():
            module = types.ModuleType(name)
            module.__dict__.update(attributes)
            monkeypatch.setitem(sys.modules, name, module)


def model_dir(tmp_path: Path, **config: Any) -> Path:
    directory = tmp_path / "model"
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({"model_type": "llama", **config}))
    return directory


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeVllm]:
    def install(replies: dict[tuple[int, ...], tuple[list[int], str]]) -> FakeVllm:
        fake = FakeVllm(replies)
        fake.install(monkeypatch)
        return fake

    return install


def test_prompts_go_as_token_ids_in_order_and_answers_come_back_without_their_stop_token(
    tmp_path: Path, fake_vllm: Callable[..., FakeVllm]
) -> None:
    # GIVEN three prompts: one answered up to the end-of-turn, one up to the eos, one cut by max_new_tokens
    encoded = [[1, 10, 11], [1, 12], [1, 13, 14, 15]]
    fake = fake_vllm(
        {
            (1, 10, 11): ([20, 21, END_OF_TURN], "stop"),
            (1, 12): ([22, EOS], "stop"),
            (1, 13, 14, 15): ([23, 24, 25, 26], "length"),
        }
    )
    # WHEN they are generated greedily with at most 4 new tokens
    answers, stopped, seconds = vllm_engine.generate_token_ids(model_dir(tmp_path), encoded, STOPS, 4)
    # THEN vLLM got the very ids, in order, as TokensPrompts, in one call, without a progress bar or a LoRA
    (call,) = fake.generate_calls
    assert call["prompts"] == [{"prompt_token_ids": ids} for ids in encoded]
    assert call["use_tqdm"] is False
    assert call["lora_request"] is None
    # AND greedy, max_tokens, exactly our stop ids, no detokenization
    assert call["params"] == {
        "temperature": 0.0,
        "max_tokens": 4,
        "stop_token_ids": STOPS,
        "ignore_eos": True,
        "detokenize": False,
    }
    # AND each answer lost the stop token that ended it; the length-capped one lost nothing
    assert answers == [[20, 21], [22], [23, 24, 25, 26]]
    assert stopped == [True, True, False]
    assert seconds >= 0.0
    # AND the engine started without LoRA and was shut down and its memory given back after generating
    assert "enable_lora" not in fake.engine_kwargs
    assert fake.engine_kwargs["model"] == str(tmp_path / "model")
    assert fake.events == ["LLM", "generate", "engine_core.shutdown", "cleanup_dist_env_and_memory"]


def test_an_adapter_starts_a_lora_engine_and_goes_with_the_requests(
    tmp_path: Path, fake_vllm: Callable[..., FakeVllm]
) -> None:
    # GIVEN a base model and a LoRA adapter of rank at most 16
    fake = fake_vllm({(1, 10): ([30, EOS], "stop")})
    adapter = tmp_path / "adapter"
    # WHEN generating with it
    answers, stopped, _ = vllm_engine.generate_token_ids(
        model_dir(tmp_path), [[1, 10]], STOPS, 8, adapter_dir=adapter, max_lora_rank=16, seed=3
    )
    # THEN the engine has LoRA on as the endpoint serves it (one adapter, that max rank), with the seed given
    assert fake.engine_kwargs["enable_lora"] is True
    assert fake.engine_kwargs["max_lora_rank"] == 16
    assert fake.engine_kwargs["max_loras"] == 1
    assert fake.engine_kwargs["seed"] == 3
    # AND the generate call carries the adapter's request
    assert fake.generate_calls[0]["lora_request"] == LoRARequest("adapter", 1, str(adapter))
    assert (answers, stopped) == ([[30]], [True])


def test_an_adapter_without_a_max_rank_is_refused_before_any_engine_starts(
    tmp_path: Path, fake_vllm: Callable[..., FakeVllm]
) -> None:
    fake = fake_vllm({})
    with pytest.raises(ValueError, match="max_lora_rank"):
        vllm_engine.generate_token_ids(model_dir(tmp_path), [[1]], STOPS, 8, adapter_dir=tmp_path / "adapter")
    assert fake.events == []


def test_max_model_len_is_the_longest_prompt_and_a_full_answer_within_the_models_own(
    tmp_path: Path, fake_vllm: Callable[..., FakeVllm]
) -> None:
    # GIVEN prompts of 2 and 5 tokens, 16 new tokens, and a model of 32k positions
    fake = fake_vllm({(1, 2): ([3], "length"), (1, 2, 3, 4, 5): ([6], "length")})
    directory = model_dir(tmp_path, max_position_embeddings=32768)
    # WHEN generating
    vllm_engine.generate_token_ids(directory, [[1, 2], [1, 2, 3, 4, 5]], STOPS, 16)
    # THEN the engine's context is 5 + 16 tokens, not 32k
    assert fake.engine_kwargs["max_model_len"] == 21
    # AND a model shorter than that caps it (vLLM refuses a max_model_len above the model's)
    assert vllm_engine.max_model_len(model_dir(tmp_path / "short", max_position_embeddings=12), [[1] * 5], 16) == 12
    # AND the smallest length key counts, a multimodal config's text_config is read, model_max_length wins
    assert vllm_engine.model_max_len(model_dir(tmp_path / "a", max_position_embeddings=4096, seq_length=2048)) == 2048
    nested = model_dir(tmp_path / "b", text_config={"max_position_embeddings": 8192}, max_position_embeddings=99)
    assert vllm_engine.model_max_len(nested) == 8192
    assert vllm_engine.model_max_len(model_dir(tmp_path / "c", max_position_embeddings=9, model_max_length=50)) == 50
    assert vllm_engine.model_max_len(model_dir(tmp_path / "d")) is None
    assert vllm_engine.max_model_len(model_dir(tmp_path / "e"), [[1] * 5], 16) == 21


def test_the_gpu_memory_is_given_back_when_generation_fails(
    tmp_path: Path, fake_vllm: Callable[..., FakeVllm]
) -> None:
    # GIVEN an engine whose generate call fails
    fake = fake_vllm({})
    fake.fail_generate = RuntimeError("CUDA error")
    # WHEN generating
    with pytest.raises(RuntimeError, match="CUDA error"):
        vllm_engine.generate_token_ids(model_dir(tmp_path), [[1, 10]], STOPS, 8)
    # THEN the engine was still shut down and the memory released, for the next model of the job
    assert fake.events[-2:] == ["engine_core.shutdown", "cleanup_dist_env_and_memory"]


@pytest.mark.parametrize(
    ("completion", "message"),
    [
        (Completion([5, 6], "abort"), "finish_reason='abort'"),
        (Completion([5, 6], "stop"), "last token \\[6\\]"),  # "stop" on a token that is not ours: not a stop string
        (Completion([], "stop"), "last token \\[\\]"),
    ],
)
def test_an_answer_that_did_not_end_on_a_stop_or_the_length_is_an_error(completion: Completion, message: str) -> None:
    # GIVEN a completion ended otherwise than by one of our stop tokens or the token budget
    # WHEN it is read, THEN it is not scored as a normal answer
    with pytest.raises(RuntimeError, match=message):
        vllm_engine.answer_ids(completion, STOPS)


def test_no_prompts_start_no_engine(tmp_path: Path, fake_vllm: Callable[..., FakeVllm]) -> None:
    fake = fake_vllm({})
    assert vllm_engine.generate_token_ids(model_dir(tmp_path), [], STOPS, 8) == ([], [], 0.0)
    assert fake.events == []


def test_available_needs_both_vllm_and_a_cuda_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    import torch

    real_find_spec = importlib.util.find_spec
    installed = {"vllm": False}

    def find_spec(name: str, *args: Any) -> Any:
        if name == "vllm":
            return object() if installed["vllm"] else None
        return real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    # GIVEN no vllm package, WHEN a GPU is there, THEN not available
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert vllm_engine.available() is False
    # GIVEN vllm installed, THEN available with a GPU only
    installed["vllm"] = True
    assert vllm_engine.available() is True
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert vllm_engine.available() is False


# ---------------------------------------------------------------------------------------------------------------------
# The image (containers/evaluate/Dockerfile.vllm): not built here, so its text is held to the images it derives from

CONTAINERS = Path(vllm_engine.__file__).parents[1]
ENGINE_PINNED = {"torch", "transformers", "tokenizers", "safetensors", "huggingface-hub", "compressed-tensors"}


def _lines(path: Path, prefix: str) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.startswith(prefix)]


def _pins(path: Path) -> dict[str, str]:
    pins = (line.split("==") for line in path.read_text().splitlines() if "==" in line and not line.startswith("#"))
    return {name.strip().lower().replace("_", "-"): version.strip() for name, version in pins}


def test_the_vllm_image_is_the_serve_image_with_the_evaluate_job() -> None:
    dockerfile = CONTAINERS / "evaluate" / "Dockerfile.vllm"
    # GIVEN the vLLM evaluate image, the PyTorch evaluate image and the serve image
    # THEN it starts from the very image the endpoint serves with
    assert _lines(dockerfile, "FROM ") == _lines(CONTAINERS / "serve" / "Dockerfile", "FROM ")

    # AND it copies the job's code as the PyTorch image does (its layout test runs there: test_jobkit.py)
    def code(path: Path) -> list[str]:
        return [line for line in _lines(path, "COPY ") if "requirements" not in line]

    assert code(dockerfile) == code(CONTAINERS / "evaluate" / "Dockerfile")
    assert any("evaluate/vllm_engine.py" in line for line in code(dockerfile))
    # AND its entrypoint is the job's script, replacing vLLM's server
    (entrypoint,) = _lines(dockerfile, "ENTRYPOINT ")
    assert json.loads(entrypoint.removeprefix("ENTRYPOINT "))[1:] == ["/opt/program/containers/evaluate/evaluate.py"]
    # AND it installs its own packages without their dependencies, at the PyTorch image's pins, none of vLLM's
    (install,) = _lines(dockerfile, "RUN ")
    assert "--no-deps" in install and "requirements-vllm.txt" in install
    own = _pins(CONTAINERS / "evaluate" / "requirements-vllm.txt")
    assert own and not own.keys() & ENGINE_PINNED
    assert own.items() <= _pins(CONTAINERS / "evaluate" / "requirements.txt").items()


def test_the_lora_ranks_vllm_takes_are_the_deploy_sides_and_an_adapter_gets_the_smallest_that_fits() -> None:
    from tuneplane.logic.deploy.serving import VLLM_LORA_RANKS

    # GIVEN the job's list of vLLM's max_lora_rank values and the Deploy stage's
    # THEN they are the same, so the evaluate engine is set up as the endpoint is
    assert tuple(VLLM_LORA_RANKS) == vllm_engine.MAX_LORA_RANKS
    # AND an adapter gets the smallest value that fits its rank
    assert [vllm_engine.max_lora_rank_for(rank) for rank in (1, 4, 8, 9, 300, 512)] == [1, 8, 8, 16, 320, 512]
    with pytest.raises(ValueError, match="above vLLM's largest max_lora_rank 512"):
        vllm_engine.max_lora_rank_for(513)


def test_a_prompt_as_long_as_the_models_context_keeps_its_last_tokens(
    tmp_path: Path, fake_vllm: Callable[..., FakeVllm]
) -> None:
    # GIVEN a model of 8 positions and a prompt of 10 tokens (vLLM refuses a prompt that fills the context, and one
    # refusal aborts the whole generate call), beside a short one
    long_prompt, short_prompt = list(range(100, 110)), [1, 2]
    fake = fake_vllm({tuple(long_prompt[-7:]): ([EOS], "stop"), (1, 2): ([EOS], "stop")})
    # WHEN generated
    answers, stopped, _ = vllm_engine.generate_token_ids(
        model_dir(tmp_path, max_position_embeddings=8), [long_prompt, short_prompt], STOPS, 4
    )
    # THEN the engine's length is the model's, the long prompt went with its last 7 tokens, the short one whole
    assert fake.engine_kwargs["max_model_len"] == 8
    assert fake.generate_calls[0]["prompts"] == [
        {"prompt_token_ids": long_prompt[-7:]},
        {"prompt_token_ids": short_prompt},
    ]
    assert answers == [[], []] and stopped == [True, True]
