"""Compressed time for moto's state-machine interpreter: Wait states and Retry back-off take ``scale`` x as long.

A retry policy of 3 attempts from 5 s with back-off 2 sleeps 35 s on AWS; a test of that path must not. The ASL
is not edited (its intervals are integers of at least 1 s); instead the two places where moto 5.2.5 waits are
scaled: ``RetrierDecl`` sleeps with ``time.sleep(interval)``, and ``WaitFunction._wait_interval`` waits on the
execution's ``program_state_event`` (set when the execution is stopped, which must still end the wait early).
Task ``TimeoutSeconds``/``HeartbeatSeconds`` are not scaled. Other emulated waits of AWS (Lambda's asynchronous
retries, ``lambda_async``) sleep through ``sleep()``, which applies the scale in force; so does StartRun's wait for a
late sidecar (``tuneplane.logic.start_run._sleep``).
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

_scale = 1.0  # of the innermost compressed_time() block; process-wide, as the patches below are


def sleep(seconds: float) -> None:
    """Wait ``seconds`` of AWS time: ``seconds * scale`` within ``compressed_time(scale)``."""
    time.sleep(seconds * _scale)


@contextmanager
def compressed_time(scale: float) -> Iterator[None]:
    """Within this block, state-machine waits, retry intervals and ``sleep()`` last ``scale`` times their value."""
    global _scale
    if scale <= 0:
        raise ValueError("scale must be positive")
    previous, _scale = _scale, scale
    try:
        with _scaled_moto_waits(scale):
            yield
    finally:
        _scale = previous


@contextmanager
def _scaled_moto_waits(scale: float) -> Iterator[None]:
    if scale == 1.0:
        yield
        return

    def wait_interval(self: WaitFunction, env: Any, wait_seconds: float) -> None:
        deadline = time.monotonic() + wait_seconds * scale
        while env.is_running() and (remaining := deadline - time.monotonic()) > 0:
            env.program_state_event.wait(remaining)

    scaled_time = SimpleNamespace(sleep=lambda seconds: time.sleep(seconds * scale))
    with (
        mock.patch.object(retrier_decl, "time", scaled_time),
        mock.patch.object(WaitFunction, "_wait_interval", wait_interval),
        # StartRun's wait for a sidecar uploaded just after its dataset (seconds of AWS time per look)
        mock.patch("tuneplane.logic.start_run._sleep", scaled_time.sleep),
    ):
        yield
