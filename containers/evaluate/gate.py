"""The gate's decision from every model's metrics: `passed` and the reasons it did not, each saying which metric
failed and by how much (the state machine's Gate acts on them; this job only computes them)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from containers.common.jobkit import ConfigError
from containers.evaluate import regression
from containers.evaluate.graders import SCORE_METRICS


def require_computed(computed: Sequence[str], primary_metric: str, thresholds: Mapping[str, float]) -> None:
    """ConfigError when the primary metric or a threshold's metric is not among `computed` (checked before
    generating, and again by the gate)."""
    names = [name for name in SCORE_METRICS if name in computed]
    if primary_metric not in computed:
        raise ConfigError(
            f"primary_metric {primary_metric}: not computed; computed: {', '.join(names)} (JSON metrics need JSON "
            "references or a json.schema, classification metrics labels, pattern metrics a pattern, "
            f"{regression.METRIC} a regression set)"
        )
    for name in thresholds:
        if name not in computed:
            raise ConfigError(f"threshold {name}: not computed; computed: {', '.join(names)}")


def gate(
    metrics: dict[str, dict[str, float]],
    *,
    primary_metric: str,
    min_score: float,
    max_regression_vs_production: float,
    min_improvement_over_base: float,
    min_stop_rate: float,
    thresholds: Mapping[str, float] | None = None,
    max_regression_drop: float = 0.1,
    regression_lost: Sequence[str] = (),
) -> tuple[bool, list[str]]:
    """Whether the candidate passes; one sentence per failed threshold. `metrics` maps candidate/base/production
    (production optional) to their aggregate metrics; `thresholds` (graders.json) are minima for the candidate.
    With a regression set (regression_pass_rate in the candidate's and the base's metrics) the candidate's rate may
    be at most `max_regression_drop` below the base's (inf: off); `regression_lost` (the ids of the prompts the base
    passed and the candidate failed) names what it lost."""
    candidate = metrics["candidate"]
    thresholds = thresholds or {}
    require_computed(list(candidate), primary_metric, thresholds)
    reasons: list[str] = []
    score = candidate[primary_metric]
    if score < min_score:
        reasons.append(f"candidate {primary_metric} {score:.4f} is below the minimum score {min_score:.4f}")
    base = metrics["base"][primary_metric]
    if score - base < min_improvement_over_base:
        reasons.append(
            f"candidate {primary_metric} {score:.4f} improves on the base's {base:.4f} by {score - base:+.4f}, "
            f"less than the required {min_improvement_over_base:+.4f}"
        )
    production = metrics.get("production")
    if production is not None:
        current = production[primary_metric]
        if current - score > max_regression_vs_production:
            reasons.append(
                f"candidate {primary_metric} {score:.4f} regresses from production's {current:.4f} by "
                f"{current - score:.4f}, more than the allowed {max_regression_vs_production:.4f}"
            )
    stop_rate = candidate.get("stop_rate", 1.0)
    if stop_rate < min_stop_rate:
        reasons.append(
            f"candidate stopped on its own in only {stop_rate:.1%} of answers (minimum {min_stop_rate:.1%}): the "
            "rest ran to max_new_tokens, so it does not emit its end-of-turn token (EOS problem)"
        )
    if regression.METRIC in candidate and regression.METRIC in metrics["base"]:
        drop = regression.drop_reason(
            candidate[regression.METRIC], metrics["base"][regression.METRIC], max_regression_drop, regression_lost
        )
        if drop is not None:
            reasons.append(drop)
    for name, minimum in thresholds.items():
        value = candidate[name]
        # A tolerance for float sums: 4 of 5 right is "0.8" even if a mean lands on 0.7999999999999999.
        if value < minimum and not math.isclose(value, minimum, abs_tol=1e-12):
            reasons.append(
                f"candidate {name} {value:.4f} is below its threshold {minimum:.4f} (short by {minimum - value:.4f})"
            )
    return not reasons, reasons


def deltas(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """a - b for every metric the two share."""
    return {name: a[name] - b[name] for name in a if name in b}
