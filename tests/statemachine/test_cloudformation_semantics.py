"""The local cloud's CloudFormation gives intrinsic functions the meaning AWS gives them.

``Ref`` of a resource returns its resource schema's ``primaryIdentifier`` (cfn-lint ships the schemas AWS publishes):
an ``...Arn`` identifier is an ARN, a ``...Url`` one a URL, any other a name or id. A local repair that changed what
``Ref`` returns would hide a template that is wrong on AWS (as a ``!Ref`` of the model package group, which is its
ARN, once hid a policy built from it as if it were the name).
"""

from __future__ import annotations

import json
import urllib.parse
from functools import cache
from pathlib import Path
from typing import Any

import boto3
import cfnlint.data.schemas
from local.cloud import moto_fixes
from local.cloud.template import transform_template
from moto.cloudformation.parsing import clean_json
from tests.statemachine.harness import Cloud

SCHEMAS = Path(cfnlint.data.schemas.__file__).parent / "resources"
# Resource types whose documented Ref ("Return values" in the CloudFormation reference) predates their registry
# schema and is not the schema's primaryIdentifier: a rule's Ref is its name (the AWS CDK builds ruleName from it).
DOCUMENTED_REF = {"AWS::Events::Rule": "name"}


@cache
def _primary_identifiers() -> dict[str, list[str]]:
    """Resource type -> its primaryIdentifier property names, from the schemas cfn-lint ships."""
    identifiers: dict[str, list[str]] = {}
    for path in SCHEMAS.glob("*.json"):
        schema = json.loads(path.read_text())
        if "typeName" in schema and "primaryIdentifier" in schema:
            identifiers[schema["typeName"]] = [pointer.rsplit("/", 1)[1] for pointer in schema["primaryIdentifier"]]
    return identifiers


def _kind_of_value(value: str) -> str:
    if value.startswith("arn:"):
        return "arn"
    if value.startswith("https://"):
        return "url"
    return "name"


def _expected_kind(identifier: str) -> str:
    if identifier.endswith("Arn") or identifier == "Arn":
        return "arn"
    if identifier.endswith("Url"):
        return "url"
    return "name"


def test_ref_of_every_resource_is_what_its_schema_says(cloud: Cloud) -> None:
    # GIVEN the stack deployed into the local cloud, and the template as it was transformed for it
    deployment = cloud.deployment
    template: dict[str, Any] = transform_template(
        {"BaseModelS3Uri": deployment.parameters["BaseModelS3Uri"]}, assets_bucket="unused"
    ).template
    stack = moto_fixes.find_stack(deployment.stack_name, deployment.account_id, deployment.region)
    identifiers = _primary_identifiers()
    checked: dict[str, str] = {}
    wrong: list[str] = []
    # WHEN each created resource's Ref is resolved as the stack's intrinsics resolve it
    for logical_id, resource in template["Resources"].items():
        identifier = identifiers.get(resource["Type"], [])
        if len(identifier) != 1 or not deployment.resources.get(logical_id):
            continue  # compound identifiers (Ref is one of their parts) and resources the local cloud skips
        with moto_fixes.event_bus_ref_fix():  # the repair deploy applies while the stack resolves its intrinsics
            value = clean_json({"Ref": logical_id}, stack.resource_map)
        if not isinstance(value, str):
            wrong.append(f"{logical_id} ({resource['Type']}): Ref is {value!r}, not a string")
            continue
        checked[resource["Type"]] = value
        if _kind_of_value(value) != DOCUMENTED_REF.get(resource["Type"], _expected_kind(identifier[0])):
            wrong.append(f"{logical_id} ({resource['Type']}): Ref {value!r}, schema identifier {identifier[0]}")
    # THEN each one is of the identifier's kind, the model package group's among them
    assert not wrong, "\n".join(wrong)
    assert checked["AWS::SageMaker::ModelPackageGroup"].startswith("arn:aws:sagemaker:")
    assert len(checked) >= 10, sorted(checked)


def test_the_registry_policy_and_the_register_step_name_the_group_as_aws_resolves_it(cloud: Cloud) -> None:
    # GIVEN the deployed state machine role and model package group
    deployment = cloud.deployment
    group_arn = deployment.outputs["ModelPackageGroupArn"]
    group_name = deployment.outputs["ModelPackageGroupName"]
    assert group_arn.endswith(f":model-package-group/{group_name}")
    # WHEN the role's RegisterModels statement and the Register state's request are read
    iam = boto3.client("iam")
    role_name = deployment.resources["PipelineStateMachineRole"]
    statements = [
        statement
        for policy_name in iam.list_role_policies(RoleName=role_name)["PolicyNames"]
        for statement in _document(iam.get_role_policy(RoleName=role_name, PolicyName=policy_name))["Statement"]
    ]
    register = next(statement for statement in statements if statement.get("Sid") == "RegisterModels")
    definition = json.loads(
        boto3.client("stepfunctions").describe_state_machine(stateMachineArn=deployment.state_machine_arn)[
            "definition"
        ]
    )
    request = definition["States"]["Register"]["Parameters"]
    # THEN the model packages' ARNs are under the group's name (not its ARN), and the request names the group
    model_package_arn = group_arn.replace(":model-package-group/", ":model-package/") + "/1"
    assert any(_arn_like(pattern, model_package_arn) for pattern in register["Resource"]), register["Resource"]
    assert request["ModelPackageGroupName"] == group_name


def _document(answer: dict[str, Any]) -> dict[str, Any]:
    """IAM returns a policy document URL-encoded (botocore decodes it into a dict; moto's may stay a string)."""
    document = answer["PolicyDocument"]
    return json.loads(urllib.parse.unquote(document)) if isinstance(document, str) else dict(document)


def _arn_like(pattern: str, arn: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(arn, pattern)
