"""Business logic: pure functions and classes with no AWS calls (adapters do those)."""
