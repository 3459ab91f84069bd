"""A fake OpenAI-compatible /v1/completions and /v1/chat/completions server on 127.0.0.1 for
augmentation tests: it answers each prompt (a chat request's one user message) with
`reply(prompt)` (a string, or an int HTTP status to fail with), records every prompt it receives
and each request's path and body (`requests`), and can wait `delay_s` per request.

It counts the requests in flight (`in_flight`, the most at once in `max_in_flight`) and, for
utilisation, their time integral: `mean_in_flight()` is the mean number in flight between the
first request's arrival and the last reply, counting at most `slots` (0 = unlimited): a server that
decodes at most that many requests at once (vLLM's max_num_seqs); later ones wait for a slot."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 4096  # the listen backlog: hundreds of clients connect at once


class FakeServer:
    """`with FakeServer(reply) as server:` -> `server.url`, `server.prompts` (in arrival order)."""

    def __init__(self, reply, delay_s: float = 0.0, slots: int = 0):
        self.reply, self.delay_s = reply, delay_s
        self.prompts: list[str] = []
        self.requests: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = 0
        self._area = 0.0  # integral of in_flight over time
        self._first = self._last = self._changed = None
        self._slots = threading.Semaphore(slots) if slots else None
        self._cap = slots or float("inf")
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                chat = self.path.endswith("/chat/completions")
                prompt = body["messages"][0]["content"] if chat else body["prompt"]
                with outer.lock:
                    outer.prompts.append(prompt)
                    outer.requests.append((self.path, body))
                outer._count(+1)
                try:
                    if outer._slots is not None:
                        outer._slots.acquire()
                    try:
                        if outer.delay_s:
                            time.sleep(outer.delay_s)
                        out = outer.reply(prompt)
                    finally:
                        if outer._slots is not None:
                            outer._slots.release()
                finally:
                    outer._count(-1)
                if isinstance(out, int):
                    data = json.dumps({"error": {"message": f"rejected with {out}"}}).encode()
                    self.send_response(out)
                else:
                    choice = ({"message": {"role": "assistant", "content": out}} if chat
                              else {"text": out})
                    data = json.dumps({"choices": [{**choice, "index": 0}]}).encode()
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def _count(self, step: int) -> None:
        now = time.perf_counter()
        with self.lock:
            if self._first is None:
                self._first = self._changed = now
            self._area += min(self.in_flight, self._cap) * (now - self._changed)
            self._changed = now
            self.in_flight += step
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if step < 0:
                self._last = now

    def mean_in_flight(self) -> float:
        """Mean requests in flight from the first arrival to the last reply (0 before any)."""
        with self.lock:
            if self._first is None or self._last is None or self._last <= self._first:
                return 0.0
            return self._area / (self._last - self._first)

    def __enter__(self) -> "FakeServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
