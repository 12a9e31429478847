"""An S3 endpoint that misbehaves, for tests: a moto server on loopback, and in front of it a fault proxy that
answers a share of requests with 503 SlowDown, resets a share of connections (before the request reaches the
server, or in the middle of a GET's body), and delays a share of responses (the body sent in slow pieces).

    moto = start_moto()                           # a `moto_server` process on a free port
    proxy = S3FaultProxy(moto.port, FaultPlan(slowdown=0.1, reset=0.05, cut_body=0.05, slow=0.1))
    proxy.start()                                 # binds 127.0.0.1:0; clients use proxy.endpoint
    ...
    proxy.counts                                  # what it saw and injected
    proxy.stop(); moto.stop()

Faults are drawn from a seeded random stream, so a run's mix is reproducible for a given order of requests.
A reset before forwarding never reaches the server; a body is cut only on GET (a read, safe to repeat), so
every fault is one a client may retry. The proxy speaks HTTP/1.1 with keep-alive, as S3 does.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
HOP_BY_HOP |= {"expect"}  # the proxy answers 100-continue itself
SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>fault-proxy</RequestId></Error>"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class MotoServer:
    proc: subprocess.Popen
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def start_moto(timeout_s: float = 60) -> MotoServer:
    """`moto_server` on a free loopback port, once it accepts connections."""
    port = free_port()
    server = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    proc = subprocess.Popen(
        [server, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return MotoServer(proc, port)
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.2)


def s3_env(endpoint: str) -> dict[str, str]:
    """The environment s3fs and botocore read: the endpoint and moto's throwaway credentials."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@dataclass(frozen=True)
class FaultPlan:
    """The share of requests (0-1) that get each fault; at most one fault per request."""

    slowdown: float = 0.0  # answered 503 SlowDown, not forwarded
    reset: float = 0.0  # connection reset before the request is forwarded
    cut_body: float = 0.0  # GET only: the response's headers and half its body, then a reset
    slow: float = 0.0  # the response's body sent in 8 pieces, `slow_seconds` in all
    slow_seconds: float = 0.4
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ProxyCounts:
    requests: int = 0
    forwarded: int = 0
    slowdown: int = 0
    reset: int = 0
    cut_body: int = 0
    slow: int = 0
    by_method: dict[str, int] = field(default_factory=dict)

    def faults(self) -> int:
        return self.slowdown + self.reset + self.cut_body + self.slow

    def to_dict(self) -> dict:
        return {**asdict(self), "faults": self.faults()}


class S3FaultProxy:
    def __init__(self, upstream_port: int, plan: FaultPlan | None = None) -> None:
        self.upstream_port = upstream_port
        self.plan = plan or FaultPlan()
        self.counts = ProxyCounts()
        self._lock = threading.Lock()
        self._random = random.Random(self.plan.seed)
        self._server: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_port}"

    def set_plan(self, plan: FaultPlan) -> None:
        with self._lock:
            self.plan = plan
            self._random = random.Random(plan.seed)

    def start(self) -> str:
        proxy = self

        class Handler(_ProxyHandler):
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="s3-fault-proxy", daemon=True).start()
        return self.endpoint

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def draw(self, method: str) -> str:
        """The fault for the next request ("" for none), counted."""
        with self._lock:
            p, x = self.plan, self._random.random()
            self.counts.requests += 1
            self.counts.by_method[method] = self.counts.by_method.get(method, 0) + 1
            fault = ""
            for name, share in (
                ("slowdown", p.slowdown),
                ("reset", p.reset),
                ("cut_body", p.cut_body),
                ("slow", p.slow),
            ):
                if x < share:
                    fault = name
                    break
                x -= share
            if fault == "cut_body" and method != "GET":
                fault = ""
            if fault:
                setattr(self.counts, fault, getattr(self.counts, fault) + 1)
            else:
                self.counts.forwarded += 1
            if fault in ("slow", "cut_body"):
                self.counts.forwarded += 1  # these reach the server; the fault is in the answer
            return fault


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: S3FaultProxy

    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
        pass

    def handle(self) -> None:
        with contextlib.suppress(OSError):  # a reset this proxy made, or a client that went away
            super().handle()

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reset(self) -> None:
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def _proxy(self) -> None:
        body = self._body()
        fault = self.owner.draw(self.command)
        if fault == "reset":
            return self._reset()
        if fault == "slowdown":
            self.send_response(503, "Slow Down")
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(SLOWDOWN_BODY)))
            self.end_headers()
            self.wfile.write(SLOWDOWN_BODY)
            return None
        upstream = http.client.HTTPConnection("127.0.0.1", self.owner.upstream_port, timeout=60)
        try:
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for key, value in self.headers.items():
                if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                    upstream.putheader(key, value)
            upstream.putheader("Content-Length", str(len(body)))
            upstream.endheaders(body)
            response = upstream.getresponse()
            payload = response.read()
        finally:
            upstream.close()
        self.send_response(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                self.send_header(key, value)
        length = response.getheader("Content-Length") if self.command == "HEAD" else str(len(payload))
        self.send_header("Content-Length", length or "0")
        self.end_headers()
        if self.command == "HEAD" or not payload:
            return None
        if fault == "cut_body" and len(payload) > 1:
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            return self._reset()
        if fault == "slow":
            pieces = 8
            step = max(1, -(-len(payload) // pieces))
            for i in range(0, len(payload), step):
                self.wfile.write(payload[i : i + step])
                self.wfile.flush()
                time.sleep(self.owner.plan.slow_seconds / pieces)
            return None
        self.wfile.write(payload)
        return None

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _proxy
