"""The local cloud: the real template, state machine, handlers and containers on one machine."""
