"""The HTTP side of `lepjax serve`: routes, JSON responses, server-sent event streams.

A handler thread parses and checks a request (`Server.completion_job` / `chat_job` queue it),
then either waits for the result or, with `stream: true`, writes each piece of new text as a
`data: {chunk}` event as the decoding thread reports it, and `data: [DONE]` at the end.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from http.server import BaseHTTPRequestHandler
from typing import Any

from lepjax.generate.requests import BadRequest, finish_reason

log = logging.getLogger("lepjax.serve")
MAX_BODY_BYTES = 64 << 20


class Handler(BaseHTTPRequestHandler):
    """Routes GET /health, /v1/models and POST /v1/completions, /v1/chat/completions."""

    server_version = "lepjax-serve"

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            log.info("client %s went away before its response", self.address_string())

    def _error(self, status: int, message: str, param: str | None = None,
               kind: str = "invalid_request_error") -> None:
        self._send(status, {"error": {"message": message, "type": kind, "param": param,
                                      "code": None}})

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        app = self.server.app  # type: ignore[attr-defined]
        path = self.path.split("?")[0].rstrip("/")
        if path == "/health":
            self._send(200, app.health())
        elif path == "/v1/models":
            self._send(200, {"object": "list", "data": [
                {"id": app.model_name, "object": "model", "created": 0, "owned_by": "lepjax"}]})
        else:
            self._error(404, f"no such endpoint: GET {path}", kind="not_found_error")

    def do_POST(self) -> None:  # noqa: N802
        app = self.server.app  # type: ignore[attr-defined]
        path = self.path.split("?")[0].rstrip("/")
        if path not in ("/v1/completions", "/v1/chat/completions"):
            self._error(404, f"no such endpoint: POST {path}", kind="not_found_error")
            return
        chat = path == "/v1/chat/completions"
        try:
            body = self._body()
            if isinstance(body, dict) and body.get("stream") is True:
                job, _ = app.chat_job(body) if chat else app.completion_job(body)
                self._stream(app, job, chat)
            else:
                self._send(200, app.chat(body) if chat else app.complete(body))
        except BadRequest as e:
            self._error(e.status, str(e), e.param, e.kind)
        except Exception as e:
            log.exception("%s request failed", path)
            self._error(500, f"{type(e).__name__}: {e}", kind="server_error")

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY_BYTES:
            raise BadRequest(f"Content-Length must be in [1, {MAX_BODY_BYTES}], got {length}")
        try:
            return json.loads(self.rfile.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BadRequest(f"the request body is not valid JSON ({e})") from None

    def _stream(self, app, job, chat: bool) -> None:
        """Server-sent events of a queued job: text deltas as they come, finish reasons, [DONE]."""
        head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": app.model_name}
        sent = [""] * len(job.prompts)

        def choice(i: int, text: str | None, finish: str | None) -> dict:
            if not chat:
                return {"index": i, "text": text or "", "logprobs": None, "finish_reason": finish}
            delta = {} if text is None else {"content": text}
            return {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}

        def send(choices: list[dict]) -> None:
            self.wfile.write(b"data: " + json.dumps({**head, "choices": choices},
                                                    ensure_ascii=False).encode() + b"\n\n")
            self.wfile.flush()

        def delta(i: int, text: str) -> str:
            new = text[len(sent[i]):] if text.startswith(sent[i]) else ""
            sent[i] += new
            return new

        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            if chat:
                send([{"index": 0, "delta": {"role": "assistant", "content": ""},
                       "logprobs": None, "finish_reason": None}])
            while (item := job.updates.get()) is not None:
                i, text = item
                if new := delta(i, text):
                    send([choice(i, new, None)])
            try:
                outs = job.future.result()
            except Exception as e:  # noqa: BLE001  headers are out: report in the stream
                error = e if isinstance(e, BadRequest) else BadRequest(
                    f"{type(e).__name__}: {e}", status=500, kind="server_error")
                self.wfile.write(b"data: " + json.dumps({"error": {
                    "message": str(error), "type": error.kind, "param": error.param,
                    "code": None}}).encode() + b"\n\n")
            else:
                for i, c in enumerate(outs):
                    rest = delta(i, c.text or "")
                    send([choice(i, rest if rest or not chat else None, finish_reason(c))])
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            log.info("client %s went away during its stream", self.address_string())
