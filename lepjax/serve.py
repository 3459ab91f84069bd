"""`lepjax serve`: a checkpoint on an OpenAI-compatible completions endpoint (standard library).

Endpoints (on 127.0.0.1 by default):
  POST /v1/completions  model, prompt (string or list of strings), max_tokens, temperature, top_p,
                        top_k, stop (string or list), seed, n (1 only); OpenAI completions response.
  GET  /v1/models       the one model served.
  GET  /health          status and batching counters (batches, max_batch, batch_sizes, ...).

HTTP handler threads only parse and validate; one decoding thread takes pending requests with the
same sampling settings (up to `batch_size` prompts, waiting at most `max_wait_ms` for more) and
decodes them with one `Generator.generate` call, so concurrent clients share batches. Sampled
(temperature > 0) completions therefore depend on which requests shared a batch; greedy ones do not.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
import uuid
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ml_collections import ConfigDict


log = logging.getLogger("lepjax.serve")
MAX_BODY_BYTES = 64 << 20


def default_config() -> ConfigDict:
    """The `lepjax serve` config.

    Keys:
      model.*, mesh.*: the checkpoint and how to run it (see lepjax.config).
      tokenizer: tokenizer file or directory (empty = the model directory).
      host: address to listen on (default 127.0.0.1: this machine only).
      port: TCP port; 0 = pick a free one (printed on start as JSON {"serving": url, "port": ...}).
      batch_size: most prompts decoded together; length_bucket: prompt-length padding multiple.
      max_wait_ms: how long the decoding thread waits for more requests to fill a batch.
      add_bos: prepend the tokenizer's BOS to each prompt (as the `local` teacher does).
      model_name: the name /v1/models reports and requests may send (empty = the model
        directory's name, or the preset's).
    """
    from lepjax import config as config_lib

    return ConfigDict(dict(
        model=config_lib.model_section(), mesh=config_lib.mesh_section(), tokenizer="",
        host="127.0.0.1", port=8000, batch_size=8, length_bucket=64, max_wait_ms=5.0,
        add_bos=True, model_name=""))


class BadRequest(ValueError):
    """A request the server rejects; `param` names the offending field, `status` the HTTP code."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.param, self.status, self.kind = param, status, kind


def _shutting_down() -> BadRequest:
    return BadRequest("the server is shutting down", status=503, kind="server_error")


def _number(body: dict, key: str, default: float, lo: float, hi: float, integer: bool = False):
    value = body.get(key, default)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        raise BadRequest(f"{key} must be {kind} in [{lo}, {hi}], got {value!r}", key)
    return value


