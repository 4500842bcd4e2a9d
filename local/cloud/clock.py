"""Compressed time for moto's state-machine interpreter: Wait states and Retry back-off take ``scale`` x as long.

A retry policy of 3 attempts from 5 s with back-off 2 sleeps 35 s on AWS; a test of that path must not. The ASL
is not edited (its intervals are integers of at least 1 s); instead the two places where moto 5.2.5 waits are
scaled: ``RetrierDecl`` sleeps with ``time.sleep(interval)``, and ``WaitFunction._wait_interval`` waits on the
execution's ``program_state_event`` (set when the execution is stopped, which must still end the wait early).
Task ``TimeoutSeconds``/``HeartbeatSeconds`` are not scaled.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any
from unittest import mock

from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl
from moto.stepfunctions.parser.asl.component.state.wait.wait_function.wait_function import WaitFunction


@contextmanager
def compressed_time(scale: float) -> Iterator[None]:
    """Within this block, state-machine waits and retry intervals last ``scale`` times their ASL value."""
    if scale == 1.0:
        yield
        return
    if scale <= 0:
        raise ValueError("scale must be positive")

    def wait_interval(self: WaitFunction, env: Any, wait_seconds: float) -> None:
        deadline = time.monotonic() + wait_seconds * scale
        while env.is_running() and (remaining := deadline - time.monotonic()) > 0:
            env.program_state_event.wait(remaining)

    scaled_time = SimpleNamespace(sleep=lambda seconds: time.sleep(seconds * scale))
    with (
        mock.patch.object(retrier_decl, "time", scaled_time),
        mock.patch.object(WaitFunction, "_wait_interval", wait_interval),
    ):
        yield
