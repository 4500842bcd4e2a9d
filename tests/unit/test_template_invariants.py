"""Rules the template keeps so that a stack can be deleted and created again under the same name."""

from __future__ import annotations

import json
from pathlib import Path

import cfnlint.data.schemas
from local.cfn_yaml import load_cfn_yaml

from tuneplane.config import RunLimitSettings

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = Path(cfnlint.data.schemas.__file__).parent / "resources"


def _name_properties() -> dict[str, set[str]]:
    """Resource type -> the properties that set its physical name (``<Something>Name``, create-only), from the
    CloudFormation resource schemas cfn-lint ships."""
    names: dict[str, set[str]] = {}
    for path in SCHEMAS.glob("*.json"):
        schema = json.loads(path.read_text())
        create_only = {pointer.rsplit("/", 1)[1] for pointer in schema.get("createOnlyProperties", [])}
        names[schema.get("typeName", "")] = {prop for prop in create_only if prop.endswith("Name")}
    return names


def test_no_retained_resource_has_a_fixed_name() -> None:
    # GIVEN the resources `sam delete` leaves behind (DeletionPolicy: Retain)
    template = load_cfn_yaml(ROOT / "template.yaml")
    names = _name_properties()
    retained = {
        logical_id: resource
        for logical_id, resource in template["Resources"].items()
        if resource.get("DeletionPolicy") == "Retain"
    }
    assert retained, "nothing is retained: this test guards nothing"
    # THEN none sets its physical name: a second stack of the same name would collide with the one left behind
    fixed = {
        logical_id: sorted(names.get(resource["Type"], set()) & set(resource.get("Properties", {})))
        for logical_id, resource in retained.items()
    }
    assert not {logical_id: props for logical_id, props in fixed.items() if props}


def test_no_lifecycle_rule_of_the_data_bucket_removes_an_upload() -> None:
    # GIVEN the data bucket's lifecycle rules
    template = load_cfn_yaml(ROOT / "template.yaml")
    rules = template["Resources"]["DataBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    # THEN every rule that expires objects or versions is limited to runs/ (uploads live under incoming/, and every
    # version of them is what some run trained on)
    expiring = [rule for rule in rules if {"ExpirationInDays", "NoncurrentVersionExpiration"} & set(rule)]
    assert expiring
    assert all(str(rule.get("Prefix", "")).startswith("runs/") for rule in expiring), expiring


def test_every_parameter_is_in_exactly_one_parameter_group() -> None:
    # GIVEN the template's parameters and the console's parameter groups
    template = load_cfn_yaml(ROOT / "template.yaml")
    groups = template["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"]
    grouped = [name for group in groups for name in group["Parameters"]]
    # THEN each parameter is shown once, in a group (the run limits included)
    assert sorted(grouped) == sorted(template["Parameters"])
    assert {"AllowedTrainingInstanceTypes", "MaxTrainingSteps", "MaxTrainingEpochs", "MaxRunCostUsd"} <= set(grouped)


def test_validate_and_stage_functions_enforce_the_same_run_limits() -> None:
    # GIVEN the settings both functions read for the run limits (the Validate stage rejects, the Stage function
    # refuses to build a job request outside them)
    template = load_cfn_yaml(ROOT / "template.yaml")
    resources = template["Resources"]
    validate = resources["ValidateFunction"]["Properties"]["Environment"]["Variables"]
    stage = resources["StageFunction"]["Properties"]["Environment"]["Variables"]
    # THEN every limit the Stage function checks again reaches both from the same template expression (the
    # evaluate container's own floors, which have no parameter, excepted)
    without_parameter = {"max_regression_vs_production", "min_stop_rate", "aws_region"}  # AWS_REGION: Lambda's own
    stage_checks = {
        "training_instance_types",
        "allowed_training_instance_types",
        "max_training_steps",
        "max_training_epochs",
        "max_seq_length",
        "min_score",
        "min_improvement_over_base",
        "deploy_target",
        "allowed_deploy_targets",
        "regression_set_s3_uri",
        "max_regression_drop",
        "max_quantization_drop",
        "judge_model_id",
        "judge_endpoint_url",
        "grader_function_arns",
    }
    assert stage_checks <= set(RunLimitSettings.model_fields) - without_parameter
    for field in set(RunLimitSettings.model_fields) - without_parameter:
        assert field.upper() in validate, field
    for field in stage_checks:
        assert validate[field.upper()] == stage[field.upper()], field
