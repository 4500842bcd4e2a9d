"""The vocabulary of dataset validation: problem codes, options and the report."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


class Code(StrEnum):
    """Every problem the validator can report. The value is what users see and what tests assert."""

    # reading the file
    FILE_EMPTY = "file_empty"
    FILE_TOO_LARGE = "file_too_large"
    COMPRESSION_RATIO_TOO_HIGH = "compression_ratio_too_high"
    TOO_LARGE_TO_VALIDATE = "too_large_to_validate"  # a limit of the platform (time, memory, disk), not of the data
    UNSUPPORTED_COMPRESSION = "unsupported_compression"
    UNSUPPORTED_ENCODING = "unsupported_encoding"
    UNSUPPORTED_LINE_ENDINGS = "unsupported_line_endings"
    NOT_UTF8 = "not_utf8"
    LINE_TOO_LONG = "line_too_long"
    BLANK_LINE = "blank_line"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    # format
    UNKNOWN_FORMAT = "unknown_format"
    MIXED_FORMATS = "mixed_formats"
    TOOLS_NOT_SUPPORTED = "tools_not_supported"
    # chat structure
    MISSING_MESSAGES_LIST = "missing_messages_list"
    EMPTY_MESSAGES = "empty_messages"
    MESSAGE_NOT_OBJECT = "message_not_object"
    MESSAGE_MISSING_KEY = "message_missing_key"
    MESSAGE_UNRECOGNIZED_KEY = "message_unrecognized_key"
    UNRECOGNIZED_ROLE = "unrecognized_role"
    CONTENT_NOT_STRING = "content_not_string"
    EMPTY_CONTENT = "empty_content"
    NO_ASSISTANT_MESSAGE = "no_assistant_message"
    LAST_MESSAGE_NOT_ASSISTANT = "last_message_not_assistant"
    CONSECUTIVE_SAME_ROLE = "consecutive_same_role"
    SYSTEM_NOT_FIRST = "system_not_first"
    FIRST_TURN_NOT_USER = "first_turn_not_user"
    # dataset level
    DUPLICATE_EXAMPLE = "duplicate_example"
    EVAL_TRAIN_OVERLAP = "eval_train_overlap"
    TOO_FEW_EXAMPLES = "too_few_examples"
    TOO_MANY_INVALID = "too_many_invalid"
    PII_DETECTED = "pii_detected"
    # token level (needs the base model's tokenizer)
    EXAMPLE_TOO_MANY_TOKENS = "example_too_many_tokens"
    CHAT_TEMPLATE_ERROR = "chat_template_error"
    NO_TRAINED_TOKENS = "no_trained_tokens"
    EOS_NOT_TRAINED = "eos_not_trained"


DEFAULT_SEVERITY: dict[Code, Severity] = {code: Severity.ERROR for code in Code} | {
    Code.BLANK_LINE: Severity.WARNING,
    Code.PII_DETECTED: Severity.WARNING,
    # A duplicate is kept out of the splits either way; by default it is worth a warning, not a rejection.
    Code.DUPLICATE_EXAMPLE: Severity.WARNING,
}

# Problems about the file as a whole: they cannot be "dropped" by max_invalid_fraction.
FILE_LEVEL_CODES = frozenset(
    {
        Code.FILE_EMPTY,
        Code.FILE_TOO_LARGE,
        Code.COMPRESSION_RATIO_TOO_HIGH,
        Code.TOO_LARGE_TO_VALIDATE,
        Code.UNSUPPORTED_COMPRESSION,
        Code.UNSUPPORTED_ENCODING,
        Code.UNSUPPORTED_LINE_ENDINGS,
        Code.TOO_FEW_EXAMPLES,
        Code.TOO_MANY_INVALID,
        Code.EOS_NOT_TRAINED,
    }
)


class DatasetFormat(StrEnum):
    CHAT = "chat"
    PROMPT_COMPLETION = "prompt_completion"
    ALPACA = "alpaca"


Source = Literal["train", "eval"]


class Problem(BaseModel):
    """One finding, located as precisely as the validator can: file, 1-based line, field path."""

    model_config = ConfigDict(frozen=True)

    code: Code
    severity: Severity
    message: str = Field(description="What is wrong, with the offending value (PII masked) and what was expected.")
    line: int | None = Field(default=None, description="1-based line number; None for file-level problems.")
    path: str | None = Field(default=None, description="Field path inside the line, e.g. messages[2].role.")
    source: Source = "train"

    def render(self) -> str:
        where = f"line {self.line}" if self.line is not None else "file"
        if self.source == "eval":
            where = f"eval {where}"
        field = f" {self.path}:" if self.path else ""
        return f"{where}:{field} {self.code.value} {self.message}"


class ValidationOptions(BaseModel):
    """What a deployment or a dataset's sidecar file can tune. Unknown keys are an error, not ignored."""

    model_config = ConfigDict(extra="forbid")

    min_examples: int = Field(default=10, ge=1, description="Fewer valid examples than this rejects the file.")
    max_invalid_fraction: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Share of lines with errors that may be dropped instead of rejecting the file.",
    )
    max_line_bytes: int = Field(default=4 * 1024 * 1024, ge=64, description="Longest accepted line, in bytes.")
    max_file_bytes: int = Field(default=50 * 1024**3, ge=1, description="Largest accepted file, in bytes.")
    max_decompressed_bytes: int = Field(
        default=50 * 1024**3, ge=1, description="Largest accepted dataset once decompressed (gzip), in bytes."
    )
    max_decompression_ratio: float = Field(
        default=200.0,
        gt=1.0,
        description="Largest accepted gzip expansion (decompressed / compressed bytes); checked from 8 MiB on.",
    )
    max_seq_length: int = Field(default=2048, ge=16, description="Token budget of one training example.")
    eval_fraction: float = Field(default=0.1, ge=0.0, lt=1.0, description="Held-out share when no eval file.")
    max_eval_examples: int = Field(default=500, ge=1, description="Cap on the held-out eval split.")
    seed: int = Field(default=42, description="Seed of the held-out split; same seed, same split.")
    severity_overrides: dict[Code, Severity] = Field(
        default_factory=dict, description="Make a code stricter or looser, e.g. {'pii_detected': 'error'}."
    )
    max_listed_problems: int = Field(
        default=1000, ge=1, le=10_000, description="Problems kept in full in the report (bounds its memory)."
    )
    epochs: float = Field(default=3.0, gt=0, description="Training epochs, for the cost estimate.")
    instance_type: str = Field(default="ml.g5.2xlarge", description="Training instance, for the cost estimate.")
    spot: bool = Field(default=False, description="Price the estimate at the spot discount.")

    @model_validator(mode="after")
    def _never_loosen_file_level(self) -> ValidationOptions:
        loosened = [c.value for c, s in self.severity_overrides.items() if c in FILE_LEVEL_CODES and s != "error"]
        if loosened:
            raise ValueError(f"severity_overrides cannot turn file-level errors into warnings: {loosened}")
        return self

    def severity(self, code: Code) -> Severity:
        return self.severity_overrides.get(code, DEFAULT_SEVERITY[code])


