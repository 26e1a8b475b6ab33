"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1, for the openai engine's tests.

A real HTTP server (``ThreadingHTTPServer`` in a thread, port 0) answering ``POST /v1/chat/completions`` and
``GET /v1/models`` the way vLLM's ``vllm serve`` and OpenAI do. What it answers comes from a script: a callable
``script(request_json) -> Reply`` or a list of replies consumed in arrival order. A ``Reply`` is

- ``str``: a 200 chat completion whose message content is that text;
- ``(status, body)``: that status with ``body`` (a dict is sent as JSON, a str as is: malformed bodies);
  error statuses carry ``retry-after-ms`` (see ``retry_after_ms``) like rate-limiting servers do;
- ``("sleep", seconds)`` or ``("sleep", seconds, reply)``: wait, then answer ``reply`` (default ``""``),
  to provoke client timeouts and out-of-order completion.

Misbehaving servers (each bounded: a handler never outlives the server, nor ``HOLD_LIMIT`` seconds):

- ``("stall",)``: read the request, never answer;
- ``("drip", interval, reply)``: the headers at once, then the body one byte every ``interval`` seconds;
- ``("reset", reply)``: the headers and half the body, then a TCP reset;
- ``("length", delta, reply)``: a Content-Length ``delta`` bytes off the body's (negative: shorter, the rest
  of the body follows anyway; positive: longer, and the connection closes after the body);
- ``("unsized", reply)``: no Content-Length, the body runs until the connection closes (legal HTTP/1.1).

Every request is recorded (``.requests``: path, headers, parsed body).

Messages are checked as OpenAI and ``vllm serve`` check them: ``content`` is a string or a list of content parts,
``{"type": "text", "text": str}`` or ``{"type": "image_url", "image_url": {"url": "data:image/<fmt>;base64,..."}}``.
A data URI must decode (base64, then the image with Pillow) to an image of the format its media type names;
anything else is answered 400 before the script sees the request. The decoded images are recorded
(``RecordedRequest.images``: (media type, bytes, (width, height)) in order).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = Any  # str | tuple[int, dict | str] | tuple["sleep", float] | tuple["sleep", float, Reply] | ...
Script = Callable[[dict], Reply] | list
HOLD_LIMIT = 30.0  # seconds a stalling or dripping handler may hold its connection at most


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: dict | None = field(default=None)
    images: list[tuple[str, bytes, tuple[int, int]]] = field(default_factory=list)  # decoded data URIs

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


def chat_completion(content: str | None, request: dict, finish_reason: str = "stop") -> dict:
    """A realistic ``chat.completion`` object; token counts are whitespace words (deterministic, non-zero)."""
    prompt_tokens = sum(len(message_text(m).split()) for m in request.get("messages", []) if isinstance(m, dict))
    completion_tokens = len((content or "").split())
    return {
        "id": f"chatcmpl-{time.monotonic_ns():x}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.get("model", "scripted"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


_PIL_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP", "image/gif": "GIF"}


class InvalidContent(ValueError):
    """A message the server refuses (400), as OpenAI-compatible servers refuse malformed content parts."""


def decode_data_uri(url: str) -> tuple[str, bytes, tuple[int, int]]:
    """(media type, bytes, size) of a ``data:image/...;base64,...`` URI whose image decodes as that type."""
    from PIL import Image

    head, comma, payload = url.partition(",")
    if not comma or not head.startswith("data:") or not head.endswith(";base64"):
        raise InvalidContent(f"image_url is not a base64 data URI: {url[:40]!r}")
    mime = head[len("data:") : -len(";base64")]
    if mime not in _PIL_FORMATS:
        raise InvalidContent(f"unsupported image media type {mime!r}")
    try:
        data = base64.b64decode(payload, validate=True)
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            fmt, size = image.format, image.size
    except (binascii.Error, ValueError, OSError) as exc:
        raise InvalidContent(f"the data URI does not decode to an image: {exc}") from None
    if fmt != _PIL_FORMATS[mime]:
        raise InvalidContent(f"the data URI says {mime} but holds {fmt}")
    return mime, data, size


def check_messages(messages: Any) -> list[tuple[str, bytes, tuple[int, int]]]:
    """The images of valid chat messages, in order; ``InvalidContent`` for what a server would refuse."""
    if not isinstance(messages, list) or not messages:
        raise InvalidContent("messages must be a non-empty list")
    images = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            continue
        if not isinstance(content, list) or not content:
            raise InvalidContent("content must be a string or a non-empty list of content parts")
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                continue
            url = part.get("image_url") if kind == "image_url" else None
            if not isinstance(url, dict) or not isinstance(url.get("url"), str):
                raise InvalidContent(f"invalid content part: {str(part)[:80]}")
            images.append(decode_data_uri(url["url"]))
    return images


def message_text(message: dict) -> str:
    """The text of a message, whichever form its content takes."""
    content = message.get("content", "")
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content)


def error_body(status: int, message: str) -> dict:
    """OpenAI's error object (recent ``vllm serve`` answers the same shape)."""
    return {
        "error": {
            "message": message,
            "type": "BadRequestError" if status < 500 else "InternalServerError",
            "param": None,
            "code": status,
        }
    }


