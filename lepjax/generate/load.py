"""What decoding reads: a model with the tokenizer that fits it, and prompt files.

    model, tokenizer, mesh, rules = load_for_decoding(cfg)   # cfg.model.*, cfg.mesh.*, cfg.tokenizer
    texts = read_prompts("prompts.jsonl", field="prompt")
"""

from __future__ import annotations

import io
import os
from typing import Any

from lepjax.data import sources


# End-of-turn tokens of common chat templates: chat decoding stops at the one a template uses.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|end_of_turn|>")


def chat_stop_ids(tokenizer) -> tuple[int, ...]:
    """Where a chat reply ends: the tokenizer's stop ids (EOS, ...) and the end-of-turn token
    its chat template writes."""
    template = tokenizer.chat_template or ""
    turn = [tokenizer.piece_to_id[t] for t in END_OF_TURN
            if t in template and t in tokenizer.piece_to_id]
    return tuple(dict.fromkeys(tuple(tokenizer.stop_ids) + tuple(turn)))


def load_for_decoding(cfg: Any, chat: bool = False):
    """(model, tokenizer, mesh, rules) of a config with model.*, mesh.* and tokenizer keys.

    With `chat`, a tokenizer without a chat template is refused before any weight is read.

    The model computes as `cfg.model` says (dtype, attention, ...: run options, whatever the
    directory was trained with). The tokenizer is `cfg.tokenizer`, or the model directory's own;
    one with more tokens than the model has embedding rows is refused. Its size is the real
    vocabulary: embedding rows past it are padding (pass it as `Generator(vocab_limit=...)`).
    """
    from lepjax import models, parallel
    from lepjax.models.attention import decode_kernels
    from lepjax.tokenizer import load_tokenizer

    source = cfg.tokenizer or cfg.model.path
    if not source:
        raise ValueError("set tokenizer (or model.path to a directory holding one): decoding "
                         "needs a tokenizer")
    tok = load_tokenizer(source)
    if chat and not tok.chat_template:
        raise ValueError(f"chat=True, but the tokenizer {tok.path} has no chat template "
                         "(tokenizer_config.json chat_template or chat_template.jinja)")
    mesh, rules = parallel.mesh_from_config(cfg.mesh)
    # A kernel that cannot decode here is refused before the weights are read.
    compute = models.validate_compute(cfg.model)
    decode_kernels(compute.attention, compute.dtype, length_bucket=cfg.get("length_bucket", 64),
                   head_dim=_architecture(cfg.model).head_dim,
                   platform=mesh.devices.flat[0].platform)
    model = models.from_config(cfg.model, mesh=mesh, rules=rules)
    tok.check_fits(model.config.vocab_size, f"the model {cfg.model.path or cfg.model.preset}")
    return model, tok, mesh, rules


def _architecture(section: Any):
    """The `ModelConfig` a `model` section names, read without any weight."""
    from lepjax import models

    if not section.get("path"):
        return models.get_preset(section.preset)
    if models.detect_format(section.path) == "lepjax":
        return models.io.read_lepjax_config(section.path)
    return models.ModelConfig.from_hf(section.path)


def read_prompts(path: str, field: str = "prompt") -> list[str]:
    """Prompts of a .txt file (one per non-empty line) or a .jsonl file (field `field`)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"prompts file {path!r} does not exist")
    if not path.endswith(".jsonl"):
        with open(path, "rb") as f:
            blob = f.read()
        try:
            text = blob.decode("utf-8")
        except UnicodeDecodeError as e:
            line = blob.count(b"\n", 0, e.start) + 1
            raise ValueError(f"{path}: not UTF-8 text at byte {e.start} (line {line})") from None
        return [line.rstrip("\n") for line in io.StringIO(text, newline=None) if line.strip()]
    return [str(row[field]) for _, row in _jsonl_rows(path, (field,))]


def read_chat_prompts(path: str, field: str = "prompt",
                      messages_field: str = "messages") -> list[list[dict[str, str]]]:
    """Conversations to render with a chat template: a .txt line or a JSONL `field` is one user
    message; a JSONL row with `messages_field` ([{"role", "content"}, ...]) is taken as is."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"prompts file {path!r} does not exist")
    if not path.endswith(".jsonl"):
        return [[{"role": "user", "content": t}] for t in read_prompts(path)]
    out = []
    for n, row in _jsonl_rows(path, (messages_field, field)):
        if messages_field in row:
            out.append(check_messages(row[messages_field], f"{path}:{n}: {messages_field}"))
        else:
            out.append([{"role": "user", "content": str(row[field])}])
    return out


CHAT_ROLES = ("system", "user", "assistant")


def check_messages(messages: Any, where: str = "messages") -> list[dict[str, str]]:
    """A validated conversation: a non-empty list of {"role", "content": str}; a ValueError
    naming the entry and field otherwise."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where} must be a non-empty list of {{role, content}} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"{where}[{i}] must be an object with role and content")
        if m.get("role") not in CHAT_ROLES:
            raise ValueError(f"{where}[{i}].role must be one of {', '.join(CHAT_ROLES)}, got "
                             f"{m.get('role')!r}")
        if not isinstance(m.get("content"), str):
            raise ValueError(f"{where}[{i}].content must be a string")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _jsonl_rows(path: str, fields: tuple[str, ...]) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) of the JSONL rows, each holding one of `fields`."""
    rows = []
    for n, row in sources.jsonl_objects(path, ValueError):
        if not any(k in row for k in fields):
            raise ValueError(f"{path}:{n}: no field {' or '.join(map(repr, fields))}")
        rows.append((n, row))
    return rows
