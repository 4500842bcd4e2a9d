"""Environment configuration, validated once per cold start with pydantic-settings."""

from __future__ import annotations

from functools import cache
from typing import TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from tuneplane.errors import InvalidConfiguration
from tuneplane.models.validation import Severity

_Settings = TypeVar("_Settings", bound=BaseSettings)


class ValidateSettings(BaseSettings):
    """What the Validate Lambda reads from its environment (see template.yaml ValidateFunction)."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    data_bucket: str = Field(min_length=3)
    base_model_s3_uri: str = Field(pattern=r"^s3://[^/]+/.*$", description="Prefix holding tokenizer.json etc.")
    runs_prefix: str = "runs/"
    max_seq_length: int = Field(default=2048, ge=16)
    min_examples: int = Field(default=10, ge=1)
    max_invalid_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    pii_severity: Severity = Severity.WARNING
    training_instance_type: str = "ml.g5.2xlarge"
    pricing_table_s3_uri: str | None = Field(default=None, pattern=r"^s3://[^/]+/.+$")


def _from_environment(settings: type[_Settings], function: str) -> _Settings:
    try:
        return settings()
    except ValidationError as exc:
        raise InvalidConfiguration(f"{function} function environment: {exc}") from exc


@cache
def validate_settings() -> ValidateSettings:
    return _from_environment(ValidateSettings, "Validate")


class StartRunSettings(BaseSettings):
    """What the StartRun Lambda reads from its environment (see template.yaml StartRunFunction)."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    state_machine_arn: str = Field(pattern=r"^arn:aws[a-z-]*:states:[a-z0-9-]+:[0-9]{12}:stateMachine:[A-Za-z0-9_-]+$")
    incoming_prefix: str = Field(default="incoming/", pattern=r"^[^/].*/$")
    max_sidecar_bytes: int = Field(default=64 * 1024, ge=1)


@cache
def start_run_settings() -> StartRunSettings:
    return _from_environment(StartRunSettings, "StartRun")
