"""The `openai` teacher: any OpenAI-compatible endpoint (vLLM, `lepjax serve`, a hosted API).

`api` picks the endpoint: `completions` posts the prompt to /v1/completions and reads
`choices[0].text`; `chat` posts it as the one user message (`messages: [{"role": "user",
"content": prompt}]`) to /v1/chat/completions, where the server renders its chat template with
the generation prompt, and reads `choices[0].message.content` (for teachers served with a chat
template, e.g. vLLM's instruct models).

Standard library only (urllib). Prompts go one per request to a pool of servers (`urls`, e.g.
one vLLM server per accelerator host): each request goes to the server of the pool with the fewest
requests this process has in flight there (ties in turn), so the pool is loaded evenly. Every
request holds a lease of the cluster-wide semaphore `semaphore_name(urls)` (lepjax.data.engine
`lease`) while it is on the wire, so `max_in_flight` bounds the requests in flight across *all*
engine workers together, not per process. A
request that times out, cannot connect, or gets HTTP 429 / 5xx is retried after `backoff_s`,
doubling each time, up to `max_retries` times; any other 4xx fails that prompt at once with the
server's message. When prompts fail, `complete` raises `TeacherError` *after* all others finished:
its `completed` dict (prompt index -> text) holds every completion that did succeed, so callers
can keep them and retry only `failed`. Special prompt parts (`BOS`, `EOS`) are sent as the strings
of `special_text` (the synthesizer's tokenizer's `<s>` / `</s>`), which the server's tokenizer
maps back to the special ids; with `api=chat` those strings are part of the user message's text,
inside the server's chat template (whether its tokenizer then maps them to the special ids is the
server's choice: vLLM's and `lepjax serve`'s do).
"""

from __future__ import annotations

import contextvars
import http.client
import json
import logging
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed

from lepjax.augment.teacher_api import OnResult, Prompt, Request, TeacherError, render
from lepjax.data.engine import lease

log = logging.getLogger("lepjax.augment.openai_client")


class _Retryable(Exception):
    """A failure worth another attempt (timeout, connection error, HTTP 429 or 5xx)."""

    def __init__(self, message: str, retry_after: float = 0.0):
        super().__init__(message)
        self.retry_after = retry_after


class _Fatal(Exception):
    """A failure another attempt will not fix (HTTP 4xx other than 429, a malformed reply)."""


APIS = {"completions": "/completions", "chat": "/chat/completions"}  # teacher.api -> endpoint


def endpoint_url(url: str, api: str = "completions") -> str:
    """The endpoint of `api` at a base URL: http://h:p/v1 -> http://h:p/v1/completions (or
    /v1/chat/completions for `chat`).

    A URL without a path gets /v1; one already ending in the endpoint is kept as is; one ending
    in the other API's endpoint is a ValueError.
    """
    if api not in APIS:
        raise ValueError(f"teacher.api={api!r}: expected one of {sorted(APIS)}")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"teacher.urls: {url!r}: expected an http(s) URL such as "
                         "http://127.0.0.1:8000/v1")
    path = parts.path.rstrip("/")
    if path.endswith("/completions"):
        named = "chat" if path.endswith("/chat/completions") else "completions"
        if named != api:
            raise ValueError(f"teacher.urls: {url!r} is the {named} endpoint but teacher.api="
                             f"{api!r}: give the base URL (.../v1) or set teacher.api={named!r}")
        return url
    return urllib.parse.urlunsplit(parts._replace(path=(path or "/v1") + APIS[api]))


def parse_urls(urls: str | Sequence[str], api: str = "completions") -> list[str]:
    """The `api` endpoints of a pool of base URLs (a sequence, or one comma-separated string);
    raises ValueError when it is empty or a URL is not http(s)."""
    items = [u.strip() for u in (urls.split(",") if isinstance(urls, str) else urls)
             if u.strip()]
    if not items:
        raise ValueError("teacher.urls is not set (the servers' base URLs, e.g. "
                         "http://127.0.0.1:8000/v1)")
    return [endpoint_url(u, api) for u in items]


