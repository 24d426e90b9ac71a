"""A loopback stand-in for an OpenAI-compatible chat server: DSPy's real ``dspy.LM`` path
(request building, HTTP, response parsing) runs against it and nothing leaves the machine.

It records every request body and answers in DSPy's ChatAdapter format: the output fields
the prompt asks for (``[[ ## reasoning ## ]] ... [[ ## answer ## ]] ...``), then
``[[ ## completed ## ]]``.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# ChatAdapter ends its last user message with "Respond with the corresponding output
# fields, starting with the field `[[ ## a ## ]]`, then `[[ ## b ## ]]`, ... and then
# ending with the marker for `[[ ## completed ## ]]`."
_RESPOND = re.compile(r"Respond with the corresponding output fields(.*)", re.DOTALL)
_FIELD = re.compile(r"\[\[ ## (\w+) ## \]\]")

Answer = Callable[[dict[str, Any], list[str]], dict[str, str]]


def output_fields(body: dict[str, Any]) -> list[str]:
    """The output field names the request's last user message asks for, in order."""
    for message in reversed(body.get("messages", [])):
        content = message.get("content")
        if message.get("role") != "user" or not isinstance(content, str):
            continue
        match = _RESPOND.search(content)
        if match:
            return [name for name in _FIELD.findall(match.group(1)) if name != "completed"]
    return []


def question_of(body: dict[str, Any]) -> str:
    """The text of the last ``[[ ## question ## ]]`` field in the request, if any."""
    for message in reversed(body.get("messages", [])):
        content = message.get("content")
        if message.get("role") == "user" and isinstance(content, str):
            match = re.search(r"\[\[ ## question ## \]\]\n(.*?)(?:\n\n|\Z)", content, re.DOTALL)
            if match:
                return match.group(1).strip()
    return ""


def default_answer(body: dict[str, Any], fields: list[str]) -> dict[str, str]:
    """``reasoning`` gets a fixed sentence, every other field ``'42'``."""
    return {name: "Step by step, it is 42." if name == "reasoning" else "42" for name in fields}


class OpenAIStub:
    """``/v1/chat/completions`` on 127.0.0.1 and an ephemeral port, in a thread.

    ``answer(body, fields)`` returns the value of each output field; ``requests`` holds
    every request body received, in order.

    Example::

        with OpenAIStub() as stub:
            lm = dspy.LM("openai/test-model", api_base=stub.api_base, api_key="x", cache=False)
    """

    def __init__(self, answer: Answer = default_answer) -> None:
        self.answer = answer
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                with stub._lock:
                    stub.requests.append(body)
                fields = output_fields(body)
                values = stub.answer(body, fields)
                text = "".join(f"[[ ## {name} ## ]]\n{values[name]}\n\n" for name in fields)
                text += "[[ ## completed ## ]]"
                self._send(200, {
                    "id": f"chatcmpl-{len(stub.requests)}",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body.get("model", "test-model"),
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
                })

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the tests read self.requests instead

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="openai-stub")

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def bodies(self) -> list[dict[str, Any]]:
        """A copy of the request bodies received so far."""
        with self._lock:
            return list(self.requests)

    def start(self) -> OpenAIStub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> OpenAIStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def running(answer: Answer = default_answer) -> Iterator[OpenAIStub]:
    """``with running() as stub:`` a started stub, stopped on exit."""
    with OpenAIStub(answer) as stub:
        yield stub


def arithmetic(body: dict[str, Any], fields: list[str]) -> dict[str, str]:
    """Answers for "What is a + b?" questions: the sum, and a line of reasoning."""
    match = re.search(r"(\d+) \+ (\d+)", question_of(body))
    answer = str(int(match.group(1)) + int(match.group(2))) if match else "unknown"
    return {name: f"Adding gives {answer}." if name == "reasoning" else answer
            for name in fields}
