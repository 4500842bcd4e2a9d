"""The Slack notifier: every pipeline event on the bus becomes one Slack message (``notify``), built by ``render``,
posted once per EventBridge event id (``notify_once``)."""

from tuneplane.logic.notify.notify import NotifyResult, PipelineEventBridgeModel, notify, notify_once
from tuneplane.logic.notify.render import render

__all__ = ["NotifyResult", "PipelineEventBridgeModel", "notify", "notify_once", "render"]
