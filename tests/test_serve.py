"""`lepjax serve` as a real subprocess vs the `local` teacher; the `openai` client's retries."""

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lepjax import models, parallel
from lepjax.augment.local_teacher import LocalTeacher
from lepjax.augment.openai_client import OpenAITeacher
from lepjax.augment.teacher_api import Request, TeacherError
from conftest import tiny_sp_checkpoint

PROMPTS = ["Привет", "Как дела?", "Москва — столица России и крупнейший город страны.",
           "a b", "Сегодня хорошая погода, и мы идём гулять в парк у реки."]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_sp_checkpoint(tmp_path_factory.mktemp("serve") / "tiny", "tiny_mistral", seed=2)


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    """`python -m lepjax.cli serve` on a free port; yields its base URL; killed at the end."""
    logs = tmp_path_factory.mktemp("serve_logs")
    out, err = open(logs / "stdout", "w+"), open(logs / "stderr", "w+")
    cmd = [sys.executable, "-m", "lepjax.cli", "serve", f"--config.model.path={checkpoint}",
           "--config.model.dtype=float32", "--config.port=0", "--config.batch_size=4",
           "--config.length_bucket=16", "--config.max_wait_ms=50", "--config.model_name=tiny"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # with conftest's 8 CPU devices, like `local`
    proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (line := (logs / "stdout").read_text().strip()):
            err.flush()
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"lepjax serve did not start:\n{(logs / 'stderr').read_text()[-3000:]}")
            time.sleep(0.2)
        info = json.loads(line.splitlines()[0])
        assert info["serving"] == f"http://127.0.0.1:{info['port']}/v1" and info["port"] > 0
        yield info["serving"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close(), err.close()


@pytest.fixture(scope="module")
def local(checkpoint):
    """The `local` teacher on the same checkpoint, decoding the way the server does."""
    mesh, rules = parallel.mesh_from_config(parallel.mesh_section())
    return LocalTeacher(checkpoint, dtype="float32", batch_size=4, length_bucket=16, mesh=mesh,
                        rules=rules)


def http(url: str, body=None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:  # first requests compile
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_openai_backend_matches_local_and_batches_concurrent_requests(server, local):
    teacher = OpenAITeacher(server, model="tiny", max_in_flight=8, timeout_s=60)
    greedy = Request(max_new_tokens=8)
    want = local.complete(PROMPTS, greedy)
    assert teacher.complete(PROMPTS, greedy) == want
    # A stop string taken from inside one completion: it must cut that completion short.
    k = max(range(len(want)), key=lambda i: len(want[i].strip()))
    mid = len(want[k]) // 2
    stop = want[k][mid:mid + 2]
    assert stop.strip(), want
    with_stop = Request(max_new_tokens=8, stop=(stop, "\n\n"))
    want_stop = local.complete(PROMPTS, with_stop)
    assert stop not in want_stop[k] and want_stop[k] != want[k]
    assert teacher.complete(PROMPTS, with_stop) == want_stop
    status, health = http(server.removesuffix("/v1") + "/health")
    assert status == 200 and health["requests"] >= 2 * len(PROMPTS)
    assert health["max_batch"] > 1, health  # concurrent requests shared a decoding batch
    assert health["batches"] < health["requests"], health


def test_response_shape_list_prompt_and_models(server, local):
    status, r = http(server + "/completions", {"model": "tiny", "prompt": PROMPTS[:2],
                                                "max_tokens": 5, "temperature": 0})
    assert status == 200, r
    assert r["object"] == "text_completion" and r["model"] == "tiny" and r["id"].startswith("cmpl-")
    assert [c["index"] for c in r["choices"]] == [0, 1]
    assert [c["text"] for c in r["choices"]] == local.complete(PROMPTS[:2],
                                                               Request(max_new_tokens=5))
    assert all(c["finish_reason"] in ("stop", "length") for c in r["choices"])
    u = r["usage"]
    assert u["prompt_tokens"] == sum(map(len, local.encode(PROMPTS[:2])))
    assert 0 < u["completion_tokens"] <= 10
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    status, m = http(server + "/models")
    assert status == 200 and [d["id"] for d in m["data"]] == ["tiny"]


@pytest.mark.parametrize("body, param, words", [
    ({"prompt": "x", "n": 2}, "n", "n must be 1"),
    ({"prompt": "x", "temperature": "hot"}, "temperature", "temperature must be"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens", "max_tokens must be"),
    ({"prompt": "x", "stop": [1]}, "stop", "stop must be"),
    ({"prompt": ["x", 3]}, "prompt", "prompt must be"),
    ({"max_tokens": 3}, "prompt", "prompt is required"),
    ({"prompt": "слово " * 600}, "prompt", "context is 512 tokens"),
    (b"{not json", None, "not valid JSON"),
])
def test_bad_requests_get_400_naming_the_field(server, body, param, words):
    status, r = http(server + "/completions", body)
    assert status == 400, r
    assert r["error"]["type"] == "invalid_request_error" and r["error"]["param"] == param
    assert words in r["error"]["message"]


def test_unknown_model_is_404_and_4xx_is_not_retried_by_the_client(server):
    status, r = http(server + "/completions", {"model": "gpt-4", "prompt": "x"})
    assert status == 404 and "'gpt-4' is not served here" in r["error"]["message"]
    teacher = OpenAITeacher(server, model="tiny", max_retries=3, backoff_s=60.0)
    start = time.monotonic()
    with pytest.raises(TeacherError) as e:
        teacher.complete(["слово " * 600, "Привет"], Request(max_new_tokens=3))
    assert time.monotonic() - start < 30.0  # failed at once: no 60 s backoff
    assert e.value.failed == [0] and list(e.value.completed) == [1]
    assert "context is 512 tokens" in str(e.value) and server in str(e.value)


def test_local_teacher_refuses_prompts_beyond_the_context_and_keeps_the_rest(local):
    with pytest.raises(TeacherError) as e:
        local.complete(["Привет", "слово " * 600, "a b"], Request(max_new_tokens=3))
    assert e.value.failed == [1] and sorted(e.value.completed) == [0, 2]
    assert e.value.completed[0] == local.complete(["Привет"], Request(max_new_tokens=3))[0]
    assert "context of 512" in str(e.value)


class FakeHandler(BaseHTTPRequestHandler):
    """An unreliable completions server: behaviour chosen by the prompt's first word."""

    attempts: dict[str, int] = {}
    auth: list[str] = []
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["prompt"]
        with self.lock:
            n = self.attempts[prompt] = self.attempts.get(prompt, 0) + 1
            self.auth.append(self.headers.get("Authorization", ""))
        kind = prompt.split()[0]
        if kind == "slow" and n == 1:
            time.sleep(1.5)  # longer than the client's timeout
        if kind == "bad" or (kind == "flaky" and n <= 2):
            return self.reply(500, {"error": {"message": "backend exploded", "type": "server"}})
        if kind == "reject":
            return self.reply(400, {"error": {"message": "prompt is rude", "type": "invalid"}})
        self.reply(200, {"choices": [{"index": 0, "text": prompt.upper(),
                                      "finish_reason": "stop"}]})

    def reply(self, status, payload):
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and went away
            pass


@pytest.fixture
def fake():
    FakeHandler.attempts.clear(), FakeHandler.auth.clear()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeHandler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def test_timeouts_and_500s_are_retried_with_the_api_key(fake, monkeypatch):
    monkeypatch.setenv("LEPJAX_TEST_KEY", "sk-test")
    teacher = OpenAITeacher(fake, model="m", api_key_env="LEPJAX_TEST_KEY", max_in_flight=3,
                            timeout_s=0.5, max_retries=3, backoff_s=0.01)
    prompts = ["flaky one", "slow two", "fine three"]
    assert teacher.complete(prompts, progress=True) == [p.upper() for p in prompts]
    assert FakeHandler.attempts == {"flaky one": 3, "slow two": 2, "fine three": 1}
    assert set(FakeHandler.auth) == {"Bearer sk-test"}


def test_persistent_failures_raise_with_the_completed_results(fake):
    teacher = OpenAITeacher(fake, max_in_flight=2, timeout_s=5, max_retries=2, backoff_s=0.01)
    prompts = ["fine a", "bad b", "fine c", "reject d", "bad e"]
    with pytest.raises(TeacherError) as e:
        teacher.complete(prompts)
    err = e.value
    assert err.completed == {0: "FINE A", 2: "FINE C"} and err.failed == [1, 3, 4]
    assert FakeHandler.attempts["bad b"] == 3 and FakeHandler.attempts["reject d"] == 1
    message = str(err)
    assert "3 of 5 prompts failed" in message and "indices 1, 3, 4" in message
    assert fake + "/completions" in message and "HTTP " in err.last_error


def test_config_errors_name_the_key(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(ValueError, match="teacher.urls is not set"):
        OpenAITeacher("")
    with pytest.raises(ValueError, match="NO_SUCH_KEY_VAR"):
        OpenAITeacher("http://127.0.0.1:1/v1", api_key_env="NO_SUCH_KEY_VAR")
    assert OpenAITeacher("http://h:9").url == "http://h:9/v1/completions"


def test_serve_help(capsys):
    from lepjax.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["serve", "--help"])
    assert e.value.code == 0
    assert "OpenAI-compatible" in capsys.readouterr().out


# ---- chat completions and streaming (an instruct checkpoint with a ChatML template) ----------

CHATML = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
          "{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CHAT = [{"role": "system", "content": "Ты помощник."}, {"role": "user", "content": "Привет!"}]


@pytest.fixture(scope="module")
def instruct(tmp_path_factory):
    """A tiny instruct checkpoint saved the way Hugging Face tools save one: the Mistral
    tokenizer with added <|im_start|>/<|im_end|> and a ChatML template; 32,128 embedding rows
    (the vocabulary padded to a multiple of 128)."""
    from conftest import MISTRAL_SP
    from transformers import AutoTokenizer

    from lepjax.tokenizer import load_tokenizer

    path = str(tmp_path_factory.mktemp("instruct") / "m")
    model = models.create_model(models.get_preset("tiny_mistral", vocab_size=32128), seed=3,
                                dtype="float32")
    models.save_hf(model, path)
    doc = load_tokenizer(MISTRAL_SP).document()
    doc["added_tokens"] += [dict(id=32000 + i, content=t, single_word=False, lstrip=False,
                                 rstrip=False, normalized=False, special=True)
                            for i, t in enumerate(("<|im_start|>", "<|im_end|>"))]
    with open(os.path.join(path, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False)
    with open(os.path.join(path, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "chat_template": CHATML,
                   "tokenizer_class": "PreTrainedTokenizerFast"}, f)
    hf_tok = AutoTokenizer.from_pretrained(path)
    return path, hf_tok


@pytest.fixture(scope="module")
def chat_server(instruct):
    """The server library in this process (real HTTP) on the instruct checkpoint."""
    from lepjax.generate.server import Server
    from lepjax.tokenizer import load_tokenizer

    model, _ = models.load(instruct[0], dtype="float32")
    server = Server(model, load_tokenizer(instruct[0]), batch_size=2, length_bucket=16,
                    max_wait_ms=5, steps_per_sync=2, model_name="tiny-instruct")
    url = server.start()
    yield url, server
    server.stop()


def sse(url: str, body: dict) -> tuple[str, list]:
    """(content type, decoded events) of a streamed request; the last event is '[DONE]'."""
    req = urllib.request.Request(url, json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as resp:
        kind = resp.headers["Content-Type"]
        lines = resp.read().decode("utf-8").split("\n\n")
    events = [line.removeprefix("data: ") for line in lines if line.strip()]
    assert all(line.startswith("data: ") for line in lines if line.strip())
    return kind, [e if e == "[DONE]" else json.loads(e) for e in events]


def test_chat_completion_renders_the_template_and_stops_at_end_of_turn(chat_server, instruct):
    url, server = chat_server
    status, r = http(url + "/chat/completions", {"model": "tiny-instruct", "messages": CHAT,
                                                  "max_tokens": 6, "temperature": 0})
    assert status == 200, r
    assert r["object"] == "chat.completion" and r["id"].startswith("chatcmpl-")
    choice = r["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    want = instruct[1].apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True)
    want = want["input_ids"] if hasattr(want, "keys") else want
    u = r["usage"]
    assert u["prompt_tokens"] == len(want)  # the ids transformers renders and encodes
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] <= len(want) + 6
    im_end = instruct[1].convert_tokens_to_ids("<|im_end|>")
    assert im_end in server.chat_stop_ids and server.tokenizer.eos_id in server.chat_stop_ids


def test_streams_concatenate_to_the_greedy_text(chat_server):
    url, _ = chat_server
    body = {"messages": CHAT, "max_tokens": 7, "temperature": 0}
    _, whole = http(url + "/chat/completions", body)
    kind, events = sse(url + "/chat/completions", {**body, "stream": True})
    assert kind.startswith("text/event-stream")
    assert events[-1] == "[DONE]" and len(events) >= 3, events
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    # The completions endpoint streams too.
    body = {"prompt": ["Привет", "Москва — столица"], "max_tokens": 7, "temperature": 0}
    _, whole = http(url + "/completions", body)
    kind, events = sse(url + "/completions", {**body, "stream": True})
    assert kind.startswith("text/event-stream") and events[-1] == "[DONE]"
    for i in (0, 1):
        text = "".join(c["choices"][0]["text"] for c in events[:-1]
                       if c["choices"][0]["index"] == i)
        assert text == whole["choices"][i]["text"]


@pytest.mark.parametrize("messages, words", [
    ([], "non-empty list"),
    ([{"role": "robot", "content": "hi"}], "messages[0].role must be one of"),
    ([{"role": "user", "content": 3}], "messages[0].content must be a string"),
    ("hello", "non-empty list"),
])
def test_bad_chat_messages_get_400_naming_the_field(chat_server, messages, words):
    status, r = http(chat_server[0] + "/chat/completions", {"messages": messages})
    assert status == 400, r
    assert r["error"]["param"] == "messages" and words in r["error"]["message"]


def test_another_temperature_compiles_nothing_new(chat_server):
    url, server = chat_server
    body = {"messages": CHAT, "max_tokens": 5, "seed": 1}
    assert http(url + "/chat/completions", {**body, "temperature": 0.7})[0] == 200
    compiled = http(url.removesuffix("/v1") + "/health")[1]["compiled_programs"]
    for t in (1.3, 0.2):
        assert http(url + "/chat/completions", {**body, "temperature": t, "top_p": 0.9})[0] == 200
    assert http(url.removesuffix("/v1") + "/health")[1]["compiled_programs"] == compiled


def test_chat_without_a_template_is_a_400_naming_it(server):
    status, r = http(server + "/chat/completions", {"messages": [{"role": "user",
                                                                  "content": "hi"}]})
    assert status == 400 and "has no chat template" in r["error"]["message"], r


def test_generate_chat_renders_prompts_and_messages(chat_server, instruct, checkpoint, tmp_path,
                                                    capsys):
    from lepjax.cli.main import main

    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"messages": CHAT}, ensure_ascii=False) + "\n"
                       + json.dumps({"prompt": "Привет!"}, ensure_ascii=False) + "\n",
                       encoding="utf-8")
    out = tmp_path / "c.jsonl"
    common = [f"--config.prompts={prompts}", f"--config.output={out}", "--config.chat=True",
              "--config.max_new_tokens=6", "--config.model.dtype=float32",
              "--config.length_bucket=16", "--config.batch_size=2"]
    assert main(["generate", f"--config.model.path={instruct[0]}", *common]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows[0]["prompt"] == instruct[1].apply_chat_template(CHAT, add_generation_prompt=True,
                                                                tokenize=False)
    assert rows[1]["prompt"].endswith("<|im_start|>user\nПривет!<|im_end|>\n"
                                      "<|im_start|>assistant\n")
    _, r = http(chat_server[0] + "/chat/completions", {"messages": CHAT, "max_tokens": 6,
                                                       "temperature": 0})
    assert rows[0]["completion"] == r["choices"][0]["message"]["content"]
    capsys.readouterr()
    assert main(["generate", f"--config.model.path={checkpoint}", *common,
                 "--config.overwrite=True"]) == 1
    assert "has no chat template" in capsys.readouterr().err


# ---- the openai teacher on the chat endpoint (teacher.api=chat) ------------------------------


def test_chat_api_teacher_gets_the_templated_greedy_completion(chat_server, instruct):
    """`api=chat` sends each prompt as the user message: the server renders the ChatML template,
    so the completions are the local decoding of the rendered conversation, not of the prompt."""
    from lepjax.augment.teacher_api import BOS, EOS

    url, _ = chat_server
    prompts = [PROMPTS[0], PROMPTS[2], ["Вопрос", EOS, BOS, " ответ"]]
    greedy = Request(max_new_tokens=6)
    teacher = OpenAITeacher(url, model="tiny-instruct", api="chat", max_in_flight=3,
                            special_text={"bos": "<s>", "eos": "</s>"})
    assert teacher.url == url + "/chat/completions"
    got = teacher.complete(prompts, greedy)
    texts = [PROMPTS[0], PROMPTS[2], "Вопрос</s><s> ответ"]
    rendered = [instruct[1].apply_chat_template([{"role": "user", "content": t}],
                                                add_generation_prompt=True, tokenize=False)
                for t in texts]
    local = LocalTeacher(instruct[0], dtype="float32", batch_size=3, length_bucket=16,
                         add_bos=False)
    assert got == local.complete(rendered, greedy)
    plain = OpenAITeacher(url, model="tiny-instruct", max_in_flight=3,
                          special_text={"bos": "<s>", "eos": "</s>"})
    assert plain.complete(prompts, greedy) != got


def test_chat_api_body_and_reply_shape():
    from fake_openai import FakeServer

    from lepjax.augment.teacher_api import BOS, EOS

    with FakeServer(lambda p: p[::-1]) as server:
        teacher = OpenAITeacher(server.url, model="m", api="chat",
                                special_text={"bos": "<s>", "eos": "</s>"})
        out = teacher.complete([["a", EOS, BOS, " b"], "c"],
                               Request(max_new_tokens=5, stop=("\n",)))
    assert out == ["a</s><s> b"[::-1], "c"]
    bodies = sorted((body for _, body in server.requests), key=lambda b: len(str(b)))
    assert {path for path, _ in server.requests} == {"/v1/chat/completions"}
    assert bodies[1]["messages"] == [{"role": "user", "content": "a</s><s> b"}]
    assert "prompt" not in bodies[1] and bodies[1]["max_tokens"] == 5
    assert bodies[1]["stop"] == ["\n"] and bodies[1]["model"] == "m"


def test_teacher_api_is_checked_at_config_load():
    from lepjax.augment.config import default_config, validate_config
    from lepjax.augment.teacher import make_teacher
    from lepjax.config import ConfigError

    cfg = default_config()
    cfg.teacher.update(dict(backend="openai", urls=("http://h:9/v1",), api="chta"))
    with pytest.raises(ConfigError, match="teacher.api.*did you mean 'chat'"):
        validate_config(cfg)
    cfg.teacher.api = "chat"
    validate_config(cfg)
    assert make_teacher(cfg).url == "http://h:9/v1/chat/completions"
    with pytest.raises(ValueError, match="is the completions endpoint but teacher.api='chat'"):
        OpenAITeacher("http://h:9/v1/completions", api="chat")
