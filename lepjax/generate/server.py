"""`lepjax serve`: a checkpoint on an OpenAI-compatible endpoint (standard library HTTP).

Endpoints (on 127.0.0.1 by default):
  POST /v1/completions       model, prompt (string or list of strings), max_tokens, temperature,
                             top_p, top_k, stop (string or list), seed, n (1 only), stream.
  POST /v1/chat/completions  model, messages [{role: system|user|assistant, content}], the same
                             sampling keys (max_tokens or max_completion_tokens), stream. Messages
                             are rendered with the model directory's chat template and a
                             generation prompt; decoding stops at the template's end-of-turn
                             token and EOS. A model without a chat template answers 400.
  GET  /v1/models            the one model served.
  GET  /health               status, decoding kernels and batching counters.

`stream: true` answers as server-sent events: `data: {chunk}` lines as tokens come, then
`data: [DONE]`; the streamed text pieces concatenate to the non-streamed text.

HTTP handler threads only parse and validate; one decoding thread takes pending requests with the
same sampling settings (up to `batch_size` prompts, waiting at most `max_wait_ms` for more) and
decodes them with one `Generator.generate` call, so concurrent clients share batches. Sampled
(temperature > 0) completions therefore depend on which requests shared a batch; greedy ones do not.
Sampling settings are traced values: a new temperature compiles nothing new.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from typing import Any

from ml_collections import ConfigDict

from lepjax.generate.requests import (BadRequest, finish_reason, parse_chat_request,
                                     parse_completion_request, usage)

log = logging.getLogger("lepjax.serve")


def default_config() -> ConfigDict:
    """The `lepjax serve` config.

    Keys:
      model.*, mesh.*: the checkpoint and how to run it (lepjax.models.model_section,
        lepjax.parallel.mesh_section); model.attention is honoured or refused when decoding.
      tokenizer: tokenizer file or directory (empty = the model directory); its chat template
        serves /v1/chat/completions.
      host: address to listen on (default 127.0.0.1: this machine only).
      port: TCP port; 0 = pick a free one (printed on start as JSON {"serving": url, "port": ...}).
      batch_size: most prompts decoded together; length_bucket: prompt-length padding multiple.
      max_wait_ms: how long the decoding thread waits for more requests to fill a batch.
      steps_per_sync: decoding steps between looks at the tokens (EOS, stop strings, streaming).
      add_bos: prepend the tokenizer's BOS to each completions prompt (as the `local` teacher
        does; chat prompts get what the template renders).
      model_name: the name /v1/models reports and requests may send (empty = the model
        directory's name, or the preset's).
    """
    from lepjax.models import model_section
    from lepjax.parallel import mesh_section

    return ConfigDict(dict(
        model=model_section(), mesh=mesh_section(), tokenizer="", host="127.0.0.1", port=8000,
        batch_size=8, length_bucket=64, max_wait_ms=5.0, steps_per_sync=16, add_bos=True,
        model_name=""))


def _shutting_down() -> BadRequest:
    return BadRequest("the server is shutting down", status=503, kind="server_error")


@dataclasses.dataclass(eq=False)  # identity: two equal requests are still two jobs
class _Job:
    prompts: list[list[int]]
    params: Any  # SamplingParams
    future: Future
    updates: queue.Queue | None = None  # streaming: (prompt index, text so far), then None


class Server:
    """A model served over HTTP: `start()` returns the base URL (ending in /v1); `stop()`."""

    def __init__(self, model, tokenizer, *, mesh=None, rules=None, host: str = "127.0.0.1",
                 port: int = 0, batch_size: int = 8, length_bucket: int = 64,
                 max_wait_ms: float = 5.0, steps_per_sync: int = 16, add_bos: bool = True,
                 model_name: str = "lepjax"):
        from lepjax import parallel
        from lepjax.generate.generator import Generator
        from lepjax.generate.load import chat_stop_ids

        self.tokenizer, self.model_name, self.add_bos = tokenizer, model_name, add_bos
        self.context = model.config.max_position_embeddings
        self.generator = Generator(model, mesh=mesh, rules=rules or parallel.DEFAULT_RULES,
                                   batch_size=batch_size, length_bucket=length_bucket,
                                   steps_per_sync=steps_per_sync,
                                   vocab_limit=tokenizer.vocab_size)
        self.stop_ids = tuple(tokenizer.stop_ids)
        self.chat_stop_ids = chat_stop_ids(tokenizer)
        self.batch_size, self.max_wait_s = batch_size, max_wait_ms / 1000
        self.host, self.port = host, port
        self._pending: list[_Job] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._httpd = None
        self._threads: list[threading.Thread] = []
        self.stats: dict[str, Any] = dict(requests=0, prompts=0, batches=0, max_batch=0,
                                          batch_sizes={}, prompt_tokens=0, completion_tokens=0)

    @property
    def url(self) -> str:
        """The base URL clients use (`teacher.url`), e.g. http://127.0.0.1:8000/v1."""
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> str:
        """Bind, start the HTTP and decoding threads; returns the base URL."""
        from http.server import ThreadingHTTPServer

        from lepjax.generate.handler import Handler

        try:
            self._httpd = ThreadingHTTPServer((self.host, self.port), Handler)
        except OSError as e:
            raise ValueError(_listen_error(self.host, self.port, e)) from None
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
                if job.updates is not None:
                    job.updates.put(None)
            self._pending.clear()
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=30)

    def health(self) -> dict:
        """Status, decoding kernels and counters (batch_sizes: requests per batch -> count)."""
        with self._cond:
            return {"status": "ok", "model": self.model_name, "queued": len(self._pending),
                    "attention": self.generator.kernels,
                    "compiled_programs": self.generator.compiled_programs(),
                    **json.loads(json.dumps(self.stats))}

    # ---- requests -----------------------------------------------------------------------------

    def completion_job(self, body: Any) -> tuple[_Job, list[list[int]]]:
        """Queue a /v1/completions body; returns the job and its prompt ids."""
        texts, kw = parse_completion_request(body, self.model_name)
        prompts = self.tokenizer.encode(texts, add_bos=self.add_bos)
        return self._submit(prompts, kw, self.stop_ids, bool(body.get("stream"))), prompts

    def chat_job(self, body: Any) -> tuple[_Job, list[list[int]]]:
        """Queue a /v1/chat/completions body (rendered with the chat template)."""
        messages, kw = parse_chat_request(body, self.model_name)
        if not self.tokenizer.chat_template:
            raise BadRequest(f"the model {self.model_name!r} has no chat template (its tokenizer "
                             f"{self.tokenizer.path} has no chat_template in tokenizer_config."
                             "json nor chat_template.jinja); use /v1/completions", "messages")
        try:
            text = self.tokenizer.render_chat(messages, add_generation_prompt=True)
        except ValueError as e:
            raise BadRequest(str(e), "messages") from None
        # As transformers' apply_chat_template: the template writes any BOS itself.
        prompts = [self.tokenizer.encode(text)]
        return self._submit(prompts, kw, self.chat_stop_ids, bool(body.get("stream"))), prompts

    def _submit(self, prompts, kw: dict, eos_ids, stream: bool) -> _Job:
        from lepjax.generate.generator import SamplingParams

        for i, p in enumerate(prompts):
            if not p:
                raise BadRequest(f"prompt {i} is empty (and add_bos is off)", "prompt")
            if len(p) + kw["max_new_tokens"] > self.context:
                raise BadRequest(f"prompt {i} has {len(p)} tokens and max_tokens is "
                                 f"{kw['max_new_tokens']}, but the model's context is "
                                 f"{self.context} tokens", "prompt")
        job = _Job(prompts, SamplingParams(eos_ids=tuple(eos_ids), **kw), Future(),
                   queue.Queue() if stream else None)
        with self._cond:
            if self._stopping:
                raise _shutting_down()
            self._pending.append(job)
            self._cond.notify_all()
        return job

    def complete(self, body: Any) -> dict:
        """The OpenAI completions response to a request body (blocks until decoded)."""
        job, prompts = self.completion_job(body)
        outs = job.future.result()
        choices = [{"index": i, "text": c.text or "", "logprobs": None,
                    "finish_reason": finish_reason(c)} for i, c in enumerate(outs)]
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                "created": int(time.time()), "model": self.model_name, "choices": choices,
                "usage": usage(prompts, outs)}

    def chat(self, body: Any) -> dict:
        """The OpenAI chat completion response to a request body (blocks until decoded)."""
        job, prompts = self.chat_job(body)
        outs = job.future.result()
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                "created": int(time.time()), "model": self.model_name,
                "choices": [{"index": 0, "message": {"role": "assistant",
                                                     "content": outs[0].text or ""},
                             "logprobs": None, "finish_reason": finish_reason(outs[0])}],
                "usage": usage(prompts, outs)}

    # ---- the decoding thread ------------------------------------------------------------------

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
            self._decode(batch)

    def _decode(self, batch: list[_Job]) -> None:
        prompts = [p for job in batch for p in job.prompts]
        owners = [(job, i) for job in batch for i in range(len(job.prompts))]

        def on_update(k, completion):
            job, i = owners[k]
            if job.updates is not None:
                job.updates.put((i, completion.text or ""))

        start = time.perf_counter()
        try:
            outs = self.generator.generate(prompts, batch[0].params, tokenizer=self.tokenizer,
                                           on_update=on_update)
        except Exception as e:  # noqa: BLE001  the requests fail; the server keeps going
            log.exception("decoding a batch of %d prompts failed", len(prompts))
            for job in batch:
                job.future.set_exception(e)
                if job.updates is not None:
                    job.updates.put(None)
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
            if job.updates is not None:
                job.updates.put(None)


