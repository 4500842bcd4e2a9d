"""The one place Logger, Tracer and Metrics are created (service name and namespace come from the
POWERTOOLS_* environment variables the template sets).

The Tracer patches boto3/botocore only. Powertools' default patches every library the X-Ray SDK supports (its
docstring: "By default, it patches all available libraries supported by X-Ray SDK"), among them ``httplib`` and
``requests``, whose subsegments record each request's full URL: the Slack webhook URL, a credential, would be in
every Notify trace. botocore's subsegments record only the parameters of the X-Ray SDK's whitelist
(``aws_xray_sdk/ext/resources/aws_para_whitelist.json``: names such as a table, a bucket and key, never a request
body), so an endpoint's smoke-test prompt (InvokeEndpoint's Body) or a secret's value is not traced either.
"""

from aws_lambda_powertools import Logger, Metrics, Tracer

TRACED_MODULES = ("boto3", "botocore")

logger = Logger()
tracer = Tracer(patch_modules=TRACED_MODULES)
metrics = Metrics()
