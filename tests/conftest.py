"""Shared fixtures. AWS settings are fake and fixed before any boto3 client exists."""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

os.environ.update(
    {
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "POWERTOOLS_SERVICE_NAME": "tuneplane-test",
        "POWERTOOLS_METRICS_NAMESPACE": "TuneplaneTest",
        "POWERTOOLS_TRACE_DISABLED": "1",
        "HF_HUB_OFFLINE": "1",
    }
)

from local.tiny_model import CHATML_TEMPLATE, write_base_model

TOKENIZER_TEXTS = [
    "reverse the word",
    "hello world, how are you?",
    "the quick brown fox jumps over the lazy dog",
    "système: réponds en français 🙂",
] * 20


def chat_line(user: str, assistant: str, system: str | None = None) -> str:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user},
        {"role": "assistant", "content": assistant},
    ]
    return json.dumps({"messages": messages}, ensure_ascii=False)


@pytest.fixture
def write_jsonl(tmp_path: Path) -> Callable[..., Path]:
    """write_jsonl(lines, name="data.jsonl") -> path; lines are strings written as-is, one per line."""

    def write(lines: list[str], name: str = "data.jsonl") -> Path:
        path = tmp_path / name
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        return path

    return write


@pytest.fixture
def reversal_lines() -> list[str]:
    """Twenty distinct, valid chat examples (reverse a word)."""
    words = [f"word{i}{'xyz'[i % 3]}" for i in range(20)]
    return [chat_line(f"reverse {w}", w[::-1]) for w in words]


@pytest.fixture(scope="session")
def base_model_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    made: dict[str, Path] = {}

    def make(chat_template: str = CHATML_TEMPLATE) -> Path:
        if chat_template not in made:
            directory = tmp_path_factory.mktemp("base-model")
            made[chat_template] = write_base_model(directory, TOKENIZER_TEXTS, chat_template=chat_template)
        return made[chat_template]

    return make


@pytest.fixture(scope="session")
def base_model_dir(base_model_factory: Callable[..., Path]) -> Path:
    return base_model_factory()


@pytest.fixture(scope="session", autouse=True)
def _asl_parsed_once_per_definition() -> Iterator[None]:
    """moto's Step Functions parses a definition with its ANTLR parser when the state machine is created and again
    for every execution (about half a second for the pipeline's ASL on this machine, hundreds of times a session).
    The syntax tree of a definition is kept and only the evaluation components are built afresh from it each time
    (by moto's own Preprocessor, so patches of the local cloud and each execution's own components are as without
    the cache); a definition that does not parse raises as before and is not kept."""
    from moto.stepfunctions.parser.asl.parse import asl_parser
    from moto.stepfunctions.parser.asl.parse.preprocessor import Preprocessor

    original = asl_parser.AmazonStateLanguageParser.parse
    trees: OrderedDict[str, Any] = OrderedDict()  # the latest few: a deployment's definition names its functions

    def parse(definition: str) -> tuple[Any, Any]:
        tree = trees.get(definition)
        if tree is None:
            program, tree = original(definition)
            trees[definition] = tree
            while len(trees) > 4:
                trees.popitem(last=False)
            return program, tree
        return Preprocessor().visit(tree), tree

    with mock.patch.object(asl_parser.AmazonStateLanguageParser, "parse", staticmethod(parse)):
        yield
