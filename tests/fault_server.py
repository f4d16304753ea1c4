"""A fake OpenAI-compatible chat server, only to inject the faults a real server will not produce on demand.

A script decides how each request is answered, from its prompt (the last message's content) and attempt number
(1 for the first request with that prompt, 2 for its first retry, ...)::

    with FaultServer(sequence(status(500), drop(), ok())) as server:   # the third attempt per prompt succeeds
        client = LLMClient(server.endpoint, ...)
        ...
        server.attempts["some prompt"]     # requests received with that prompt
        server.max_in_flight               # most requests handled at the same time
        server.bodies["some prompt"]       # the last request body with that prompt

``ok`` answers ``echo: <prompt>`` (``ok(reasoning="reasoning")`` adds ``thinking about <prompt>`` in that separate
field), so a test can tell which request got which answer.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, Self

from schemas import Endpoint

MODEL = "fake"


@dataclass(frozen=True)
class Behaviour:
    kind: Literal["ok", "status", "stall", "drop", "garbage", "no_choices"]
    code: int = 200
    seconds: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    reasoning: str | None = None
    answer: Callable[[str], str] | None = None
    reply: Callable[[dict[str, Any]], str] | None = None


def ok(
    delay: float = 0.0,
    reasoning: str | None = None,
    answer: Callable[[str], str] | None = None,
    reply: Callable[[dict[str, Any]], str] | None = None,
) -> Behaviour:
    """A valid completion after ``delay`` seconds; ``reasoning`` names a separate reasoning field to fill;
    ``answer(prompt)`` gives the content instead of the echo (a scripted model for deterministic tests), or
    ``reply(body)`` from the whole request (its ``seed``, say: a sampled model whose draws differ by seed)."""
    return Behaviour("ok", seconds=delay, reasoning=reasoning, answer=answer, reply=reply)


def status(code: int, retry_after: str | None = None) -> Behaviour:
    return Behaviour("status", code=code, headers={"Retry-After": retry_after} if retry_after else {})


def stall(seconds: float) -> Behaviour:
    """Say nothing for ``seconds`` (longer than the client's timeout), then hang up."""
    return Behaviour("stall", seconds=seconds)


def drop() -> Behaviour:
    """Close the connection without an answer."""
    return Behaviour("drop")


def garbage() -> Behaviour:
    """200 with a body that claims to be JSON and is not."""
    return Behaviour("garbage")


def no_choices() -> Behaviour:
    """200 with ``{}``: JSON, but no chat completion."""
    return Behaviour("no_choices")


Script = Callable[[str, int], Behaviour]


def sequence(*behaviours: Behaviour) -> Script:
    """The n-th attempt of each prompt gets the n-th behaviour; the last one repeats."""
    return lambda prompt, attempt: behaviours[min(attempt, len(behaviours)) - 1]


class FaultServer:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.attempts: Counter[str] = Counter()
        self.bodies: dict[str, dict[str, Any]] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.closing = threading.Event()
        self._lock = threading.Lock()
        self._http = _Server(("127.0.0.1", 0), _Handler)
        self._http.fault = self
        # A short poll interval: shutdown waits for one, and every test closes a server.
        threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()

    @property
    def endpoint(self) -> Endpoint:
        host, port = self._http.server_address[:2]
        return Endpoint(base_url=f"http://{host}:{port}/v1", model=MODEL)

    @property
    def requests(self) -> int:
        return self.attempts.total()

    def begin(self, prompt: str, body: dict[str, Any]) -> Behaviour:
        with self._lock:
            self.attempts[prompt] += 1
            self.bodies[prompt] = body
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            attempt = self.attempts[prompt]
        return self.script(prompt, attempt)

    def end(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def close(self) -> None:
        self.closing.set()  # wakes stalled handlers
        self._http.shutdown()
        self._http.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fault: FaultServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up on a stalled request resets its socket: expected here


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do, so connection reuse is exercised
    server: _Server

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        fault = self.server.fault
        behaviour = fault.begin(prompt, body)
        try:
            self._answer(behaviour, body, prompt)
        finally:
            fault.end()

    def _answer(self, behaviour: Behaviour, body: dict[str, Any], prompt: str) -> None:
        match behaviour.kind:
            case "ok":
                self.server.fault.closing.wait(behaviour.seconds)
                if behaviour.reply:
                    content = behaviour.reply(body)
                else:
                    content = behaviour.answer(prompt) if behaviour.answer else f"echo: {prompt}"
                self._send(200, json.dumps(_completion(body, prompt, content, behaviour.reasoning)).encode())
            case "status":
                self._send(behaviour.code, b'{"error": {"message": "injected fault"}}', behaviour.headers)
            case "stall":
                self.server.fault.closing.wait(behaviour.seconds)
                self.close_connection = True
            case "drop":
                self.close_connection = True
            case "garbage":
                self._send(200, b"<html>upstream says hello</html>")
            case "no_choices":
                self._send(200, b"{}")

    def _send(self, code: int, data: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _completion(body: dict[str, Any], prompt: str, content: str, reasoning: str | None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning:
        message[reasoning] = f"thinking about {prompt}"
    prompt_tokens = sum(len(m["content"].split()) for m in body["messages"])
    completion_tokens = len(content.split())
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": body["model"],
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
