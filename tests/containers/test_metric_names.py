"""The Evaluate job's metric names (containers/evaluate/graders.py SCORE_METRICS) and the control plane's
(tuneplane/models/graders.py ContainerMetric) are two hand-written lists of the same names: the job computes and gates
on the first, the sidecar's thresholds and primary metric are validated against the second. A metric added on one
side only would be one the job computes but no sidecar may name, or one a sidecar may name that the job rejects."""

from __future__ import annotations

from typing import get_args

from containers.evaluate.graders import SCORE_METRICS

from tuneplane.models.graders import ContainerMetric


def test_the_container_scores_exactly_the_metrics_the_control_plane_accepts() -> None:
    # GIVEN both lists; the order differs on purpose (SCORE_METRICS is the chart's order), so it is not compared
    container = sorted(SCORE_METRICS)
    control_plane = sorted(get_args(ContainerMetric))
    # THEN the same names, each once (sorting keeps a name listed twice in SCORE_METRICS; Literal drops repeats)
    assert container == control_plane, (
        f"only in SCORE_METRICS: {sorted(set(container) - set(control_plane))}; "
        f"only in ContainerMetric: {sorted(set(control_plane) - set(container))}; "
        f"repeated in SCORE_METRICS: {sorted({m for m in container if container.count(m) > 1})}"
    )
