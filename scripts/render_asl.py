"""Render the state machines' ASL with their DefinitionSubstitutions filled in, for static checks.

    python scripts/render_asl.py [--template template.yaml] [--out build/asl]

For every ``AWS::Serverless::StateMachine`` with a ``DefinitionUri`` in the template, reads the ASL file,
checks that its ``${Placeholders}`` and the resource's ``DefinitionSubstitutions`` match exactly (a
placeholder without a substitution, or a substitution that nothing uses, is an error), replaces each
placeholder with a dummy value of the right shape (an ARN for ``!GetAtt X.Arn``, a name for ``!Ref X``),
and writes ``<out>/<file name>``. Those copies are what ``statelint`` checks: cfn-lint does not look
inside ``DefinitionUri`` files, and a ``${Placeholder}`` is not a valid ARN where one is required.

Exit status 0 when every definition rendered, 1 otherwise (problems on stderr).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for local.cfn_yaml
from local.cfn_yaml import load_cfn_yaml

REGION = "us-east-1"
ACCOUNT = "123456789012"
PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9_.:-]+)\}")

# ARN shapes of the resource types a substitution may point to (!GetAtt <Resource>.Arn).
ARN_FORMATS = {
    "AWS::Serverless::Function": "arn:aws:lambda:{region}:{account}:function:{name}",
    "AWS::Lambda::Function": "arn:aws:lambda:{region}:{account}:function:{name}",
    "AWS::Serverless::StateMachine": "arn:aws:states:{region}:{account}:stateMachine:{name}",
    "AWS::StepFunctions::StateMachine": "arn:aws:states:{region}:{account}:stateMachine:{name}",
    "AWS::Events::EventBus": "arn:aws:events:{region}:{account}:event-bus/{name}",
    "AWS::SQS::Queue": "arn:aws:sqs:{region}:{account}:{name}",
    "AWS::SNS::Topic": "arn:aws:sns:{region}:{account}:{name}",
    "AWS::DynamoDB::Table": "arn:aws:dynamodb:{region}:{account}:table/{name}",
    "AWS::IAM::Role": "arn:aws:iam::{account}:role/{name}",
    "AWS::S3::Bucket": "arn:aws:s3:::{name}",
    "AWS::SageMaker::Model": "arn:aws:sagemaker:{region}:{account}:model/{name}",
}


def load_template(path: Path) -> dict[str, Any]:
    data = load_cfn_yaml(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a template")
    return data


def dummy_value(key: str, value: Any, resources: dict[str, Any]) -> str:
    """A stand-in of the right shape for one DefinitionSubstitutions value."""
    if isinstance(value, str | int | float):
        return str(value)
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        logical_id, attribute = value["Fn::GetAtt"]
        resource_type = resources.get(logical_id, {}).get("Type", "")
        if attribute == "Arn":
            fmt = ARN_FORMATS.get(resource_type, "arn:aws:{service}:{region}:{account}:{name}")
            return fmt.format(region=REGION, account=ACCOUNT, name=logical_id, service="dummy")
        return f"{logical_id}-{attribute}"
    if isinstance(value, dict) and "Ref" in value:
        return str(value["Ref"])
    return f"dummy-{key}"


def render(definition_text: str, substitutions: dict[str, str]) -> tuple[str, list[str]]:
    """Fill ``${Name}`` placeholders; return the text and the problems found (missing/unused substitutions)."""
    used = set(PLACEHOLDER.findall(definition_text))
    problems = [
        f"placeholder ${{{name}}} has no DefinitionSubstitutions entry" for name in sorted(used - set(substitutions))
    ]
    problems += [f"substitution {name} is not used by the definition" for name in sorted(set(substitutions) - used)]
    rendered = PLACEHOLDER.sub(lambda m: substitutions.get(m.group(1), m.group(0)), definition_text)
    return rendered, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--template", type=Path, default=Path("template.yaml"))
    parser.add_argument("--out", type=Path, default=Path("build/asl"))
    args = parser.parse_args(argv)

    template = load_template(args.template)
    resources: dict[str, Any] = template.get("Resources", {})
    base = args.template.parent
    args.out.mkdir(parents=True, exist_ok=True)
    failed = False
    rendered_any = False
    for logical_id, resource in resources.items():
        if resource.get("Type") != "AWS::Serverless::StateMachine":
            continue
        props = resource.get("Properties", {})
        uri = props.get("DefinitionUri")
        if not isinstance(uri, str):
            continue
        source = base / uri
        subs = {k: dummy_value(k, v, resources) for k, v in (props.get("DefinitionSubstitutions") or {}).items()}
        rendered, problems = render(source.read_text(encoding="utf-8"), subs)
        for problem in problems:
            print(f"{source} ({logical_id}): {problem}", file=sys.stderr)
        try:
            json.loads(rendered)
        except json.JSONDecodeError as exc:
            problems.append(str(exc))
            print(f"{source} ({logical_id}): rendered definition is not JSON: {exc}", file=sys.stderr)
        failed = failed or bool(problems)
        target = args.out / source.name
        target.write_text(rendered, encoding="utf-8")
        rendered_any = True
        print(f"{source} -> {target}")
    if not rendered_any:
        print(f"{args.template}: no AWS::Serverless::StateMachine with a DefinitionUri", file=sys.stderr)
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
