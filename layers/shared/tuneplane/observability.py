"""The one place Logger, Tracer and Metrics are created (service name and namespace come from the
POWERTOOLS_* environment variables the template sets)."""

from aws_lambda_powertools import Logger, Metrics, Tracer

logger = Logger()
tracer = Tracer()
metrics = Metrics()
