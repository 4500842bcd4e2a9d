"""The doctor's **image** check: the stack's ECR repositories hold ``ImageTag`` (``make images`` pushes them); a
``ServeImageUri`` in this account and region is checked too, one elsewhere (the AWS vLLM image) is reported as not
checked."""

from __future__ import annotations

import re

from tuneplane.logic.doctor.context import CheckContext, StackSettings
from tuneplane.logic.doctor.report import Finding, Level

# The template's ECR repositories (logical id -> `make images` stage name), in the order `make images` pushes them.
REPOSITORIES = {
    "TrainRepository": "train",
    "MergeRepository": "merge",
    "QuantizeRepository": "quantize",
    "EvaluateRepository": "evaluate",
    "ValidateRepository": "validate",
    "ServeRepository": "serve",
}
ALL_STAGES = tuple(REPOSITORIES.values())
# An ECR image URI: account, region, repository, and a tag, a digest or both.
_ECR_IMAGE = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/"
    r"(?P<repository>[^:@]+)(?::(?P<tag>[^@]+))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


def check_images(context: CheckContext) -> list[Finding]:
    """The stack's repositories at ``ImageTag``; the serving image wherever ``ServeImageUri`` points."""
    settings, stack, region = context.settings, context.stack, context.region
    resources = context.account.stack_resources(stack.name)
    repositories = {
        r.logical_id: r.physical_id
        for r in resources
        if r.resource_type == "AWS::ECR::Repository" and r.logical_id in REPOSITORIES
    }
    stages = [s for s in ALL_STAGES if s != "serve" or not settings.serve_image_uri]
    tag = settings.image_tag
    findings: list[Finding] = []
    missing: list[tuple[str, Finding]] = []  # (stage, finding without its fix)
    for logical_id, stage in REPOSITORIES.items():
        if stage not in stages:
            continue
        repository = repositories.get(logical_id)
        if not repository:
            findings.append(
                Finding(
                    Level.ERROR,
                    "image",
                    f"{stack.name}/{stage}",
                    f"the stack has no repository {logical_id}",
                    "deploy this version of template.yaml (sam build && sam deploy)",
                )
            )
            continue
        state = context.account.image_state(repository, tag=tag)
        subject = f"{repository}:{tag}"
        if state == "present":
            findings.append(Finding(Level.OK, "image", subject, f"present ({_image_use(stage)})"))
        elif state == "no-repository":
            findings.append(
                Finding(
                    Level.ERROR,
                    "image",
                    subject,
                    f"the repository {repository} of the stack's {logical_id} does not exist (deleted outside "
                    "CloudFormation?)",
                    "CloudFormation does not recreate what it believes exists: delete and deploy the stack again "
                    "(sam delete, sam deploy), or recreate the repository by hand with the template's settings",
                )
            )
        else:
            level = _missing_image_level(stage, settings)
            note = "" if level is Level.ERROR else f"; {_not_needed(stage, settings)}"
            missing.append(
                (stage, Finding(level, "image", subject, f"not found (ImageTag={tag}; {_image_use(stage)}{note})"))
            )
    if missing:
        fix = _make_images(stack.name, region, tag, [stage for stage, _ in missing])
        findings += [Finding(f.level, f.check, f.subject, f.message, fix) for _, f in missing]
    if settings.serve_image_uri:
        findings.append(_serve_image(context))
    return findings


def _image_use(stage: str) -> str:
    return {
        "train": "the Train stage's training jobs",
        "merge": "the Merge stage's processing jobs",
        "quantize": "the Quantize stage's processing jobs",
        "evaluate": "the Evaluate stage's processing jobs",
        "validate": "the processing jobs that validate datasets beyond the Validate Lambda",
        "serve": "the vllm target's endpoint; the Register stage names it in every model package",
    }[stage]


def _not_needed(stage: str, settings: StackSettings) -> str:
    if stage == "quantize":
        return "not run while QuantizeEnabled=false"
    return f"DeployTarget={settings.deploy_target}: no endpoint runs it"


def _missing_image_level(stage: str, settings: StackSettings) -> Level:
    if stage == "quantize":
        return Level.ERROR if settings.quantize else Level.WARN
    if stage == "serve":  # the Register stage names it in every model package, the vllm target runs it
        return Level.ERROR if settings.deploy_target == "vllm" else Level.WARN
    return Level.ERROR


def _make_images(stack: str, region: str, tag: str, stages: list[str]) -> str:
    """`make images` for the missing stages only: it refuses to run when any of its STAGES' tags already exists."""
    command = f"make images STACK={stack} REGION={region} TAG={tag}"
    if sorted(stages) != sorted(ALL_STAGES):
        command += f' STAGES="{" ".join(stages)}"'
    return f"build and push them: {command}"


def _serve_image(context: CheckContext) -> Finding:
    settings, region = context.settings, context.region
    uri = settings.serve_image_uri
    level = _missing_image_level("serve", settings)
    match = _ECR_IMAGE.match(uri)
    if not match or match["account"] != context.stack.account_id or match["region"] != region:
        return Finding(
            Level.WARN,
            "image",
            uri,
            "ServeImageUri is in another account or registry: not checked (the AWS vLLM image lives in an AWS "
            "account; SageMaker pulls it itself)",
            "check that the tag exists for this region (containers/serve/README.md)",
        )
    state = context.account.image_state(
        match["repository"], tag=match["tag"] or "latest", digest=match["digest"], registry_id=match["account"]
    )
    if state == "present":
        return Finding(Level.OK, "image", uri, "present (ServeImageUri)")
    what = "not found" if state == "missing" else f"the repository {match['repository']} does not exist"
    return Finding(
        level,
        "image",
        uri,
        f"ServeImageUri: {what} ({_image_use('serve')})",
        "push it, or point the stack at an existing image: sam deploy --parameter-overrides ServeImageUri=<uri>",
    )
