"""Blue/green endpoint updates as SageMaker runs them: traffic shifting, baking periods, alarm-driven rollback.

``endpoints.py`` starts the new (green) fleet; once it is healthy, ``run_rollout`` walks the update's
``DeploymentConfig`` on the local cloud's compressed clock (``clock.compressed_time``: a bake of 300 s lasts 3 s at
``time_scale=0.01``) and tells the caller, through callbacks, how much traffic the green fleet gets and what the
variant's status is. What it relies on:

- The API reference (``DeploymentConfig``, ``BlueGreenUpdatePolicy``): without an update policy "SageMaker uses a
  blue/green deployment strategy with all at once traffic shifting by default"; ``TerminationWaitInSeconds`` is the
  "additional waiting time in seconds after the completion of an endpoint deployment before terminating the old
  endpoint fleet. Default is 0"; ``MaximumExecutionTimeoutInSeconds`` "should be larger than the total waiting time
  specified in TerminationWaitInSeconds and WaitIntervalInSeconds".
- ``TrafficRoutingConfig``: ``ALL_AT_ONCE`` shifts in one step, ``CANARY`` in two ("the first step is the canary,
  which is a small portion of the traffic. The second step is the remainder"), ``LINEAR`` in n steps;
  ``WaitIntervalInSeconds`` is "the waiting time between incremental steps"; ``CanarySize`` "must be less than or
  equal to 50% of the variant's total instance count", ``LinearStepSize`` "must be 10-50%".
- The developer guide, "Use canary traffic shifting": the canary gets its share, "then the baking period begins,
  during which your CloudWatch alarms monitor the performance of the green fleet ... If any alarms trip during the
  baking period, then SageMaker AI initiates a rollback and all traffic returns to the blue fleet. If none of the
  alarms trip, all traffic shifts to the green fleet and there is a final baking period"; "Use all at once traffic
  shifting": "If no alarms trip during the baking period, SageMaker AI terminates the old fleet (blue fleet)";
  "Auto-Rollback Configuration and Monitoring": "If any of your alarms trip during the specified monitoring period,
  SageMaker AI initiates a complete rollback to the old endpoint".
- ``ProductionVariantStatus``: a variant in a deployment is ``Creating``, ``ActivatingTraffic`` ("turning on traffic
  for the production variant") or ``Baking`` ("waiting period to monitor the CloudWatch alarms in the automatic
  rollback configuration").

So the schedule is: shift to each step's share, bake ``WaitIntervalInSeconds`` between steps, and after the last step
(100 %) bake ``TerminationWaitInSeconds``; the alarms are watched from the first shift to the end of the final bake,
and one in ``ALARM`` (moto's CloudWatch keeps ``PutMetricAlarm`` / ``SetAlarmState`` alarms; nothing evaluates
metrics, so a test sets the state) rolls the update back. Emulation choices, for want of published detail:

- A capacity step is whole instances of the NEW config's variant, at least one (``ceil``): 20 % of a 2-instance fleet
  is 1 instance, so that canary takes half the traffic; traffic is shared in proportion to the instances serving.
- ``MaximumExecutionTimeoutInSeconds`` is counted from the first traffic shift on the compressed clock; the new
  fleet's start-up is bounded by its health-check timeout instead (real model servers start in real time).
- Which fleet answers an invocation during a partial shift is deterministic (``TrafficSplit``), so a test of a 50 %
  canary sees every other request on the new fleet.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from local.cloud import clock

ROUTING_TYPES = ("ALL_AT_ONCE", "CANARY", "LINEAR")
TICK_S = 0.02  # how often (real seconds) the alarms are read during a bake

VariantPhase = Literal["Creating", "ActivatingTraffic", "Baking"]


class DeploymentConfigError(ValueError):
    """A DeploymentConfig SageMaker refuses (the message is the ValidationException's)."""


def time_scale() -> float:
    """The scale of the local cloud's compressed clock in force (``compressed_time(scale)``; 1.0 outside it)."""
    return float(getattr(clock, "_scale", 1.0))


@dataclass(frozen=True)
class RolloutPlan:
    """One update's schedule: the green fleet's traffic share after each step (the last is 1.0), the bake between
    steps and after the last one, the deadline, and the alarms that roll it back."""

    routing: str = "ALL_AT_ONCE"
    shares: tuple[float, ...] = (1.0,)
    wait_interval_s: float = 0.0
    termination_wait_s: float = 0.0
    max_execution_s: float | None = None
    alarms: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None, instance_count: int) -> RolloutPlan:
        """The plan of ``DeploymentConfig`` for a new variant of ``instance_count`` instances (None: SageMaker's
        default, all at once without waits). Raises DeploymentConfigError for what SageMaker refuses."""
        config = config or {}
        alarms = tuple(
            str(alarm.get("AlarmName"))
            for alarm in (config.get("AutoRollbackConfiguration") or {}).get("Alarms") or []
            if alarm.get("AlarmName")
        )
        if config.get("RollingUpdatePolicy"):
            raise DeploymentConfigError(
                "RollingUpdatePolicy is not emulated by the local cloud: use BlueGreenUpdatePolicy (the product does)"
            )
        policy = config.get("BlueGreenUpdatePolicy") or {}
        routing = policy.get("TrafficRoutingConfiguration") or {}
        kind = str(routing.get("Type") or "ALL_AT_ONCE")
        if kind not in ROUTING_TYPES:
            raise DeploymentConfigError(f"Unknown traffic routing type {kind}")
        total = max(1, int(instance_count))
        if kind == "ALL_AT_ONCE":
            shares: tuple[float, ...] = (1.0,)
        elif kind == "CANARY":
            canary = _instances(routing.get("CanarySize"), total, "CanarySize", kind)
            if canary * 2 > total:
                raise DeploymentConfigError(
                    f"CanarySize ({canary} of {total} instances) must be less than or equal to 50% of the variant's "
                    "total instance count"
                )
            shares = (canary / total, 1.0)
        else:
            step = _instances(routing.get("LinearStepSize"), total, "LinearStepSize", kind)
            if step * 2 > total or step * 10 < total:
                raise DeploymentConfigError(
                    f"LinearStepSize ({step} of {total} instances) must be 10-50% of the variant's total instance "
                    "count"
                )
            shares = tuple(min(total, step * n) / total for n in range(1, math.ceil(total / step) + 1))
        maximum = policy.get("MaximumExecutionTimeoutInSeconds")
        return cls(
            routing=kind,
            shares=shares,
            wait_interval_s=float(routing.get("WaitIntervalInSeconds") or 0),
            termination_wait_s=float(policy.get("TerminationWaitInSeconds") or 0),
            max_execution_s=float(maximum) if maximum else None,
            alarms=alarms,
        )


