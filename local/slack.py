"""A local Slack incoming webhook: what the notifier posts, printed readably in the terminal.

``local_slack_webhook()`` starts a threaded HTTP server on 127.0.0.1 (a free port) and yields a ``LocalSlack`` whose
``url`` is the webhook URL to store in the (local) secret. Every message is recorded (``messages``; ``requests``
also keeps the answered status of every POST) and printed as compact plain text: the header line, the fields, the
section texts, the buttons and the context line. It answers like Slack: 200 ``ok``; 400 ``invalid_payload`` for a
body that is no JSON object; 404 ``no_service`` for another path. For tests, ``fail_first=N`` answers the first N
POSTs with ``fail_status`` (429 by default) and, when given, ``Retry-After: <retry_after>``.

    with local_slack_webhook() as slack:
        post_message(slack.url, {"text": "hello"})
        assert slack.messages[0]["text"] == "hello"

The URL has the shape of a real one (``/services/T…/B…/<random token>``) so that tests can check it never leaks;
the server itself logs nothing (``http.server`` would print every request line, path included, to stderr).
"""

from __future__ import annotations

import json
import secrets
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TextIO

_EMOJI = {
    ":white_check_mark:": "✅",
    ":x:": "❌",
    ":no_entry:": "⛔",
    ":hourglass_flowing_sand:": "⏳",
    ":fast_forward:": "⏩",
    ":tada:": "🎉",
}
_ENTITIES = {"&lt;": "<", "&gt;": ">", "&amp;": "&"}


@dataclass(frozen=True)
class Received:
    """One POST: the status it was answered with, and the message when it was accepted."""

    status: int
    path_ok: bool
    message: dict[str, Any] | None


@dataclass
class LocalSlack:
    url: str
    fail_first: int = 0
    fail_status: int = 429
    retry_after: str | None = "0"
    echo: bool = True
    stream: TextIO | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def attempts(self) -> int:
        return len(self.requests)


def _plain(text: str) -> str:
    for code, emoji in _EMOJI.items():
        text = text.replace(code, emoji)
    for entity, char in _ENTITIES.items():
        text = text.replace(entity, char)
    return text


def _field(text: str) -> str:
    label, _, value = text.partition("\n")
    label = label.strip("*")
    return f"{label}: {value}" if value else label


def render_text(message: Mapping[str, Any]) -> str:
    """A Block Kit message as a few lines of plain text (the ``text`` fallback when it has no blocks)."""
    lines: list[str] = []
    for block in message.get("blocks") or []:
        kind = block.get("type")
        if kind == "header":
            lines.append(f"━━ {block.get('text', {}).get('text', '')} ━━")
        elif kind == "section":
            if text := block.get("text", {}).get("text"):
                lines += [f"  {line}" for line in text.splitlines()]
            if fields := block.get("fields"):
                lines.append("  " + "   ".join(_field(f.get("text", "")) for f in fields))
        elif kind == "actions":
            lines += [f"  [{e.get('text', {}).get('text', '')}] {e.get('url', '')}" for e in block.get("elements", [])]
        elif kind == "context":
            lines.append("  " + " · ".join(e.get("text", "") for e in block.get("elements", [])))
        elif kind == "divider":
            lines.append("  " + "─" * 40)
    return _plain("\n".join(lines) if lines else str(message.get("text", "")))


def _handler(slack: LocalSlack, path: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # the base class's name
            """Silent: the default prints the request line, webhook path included, to stderr."""

        def _answer(self, status: int, body: str, headers: Mapping[str, str] | None = None) -> None:
            data = body.encode()
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # http.server's naming
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with slack._lock:
                failing = len(slack.requests) < slack.fail_first
                if self.path != path:
                    status, body, message = 404, "no_service", None
                elif failing:
                    status = slack.fail_status
                    body, message = ("rate_limited" if status == 429 else "internal_error"), None
                else:
                    try:
                        message = json.loads(raw)
                    except ValueError:
                        message = None
                    ok = isinstance(message, dict)
                    status, body = (200, "ok") if ok else (400, "invalid_payload")
                    message = message if ok else None
                slack.requests.append(Received(status=status, path_ok=self.path == path, message=message))
                if message is not None:
                    slack.messages.append(message)
            headers = {"Retry-After": slack.retry_after} if failing and slack.retry_after is not None else None
            self._answer(status, body, headers)
            if message is not None and slack.echo:
                print(render_text(message) + "\n", file=slack.stream or sys.stdout, flush=True)

    return Handler


@contextmanager
def local_slack_webhook(
    *,
    fail_first: int = 0,
    fail_status: int = 429,
    retry_after: str | None = "0",
    echo: bool = True,
    stream: TextIO | None = None,
) -> Iterator[LocalSlack]:
    """A Slack webhook receiver on 127.0.0.1 for the duration of the ``with`` block (see the module docstring)."""
    path = f"/services/T{secrets.token_hex(5).upper()}/B{secrets.token_hex(5).upper()}/{secrets.token_urlsafe(18)}"
    slack = LocalSlack(
        url="", fail_first=fail_first, fail_status=fail_status, retry_after=retry_after, echo=echo, stream=stream
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(slack, path))
    server.daemon_threads = True
    slack.url = f"http://127.0.0.1:{server.server_address[1]}{path}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield slack
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


if __name__ == "__main__":  # python -m local.slack: a receiver to point a local notifier at, until Ctrl-C
    import time

    with local_slack_webhook() as receiver:
        print(f"local Slack webhook: {receiver.url}", flush=True)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