def parse_completion_request(body: Any, model_name: str):
    """(prompts, SamplingParams kwargs) of a /v1/completions body; `BadRequest` naming the field."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    model = body.get("model")
    if model not in (None, "", model_name):
        raise BadRequest(f"model {model!r} is not served here; this server serves "
                         f"{model_name!r}", "model", status=404)
    if "prompt" not in body:
        raise BadRequest("prompt is required", "prompt")
    prompts = body["prompt"]
    if isinstance(prompts, str):
        prompts = [prompts]
    if (not isinstance(prompts, list) or not prompts
            or not all(isinstance(p, str) for p in prompts)):
        raise BadRequest("prompt must be a string or a non-empty list of strings", "prompt")
    if _number(body, "n", 1, 1, 1 << 30, integer=True) != 1:
        raise BadRequest(f"n must be 1 (one completion per prompt), got {body['n']!r}", "n")
    for key in ("stream", "echo"):
        if body.get(key):
            raise BadRequest(f"{key}=true is not supported", key)
    if body.get("logprobs") is not None:
        raise BadRequest("logprobs are not supported", "logprobs")
    if body.get("best_of", 1) not in (None, 1):
        raise BadRequest("best_of must be 1", "best_of")
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise BadRequest("stop must be a non-empty string or a list of them", "stop")
    params = dict(
        max_new_tokens=_number(body, "max_tokens", 16, 1, 1 << 20, integer=True),
        temperature=float(_number(body, "temperature", 1.0, 0.0, 100.0)),
        top_p=float(_number(body, "top_p", 1.0, 1e-9, 1.0)),
        top_k=_number(body, "top_k", 0, -1, 1 << 20, integer=True),
        seed=_number(body, "seed", 0, 0, 2**31 - 1, integer=True), stop=tuple(stop))
    params["top_k"] = max(params["top_k"], 0)  # vLLM uses -1 for "no top-k"
    return prompts, params


@dataclasses.dataclass(eq=False)  # identity: two equal requests are still two jobs
class _Job:
    prompts: list[list[int]]
    params: Any  # SamplingParams
    future: Future


class Server:
    """A model served over HTTP: `start()` returns the base URL (ending in /v1); `stop()`."""

    def __init__(self, model, tokenizer, *, mesh=None, rules=None, host: str = "127.0.0.1",
                 port: int = 0, batch_size: int = 8, length_bucket: int = 64,
                 max_wait_ms: float = 5.0, add_bos: bool = True, model_name: str = "lepjax"):
        from lepjax import parallel
        from lepjax.generate import Generator

        self.tokenizer, self.model_name, self.add_bos = tokenizer, model_name, add_bos
        self.context = model.config.max_position_embeddings
        self.generator = Generator(model, mesh=mesh, rules=rules or parallel.DEFAULT_RULES,
                                   batch_size=batch_size, length_bucket=length_bucket)
        self.batch_size, self.max_wait_s = batch_size, max_wait_ms / 1000
        self.host, self.port = host, port
        self._pending: list[_Job] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._httpd: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self.stats: dict[str, Any] = dict(requests=0, prompts=0, batches=0, max_batch=0,
                                          batch_sizes={}, prompt_tokens=0, completion_tokens=0)

    @property
    def url(self) -> str:
        """The base URL clients use (`teacher.url`), e.g. http://127.0.0.1:8000/v1."""
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> str:
        """Bind, start the HTTP and decoding threads; returns the base URL."""
        self._httpd = ThreadingHTTPServer((self.host, self.port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.app = self  # type: ignore[attr-defined]
        self.port = self._httpd.server_address[1]
        self._threads = [threading.Thread(target=self._decode_loop, name="decode", daemon=True),
                         threading.Thread(target=self._httpd.serve_forever, args=(0.1,),
                                          name="http", daemon=True)]
        for t in self._threads:
            t.start()
        log.info("serving %s on %s (batch_size %d)", self.model_name, self.url, self.batch_size)
        return self.url

    def stop(self) -> None:
        """Stop accepting requests, fail the queued ones, and join the threads."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        with self._cond:
            self._stopping = True
            for job in self._pending:
                job.future.set_exception(_shutting_down())
            self._pending.clear()
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=30)

    def health(self) -> dict:
        """Status and counters (batch_sizes: requests per decoding batch -> how many batches)."""
        with self._cond:
            return {"status": "ok", "model": self.model_name, "queued": len(self._pending),
                    **json.loads(json.dumps(self.stats))}

    def complete(self, body: Any) -> dict:
        """The OpenAI completions response to a request body (blocks until decoded)."""
        from lepjax.generate import SamplingParams

        texts, kw = parse_completion_request(body, self.model_name)
        bos = [self.tokenizer.bos_id] if self.add_bos and self.tokenizer.bos_id is not None else []
        prompts = [bos + ids for ids in self.tokenizer.encode_batch(texts)]
        for i, p in enumerate(prompts):
            if not p:
                raise BadRequest(f"prompt {i} is empty (and add_bos is off)", "prompt")
            if len(p) + kw["max_new_tokens"] > self.context:
                raise BadRequest(f"prompt {i} has {len(p)} tokens and max_tokens is "
                                 f"{kw['max_new_tokens']}, but the model's context is "
                                 f"{self.context} tokens", "prompt")
        eos = (self.tokenizer.eos_id,) if self.tokenizer.eos_id is not None else ()
        job = _Job(prompts, SamplingParams(eos_ids=eos, **kw), Future())
        with self._cond:
            if self._stopping:
                raise _shutting_down()
            self._pending.append(job)
            self._cond.notify_all()
        outs = job.future.result()
        choices = [{"index": i, "text": c.text or "", "logprobs": None,
                    "finish_reason": "length" if c.finish_reason == "length" else "stop"}
                   for i, c in enumerate(outs)]
        n_in, n_out = sum(map(len, prompts)), sum(len(c.tokens) for c in outs)
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                "created": int(time.time()), "model": self.model_name, "choices": choices,
                "usage": {"prompt_tokens": n_in, "completion_tokens": n_out,
                          "total_tokens": n_in + n_out}}

    def _take_batch(self) -> list[_Job]:
        """Pending jobs with the first one's sampling settings, up to batch_size prompts."""
        first = self._pending[0]
        batch, size = [first], len(first.prompts)
        for job in self._pending[1:]:
            if job.params == first.params and size + len(job.prompts) <= self.batch_size:
                batch.append(job)
                size += len(job.prompts)
        return batch

    def _decode_loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                deadline = time.monotonic() + self.max_wait_s
                while True:
                    batch = self._take_batch()
                    left = deadline - time.monotonic()
                    if sum(len(j.prompts) for j in batch) >= self.batch_size or left <= 0:
                        break
                    self._cond.wait(left)
                    if self._stopping:
                        return
                for job in batch:
                    self._pending.remove(job)
            try:
                self._decode(batch)
            except Exception as e:  # noqa: BLE001  (never leave a request waiting forever)
                log.exception("serving a batch of %d requests failed", len(batch))
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(e)

    def _decode(self, batch: list[_Job]) -> None:
        prompts = [p for job in batch for p in job.prompts]
        start = time.perf_counter()
        try:
            outs = self.generator.generate(prompts, batch[0].params, tokenizer=self.tokenizer)
        except Exception as e:  # the requests fail; the server keeps going
            log.exception("decoding a batch of %d prompts failed", len(prompts))
            for job in batch:
                job.future.set_exception(e)
            return
        seconds = time.perf_counter() - start
        new = sum(len(c.tokens) for c in outs)
        with self._cond:
            s = self.stats
            s["requests"] += len(batch)
            s["prompts"] += len(prompts)
            s["batches"] += 1
            s["max_batch"] = max(s["max_batch"], len(batch))
            s["batch_sizes"][str(len(batch))] = s["batch_sizes"].get(str(len(batch)), 0) + 1
            s["prompt_tokens"] += sum(map(len, prompts))
            s["completion_tokens"] += new
        log.info("batch of %d requests (%d prompts): %d new tokens in %.2f s (%.0f tokens/s)",
                 len(batch), len(prompts), new, seconds, new / max(seconds, 1e-9))
        for job in batch:
            job.future.set_result(outs[:len(job.prompts)])
            outs = outs[len(job.prompts):]


class _Handler(BaseHTTPRequestHandler):
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
        app: Server = self.server.app  # type: ignore[attr-defined]
        path = self.path.split("?")[0].rstrip("/")
        if path == "/health":
            self._send(200, app.health())
        elif path == "/v1/models":
            self._send(200, {"object": "list", "data": [
                {"id": app.model_name, "object": "model", "created": 0, "owned_by": "lepjax"}]})
        else:
            self._error(404, f"no such endpoint: GET {path}", kind="not_found_error")

    def do_POST(self) -> None:  # noqa: N802
        app: Server = self.server.app  # type: ignore[attr-defined]
        path = self.path.split("?")[0].rstrip("/")
        if path != "/v1/completions":
            self._error(404, f"no such endpoint: POST {path}", kind="not_found_error")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY_BYTES:
                raise BadRequest(f"Content-Length must be in [1, {MAX_BODY_BYTES}], got {length}")
            try:
                body = json.loads(self.rfile.read(length))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise BadRequest(f"the request body is not valid JSON ({e})") from None
            self._send(200, app.complete(body))
        except BadRequest as e:
            self._error(e.status, str(e), e.param, e.kind)
        except Exception as e:
            log.exception("completion request failed")
            self._error(500, f"{type(e).__name__}: {e}", kind="server_error")


def run(cfg: ConfigDict) -> None:
    """Serve `cfg.model` until SIGTERM / Ctrl-C; prints {"serving": url, "port", "model"} first."""
    import os
    import signal

    from lepjax.generate_cli import load_for_decoding

    model, tok, mesh, rules = load_for_decoding(cfg)
    name = cfg.model_name or (os.path.basename(os.path.normpath(cfg.model.path))
                              if cfg.model.path else cfg.model.preset)
    server = Server(model, tok, mesh=mesh, rules=rules, host=cfg.host, port=cfg.port,
                    batch_size=cfg.batch_size, length_bucket=cfg.length_bucket,
                    max_wait_ms=cfg.max_wait_ms, add_bos=cfg.add_bos, model_name=name)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    url = server.start()
    print(json.dumps({"serving": url, "port": server.port, "model": name}), flush=True)
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        log.info("stopping; served %s", json.dumps(server.health()))
        server.stop()