def _listen_error(host: str, port: int, e: OSError) -> str:
    return (f"cannot listen on {host}:{port} ({e.strerror or e}); is another server using the "
            "port? Choose another port (--config.port; 0 = any free one)")


def check_port(host: str, port: int) -> None:
    """A ValueError naming host and port when the server could not listen there (checked before
    any weight is read)."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as http.server does
        try:
            sock.bind((host, port))
        except OSError as e:
            raise ValueError(_listen_error(host, port, e)) from None


def serve(cfg: ConfigDict) -> None:
    """Serve `cfg.model` until SIGTERM / Ctrl-C; prints {"serving": url, "port", "model"} first."""
    import os
    import signal

    from lepjax.generate.load import load_for_decoding

    check_port(cfg.host, cfg.port)
    model, tok, mesh, rules = load_for_decoding(cfg)
    name = cfg.model_name or (os.path.basename(os.path.normpath(cfg.model.path))
                              if cfg.model.path else cfg.model.preset)
    server = Server(model, tok, mesh=mesh, rules=rules, host=cfg.host, port=cfg.port,
                    batch_size=cfg.batch_size, length_bucket=cfg.length_bucket,
                    max_wait_ms=cfg.max_wait_ms, steps_per_sync=cfg.steps_per_sync,
                    add_bos=cfg.add_bos, model_name=name)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    url = server.start()
    print(json.dumps({"serving": url, "port": server.port, "model": name,
                      "attention": server.generator.kernels}), flush=True)
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        log.info("stopping; served %s", json.dumps(server.health()))
        server.stop()