def _instances(size: Mapping[str, Any] | None, total: int, member: str, kind: str) -> int:
    """A CapacitySize in whole instances of the new fleet (at least one)."""
    if not size:
        raise DeploymentConfigError(f"{member} is required for traffic routing type {kind}")
    value = int(size.get("Value") or 0)
    if value < 1:
        raise DeploymentConfigError(f"{member} Value must be at least 1")
    if size.get("Type") == "INSTANCE_COUNT":
        return value
    return max(1, math.ceil(total * value / 100))


@dataclass(frozen=True)
class RolloutResult:
    """How an update ended: ``completed`` (the green fleet takes over), ``rolled_back`` (``reason`` says why) or
    ``cancelled`` (the endpoint was deleted, or the local cloud closed, meanwhile)."""

    outcome: Literal["completed", "rolled_back", "cancelled"]
    reason: str = ""
    alarms: tuple[str, ...] = ()


class AlarmsUnreadable(Exception):
    """SageMaker could not read the auto-rollback alarms with the endpoint's execution role (the deployment
    guardrails guide lists ``cloudwatch:DescribeAlarms`` among that role's required permissions)."""


def run_rollout(
    plan: RolloutPlan,
    *,
    shift: Callable[[float], None],
    phase: Callable[[VariantPhase, str], None],
    alarms_in_alarm: Callable[[tuple[str, ...]], list[str]],
    cancelled: threading.Event,
) -> RolloutResult:
    """Walk ``plan``: ``shift(share)`` at each step, ``phase(status, message)`` as the variant's status changes, the
    alarms read every ``TICK_S`` while traffic shifts and bakes. Returns at the end, at the first alarm, at the
    deadline or when ``cancelled`` is set (the caller then switches fleets, or rolls back)."""
    scale = time_scale()
    started = time.monotonic()
    deadline = started + plan.max_execution_s * scale if plan.max_execution_s else None
    last = len(plan.shares) - 1
    for step, share in enumerate(plan.shares):
        phase("ActivatingTraffic", f"Turning on {share:.0%} of the traffic on the new fleet")
        shift(share)
        bake = plan.termination_wait_s if step == last else plan.wait_interval_s
        what = "final baking period" if step == last else f"baking period of traffic step {step + 1}"
        phase("Baking", f"Watching alarms {', '.join(plan.alarms) or '(none)'} for {bake:.0f} s ({what})")
        until = time.monotonic() + bake * scale
        while True:
            try:
                tripped = alarms_in_alarm(plan.alarms) if plan.alarms else []
            except AlarmsUnreadable as exc:  # AWS's exact answer is not documented: the update cannot be watched
                return RolloutResult("rolled_back", f"the rollback alarms could not be read: {exc}", plan.alarms)
            if tripped:
                return RolloutResult(
                    "rolled_back",
                    f"alarm {', '.join(tripped)} went into ALARM during the {what} ({share:.0%} of the traffic on "
                    "the new fleet)",
                    tuple(tripped),
                )
            now = time.monotonic()
            if deadline is not None and now > deadline:
                return RolloutResult(
                    "rolled_back",
                    f"the deployment did not finish within MaximumExecutionTimeoutInSeconds "
                    f"({plan.max_execution_s:.0f} s)",
                )
            if now >= until:
                break
            if cancelled.wait(min(TICK_S, until - now)):
                return RolloutResult("cancelled")
    return RolloutResult("completed")


def alarms_in_alarm(account: str, region: str, names: tuple[str, ...]) -> list[str]:
    """The alarms among ``names`` that moto's CloudWatch has in ``ALARM`` (as SageMaker reads them with
    ``cloudwatch:DescribeAlarms``). An alarm that does not exist never trips: the guide only says rollback does not
    work without alarms."""
    from moto.cloudwatch.models import cloudwatch_backends

    alarms = cloudwatch_backends[account][region].alarms
    return [name for name in names if (alarm := alarms.get(name)) is not None and alarm.state_value == "ALARM"]


class TrafficSplit:
    """Which fleet answers the next invocation when the new one has ``share`` of the traffic: a deterministic
    weighted round-robin (the n-th request goes to the new fleet when ``floor(n * share)`` steps up), so over any
    run of requests the new fleet's count is within one of ``share`` times their number."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._share = 0.0
        self._count = 0

    @property
    def share(self) -> float:
        return self._share

    def set(self, share: float) -> None:
        with self._lock:
            self._share, self._count = min(1.0, max(0.0, share)), 0

    def to_new_fleet(self) -> bool:
        with self._lock:
            self._count += 1
            return math.floor(self._count * self._share) > math.floor((self._count - 1) * self._share)
