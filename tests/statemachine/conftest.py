"""Fixtures of the state-machine tests (the harness itself is in harness.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.statemachine.harness import Cloud, StackPool, deployed_cloud


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "stack_parameters(**values): template parameters for the test's stack")


def stack_parameters_of(request: pytest.FixtureRequest) -> dict[str, str] | None:
    """The test's template parameters: from a ``stack_parameters`` marker, or from a ``stack_parameters`` fixture of
    the test module where they depend on the test's parametrization."""
    marker = request.node.get_closest_marker("stack_parameters")
    parameters = dict(marker.kwargs) if marker else None
    if "stack_parameters" in request.fixturenames:
        parameters = {**(parameters or {}), **request.getfixturevalue("stack_parameters")}
    return parameters


@pytest.fixture
def cloud(base_model_dir: Path, request: pytest.FixtureRequest) -> Iterator[Cloud]:
    """The real stack, deployed into a fresh local cloud (parameters: ``stack_parameters_of``)."""
    with deployed_cloud(base_model_dir, stack_parameters_of(request)) as deployed:
        yield deployed


@pytest.fixture(scope="module")
def stack_pool(base_model_dir: Path) -> Iterator[StackPool]:
    """One stack at a time shared by a module's tests (harness.StackPool); a module uses it by overriding ``cloud``
    with ``stack_pool.cloud(stack_parameters_of(request))``."""
    with StackPool(base_model_dir) as pool:
        yield pool


@pytest.fixture
def shared_cloud(stack_pool: StackPool, request: pytest.FixtureRequest) -> Cloud:
    """The module's shared stack with this test's parameters, made to look fresh (harness.StackPool)."""
    return stack_pool.cloud(stack_parameters_of(request))


@pytest.fixture
def earlier(cloud: Cloud) -> set[str]:
    """The ARNs of the executions there before the test began (those of the tests before it on a shared stack)."""
    return {str(execution["executionArn"]) for execution in cloud.executions()}
