"""Fixtures of the state-machine tests (the harness itself is in harness.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.statemachine.harness import Cloud, deployed_cloud


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "stack_parameters(**values): template parameters for the test's stack")


@pytest.fixture
def cloud(base_model_dir: Path, request: pytest.FixtureRequest) -> Iterator[Cloud]:
    """The real stack, deployed into a fresh local cloud (parameters from a ``stack_parameters`` marker, or from a
    ``stack_parameters`` fixture of the test module where they depend on the test's parametrization)."""
    marker = request.node.get_closest_marker("stack_parameters")
    parameters = dict(marker.kwargs) if marker else None
    if "stack_parameters" in request.fixturenames:
        parameters = {**(parameters or {}), **request.getfixturevalue("stack_parameters")}
    with deployed_cloud(base_model_dir, parameters) as deployed:
        yield deployed
