"""Unit tests run offline: any attempt to open a network socket fails the test."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from pytest_socket import disable_socket, enable_socket, socket_allow_hosts

# The X-Ray SDK behind Powertools' Tracer creates (and never uses, with tracing disabled) a UDP socket when
# it is first imported; import it here, before sockets are switched off for the tests.
import tuneplane.observability  # noqa: F401
from tuneplane.adapters import slack


@pytest.fixture(autouse=True)
def _no_network() -> Iterator[None]:
    disable_socket(allow_unix_socket=True)
    yield
    enable_socket()


@pytest.fixture
def loopback() -> Iterator[None]:
    """Sockets back on, but connections only to 127.0.0.1 (a local Slack webhook receiver)."""
    enable_socket()
    connect = socket.socket.connect
    socket_allow_hosts(["127.0.0.1"], allow_unix_socket=True)
    yield
    socket.socket.connect = connect  # type: ignore[method-assign]
    disable_socket(allow_unix_socket=True)


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The Slack adapter's waits between attempts, recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(slack, "_sleep", recorded.append)
    return recorded
