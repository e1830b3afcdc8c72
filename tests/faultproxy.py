"""A fault-injecting HTTP proxy in front of a local S3 endpoint (the moto server), for tests.

It listens on 127.0.0.1 only, forwards every request to one upstream URL and answers some of them
with a fault instead:

- ``"500"``: HTTP 500 InternalError; ``"503"``: HTTP 503 SlowDown (S3's throttling answer);
- ``"drop"``: the connection is closed without an answer (a dropped connection);
- ``"truncate"``: the request reaches the upstream, but the client gets only the headers and half
  of the body (or, for an empty body, nothing) before the connection closes;
- ``"timeout"``: no answer for `stall_s` seconds (longer than the client's read timeout), then close.

Which requests fail is deterministic: a request is keyed by (method, path without its bucket, query),
so a test's fresh, randomly named bucket meets the same faults on every run; a `FaultPlan`
gives each key a number of consecutive failures (``transient``: 0 to `max_consecutive`, from a
hash of the key; ``persistent``: every attempt) and cycles through its kinds. Only the methods in
`methods` are faulted. Everything is bounded: bodies up to 256 MiB, stalls of `stall_s`, the
server thread stops when the context exits. `counts` reports requests and injected faults.
"""

from __future__ import annotations

import hashlib
import http.client
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

MAX_BODY = 256 * 2**20
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
ERROR_BODIES = {
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "503": (503, "SlowDown", "Please reduce your request rate."),
}


@dataclass
class FaultPlan:
    """Which requests fail and how (see the module docstring)."""

    kinds: tuple[str, ...] = ("500", "503", "drop", "truncate")
    methods: tuple[str, ...] = ("GET", "PUT", "HEAD", "POST", "DELETE")
    persistent: bool = False
    max_consecutive: int = 2
    stall_s: float = 1.5
    path_contains: str = ""

    def failures_for(self, key: str) -> int:
        """How many consecutive attempts of this request fail (transient plans)."""
        return int(hashlib.sha256(key.encode()).hexdigest(), 16) % (self.max_consecutive + 1)


@dataclass
class FaultProxy:
    """Running proxy: `url` to give clients as their endpoint; `counts` of what happened."""

    upstream: str
    plan: FaultPlan | None = None
    counts: Counter = field(default_factory=Counter)
    _attempts: Counter = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> "FaultProxy":
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def fault_for(self, method: str, path: str) -> str | None:
        """The fault to inject for this attempt of (method, path), or None to forward it."""
        plan = self.plan
        with self._lock:
            self.counts["requests"] += 1
            if plan is None or method not in plan.methods or plan.path_contains not in path:
                return None
            key = f"{method} {path}"
            attempt = self._attempts[key]
            self._attempts[key] += 1
            if not plan.persistent and attempt >= plan.failures_for(f"{method} {_without_bucket(path)}"):
                return None
            kind = plan.kinds[(attempt + self.counts["faults"]) % len(plan.kinds)]
            self.counts["faults"] += 1
            self.counts[f"fault_{kind}"] += 1
            return kind

    @property
    def max_attempts_seen(self) -> int:
        """The most attempts any one request needed."""
        with self._lock:
            return max(self._attempts.values(), default=0)


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    upstream = urlsplit(proxy.upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                raise ValueError(f"request body of {length} bytes exceeds the proxy's bound")
            return self.rfile.read(length) if length else b""

        def _forward(self) -> tuple[int, list[tuple[str, str]], bytes]:
            conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=30)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                conn.request(self.command, self.path, body=self._request_body, headers=headers)
                resp = conn.getresponse()
                return resp.status, [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP], resp.read()
            finally:
                conn.close()

        def _close_hard(self) -> None:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def _handle(self) -> None:
            self._request_body = self._body()
            fault = proxy.fault_for(self.command, self.path)
            if fault in ERROR_BODIES:
                status, code, message = ERROR_BODIES[fault]
                body = f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body if self.command != "HEAD" else b"")
                return
            if fault == "drop":
                self._close_hard()
                return
            if fault == "timeout":
                time.sleep(proxy.plan.stall_s)
                self._close_hard()
                return
            status, headers, body = self._forward()
            if fault == "truncate" and (self.command == "HEAD" or len(body) < 2):
                self._close_hard()  # the upstream did the work, the answer is lost
                return
            self.send_response(status)
            for k, v in headers:
                if k.lower() != "content-length":
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)) if self.command != "HEAD" else dict((k.lower(), v) for k, v in headers).get("content-length", "0"))
            self.end_headers()
            if self.command == "HEAD":
                return
            if fault == "truncate":
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self._close_hard()
                return
            self.wfile.write(body)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    return Handler


def _without_bucket(path: str) -> str:
    """A path-style S3 request path (/BUCKET/KEY?QUERY) without its bucket segment."""
    return "/" + path.lstrip("/").partition("/")[2]
