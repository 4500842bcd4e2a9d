"""The Slack notifier: every pipeline event on the bus becomes one Slack message (``notify``), built by ``render``."""

from tuneplane.logic.notify.notify import NotifyResult, PipelineEventBridgeModel, notify
from tuneplane.logic.notify.render import render

__all__ = ["NotifyResult", "PipelineEventBridgeModel", "notify", "render"]
