"""tuneplane: the shared package of the control plane (models, logic, AWS adapters, errors)."""

__version__ = "0.1.0"
