"""The IAM policy evaluation engine (local/cloud/iam/evaluate.py, conditions.py) against the examples and rules of
AWS's IAM documentation: policy evaluation logic, condition operators, multivalued context keys."""

from __future__ import annotations

from typing import Any

import pytest
from local.cloud.iam.conditions import UnsupportedCondition
from local.cloud.iam.evaluate import Request, evaluate

ROLE = "arn:aws:iam::111122223333:role/app"
SESSION = "arn:aws:sts::111122223333:assumed-role/app/session"
BUCKET = "arn:aws:s3:::amzn-s3-demo-bucket"


def _policy(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def _allow(action: Any = "*", resource: Any = "*", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


def _deny(action: Any = "*", resource: Any = "*", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Deny", "Action": action, "Resource": resource, **extra}


def _request(action: str = "s3:GetObject", resource: str = BUCKET + "/key", **context: Any) -> Request:
    """Context keys as keyword arguments: ``aws__PrincipalTag__dept`` is ``aws:PrincipalTag/dept``."""
    values = {key: value if isinstance(value, list) else [value] for key, value in context.items()}
    keys = {key: key.replace("__", ":", 1).replace("__", "/").lower() for key in values}
    return Request(action, resource, ROLE, {keys[key]: value for key, value in values.items()}, SESSION)


def _outcome(request: Request, *statements: dict[str, Any]) -> str:
    return evaluate(request, [_policy(*statements)]).outcome


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation logic


def test_nothing_allows_by_default_and_the_message_names_the_action() -> None:
    # GIVEN an identity policy about another action WHEN s3:GetObject is asked THEN it is implicitly denied
    decision = evaluate(_request(), [_policy(_allow("s3:PutObject"))])
    assert decision.outcome == "implicit_deny"
    assert decision.reason == "because no identity-based policy allows the s3:GetObject action"


def test_an_explicit_deny_overrides_any_allow() -> None:
    # GIVEN an Allow of everything and a Deny of the object's prefix, in two policies
    policies = [_policy(_allow()), _policy(_deny("s3:*", BUCKET + "/secret/*"))]
    # THEN the prefix is denied explicitly, the rest allowed
    assert evaluate(_request(resource=BUCKET + "/secret/a"), policies).reason.startswith("with an explicit deny")
    assert evaluate(_request(resource=BUCKET + "/public/a"), policies).allowed


def test_actions_match_case_insensitively_with_wildcards_and_resources_case_sensitively() -> None:
    assert _outcome(_request("s3:GetObject"), _allow("S3:get*", BUCKET + "/*")) == "allow"
    assert _outcome(_request("s3:GetObjectVersion"), _allow("s3:GetObject?ersion", BUCKET + "/*")) == "allow"
    assert _outcome(_request("s3:PutObject"), _allow("s3:Get*", BUCKET + "/*")) == "implicit_deny"
    assert _outcome(_request(resource=BUCKET + "/Key"), _allow("s3:GetObject", BUCKET + "/key")) == "implicit_deny"
    assert _outcome(_request(resource=BUCKET + "/k1"), _allow("s3:GetObject", BUCKET + "/k?")) == "allow"


def test_not_action_and_not_resource_match_everything_else() -> None:
    # GIVEN the docs' "allow everything except IAM" and "allow on everything but one bucket"
    not_iam = {"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}
    not_bucket = {"Effect": "Allow", "Action": "s3:*", "NotResource": [BUCKET, BUCKET + "/*"]}
    assert _outcome(_request(), not_iam) == "allow"
    assert _outcome(_request("iam:PassRole", ROLE), not_iam) == "implicit_deny"
    assert _outcome(_request(resource="arn:aws:s3:::other/k"), not_bucket) == "allow"
    assert _outcome(_request(), not_bucket) == "implicit_deny"


def test_a_resource_policy_naming_the_role_allows_without_an_identity_policy() -> None:
    bucket_policy = _policy(_allow("s3:GetObject", BUCKET + "/*", Principal={"AWS": ROLE}))
    assert evaluate(_request(), [], bucket_policy).allowed


def test_a_resource_policy_naming_the_account_delegates_to_iam() -> None:
    # GIVEN a bucket policy that names the account (not the role), and no identity policy
    bucket_policy = _policy(_allow("s3:GetObject", BUCKET + "/*", Principal={"AWS": "arn:aws:iam::111122223333:root"}))
    # THEN it does not allow on its own
    assert not evaluate(_request(), [], bucket_policy).allowed
    assert evaluate(_request(), [_policy(_allow("s3:GetObject"))], bucket_policy).allowed


def test_a_deny_for_everyone_in_a_resource_policy_wins_over_identity_allows() -> None:
    # GIVEN the usual "deny insecure transport" bucket policy
    bucket_policy = _policy(
        _deny("s3:*", [BUCKET, BUCKET + "/*"], Principal="*", Condition={"Bool": {"aws:SecureTransport": False}})
    )
    identity = [_policy(_allow("s3:*"))]
    # THEN plain HTTP is denied explicitly, HTTPS allowed
    denied = evaluate(_request(aws__SecureTransport="false"), identity, bucket_policy)
    assert denied.reason == "with an explicit deny in a resource-based policy"
    assert evaluate(_request(aws__SecureTransport="true"), identity, bucket_policy).allowed


def test_a_kms_key_is_usable_only_as_its_key_policy_says() -> None:
    key = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    request = _request("kms:Decrypt", key)
    delegating = _policy(_allow("kms:*", "*", Principal={"AWS": "arn:aws:iam::111122223333:root"}))
    other_role = _policy(_allow("kms:*", "*", Principal={"AWS": "arn:aws:iam::111122223333:role/other"}))
    identity = [_policy(_allow("kms:Decrypt", key))]
    # THEN delegation to IAM needs the identity policy too; a key policy for someone else denies whatever IAM says
    assert evaluate(request, identity, delegating, key_policy_required=True).allowed
    assert not evaluate(request, [], delegating, key_policy_required=True).allowed
    refused = evaluate(request, identity, other_role, key_policy_required=True)
    assert refused.reason == "because no resource-based policy allows the kms:Decrypt action"
    # AND a key policy naming the role allows by itself
    direct = _policy(_allow("kms:Decrypt", "*", Principal={"AWS": ROLE}))
    assert evaluate(request, [], direct, key_policy_required=True).allowed


# ---------------------------------------------------------------------------------------------------------------------
# Condition operators


def test_values_of_one_key_are_ored_and_keys_are_anded() -> None:
    # GIVEN the docs' example: department is finance, hr or legal AND the role is audit
    statement = _allow(
        Condition={
            "StringEquals": {
                "aws:PrincipalTag/department": ["finance", "hr", "legal"],
                "aws:PrincipalTag/role": ["audit", "security"],
            }
        }
    )
    assert (
        _outcome(_request(aws__PrincipalTag__department="hr", aws__PrincipalTag__role="audit"), statement) == "allow"
    )
    assert (
        _outcome(_request(aws__PrincipalTag__department="it", aws__PrincipalTag__role="audit"), statement) != "allow"
    )
    assert _outcome(_request(aws__PrincipalTag__department="hr"), statement) != "allow"


def test_keys_are_case_insensitive_values_case_sensitive_except_ignore_case() -> None:
    statement = _allow(Condition={"StringEquals": {"AWS:RequestTag/Project": "Blue"}})
    assert _outcome(_request(aws__requesttag__project="Blue"), statement) == "allow"
    assert _outcome(_request(aws__requesttag__project="blue"), statement) != "allow"
    ignoring = _allow(Condition={"StringEqualsIgnoreCase": {"aws:RequestTag/Project": "Blue"}})
    assert _outcome(_request(aws__requesttag__project="blue"), ignoring) == "allow"


def test_a_missing_key_fails_a_condition_but_satisfies_a_negated_one() -> None:
    # The docs: "If the policy condition requires that the key is not matched, such as StringNotLike or ArnNotLike,
    # and the right key is not present, the condition is true."
    assert _outcome(_request(), _allow(Condition={"StringEquals": {"s3:prefix": "home/"}})) != "allow"
    assert _outcome(_request(), _allow(Condition={"StringNotLike": {"s3:prefix": "home/*"}})) == "allow"
    assert _outcome(_request(), _allow(Condition={"ArnNotLike": {"aws:SourceArn": "arn:aws:sns:*:*:t"}})) == "allow"


def test_if_exists_is_true_when_the_key_is_missing() -> None:
    # GIVEN the docs' example: instance types t1.*, t2.* or m3.*, if the request has one at all
    statement = _allow(Condition={"StringLikeIfExists": {"ec2:InstanceType": ["t1.*", "t2.*", "m3.*"]}})
    assert _outcome(_request("ec2:RunInstances", "*"), statement) == "allow"
    assert _outcome(_request("ec2:RunInstances", "*", ec2__InstanceType="t2.micro"), statement) == "allow"
    assert _outcome(_request("ec2:RunInstances", "*", ec2__InstanceType="m5.large"), statement) != "allow"


def test_null_checks_whether_the_key_is_there() -> None:
    missing = _deny(Condition={"Null": {"aws:TokenIssueTime": "true"}})
    present = _allow(Condition={"Null": {"aws:TokenIssueTime": "false"}})
    assert _outcome(_request(), _allow(), missing) == "explicit_deny"
    assert _outcome(_request(aws__TokenIssueTime="2024-01-01T00:00:00Z"), _allow(), missing) == "allow"
    assert _outcome(_request(), present) != "allow"


@pytest.mark.parametrize(
    ("operator", "policy_value", "request_value", "expected"),
    [
        ("NumericLessThanEquals", "10", "10", True),
        ("NumericLessThan", "10", "10", False),
        ("NumericGreaterThan", "1.5", "2", True),
        ("NumericNotEquals", "3", "3", False),
        ("DateGreaterThan", "2020-04-01T00:00:00Z", "2020-05-01T12:00:00Z", True),
        ("DateLessThan", "2020-06-30T23:59:59Z", "2020-07-01T00:00:00Z", False),
        ("DateEquals", "1585699200", "2020-04-01T00:00:00Z", True),
        ("IpAddress", "203.0.113.0/24", "203.0.113.7", True),
        ("NotIpAddress", "203.0.113.0/24", "198.51.100.1", True),
        ("ArnLike", "arn:aws:sqs:*:111122223333:queue?", "arn:aws:sqs:us-east-1:111122223333:queue1", True),
        ("ArnEquals", "arn:aws:sqs:*:111122223333:queue1", "arn:aws:sqs:us-east-1:444455556666:queue1", False),
        ("ArnLike", "arn:aws:s3:::bucket/*", "arn:aws:s3:::bucket/a/b", True),
        ("Bool", "true", "true", True),
        ("StringLike", "home/${aws}*", "home/${aws}x", True),
    ],
)
def test_condition_operators(operator: str, policy_value: str, request_value: str, expected: bool) -> None:
    statement = _allow(Condition={operator: {"test:key": policy_value}})
    assert (_outcome(_request(test__key=request_value), statement) == "allow") is expected


def test_an_unknown_operator_is_an_error_not_a_guess() -> None:
    with pytest.raises(UnsupportedCondition):
        evaluate(_request(test__key="x"), [_policy(_allow(Condition={"StringSoundsLike": {"test:key": "x"}}))])


# ---------------------------------------------------------------------------------------------------------------------
# Multivalued context keys: the docs' tables


@pytest.mark.parametrize(
    ("tag_keys", "denied"),
    [
        (["key1:legal"], False),
        (["key1:hr", "key1:personnel"], False),
        (["key2:audit"], True),
        (["key1:hr", "key2:audit"], False),
        (None, True),  # ForAllValues is true when the key is missing
    ],
)
def test_for_all_values_deny_unless_every_tag_key_has_the_prefix(tag_keys: list[str] | None, denied: bool) -> None:
    # GIVEN the docs' DenyRestrictedTags policy: ForAllValues:StringNotLike aws:TagKeys key1*
    deny = _deny(["iam:Tag*", "iam:UnTag*"], Condition={"ForAllValues:StringNotLike": {"aws:TagKeys": "key1*"}})
    request = _request("iam:TagUser", "*", **({"aws__TagKeys": tag_keys} if tag_keys is not None else {}))
    assert (_outcome(request, _allow(), deny) == "explicit_deny") is denied


@pytest.mark.parametrize(
    ("tag_keys", "denied"),
    [(["webserver"], True), (["environment", "webserver", "test"], True), (["test"], False), (None, False)],
)
def test_for_any_value_deny_if_any_tag_key_is_listed(tag_keys: list[str] | None, denied: bool) -> None:
    # GIVEN the docs' snapshot example: deny when any tag key is environment or webserver
    deny = _deny(
        "ec2:CreateSnapshot", Condition={"ForAnyValue:StringEquals": {"aws:TagKeys": ["webserver", "environment"]}}
    )
    request = _request("ec2:CreateSnapshot", "*", **({"aws__TagKeys": tag_keys} if tag_keys is not None else {}))
    assert (_outcome(request, _allow(), deny) == "explicit_deny") is denied


def test_null_false_with_for_all_values_closes_the_missing_key_gap() -> None:
    # GIVEN the docs' fix: Null false AND ForAllValues:StringLike
    deny = _deny(
        "iam:Tag*",
        Condition={"Null": {"aws:TagKeys": "false"}, "ForAllValues:StringLike": {"aws:TagKeys": ["key1*", "key2*"]}},
    )
    assert _outcome(_request("iam:TagRole", "*"), _allow(), deny) == "allow"
    assert _outcome(_request("iam:TagRole", "*", aws__TagKeys=["key1a", "key2b"]), _allow(), deny) == "explicit_deny"
    assert _outcome(_request("iam:TagRole", "*", aws__TagKeys=["key1a", "key3"]), _allow(), deny) == "allow"


def test_arn_like_with_a_bare_wildcard_matches_any_value() -> None:
    # GIVEN ArnLike on "*" (not an ARN): WHEN evaluated THEN it matches any value, as a wildcard does
    from local.cloud.iam.conditions import _arn_like

    assert _arn_like("*", "arn:aws:s3:::bucket")
    assert _arn_like("arn:aws:s3:::*", "arn:aws:s3:::bucket")
    assert not _arn_like("arn:aws:s3:::other", "arn:aws:s3:::bucket")
