"""Fixtures of the state-machine tests (the harness itself is in harness.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.statemachine.harness import Cloud, deployed_cloud


@pytest.fixture
def cloud(base_model_dir: Path) -> Iterator[Cloud]:
    """The real stack, deployed into a fresh local cloud."""
    with deployed_cloud(base_model_dir) as deployed:
        yield deployed
