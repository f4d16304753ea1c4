"""A fault-injecting HTTP proxy on loopback, to put in front of a real S3 server (SeaweedFS).

Each request is read whole from the client, then a script decides its fate from its method, path and attempt
number (1 for the first request with that method and path, 2 for the next, ...)::

    with FaultProxy(seaweedfs, faults()) as proxy:     # proxy.url replaces the S3 endpoint
        ...
        proxy.applied        # Counter of the faults injected, by kind

- ``PASS``: forwarded, and the answer sent back.
- ``RESET``: the client's connection is reset before anything is forwarded (the request never reached S3).
- ``LOSE_REPLY``: forwarded and answered by S3 (the write happened), then the client's connection is reset
  instead of answering: the client cannot know that its write landed.
- ``Delay(s)``: forwarded after ``s`` seconds (a slow network: writers overlap more).

One upstream connection per request (``Connection: close``), so every request is forwarded exactly once and
every loop here is bounded by the bytes a request or an answer carries.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

PASS = "pass"
RESET = "reset"
LOSE_REPLY = "lose_reply"


@dataclass(frozen=True)
class Delay:
    seconds: float


Fault = str | Delay
Script = Callable[[str, str, int], Fault]

_MAX_HEAD = 64 << 10
_MAX_BODY = 256 << 20


def faults(*, write_faults: int = 1) -> Script:
    """The first ``write_faults`` attempts of every PUT get, in turn, a lost reply, a reset, a lost reply, a delay
    and no fault; the first attempt of every third read is delayed and of every seventh reset; later attempts
    pass, so a client that retries ``write_faults`` times always gets through. Deterministic in the order the
    requests arrive."""
    writes = itertools.cycle([LOSE_REPLY, RESET, LOSE_REPLY, Delay(0.05), PASS])
    reads = itertools.count(1)
    lock = threading.Lock()

    def script(method: str, path: str, attempt: int) -> Fault:
        with lock:
            if method == "PUT" and attempt <= write_faults:
                return next(writes)
            if method != "PUT" and attempt == 1:
                n = next(reads)
                return RESET if n % 7 == 0 else Delay(0.02) if n % 3 == 0 else PASS
        return PASS

    return script


class FaultProxy:
    def __init__(self, upstream: str, script: Script) -> None:
        target = urlsplit(upstream)
        self.upstream = (target.hostname or "127.0.0.1", target.port or 80)
        self.script = script
        self.attempts: Counter[tuple[str, str]] = Counter()
        self.applied: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._listener.getsockname()[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self._closing.set()
        self._thread.join(timeout=5)
        self._listener.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(30)
        with client:
            try:
                request = _read_request(client)
            except (OSError, ValueError):
                return
            if request is None:
                return
            method, path, data = request
            with self._lock:
                self.attempts[(method, path)] += 1
                fault = self.script(method, path, self.attempts[(method, path)])
                self.applied[fault if isinstance(fault, str) else "delay"] += 1
            if fault == RESET:
                _reset(client)
                return
            if isinstance(fault, Delay):
                self._closing.wait(fault.seconds)
            try:
                answer = self._forward(data)
            except OSError:
                _reset(client)
                return
            if fault == LOSE_REPLY:
                _reset(client)
                return
            with contextlib.suppress(OSError):
                client.sendall(answer)

    def _forward(self, data: bytes) -> bytes:
        with socket.create_connection(self.upstream, timeout=30) as upstream:
            upstream.sendall(data)
            chunks = []
            total = 0
            while chunk := upstream.recv(1 << 16):  # the server closes after its answer (Connection: close)
                chunks.append(chunk)
                total += len(chunk)
                if total > _MAX_BODY:
                    raise OSError("answer too large")
            return b"".join(chunks)


def _read_request(client: socket.socket) -> tuple[str, str, bytes] | None:
    """(method, path, the request as bytes with ``Connection: close``), or None if the client sent nothing."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = client.recv(1 << 16)
        if not chunk:
            return None
        buffer += chunk
        if len(buffer) > _MAX_HEAD + _MAX_BODY:
            raise ValueError("request too large")
    head, _, body = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = [line for line in lines[1:] if line]
    names = {line.split(":", 1)[0].strip().lower(): line.split(":", 1)[1].strip() for line in headers}
    if names.get("transfer-encoding", "").lower() == "chunked":
        while not body.endswith(b"0\r\n\r\n"):
            chunk = client.recv(1 << 16)
            if not chunk:
                raise ValueError("truncated chunked body")
            body += chunk
            if len(body) > _MAX_BODY:
                raise ValueError("request too large")
    else:
        length = int(names.get("content-length", "0"))
        if length > _MAX_BODY:
            raise ValueError("request too large")
        while len(body) < length:
            chunk = client.recv(min(1 << 16, length - len(body)))
            if not chunk:
                raise ValueError("truncated body")
            body += chunk
    kept = [line for line in headers if not line.lower().startswith(("connection:", "keep-alive:"))]
    rebuilt = "\r\n".join([lines[0], *kept, "Connection: close", "", ""]).encode("latin-1") + body
    return method, urlsplit(target).path, rebuilt


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a dropped connection looks to the client."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
