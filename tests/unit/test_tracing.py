"""X-Ray traces hold no secret: the Tracer patches boto3/botocore only (observability.py), so an HTTP call made with
requests, urllib3 or http.client (the Slack webhook is one: its URL is a credential) is not traced with its URL.

The Tracer only patches inside Lambda (Powertools disables it elsewhere) and patching is process-wide, so each case
runs in a fresh interpreter that looks like a Lambda invocation (``LAMBDA_TASK_ROOT``, an ``_X_AMZN_TRACE_ID``
header) and sends its X-Ray entities to an in-memory emitter instead of the daemon. The same probe with Powertools'
default Tracer (every supported library patched) must show the URL in its trace: the probe can see a leak.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "XoXoSecretWebhookToken0123456789"

PROBE = textwrap.dedent(
    """
    import json, sys, threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    if sys.argv[1] == "product":
        from tuneplane.observability import tracer
    else:  # Powertools' default: every library the X-Ray SDK supports is patched
        from aws_lambda_powertools import Tracer

        tracer = Tracer()
    import boto3
    import http.client
    import requests
    import urllib3
    from aws_xray_sdk.core import patcher, xray_recorder
    from botocore.stub import Stubber


    class Capture:  # the X-Ray emitter's interface: what would go to the daemon
        def __init__(self):
            self.sent = []

        def send_entity(self, entity):
            self.sent.append(entity.serialize())

        def set_daemon_address(self, address):
            pass


    class Webhook(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass


    capture = Capture()
    xray_recorder.configure(emitter=capture, sampling=False, context_missing="IGNORE_ERROR")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address
    url = f"http://{host}:{port}/services/T00000000/B00000000/" + sys.argv[2]

    from tuneplane.adapters import slack

    xray_recorder.begin_subsegment("handler")
    slack.post_message(url, {"text": "hello"})  # urllib3, as the Notify function posts
    requests.post(url, json={"text": "hello"}, timeout=5)
    urllib3.PoolManager().request("POST", url, body=b"{}")
    connection = http.client.HTTPConnection(host, port, timeout=5)
    connection.request("POST", url, body=b"{}")
    connection.getresponse().read()
    secrets = boto3.client("secretsmanager", region_name="us-east-1")
    with Stubber(secrets) as stub:  # an AWS call, answered without the network: still traced by botocore's patch
        stub.add_response("get_secret_value", {"SecretString": url, "Name": "slack"}, {"SecretId": "slack"})
        secrets.get_secret_value(SecretId="slack")
    xray_recorder.end_subsegment()
    server.shutdown()
    print("RESULT " + json.dumps({"patched": sorted(patcher._PATCHED_MODULES), "entities": capture.sent}))
    """
)


def _probe(mode: str) -> dict[str, Any]:
    """Run the probe in a fresh interpreter that looks like a Lambda invocation; its patched modules and entities."""
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", ""),
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "layers" / "shared")]),
        "LAMBDA_TASK_ROOT": str(ROOT),
        "_X_AMZN_TRACE_ID": "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "POWERTOOLS_SERVICE_NAME": "notify",
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode, TOKEN],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [result] = [line[len("RESULT ") :] for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    parsed: dict[str, Any] = json.loads(result)
    return parsed


@pytest.fixture(scope="module")
def product() -> dict[str, Any]:
    return _probe("product")


def test_the_tracer_patches_botocore_only(product: dict[str, Any]) -> None:
    # GIVEN the functions' Tracer in a Lambda invocation
    # THEN botocore (boto3's calls) is the only library patched: no requests, httplib, httpx, sqlite3
    assert product["patched"] == ["botocore"]


def test_no_webhook_url_in_the_trace_and_aws_calls_still_traced(product: dict[str, Any]) -> None:
    # GIVEN the functions' Tracer, and a webhook posted to with urllib3 (the Slack adapter), requests and http.client
    entities = product["entities"]
    # THEN no entity sent to X-Ray holds the URL's token, not even the secret's value that the AWS call returned
    assert entities and not [entity for entity in entities if TOKEN in entity]
    # AND the AWS call is traced, as a subsegment of the handler's
    names = {json.loads(entity)["name"] for entity in entities}
    assert {"handler", "secretsmanager"} <= names, names


def test_the_default_tracer_would_have_put_the_url_in_the_trace() -> None:
    # GIVEN Powertools' default Tracer, which patches every library the X-Ray SDK supports
    default = _probe("default")
    # THEN requests is patched, and its subsegment records the webhook URL: the probe sees such a leak
    assert "requests" in default["patched"]
    assert [entity for entity in default["entities"] if TOKEN in entity]
