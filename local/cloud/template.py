"""Turn the real ``template.yaml`` into a plain CloudFormation template that moto can create, with no AWS access.

``sam build``/``sam package`` normally upload the local code folders and ASL files to S3 and rewrite their paths;
here that step is done for the local cloud: every local ``CodeUri``/``ContentUri`` becomes an object in a local
assets bucket (``deploy`` uploads the zips), every local ``DefinitionUri`` is inlined as ``Definition``, and the
SAM transform itself runs offline with ``aws-sam-translator``. Nothing else in the template is changed, so what
runs locally is the same template that ships.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import yaml
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator
from samtranslator.utils.py27hash_fix import to_py27_compatible_template, undo_mark_unicode_str_in_template

from local.cfn_yaml import load_cfn_yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"


class TemplateError(ValueError):
    """The template or a parameter value would be refused by SAM or CloudFormation."""


@dataclass(frozen=True)
class CodeAsset:
    """A local folder that ``sam package`` would zip and upload: it goes to ``s3://<assets bucket>/<key>``."""

    logical_id: str
    directory: Path
    key: str


@dataclass(frozen=True)
class TransformedTemplate:
    """The CloudFormation template (SAM transform applied) and where each function's code lives on disk."""

    template: dict[str, Any]
    parameters: dict[str, str]
    assets: tuple[CodeAsset, ...]
    function_code: dict[str, Path]  # logical id of the AWS::Lambda::Function -> its CodeUri folder


def load_sam_template(path: Path = TEMPLATE) -> dict[str, Any]:
    """The SAM template as a dict, intrinsic functions in long form (what the SAM translator expects)."""
    document = load_cfn_yaml(path)
    if not isinstance(document, dict) or "Resources" not in document:
        raise TemplateError(f"{path}: not a CloudFormation/SAM template")
    return document


def check_parameters(template: Mapping[str, Any], values: Mapping[str, str]) -> dict[str, str]:
    """All parameter values (given or default) as strings, checked the way CloudFormation checks them.

    moto does not enforce ``AllowedPattern``/``AllowedValues``/``MinValue``/``MaxValue``; a value that AWS would
    refuse must not deploy locally either.
    """
    declared: dict[str, dict[str, Any]] = template.get("Parameters", {})
    unknown = sorted(set(values) - set(declared))
    if unknown:
        raise TemplateError(f"parameters not declared in the template: {', '.join(unknown)}")
    resolved: dict[str, str] = {}
    for name, spec in declared.items():
        if name in values:
            value = str(values[name])
        elif "Default" in spec:
            value = str(spec["Default"])
        else:
            raise TemplateError(f"parameter {name} has no default and no value was given")
        _check_parameter(name, spec, value)
        resolved[name] = value
    return resolved


def _check_parameter(name: str, spec: Mapping[str, Any], value: str) -> None:
    problem = None
    # A CommaDelimitedList's AllowedPattern "must match each value in the list" (the AWS docs, CloudFormation
    # "Parameters"): each value is checked, so a pattern only a whole list matches fails here as it would there.
    values = value.split(",") if spec.get("Type") == "CommaDelimitedList" else [value]
    if "AllowedPattern" in spec and not all(re.fullmatch(spec["AllowedPattern"], one) for one in values):
        problem = spec.get("ConstraintDescription") or f"must match {spec['AllowedPattern']}"
    elif "AllowedValues" in spec and value not in [str(allowed) for allowed in spec["AllowedValues"]]:
        problem = f"must be one of {spec['AllowedValues']}"
    elif spec.get("Type") == "Number":
        try:
            number = float(value)
        except ValueError:
            problem = "must be a number"
        else:
            if "MinValue" in spec and number < float(spec["MinValue"]):
                problem = f"must be at least {spec['MinValue']}"
            elif "MaxValue" in spec and number > float(spec["MaxValue"]):
                problem = f"must be at most {spec['MaxValue']}"
    if problem:
        raise TemplateError(f"parameter {name}={value!r}: {problem}")


_CODE_URI_PROPERTY = {"AWS::Serverless::Function": "CodeUri", "AWS::Serverless::LayerVersion": "ContentUri"}


def _is_local(uri: Any) -> bool:
    return isinstance(uri, str) and not uri.startswith("s3://")


def _package(
    resources: dict[str, Any], base: Path, assets_bucket: str
) -> tuple[list[CodeAsset], dict[str, Path], list[str]]:
    """What ``sam package`` does to local paths, in place: code folders -> S3 objects, ASL files -> inline."""
    assets: list[CodeAsset] = []
    function_code: dict[str, Path] = {}
    policy_names: list[str] = []
    for logical_id, resource in resources.items():
        kind = resource.get("Type")
        properties = resource.setdefault("Properties", {})
        uri_property = _CODE_URI_PROPERTY.get(kind)
        if uri_property and _is_local(properties.get(uri_property)):
            directory = (base / properties[uri_property]).resolve()
            if not directory.is_dir():
                raise TemplateError(f"{logical_id}.{uri_property}: {directory} is not a folder")
            key = f"{logical_id}.zip"
            assets.append(CodeAsset(logical_id, directory, key))
            properties[uri_property] = {"Bucket": assets_bucket, "Key": key}
            if kind == "AWS::Serverless::Function":
                function_code[logical_id] = directory  # SAM keeps the logical id for the AWS::Lambda::Function
        if kind == "AWS::Serverless::StateMachine" and _is_local(properties.get("DefinitionUri")):
            path = base / properties.pop("DefinitionUri")
            text = path.read_text(encoding="utf-8")
            properties["Definition"] = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        if kind in ("AWS::Serverless::Function", "AWS::Serverless::StateMachine"):
            policies = properties.get("Policies", [])
            policy_names += [policies] if isinstance(policies, str) else [p for p in policies if isinstance(p, str)]
    return assets, function_code, policy_names


def transform_template(
    parameters: Mapping[str, str],
    *,
    path: Path = TEMPLATE,
    region: str = "us-east-1",
    assets_bucket: str = "tuneplane-local-assets",
) -> TransformedTemplate:
    """Package the local paths and run the SAM transform offline.

    The translator asks IAM for the ARNs of AWS managed policies named in ``Policies`` that it does not know
    itself; there is no IAM here, so each such name maps to the ARN it has on AWS (``arn:aws:iam::aws:policy/X``).
    ``transform()`` from samtranslator builds its own boto3 session from the environment; the ``Translator`` is
    used directly instead so that the region is the deployment's, not whatever the process happens to have.
    """
    sam = load_sam_template(path)
    values = check_parameters(sam, parameters)
    assets, function_code, policy_names = _package(sam["Resources"], path.parent, assets_bucket)
    partition = "aws-cn" if region.startswith("cn-") else "aws-us-gov" if region.startswith("us-gov-") else "aws"
    managed_policies = {name: f"arn:{partition}:iam::aws:policy/{name}" for name in policy_names}
    translator = Translator(None, Parser(), boto_session=boto3.session.Session(region_name=region))
    parameter_values: dict[str, Any] = dict(values)  # the translator marks and extends it: keep ``values`` clean
    to_py27_compatible_template(sam, parameter_values)
    cfn = translator.translate(sam, parameter_values=parameter_values, get_managed_policy_map=lambda: managed_policies)
    template: dict[str, Any] = undo_mark_unicode_str_in_template(cfn)
    return TransformedTemplate(template, values, tuple(assets), function_code)