class CodeCount(BaseModel):
    code: Code
    severity: Severity
    source: Source = "train"
    count: int
    first_lines: list[int] = Field(default_factory=list, description="Up to five line numbers, in file order.")
    first_message: str


class TokenStats(BaseModel):
    examples: int
    total: int
    min: int
    p50: int
    p95: int
    max: int
    over_max_seq_length: int = Field(description="Examples that training would truncate.")
    trained_total: int = Field(description="Tokens inside assistant turns: what the loss is computed on.")


class TemplateCheck(BaseModel):
    """Does the chat template train what the model must learn to emit, the end-of-turn token included?"""

    end_of_turn_tokens: list[str]
    uses_generation_blocks: bool
    examples_checked: int
    examples_without_end_of_turn: int
    end_of_turn_trained: bool


class StageCost(BaseModel):
    """One stage's part of a run's estimate; ``hours``/``cost_usd`` are None when the pricing table has no row for
    its instance type."""

    stage: Literal["train", "merge", "quantize", "evaluate", "judge", "deploy"]
    instance_type: str | None
    instances: int = 1
    hours: float | None
    price_per_hour_usd: float | None
    cost_usd: float | None
    basis: str = Field(description="How the hours were arrived at: an estimate, or the documented assumption.")


class CostEstimate(BaseModel):
    """Training time and cost (the first fields), and for a pipeline run the whole run's: every stage, the total,
    and the stack's caps it was checked against. ``known`` is False when an instance type has no price: the figures
    then cover the priced stages only (a lower bound) and ``warnings`` says which."""

    instance_type: str
    epochs: float
    tokens_per_epoch: int
    throughput_tokens_per_second: float | None
    hours: float | None
    price_per_hour_usd: float | None
    cost_usd: float | None
    spot: bool
    assumptions: str
    known: bool = True
    max_steps: int | None = Field(default=None, description="Set: training is priced by steps, not epochs.")
    tokens_trained: int | None = Field(default=None, description="Tokens the training job processes in all.")
    stages: list[StageCost] = Field(default_factory=list, description="Train, merge, (quantize,) evaluate, deploy.")
    total_cost_usd: float | None = Field(default=None, description="Sum of the priced stages.")
    max_run_cost_usd: float | None = Field(default=None, description="The stack's MaxRunCostUsd.")
    max_training_hours: float | None = Field(default=None, description="The stack's MaxTrainingRuntimeSeconds / 3600.")
    over_limits: list[str] = Field(default_factory=list, description="Why the run exceeds the stack's caps.")
    warnings: list[str] = Field(default_factory=list)


class SplitSummary(BaseModel):
    train_examples: int
    eval_examples: int
    eval_source: Literal["eval_file", "held_out", "none"]
    train_uri: str | None = None
    eval_uri: str | None = None


class ValidationReport(BaseModel):
    dataset: str
    eval_dataset: str | None = None
    passed: bool
    format: DatasetFormat | None
    lines_read: int
    examples_valid: int = Field(description="Examples that passed every error check (duplicates included).")
    lines_dropped: list[int] = Field(
        default_factory=list, description="Lines left out of the splits because of errors (first 1000)."
    )
    lines_dropped_count: int = 0
    duplicates_dropped: int = 0
    problems: list[Problem] = Field(default_factory=list, description="In file order, first max_listed_problems.")
    run_problems: list[str] = Field(
        default_factory=list,
        description="Why the pipeline cannot go on with valid data (e.g. no evaluation examples for the gate).",
    )
    problem_counts: list[CodeCount] = Field(default_factory=list)
    tokens: TokenStats | None = None
    template: TemplateCheck | None = None
    cost: CostEstimate | None = None
    split: SplitSummary | None = None
    options: ValidationOptions
    seconds: float = 0.0

    @property
    def errors(self) -> list[CodeCount]:
        return [c for c in self.problem_counts if c.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[CodeCount]:
        return [c for c in self.problem_counts if c.severity is Severity.WARNING]
