"""A loopback HTTP server that speaks the Anthropic Messages API wire format.

The real API cannot be reached from the test machines, so tests point the real `anthropic` SDK
at this server (`base_url=` or ANTHROPIC_BASE_URL) and script its replies. Everything above the
socket — request building, auth headers, retries with retry-after, timeouts, response parsing —
is the SDK's own code.

    with AnthropicLoopback() as api:
        api.script(message([tool_use("propose_plan", {...})], stop_reason="tool_use"))
        api.script(error(429, "rate_limit_error", "slow down", retry_after=0))
        ...  # run the code under test against api.base_url
        api.requests[0].body["messages"]

Replies are served in order, one per POST /v1/messages; when the script is used up the server
answers 500 so that an unexpected extra call is loud. Requests without an API key header or
without the required body fields are answered 401 / 400 like the real API, without using up a
scripted reply.
"""

from __future__ import annotations

import itertools
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_ids = itertools.count(1)


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # sleep before answering (timeouts)


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


# ---------------------------------------------------------------- reply builders (real wire format)


def text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def tool_use(name: str, tool_input: dict[str, Any], block_id: str | None = None) -> dict[str, Any]:
    return {"type": "tool_use", "id": block_id or f"toolu_loopback{next(_ids):04d}", "name": name, "input": tool_input}


def message(content: list[dict[str, Any]], *, stop_reason: str = "tool_use", model: str = "claude-sonnet-4-5",
            input_tokens: int = 812, output_tokens: int = 240, delay_s: float = 0.0) -> Reply:
    body = {
        "id": f"msg_loopback{next(_ids):04d}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }
    return Reply(200, body, delay_s=delay_s)


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def error(status: int, error_type: str | None = None, text: str = "scripted error",
          retry_after: float | None = None) -> Reply:
    """An error reply. `retry_after` (seconds) is sent as retry-after and retry-after-ms: the SDK
    honours a positive retry-after-ms, so tests can ask for a 10 ms backoff (retry_after=0.01)."""
    headers = {}
    if retry_after is not None:
        headers["retry-after"] = str(int(retry_after))
        headers["retry-after-ms"] = f"{retry_after * 1000:g}"
    body = {"type": "error", "error": {"type": error_type or _ERROR_TYPES.get(status, "api_error"), "message": text},
            "request_id": f"req_loopback{next(_ids):04d}"}
    return Reply(status, body, headers)


def _tool_result_problem(messages: list[Any]) -> str | None:
    """The API's rule: each tool_use of an assistant turn is answered by a tool_result in the next user turn."""
    for i, msg in enumerate(messages):
        content = msg.get("content") if isinstance(msg, dict) else None
        if not isinstance(content, list) or msg.get("role") != "assistant":
            continue
        asked = {b.get("id") for b in content if isinstance(b, dict) and b.get("type") == "tool_use"}
        if not asked:
            continue
        answer = messages[i + 1].get("content") if i + 1 < len(messages) else None
        answered = {b.get("tool_use_id") for b in answer if isinstance(b, dict) and b.get("type") == "tool_result"} \
            if isinstance(answer, list) else set()
        if asked - answered:
            return f"messages.{i + 1}: tool_use ids {sorted(asked - answered)} were found without tool_result blocks"
    return None


# ---------------------------------------------------------------- the server


class AnthropicLoopback:
    """ThreadingHTTPServer on 127.0.0.1, random port. Use as a context manager."""

    REQUIRED_BODY = ("model", "max_tokens", "messages")

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self._replies: list[Reply] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="anthropic-loopback", daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def script(self, *replies: Reply) -> "AnthropicLoopback":
        with self._lock:
            self._replies.extend(replies)
        return self

    @property
    def unused_replies(self) -> int:
        with self._lock:
            return len(self._replies)

    def message_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.startswith("/v1/messages")]

    def __enter__(self) -> "AnthropicLoopback":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()  # wakes handlers sleeping in a scripted delay
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _next_reply(self) -> Reply:
        with self._lock:
            if self._replies:
                return self._replies.pop(0)
        return error(500, "api_error", "loopback: no scripted reply left for this request")

    def _handler_class(self):
        loopback = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep pytest output clean
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"null")
                except json.JSONDecodeError:
                    body = None
                headers = {k.lower(): v for k, v in self.headers.items()}
                with loopback._lock:
                    loopback.requests.append(RecordedRequest("POST", self.path, headers, body))

                if self.path.split("?")[0] != "/v1/messages":
                    return self._send(error(404, "not_found_error", f"loopback: no route {self.path}"))
                if not (headers.get("x-api-key") or headers.get("authorization")):
                    return self._send(error(401, "authentication_error", "x-api-key header is required"))
                if not isinstance(body, dict) or any(k not in body for k in loopback.REQUIRED_BODY):
                    return self._send(error(400, "invalid_request_error",
                                            f"body must be a JSON object with {', '.join(loopback.REQUIRED_BODY)}"))
                problem = _tool_result_problem(body["messages"])
                if problem:
                    return self._send(error(400, "invalid_request_error", problem))
                reply = loopback._next_reply()
                if reply.delay_s and loopback._closing.wait(reply.delay_s):
                    return  # server shutting down: drop the reply
                self._send(reply)

            def _send(self, reply: Reply) -> None:
                data = json.dumps(reply.body).encode("utf-8")
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.send_header("request-id", reply.body.get("request_id", reply.body.get("id", "req_loopback")))
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        return Handler
