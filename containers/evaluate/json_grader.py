"""JSON metrics of the Evaluate job: json_valid, and json_schema_match against an uploaded JSON Schema (Draft 2020-12)
or, without one, the references' shape. Split out of graders.py (which re-exports these names) to keep it short.

An uploaded schema runs on untrusted model answers: its validation of one answer runs under guards.time_limit (a
`pattern` that backtracks is a ConfigError naming the example and the model), and any other failure of the schema on
one answer (SCHEMA_FAILURES: a recursive `$ref`, `multipleOf` overflowing on a 400-digit integer, ...) scores that
answer 0 and is recorded as a SchemaFailure (graders.py counts them per model in evaluation.json) instead of failing
the job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from containers.common.jobkit import ConfigError
from containers.evaluate import guards
from jsonschema import Draft202012Validator
from jsonschema.exceptions import FormatError, SchemaError, UndefinedTypeCheck, UnknownType, ValidationError
from referencing import Registry
from referencing.exceptions import CannotDetermineSpecification, NoInternalID, Unresolvable

# What validating one answer against an uploaded JSON Schema may raise besides a verdict: a recursive $ref
# (RecursionError), multipleOf on a huge number (OverflowError, hence ArithmeticError), bad values deep in a schema
# check_schema let through (ValueError, TypeError, LookupError: referencing's NoSuchResource is a KeyError), and
# jsonschema's / referencing's own errors. Listed rather than `except Exception` so a bug of ours still surfaces;
# Unresolvable (a $ref to another document) stays a ConfigError, and guards' timeout is a BaseException.
SCHEMA_FAILURES: tuple[type[BaseException], ...] = (
    RecursionError,
    ArithmeticError,
    ValueError,
    TypeError,
    LookupError,
    ValidationError,
    SchemaError,
    UnknownType,
    UndefinedTypeCheck,
    FormatError,
    CannotDetermineSpecification,
    NoInternalID,
)
ERROR_MESSAGE_CHARS = 200


def parse_json(text: str) -> tuple[bool, Any]:
    """(True, value) when the stripped text is a JSON document, else (False, None). Nesting deeper than the parser's
    recursion limit (an answer of 2000 "[") is not JSON here rather than a RecursionError that fails the job."""
    try:
        return True, json.loads(text.strip())
    except (json.JSONDecodeError, ValueError, RecursionError):
        return False, None


def json_type(value: Any) -> str:
    """JSON type name of a parsed value; int and float are both 'number' (bool is not)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def is_json_reference(reference: str) -> bool:
    """A reference counts as JSON when it parses to an object or an array (a bare number or word does not)."""
    ok, value = parse_json(reference)
    return ok and isinstance(value, dict | list)


def json_valid(answer: str) -> float:
    return 1.0 if parse_json(answer)[0] else 0.0


def json_schema_match(answer: str, reference: str) -> float:
    """1.0 when the answer parses as JSON of the reference's shape: same top-level keys with the same value types for
    objects, the same top-level type otherwise."""
    ok, value = parse_json(answer)
    ref_ok, ref = parse_json(reference)
    if not ok or not ref_ok or json_type(value) != json_type(ref):
        return 0.0
    if isinstance(ref, dict):
        if set(value) != set(ref):
            return 0.0
        return 1.0 if all(json_type(value[k]) == json_type(ref[k]) for k in ref) else 0.0
    return 1.0


@dataclass(frozen=True)
class SchemaFailure:
    """An exception the JSON Schema raised on one answer (the answer then scores 0 for json_schema_match)."""

    where: str
    type: str
    message: str


@dataclass(frozen=True)
class JsonGrader:
    """json_valid and json_schema_match: against `schema` (JSON Schema, Draft 2020-12) or, when None, the shape of
    each example's reference."""

    schema: Any = None
    validator: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def with_schema(cls, schema: Any) -> JsonGrader:
        """A bad schema is a ConfigError. The validator gets an empty registry: a `$ref` to another document is
        never fetched (processing jobs have no network; jsonschema would otherwise try to retrieve http refs)."""
        if not isinstance(schema, dict | bool):
            raise ConfigError(f"graders.json json.schema must be a JSON Schema (an object), not {json_type(schema)}")
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            where = "/".join(str(part) for part in exc.path) or "(top level)"
            raise ConfigError(
                f"graders.json json.schema is not a valid JSON Schema at {where}: {exc.message}"
            ) from exc
        except RecursionError:  # a schema nested deeper than the interpreter's recursion limit
            raise ConfigError("graders.json json.schema is nested too deeply to check") from None
        return cls(schema=schema, validator=Draft202012Validator(schema, registry=Registry()))

    def scores(
        self, answer: str, reference: str, *, where: str = "an answer", errors: list[SchemaFailure] | None = None
    ) -> dict[str, float]:
        """The answer's JSON scores; `where` ("example 3 (candidate's answer)") names it in a timeout's ConfigError.
        A schema that fails on this answer (SCHEMA_FAILURES) scores it 0 and appends the failure to `errors`."""
        ok, value = parse_json(answer)
        if self.validator is None:
            return {"json_valid": 1.0 if ok else 0.0, "json_schema_match": json_schema_match(answer, reference)}
        matches = False
        if ok:
            # The limit wraps the handlers: its timeout becomes a ConfigError, a ValueError that SCHEMA_FAILURES
            # would otherwise count as the schema failing on this answer.
            with guards.time_limit("the JSON Schema", where):
                try:
                    matches = bool(self.validator.is_valid(value))
                except Unresolvable as exc:
                    raise ConfigError(
                        f"graders.json json.schema has a $ref that cannot be resolved offline: {exc}"
                    ) from exc
                except SCHEMA_FAILURES as exc:
                    if errors is not None:
                        errors.append(SchemaFailure(where, type(exc).__name__, str(exc)[:ERROR_MESSAGE_CHARS]))
        return {"json_valid": 1.0 if ok else 0.0, "json_schema_match": 1.0 if matches else 0.0}

    def report(self) -> dict[str, Any]:
        return {"schema": self.schema if self.validator is not None else "inferred"}
