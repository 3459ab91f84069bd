"""A fake OpenAI-compatible /v1/completions server on 127.0.0.1 for augmentation tests: it answers
each prompt with `reply(prompt)` (a string, or an int HTTP status to fail with), records every
prompt it receives, and can wait `delay_s` per request."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeServer:
    """`with FakeServer(reply) as server:` -> `server.url`, `server.prompts` (in arrival order)."""

    def __init__(self, reply, delay_s: float = 0.0):
        self.reply, self.delay_s = reply, delay_s
        self.prompts: list[str] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["prompt"]
                with outer.lock:
                    outer.prompts.append(prompt)
                if outer.delay_s:
                    time.sleep(outer.delay_s)
                out = outer.reply(prompt)
                if isinstance(out, int):
                    data = json.dumps({"error": {"message": f"rejected with {out}"}}).encode()
                    self.send_response(out)
                else:
                    data = json.dumps({"choices": [{"text": out, "index": 0}]}).encode()
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FakeServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
