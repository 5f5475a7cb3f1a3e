"""An HTTP proxy between the scaler and the Docker engine that fails chosen calls on demand.

It listens on 127.0.0.1 (the backend's ``base_url: tcp://127.0.0.1:<port>``) and forwards to
the engine's unix socket. Every request and response is relayed byte for byte, bodies framed
as HTTP/1.1 frames them (Content-Length, chunked, or none for 1xx/204/304 and HEAD), except
for the next ``times`` requests matching an injected fault: those never reach the engine and
get Docker's own error shape (``{"message": ...}`` with the status), or, for ``TIMEOUT``, no
answer at all until the client gives up and closes the connection.

    with DockerFaultProxy() as proxy:
        proxy.inject("POST", "/containers/create", 503, times=2)
        ...
        proxy.pending()  # 0 once both were answered
"""

from __future__ import annotations

import json
import re
import select
import socket
import socketserver
import threading
import time
from dataclasses import dataclass

TIMEOUT = "TIMEOUT"
_REASONS = {403: "Forbidden", 409: "Conflict", 500: "Internal Server Error", 503: "Unavailable"}
_VERSION_PREFIX = re.compile(r"^/v[0-9.]+(?=/)")


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    status: int | str
    times: int


def api_path(target: str) -> str:
    """The request target without the API version prefix and the query.

    >>> api_path("/v1.41/containers/abc/start?x=1")
    '/containers/abc/start'
    """
    return _VERSION_PREFIX.sub("", target.split("?", 1)[0])


class _Stream:
    """Buffered reads of exact sizes and lines from a socket, for relaying HTTP frames."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buffer += data
        return bool(data)

    def until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            if not self._fill():
                raise ConnectionError("closed mid-message")
        head, _, self.buffer = self.buffer.partition(marker)
        return head + marker

    def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not self._fill():
                raise ConnectionError("closed mid-message")
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def rest(self) -> bytes:
        data, self.buffer = self.buffer, b""
        while self._fill():
            data, self.buffer = data + self.buffer, b""
        return data


def _headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines if x)}


def _body(stream: _Stream, headers: dict[str, str]) -> bytes:
    """The body bytes as framed on the wire (chunked bodies keep their chunk framing)."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        framed = b""
        while True:
            size_line = stream.until(b"\r\n")
            framed += size_line
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                return framed + stream.until(b"\r\n")  # no trailers from the engine
            framed += stream.exactly(size + 2)
    return stream.exactly(int(headers.get("content-length", "0")))


class DockerFaultProxy:
    """Forwards 127.0.0.1:<port> to the engine's socket; fails injected calls."""

    def __init__(self, upstream: str = "/var/run/docker.sock", max_hold: float = 60.0) -> None:
        self.upstream = upstream
        self.max_hold = max_hold
        self.faults: list[Fault] = []
        self.served: list[tuple[str, str, int | str]] = []
        self._held = 0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve(self.request)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.url = f"tcp://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> DockerFaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()

    def inject(self, method: str, path: str, status: int | str, times: int = 1) -> None:
        """Fail the next ``times`` requests ``method`` whose path (no version) matches ``path``."""
        with self._lock:
            self.faults.append(Fault(method, re.compile(f"^{path}$"), status, times))

    def pending(self) -> int:
        """Injected failures not yet delivered, plus requests being held right now."""
        with self._lock:
            return sum(f.times for f in self.faults) + self._held

    def _take(self, method: str, path: str) -> int | str | None:
        with self._lock:
            for fault in self.faults:
                if fault.method == method and fault.path.match(path) and fault.times > 0:
                    fault.times -= 1
                    if fault.status == TIMEOUT:
                        self._held += 1
                    self.faults = [f for f in self.faults if f.times > 0]
                    return fault.status
        return None

    def _serve(self, client: socket.socket) -> None:
        engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            engine.connect(self.upstream)
            from_client, from_engine = _Stream(client), _Stream(engine)
            while not self._closing.is_set():
                try:
                    head = from_client.until(b"\r\n\r\n")
                except ConnectionError:
                    return
                method, target = head.split(b" ", 2)[:2]
                body = _body(from_client, _headers(head))
                path = api_path(target.decode())
                status = self._take(method.decode(), path)
                if status == TIMEOUT:
                    self._hold(client)
                    self.served.append((method.decode(), path, TIMEOUT))
                    return
                if status is not None:
                    self._fail(client, int(status), f"{method.decode()} {path}")
                    self.served.append((method.decode(), path, int(status)))
                    continue
                engine.sendall(head + body)
                if not self._relay_response(from_engine, client, method):
                    return
        except (ConnectionError, OSError):
            return
        finally:
            engine.close()
            client.close()

    def _relay_response(self, from_engine: _Stream, client: socket.socket, method: bytes) -> bool:
        """Relay one response unchanged; False when the connection ends with it."""
        head = from_engine.until(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        headers = _headers(head)
        if method == b"HEAD" or status in (204, 304) or 100 <= status < 200:
            client.sendall(head)
            return status != 101
        if "content-length" in headers or "chunked" in headers.get("transfer-encoding", ""):
            client.sendall(head + _body(from_engine, headers))
            return headers.get("connection", "").lower() != "close"
        client.sendall(head + from_engine.rest())  # a stream that ends with the connection
        return False

    def _fail(self, client: socket.socket, status: int, what: str) -> None:
        body = json.dumps({"message": f"injected fault: {status} on {what}"}).encode()
        client.sendall(
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            "Content-Type: application/json\r\nApi-Version: 1.41\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )

    def _hold(self, client: socket.socket) -> None:
        """No answer: wait until the client gives up (closes) or ``max_hold`` passes."""
        deadline = time.monotonic() + self.max_hold
        try:
            while time.monotonic() < deadline and not self._closing.is_set():
                readable, _, _ = select.select([client], [], [], 0.1)
                if readable and not client.recv(65536):
                    return
        except OSError:
            return
        finally:
            with self._lock:
                self._held -= 1
