"""A real S3-compatible server on loopback for the object-storage tests: moto's server mode in a subprocess, with
IAM authentication on (wrong keys and wrong secrets are refused as AWS refuses them), one user whose keys the
tests use, and a bucket. ``ThrottlingProxy`` sits in front of it and answers some requests 503 SlowDown."""

from __future__ import annotations

import contextlib
import http.client
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.ray_cluster import free_port

REGION = "us-east-1"
BUCKET = "vlm-test"
# moto authenticates only after this many requests: the setup below (user, policy, keys, bucket) goes before
_SETUP_REQUESTS = 4
_POLICY = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}'


@dataclass
class MotoServer:
    port: int
    proc: subprocess.Popen
    key: str = ""
    secret: str = ""
    calls: list[str] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, endpoint: str | None = None, **extra: str) -> dict[str, str]:
        """The environment of a process that uses this server (standard AWS variables only)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            AWS_ENDPOINT_URL=endpoint or self.endpoint,
            AWS_ACCESS_KEY_ID=self.key,
            AWS_SECRET_ACCESS_KEY=self.secret,
            AWS_REGION=REGION,
            AWS_MAX_ATTEMPTS="3",
            AWS_CONFIG_FILE=os.devnull,
            AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        )
        env.update(extra)
        return env

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.key,
            aws_secret_access_key=self.secret,
        )

    def objects(self, bucket: str, prefix: str) -> dict[str, bytes]:
        """Every object under ``prefix/``: key relative to the prefix -> its bytes."""
        s3 = self.client()
        out: dict[str, bytes] = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/"):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix.rstrip("/")) + 1 :]
                out[rel] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        return out

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)


def start_moto(bucket: str = BUCKET) -> MotoServer:
    """moto_server on a free loopback port, IAM auth on after the setup, one user with full access, a bucket."""
    import boto3

    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(_SETUP_REQUESTS), "MOTO_PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = MotoServer(port, proc)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{server.endpoint}/moto-api/", timeout=2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.1)
    kw = {"endpoint_url": server.endpoint, "region_name": REGION}
    iam = boto3.client("iam", aws_access_key_id="setup", aws_secret_access_key="setup", **kw)
    iam.create_user(UserName="curator")
    iam.put_user_policy(UserName="curator", PolicyName="all", PolicyDocument=_POLICY)
    key = iam.create_access_key(UserName="curator")["AccessKey"]
    server.key, server.secret = key["AccessKeyId"], key["SecretAccessKey"]
    server.client().create_bucket(Bucket=bucket)  # the 4th unauthenticated request... or the first signed one
    return server


class ThrottlingProxy:
    """A loopback HTTP proxy in front of ``target`` that answers 503 SlowDown (S3's XML error) to the first
    ``first`` requests, and to every ``every``-th PUT after that when ``every`` is set; everything else it
    forwards unchanged (the signature covers the Host header: the client signs for the proxy's address, and the
    proxy forwards the same Host), each after ``delay`` seconds (a store's latency, for benchmarks)."""

    def __init__(
        self, target_port: int, first: int = 0, every: int | None = None, always: bool = False, delay: float = 0.0
    ) -> None:
        self.target_port = target_port
        self.delay = delay
        self.first = first
        self.every = every
        self.always = always
        self.requests = 0
        self.puts = 0
        self.throttled = 0
        self.log: list[tuple[str, str, str | None, int]] = []  # (method, path, Range header, body bytes sent)
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if proxy._throttle(self.command):
                    xml = (
                        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                        b"<Message>Please reduce your request rate.</Message></Error>"
                    )
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(xml)))
                    self.end_headers()
                    self.wfile.write(xml)
                    return
                if proxy.delay:
                    time.sleep(proxy.delay)
                conn = http.client.HTTPConnection("127.0.0.1", proxy.target_port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                            self.send_header(k, v)
                    head_length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                    self.send_header("Content-Length", head_length or str(len(data)))  # HEAD: the object's size
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                    with proxy._lock:
                        proxy.log.append((self.command, self.path, self.headers.get("Range"), len(data)))
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _throttle(self, method: str) -> bool:
        with self._lock:
            self.requests += 1
            if method == "PUT":
                self.puts += 1
            hit = (
                self.always
                or self.requests <= self.first
                or (self.every is not None and method == "PUT" and self.puts % self.every == 0)
            )
            self.throttled += hit
            return hit

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def sent(self, key: str) -> int:
        """Body bytes the server sent back for GETs of object ``key`` (``bucket/key``) so far."""
        with self._lock:
            return sum(n for method, path, _, n in self.log if method == "GET" and path.split("?")[0] == f"/{key}")

    def __enter__(self) -> ThrottlingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def moto_server() -> Iterator[MotoServer]:
    server = start_moto()
    try:
        yield server
    finally:
        server.stop()


def use_server(s3: MotoServer, monkeypatch: Any) -> MotoServer:
    """Point this process's AWS environment (and so its workers') at ``s3``, and nothing else of it."""
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in s3.env().items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    return s3
