"""Unit tests run offline: any attempt to open a network socket fails the test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pytest_socket import disable_socket, enable_socket

# The X-Ray SDK behind Powertools' Tracer creates (and never uses, with tracing disabled) a UDP socket when
# it is first imported; import it here, before sockets are switched off for the tests.
import tuneplane.observability  # noqa: E402,F401


@pytest.fixture(autouse=True)
def _no_network() -> Iterator[None]:
    disable_socket(allow_unix_socket=True)
    yield
    enable_socket()
