"""OpenAI request bodies -> what to decode (checked, with errors that name the field), and the
small pieces of the responses.

`parse_completion_request` reads a /v1/completions body, `parse_chat_request` a
/v1/chat/completions body; both return the prompts (strings, or one conversation) and the
keyword arguments of `SamplingParams`, or raise `BadRequest` (HTTP 400 unless said otherwise)
naming the offending field.
"""

from __future__ import annotations

from typing import Any

from lepjax.generate.load import check_messages


class BadRequest(ValueError):
    """A request the server rejects; `param` names the offending field, `status` the HTTP code."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.param, self.status, self.kind = param, status, kind


def _number(body: dict, key: str, default: float, lo: float, hi: float, integer: bool = False):
    value = body.get(key, default)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        raise BadRequest(f"{key} must be {kind} in [{lo}, {hi}], got {value!r}", key)
    return value


def _common(body: Any, model_name: str) -> None:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    model = body.get("model")
    if model not in (None, "", model_name):
        raise BadRequest(f"model {model!r} is not served here; this server serves "
                         f"{model_name!r}", "model", status=404)
    if _number(body, "n", 1, 1, 1 << 30, integer=True) != 1:
        raise BadRequest(f"n must be 1 (one completion per prompt), got {body['n']!r}", "n")
    if not isinstance(body.get("stream", False), bool):
        raise BadRequest("stream must be true or false", "stream")
    if body.get("logprobs") not in (None, False):
        raise BadRequest("logprobs are not supported", "logprobs")


def _sampling(body: dict, max_tokens_key: str, max_tokens_default: int) -> dict[str, Any]:
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise BadRequest("stop must be a non-empty string or a list of them", "stop")
    params = dict(
        max_new_tokens=_number(body, max_tokens_key, max_tokens_default, 1, 1 << 20,
                               integer=True),
        temperature=float(_number(body, "temperature", 1.0, 0.0, 100.0)),
        top_p=float(_number(body, "top_p", 1.0, 1e-9, 1.0)),
        top_k=_number(body, "top_k", 0, -1, 1 << 20, integer=True),
        seed=_number(body, "seed", 0, 0, 2**31 - 1, integer=True), stop=tuple(stop))
    params["top_k"] = max(params["top_k"], 0)  # vLLM uses -1 for "no top-k"
    return params


def parse_completion_request(body: Any, model_name: str) -> tuple[list[str], dict[str, Any]]:
    """(prompts, SamplingParams kwargs) of a /v1/completions body; `BadRequest` naming the field."""
    _common(body, model_name)
    if "prompt" not in body:
        raise BadRequest("prompt is required", "prompt")
    prompts = body["prompt"]
    if isinstance(prompts, str):
        prompts = [prompts]
    if (not isinstance(prompts, list) or not prompts
            or not all(isinstance(p, str) for p in prompts)):
        raise BadRequest("prompt must be a string or a non-empty list of strings", "prompt")
    if body.get("echo"):
        raise BadRequest("echo=true is not supported", "echo")
    if body.get("best_of", 1) not in (None, 1):
        raise BadRequest("best_of must be 1", "best_of")
    return prompts, _sampling(body, "max_tokens", 16)


def parse_chat_request(body: Any, model_name: str) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """(messages, SamplingParams kwargs) of a /v1/chat/completions body; `BadRequest` naming
    the field (`messages` for an empty list, a bad role or content)."""
    _common(body, model_name)
    if "messages" not in body:
        raise BadRequest("messages is required", "messages")
    try:
        messages = check_messages(body["messages"], "messages")
    except ValueError as e:
        raise BadRequest(str(e), "messages") from None
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    return messages, _sampling(body, key, 256)


def finish_reason(completion) -> str:
    """OpenAI's finish_reason: "length" when max_tokens ran out, else "stop"."""
    return "length" if completion.finish_reason == "length" else "stop"


def usage(prompts: list[list[int]], outs) -> dict[str, int]:
    """The usage object: prompt, completion and total token counts."""
    n_in, n_out = sum(map(len, prompts)), sum(len(c.tokens) for c in outs)
    return {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}
