"""`tuneplane doctor`: read-only checks of a deployed stack before its first run, each finding saying what to do.

The checks, in order (each runs even when an earlier one failed), one module per family:

- **stack** (``stack.py``, which also runs the others): the stack exists in the region and is in a usable state;
- **quota** (``quotas.py``): the SageMaker quotas of the instance types the stack uses (training, spot or on-demand
  as ``UseSpotTraining`` says, with the fallbacks; processing; the endpoint with ``DeployTarget=vllm``);
- **image** (``images.py``): the stack's ECR repositories hold ``ImageTag`` (``make images`` pushes them); a
  ``ServeImageUri`` in this account and region is checked too, one elsewhere (the AWS vLLM image) is reported as not
  checked;
- **bedrock** (``services.py``): Custom Model Import answers in the region, with ``DeployTarget=bedrock``;
- **slack** (``services.py``): the ``SlackWebhookSecretArn`` secret exists, is not being deleted and has a value
  (DescribeSecret: the value itself is never read);
- **judge** (``services.py``): the same of the ``JudgeEndpointSecretArn`` secret (the judge endpoint's API key), in
  the stack's region, and with a ``JudgeEndpointUrl`` to send it to;
- **base-model** (``base_model.py``): ``BaseModelS3Uri`` holds the manifest ``tuneplane stage-model`` writes last
  (``tuneplane-model.json``) and every file it lists, with the listed size, in a bucket of the stack's region.

``report.py`` holds the findings and their rendering, ``context.py`` what every check reads.

A check that cannot run (no permission, a service not answering) is a WARN that names the IAM action it needs.
Only the stack itself is a precondition: without its parameters no other check knows what to look at.

Pure: every AWS call goes through the :class:`~tuneplane.logic.doctor.context.AccountReader` port
(``adapters/account.py`` on AWS, a fake or moto in tests).

This package re-exports the names the CLI and the tests use, so that ``from tuneplane.logic import doctor`` keeps
working as it did when the doctor was one module.
"""

from __future__ import annotations

from tuneplane.logic.doctor.context import PARAMETERS
from tuneplane.logic.doctor.report import DoctorReport, Finding, Level, render_json, render_text
from tuneplane.logic.doctor.stack import _stack_findings, diagnose

__all__ = [
    "PARAMETERS",
    "DoctorReport",
    "Finding",
    "Level",
    "_stack_findings",
    "diagnose",
    "render_json",
    "render_text",
]
