"""The Register step's user-derived fields fit SageMaker's request constraints whatever the dataset key is.

The constraints are read from botocore's SageMaker service model (the API's own), not restated here."""

from __future__ import annotations

import botocore.session
import regex
from hypothesis import given
from hypothesis import strategies as st

from tuneplane.logic.registry import metadata_value, registration

_MODEL = botocore.session.get_session().get_service_model("sagemaker")
_REQUEST = _MODEL.operation_model("CreateModelPackage").input_shape.members
_METADATA_VALUE = _REQUEST["CustomerMetadataProperties"].value
_DESCRIPTION = _REQUEST["ModelPackageDescription"]
_TAG_VALUE = _MODEL.shape_for("TagValue")


def _accepted(shape: botocore.model.Shape, value: str) -> bool:
    """AWS validates a member against its whole pattern and its length bounds."""
    metadata = shape.metadata
    return (
        regex.fullmatch(metadata["pattern"], value) is not None
        and metadata.get("min", 0) <= len(value) <= metadata["max"]
    )


def test_a_key_with_parentheses_and_spaces_becomes_an_accepted_metadata_value() -> None:
    # GIVEN the key SageMaker refused at Register, after training: parentheses are outside the value pattern
    key = "incoming/support (v2).jsonl"
    assert not _accepted(_METADATA_VALUE, key)
    # WHEN it is made a metadata value
    value = registration("support-v2-0123456789abcdef", key)["metadata"]["dataset"]
    # THEN SageMaker accepts it, and it still reads as the key
    assert _accepted(_METADATA_VALUE, value)
    assert value.startswith("incoming/support _v2_.jsonl@")


def test_an_acceptable_key_is_passed_unchanged() -> None:
    assert metadata_value("incoming/support-tickets v2.jsonl") == "incoming/support-tickets v2.jsonl"


@given(st.text(min_size=1, max_size=1100))
def test_any_key_gives_values_sagemaker_accepts(key: str) -> None:
    # GIVEN any S3 key WHEN the registration fields are built
    fields = registration("run-0123456789abcdef", key)
    # THEN the metadata values, the description (and the value as a tag value) are accepted by the API's rules
    assert all(_accepted(_METADATA_VALUE, value) for value in fields["metadata"].values())
    assert _accepted(_TAG_VALUE, fields["metadata"]["dataset"])
    assert _accepted(_DESCRIPTION, fields["description"])


@given(st.text(min_size=1, max_size=300), st.text(min_size=1, max_size=300))
def test_two_different_keys_never_share_a_value(first: str, second: str) -> None:
    # GIVEN two different keys WHEN each is made a metadata value THEN they stay apart (a run is traceable to its key)
    if first != second:
        assert metadata_value(first) != metadata_value(second)
