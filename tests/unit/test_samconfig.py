"""samconfig.toml: each environment's parameter_overrides parse the way SAM CLI splits them (shell words of
``Name=Value``), name only parameters template.yaml declares, and keep within each parameter's constraints; the
environments differ where they should (dev cheap and undeployed; prod deployed blue/green, its packages registered
Approved: the gate, the smoke test and the alarm-driven rollback guard the endpoint, not a person's sign-off)."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
from local.cfn_yaml import load_cfn_yaml

from tuneplane.models.pipeline import INSTANCE_TYPE_PATTERN

ROOT = Path(__file__).resolve().parents[2]
SAMCONFIG = tomllib.loads((ROOT / "samconfig.toml").read_text(encoding="utf-8"))
PARAMETERS: dict[str, dict[str, Any]] = load_cfn_yaml(ROOT / "template.yaml")["Parameters"]
ENVIRONMENTS = sorted(
    env for env, sections in SAMCONFIG.items() if isinstance(sections, dict) and "deploy" in sections
)


def _overrides(env: str) -> dict[str, str]:
    raw = SAMCONFIG[env]["deploy"]["parameters"].get("parameter_overrides", "")
    words = [word for item in ([raw] if isinstance(raw, str) else raw) for word in shlex.split(item)]
    pairs = [word.split("=", 1) for word in words]
    assert all(len(pair) == 2 for pair in pairs), f"{env}: not Name=Value: {words}"
    names = [name for name, _ in pairs]
    assert len(names) == len(set(names)), f"{env}: a parameter given twice: {names}"
    return dict((name, value) for name, value in pairs)


def _value(env: str, name: str) -> str:
    """What the stack gets: the environment's override, else the template's default."""
    return _overrides(env).get(name, str(PARAMETERS[name].get("Default", "")))


def _problem(name: str, value: str) -> str | None:
    spec = PARAMETERS[name]
    kind = spec["Type"]
    allowed = spec.get("AllowedValues")
    if allowed is not None and value not in [str(item) for item in allowed]:
        return f"{name}={value!r} not in {allowed}"
    pattern = spec.get("AllowedPattern")
    # A CommaDelimitedList's pattern applies to each value (the AWS docs, CloudFormation "Parameters").
    values = value.split(",") if kind == "CommaDelimitedList" else [value]
    if pattern is not None and not all(re.fullmatch(pattern, one) for one in values):
        return f"{name}={value!r} does not match {pattern}"
    if kind == "Number":
        try:
            number = float(value)
        except ValueError:
            return f"{name}={value!r} is not a number"
        if "MinValue" in spec and number < float(spec["MinValue"]):
            return f"{name}={value} below {spec['MinValue']}"
        if "MaxValue" in spec and number > float(spec["MaxValue"]):
            return f"{name}={value} above {spec['MaxValue']}"
    if kind == "CommaDelimitedList" and name.endswith("InstanceTypes"):
        bad = [item for item in value.split(",") if item and not re.fullmatch(INSTANCE_TYPE_PATTERN, item)]
        if bad:
            return f"{name}: {bad} are not SageMaker instance types"
    return None


def test_there_are_dev_default_and_prod_environments() -> None:
    # GIVEN samconfig.toml WHEN its environments with deploy settings are listed THEN default, dev and prod exist
    assert {"default", "dev", "prod"} <= set(ENVIRONMENTS)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_overrides_name_template_parameters_within_their_constraints(env: str) -> None:
    # GIVEN one environment's parameter_overrides
    # WHEN they are split as SAM CLI splits them and checked against template.yaml's Parameters
    overrides = _overrides(env)
    unknown = sorted(set(overrides) - set(PARAMETERS))
    problems = [
        problem for name, value in overrides.items() if name in PARAMETERS and (problem := _problem(name, value))
    ]
    # THEN every name is a parameter and every value is one CloudFormation accepts
    assert overrides, f"{env}: no parameter_overrides"
    assert unknown == [], f"{env}: not parameters of template.yaml: {unknown}"
    assert problems == []


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_autoscaling_never_goes_below_its_floor(env: str) -> None:
    # GIVEN an environment's endpoint sizes (override or default)
    # WHEN they are compared THEN the maximum is at least the minimum
    assert int(_value(env, "EndpointMaxInstances")) >= int(_value(env, "EndpointMinInstances"))


def test_dev_is_default_under_its_explicit_name() -> None:
    # GIVEN the default and dev environments WHEN their deploy settings are compared THEN they are the same stack
    assert SAMCONFIG["dev"] == SAMCONFIG["default"]


def test_dev_trains_on_spot_and_deploys_nowhere() -> None:
    # GIVEN the dev environment WHEN its cost and deployment settings are read
    # THEN it trains on spot capacity, does not quantize, and serves nothing
    assert _value("dev", "UseSpotTraining") == "true"
    assert _value("dev", "QuantizeEnabled") == "false"
    assert _value("dev", "DeployTarget") == "none"


def test_prod_deploys_blue_green_with_a_canary() -> None:
    # GIVEN the prod environment WHEN its deployment settings are read
    # THEN it serves with vLLM on at least two instances (a canary needs two), registers models Approved (with
    # PendingManualApproval the deploy stage would be skipped), and serves the model the gate evaluated (merged)
    assert _value("prod", "DeployTarget") == "vllm"
    assert int(_value("prod", "EndpointMinInstances")) >= 2
    assert _value("prod", "ModelApprovalStatus") == "Approved"
    assert _value("prod", "ServeMode") == "merged" and _value("prod", "QuantizeEnabled") == "false"
    assert _value("prod", "FallbackTrainingInstanceTypes"), "prod trains on demand: it needs fallback capacity"


def test_the_local_cloud_checks_each_value_of_a_list_parameter_as_cloudformation_does() -> None:
    # GIVEN template.yaml's list parameters, whose patterns describe one value (the AWS docs: "must match each value")
    from local.cloud.template import TemplateError, check_parameters, load_sam_template

    template = load_sam_template()
    base = {"BaseModelS3Uri": "s3://models-bucket/base/"}
    arn = "arn:aws:lambda:us-east-1:123456789012:function:grader"
    # WHEN lists of valid values are given THEN they deploy
    check_parameters(template, {**base, "GraderFunctionArns": f"{arn},{arn}-two"})
    check_parameters(template, {**base, "AllowedTrainingInstanceTypes": "ml.g5.2xlarge,ml.g6e.12xlarge"})
    # WHEN one value of a list is not one THEN the deployment is refused, naming the parameter
    with pytest.raises(TemplateError, match="GraderFunctionArns"):
        check_parameters(template, {**base, "GraderFunctionArns": f"{arn},not-an-arn"})
    with pytest.raises(TemplateError, match="AllowedDeployTargets"):
        check_parameters(template, {**base, "AllowedDeployTargets": "vllm,sagemaker"})