def semaphore_name(urls: Sequence[str]) -> str:
    """The name of the cluster-wide semaphore that bounds the requests in flight to a pool."""
    import hashlib

    return "lepjax-teacher-" + hashlib.sha256("\n".join(sorted(urls)).encode()).hexdigest()[:12]


def _server_message(body: bytes) -> str:
    text = body.decode("utf-8", "replace")
    try:
        return str(json.loads(text)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return text.strip()[:500] or "(empty body)"


class OpenAITeacher:
    """Completes prompts through an OpenAI-compatible completions or chat completions endpoint
    (`api`; see module doc)."""

    def __init__(self, urls: str | Sequence[str], *, model: str = "", api: str = "completions",
                 api_key_env: str = "", max_in_flight: int = 8, timeout_s: float = 120.0,
                 max_retries: int = 4, backoff_s: float = 1.0, give_up_after: int | None = None,
                 special_text: Mapping[str, str] | None = None):
        self.urls = parse_urls(urls, api)
        self.api = api
        self.url = ", ".join(self.urls)  # for messages
        self.semaphore = semaphore_name(self.urls)
        self._load = {u: 0 for u in self.urls}  # requests this process has in flight per server
        self._turn = 0
        self._load_lock = threading.Lock()
        self.model = model
        self.api_key = ""
        if api_key_env:
            self.api_key = os.environ.get(api_key_env, "")
            if not self.api_key:
                raise ValueError(f"teacher.api_key_env={api_key_env!r}: that environment "
                                 "variable is not set or empty")
        if max_in_flight < 1 or timeout_s <= 0 or max_retries < 0 or backoff_s < 0:
            raise ValueError(f"teacher: need max_in_flight >= 1, timeout_s > 0, max_retries >= 0, "
                             f"backoff_s >= 0; got {max_in_flight}, {timeout_s}, {max_retries}, "
                             f"{backoff_s}")
        self.max_in_flight, self.timeout_s = max_in_flight, timeout_s
        self.max_retries, self.backoff_s = max_retries, backoff_s
        self.special_text = dict(special_text or {})
        # Stop sending once this many prompts in a row failed (a dead server, a bad key).
        self.give_up_after = give_up_after or max(8, 2 * max_in_flight)

    def body(self, prompt: Prompt, request: Request) -> dict:
        """The JSON request body for one prompt (special parts rendered as `special_text`): the
        prompt, or for `api=chat` one user message holding it."""
        text = render(prompt, self.special_text)
        body = {"model": self.model, "max_tokens": request.max_new_tokens,
                "temperature": request.temperature, "top_p": request.top_p,
                "seed": request.seed, "n": 1}
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": text}]
        else:
            body["prompt"] = text
        if request.stop:
            body["stop"] = list(request.stop)
        return body

    def _pick(self) -> str:
        """The server of the pool with the fewest requests of this process in flight."""
        with self._load_lock:
            self._turn += 1
            n = len(self.urls)
            url = min((self.urls[(self._turn + k) % n] for k in range(n)), key=self._load.get)
            self._load[url] += 1
            return url

    def _post(self, body: dict) -> str:
        """One attempt: a lease of the global semaphore, then one request to a pool server."""
        with lease(self.semaphore, self.max_in_flight):
            url = self._pick()
            try:
                return self._post_to(url, body)
            finally:
                with self._load_lock:
                    self._load[url] -= 1

    def _post_to(self, url: str, body: dict) -> str:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(url, json.dumps(body).encode("utf-8"), headers,
                                     method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            message = f"{url}: HTTP {e.code}: {_server_message(e.read())}"
            if e.code == 429 or e.code >= 500:
                try:
                    retry_after = float(e.headers.get("Retry-After") or 0)
                except ValueError:
                    retry_after = 0.0
                raise _Retryable(message, retry_after) from None
            raise _Fatal(message) from None
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError,
                http.client.HTTPException, OSError) as e:
            reason = getattr(e, "reason", e)
            raise _Retryable(f"{url}: {type(reason).__name__}: {reason}") from None
        try:
            choices = json.loads(raw)["choices"]
            if len(choices) != 1:
                raise ValueError(f"{len(choices)} choices")
            text = choices[0]["message"]["content"] if self.api == "chat" else choices[0]["text"]
            if not isinstance(text, str):
                raise ValueError(f"the completion is {type(text).__name__}, not a string")
            return text
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise _Fatal(f"{url}: malformed response ({e}): {raw[:300]!r}") from None

    def _complete_one(self, prompt: Prompt, request: Request) -> str:
        body = self.body(prompt, request)
        for attempt in range(self.max_retries + 1):
            try:
                return self._post(body)
            except _Retryable as e:
                if attempt == self.max_retries:
                    raise _Fatal(f"{e} (after {attempt + 1} attempts)") from None
                delay = max(self.backoff_s * 2**attempt * (1 + 0.1 * random.random()),
                            e.retry_after)
                log.debug("%s: %s; retrying in %.2f s", self.url, e, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def complete(self, prompts: Sequence[Prompt], request: Request = Request(),
                 progress: bool = False, on_result: OnResult | None = None) -> list[str]:
        """One completion per prompt, in order; `on_result(i, text)` as each arrives;
        `TeacherError` (with the completed ones) if any prompt failed."""
        from tqdm import tqdm

        completed: dict[int, str] = {}
        errors: dict[int, str] = {}
        lock, streak, last_error = threading.Lock(), [0], [""]

        def one(i: int) -> str:
            if streak[0] >= self.give_up_after:
                raise _Fatal("not sent: gave up after "
                             f"{self.give_up_after} prompts in a row failed")
            try:
                text = self._complete_one(prompts[i], request)
            except Exception as e:  # noqa: BLE001  (any failure of one prompt is that prompt's)
                if not isinstance(e, _Fatal):
                    e = _Fatal(f"{type(e).__name__}: {e}")
                with lock:
                    streak[0] += 1
                    last_error[0] = str(e)
                raise e from None
            with lock:
                streak[0] = 0
            return text

        start = time.perf_counter()
        bar = tqdm(total=len(prompts), desc="teacher", unit="prompt", disable=not progress)
        with ThreadPoolExecutor(min(self.max_in_flight, max(1, len(prompts))),
                                thread_name_prefix="teacher") as pool:
            # Each request thread runs in a copy of this thread's context: inside an engine task
            # that is what tells `lease` it runs on a Dask worker (the cluster-wide semaphore).
            futures = {pool.submit(contextvars.copy_context().run, one, i): i
                       for i in range(len(prompts))}
            for future in as_completed(futures):
                i = futures[future]
                try:
                    completed[i] = future.result()
                except _Fatal as e:
                    errors[i] = str(e)
                else:
                    if on_result is not None:
                        on_result(i, completed[i])
                bar.update(1)
                if errors:
                    bar.set_postfix(failed=len(errors))
        bar.close()
        log.info("%s: %d of %d prompts completed in %.1f s", self.url, len(completed),
                 len(prompts), time.perf_counter() - start)
        if errors:
            failed = sorted(errors)
            shown = ", ".join(map(str, failed[:20])) + (", ..." if len(failed) > 20 else "")
            raise TeacherError(
                f"{len(failed)} of {len(prompts)} prompts failed against {self.url} "
                f"(indices {shown}); last error: {last_error[0] or errors[failed[-1]]}",
                completed=completed, failed=failed, url=self.url,
                last_error=last_error[0] or errors[failed[-1]], errors=errors)
        return [completed[i] for i in range(len(prompts))]