class ScriptedOpenAIServer:
    """Context manager: ``with ScriptedOpenAIServer(script) as server: ... server.base_url``."""

    def __init__(self, script: Script, model: str = "scripted-model", retry_after_ms: float | None = 10.0) -> None:
        self._script = script
        self._queue = list(script) if isinstance(script, list) else None
        self.model = model
        self.retry_after_ms = retry_after_ms  # keeps the client's retry backoff short; None: no header
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.closing = threading.Event()  # set on exit: stalling and dripping handlers let go

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def __enter__(self) -> ScriptedOpenAIServer:
        handler = type("Handler", (_Handler,), {"server_ref": self})
        self._httpd = _QuietServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False  # sleeping handlers must not hold up shutdown
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.02,), name="scripted-openai", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._httpd is not None and self._thread is not None
        self.closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _next_reply(self, body: dict) -> Reply:
        if self._queue is None:
            return self._script(body)
        with self._lock:
            if not self._queue:
                return 500, error_body(500, "scripted server: script exhausted")
            return self._queue.pop(0)

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)


class _QuietServer(ThreadingHTTPServer):
    request_queue_size = 128  # listen backlog: socketserver's 5 drops the SYNs of a burst of connections

    def handle_error(self, request: Any, client_address: Any) -> None:  # a client that went away: not news
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_ref: ScriptedOpenAIServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _headers(self) -> dict[str, str]:
        return {name.lower(): value for name, value in self.headers.items()}

    def _head(self, status: int, length: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(length))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()

    def _send(self, status: int, body: dict | str, headers: dict[str, str] | None = None) -> None:
        payload = _payload(body)
        try:
            self._head(status, len(payload), headers)
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
            pass

    def _misbehave(self, reply: tuple, body: dict) -> None:
        """The misbehaving replies (see the module docstring); the connection closes after them, but for a
        shorter Content-Length (its surplus bytes wait on the live connection)."""
        self.close_connection = True
        if reply[0] == "stall":
            self.server_ref.closing.wait(HOLD_LIMIT)
            return
        payload = _payload(chat_completion(reply[-1], body) if isinstance(reply[-1], str) else reply[-1])
        act = {"drip": self._drip, "reset": self._reset, "unsized": self._unsized, "length": self._length}[reply[0]]
        with contextlib.suppress(OSError):  # the client gave up first
            act(payload, *reply[1:-1])

    def _drip(self, payload: bytes, interval: float) -> None:
        self._head(200, len(payload))
        stop = time.monotonic() + HOLD_LIMIT
        for i in range(len(payload)):
            if self.server_ref.closing.wait(float(interval)) or time.monotonic() > stop:
                return
            self.wfile.write(payload[i : i + 1])

    def _reset(self, payload: bytes) -> None:
        self._head(200, len(payload))
        self.wfile.write(payload[: len(payload) // 2])
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()  # linger 0: the peer gets RST

    def _unsized(self, payload: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)

    def _length(self, payload: bytes, delta: int) -> None:
        self.close_connection = int(delta) > 0
        self._head(200, len(payload) + int(delta))
        self.wfile.write(payload)

    def do_GET(self) -> None:
        self.server_ref._record(RecordedRequest("GET", self.path, self._headers()))
        if self.path.rstrip("/") == "/v1/models":
            model = {"id": self.server_ref.model, "object": "model", "created": 0, "owned_by": "scripted"}
            self._send(200, {"object": "list", "data": [model]})
        else:
            self._send(404, error_body(404, f"no route {self.path}"))

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = None
        recorded = RecordedRequest("POST", self.path, self._headers(), body)
        self.server_ref._record(recorded)
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send(404, error_body(404, f"no route {self.path}"))
            return
        if not isinstance(body, dict) or "messages" not in body or "model" not in body:
            self._send(400, error_body(400, "request must be a JSON object with model and messages"))
            return
        try:
            recorded.images = check_messages(body["messages"])
        except InvalidContent as exc:
            self._send(400, error_body(400, str(exc)))
            return
        self._answer(self.server_ref._next_reply(body), body)

    def _answer(self, reply: Reply, body: dict) -> None:
        if isinstance(reply, tuple) and reply and reply[0] == "sleep":
            time.sleep(float(reply[1]))
            self._answer(reply[2] if len(reply) > 2 else "", body)
        elif isinstance(reply, tuple) and reply and reply[0] in ("stall", "drip", "reset", "length", "unsized"):
            self._misbehave(reply, body)
        elif isinstance(reply, str):
            self._send(200, chat_completion(reply, body))
        elif isinstance(reply, tuple) and len(reply) == 2 and isinstance(reply[0], int):
            status, payload = reply
            headers = {}
            if status >= 400 and self.server_ref.retry_after_ms is not None:
                headers["retry-after-ms"] = str(self.server_ref.retry_after_ms)
            self._send(status, payload, headers)
        else:
            raise TypeError(f"scripted server: cannot answer {reply!r}")


def _payload(body: dict | str) -> bytes:
    return (json.dumps(body) if isinstance(body, dict) else body).encode("utf-8", "surrogatepass")
