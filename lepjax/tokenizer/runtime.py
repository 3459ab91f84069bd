"""The runtime `Tokenizer`: resolving a tokenizer file or directory, special tokens, encoding.

See the package docstring (`lepjax.tokenizer`) for the rules.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

import lepjax.tokenizer.convert as convert

BOS_CANDIDATES = ("<|begin_of_text|>", "<s>", "<bos>")
EOS_CANDIDATES = ("<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>")
# Llama 3's own stop tokens (llama-models `Tokenizer.stop_tokens`), for a bare tiktoken file.
TIKTOKEN_STOP = ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")
FORMATS = ("tokenizer.json", "sentencepiece", "tiktoken")


def _read_json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            out = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(out, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return out


def _token_name(value: Any) -> str | None:
    value = value.get("content") if isinstance(value, dict) else value
    return value if isinstance(value, str) and value else None


def read_special_config(directory: str) -> dict[str, Any]:
    """What the files beside a tokenizer say about special tokens and chat (the one parser).

    Returns bos/eos/unk token names (None when unset), `chat_template` (str or None) and
    `stop_ids` (generation_config's eos_token_id as a list).
    """
    cfg = _read_json(os.path.join(directory, "tokenizer_config.json"))
    smap = _read_json(os.path.join(directory, "special_tokens_map.json"))
    gen = _read_json(os.path.join(directory, "generation_config.json"))
    out: dict[str, Any] = {}
    for key in ("bos", "eos", "unk"):
        out[key] = _token_name(cfg.get(f"{key}_token")) or _token_name(smap.get(f"{key}_token"))
    template = cfg.get("chat_template")
    if isinstance(template, list):  # [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if not template and os.path.isfile(os.path.join(directory, "chat_template.jinja")):
        with open(os.path.join(directory, "chat_template.jinja"), encoding="utf-8") as f:
            template = f.read()
    if not template:
        template = _read_json(os.path.join(directory, "chat_template.json")).get("chat_template")
    out["chat_template"] = template or None
    stop = gen.get("eos_token_id")
    out["stop_ids"] = [stop] if isinstance(stop, int) else [i for i in stop or [] if isinstance(i, int)]
    return out


class Tokenizer:
    """A tokenizer read from a file: `tokenizers` for encoding, special tokens, chat template.

    Picklable (worker processes get the serialised tokenizer). `format` is the file read
    (tokenizer.json, sentencepiece or tiktoken); `kind` the piece alphabet (sentencepiece:
    "▁" spaces and `<0xNN>` byte fallback; byte_level: Llama 3 style).
    """

    def __init__(self, path: str, fmt: str, document: dict | None = None,
                 config_dir: str | None = None, sentencepiece_model: str | None = None,
                 defaults: Mapping[str, str | None] | None = None):
        self.path = os.path.abspath(path)
        self.format = fmt
        self.config_dir = config_dir or os.path.dirname(self.path)
        # A SentencePiece .model with exactly this vocabulary (for writing an extended .model).
        self.sentencepiece_model = sentencepiece_model
        self._document = document
        self._hf = None
        if fmt == "tokenizer.json":
            try:
                self.hf
            except Exception as e:  # tokenizers raises its own exception type
                raise ValueError(f"{path}: not a Hugging Face tokenizer.json ({e})") from None
        self._resolve_specials(defaults or {})

    # ---- state ------------------------------------------------------------------------------

    @property
    def hf(self):
        """The `tokenizers.Tokenizer` every encode/decode goes through."""
        if self._hf is None:
            from tokenizers import Tokenizer as HFTokenizer

            if self._document is not None:
                self._hf = HFTokenizer.from_str(convert.dumps(self._document))
            else:
                self._hf = HFTokenizer.from_file(self.path)
        return self._hf

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("_hf", "_document")}
        state = {k: v for k, v in state.items() if k not in ("pieces", "piece_to_id")}
        state["_json"] = self.hf.to_str()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        text = state.pop("_json")
        self.__dict__.update(state, _document=None, _hf=HFTokenizer.from_str(text))

    def document(self) -> dict:
        """The tokenizer.json document (a fresh copy)."""
        return json.loads(self.hf.to_str())

    @cached_property
    def pieces(self) -> list[str]:
        """Pieces by id (added tokens included)."""
        vocab = self.hf.get_vocab(with_added_tokens=True)
        out = [""] * (max(vocab.values()) + 1)
        for piece, i in vocab.items():
            out[i] = piece
        return out

    @cached_property
    def piece_to_id(self) -> dict[str, int]:
        """Id of each piece (added tokens included)."""
        return self.hf.get_vocab(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce (added tokens included)."""
        return len(self.pieces)

    @cached_property
    def special_ids(self) -> frozenset[int]:
        """Ids of special added tokens (control tokens, never produced from text pieces)."""
        return frozenset(i for i, t in self.hf.get_added_tokens_decoder().items() if t.special)

    @cached_property
    def kind(self) -> str:
        """sentencepiece or byte_level (the piece alphabet)."""
        doc = json.loads(self.hf.to_str())
        text = json.dumps([doc.get("pre_tokenizer"), doc.get("decoder")])
        return convert.BYTE_LEVEL if "ByteLevel" in text else convert.SENTENCEPIECE

    def _resolve_specials(self, given: Mapping[str, str | None]) -> None:
        """bos/eos/unk names: the config files, else `given` (the format's), else by name."""
        cfg = read_special_config(self.config_dir)
        names = set(self.piece_to_id)
        unk = getattr(self.hf.model, "unk_token", None)
        defaults = {"bos": next((c for c in BOS_CANDIDATES if c in names), None),
                    "eos": next((c for c in EOS_CANDIDATES if c in names), None),
                    "unk": unk if unk in names else None}
        if given:
            defaults = dict(given)
        for key in ("bos", "eos", "unk"):
            name = cfg[key] or defaults[key]
            if name is not None and name not in names:
                raise ValueError(f"{self.config_dir}: {key}_token {name!r} is not in the vocabulary "
                                 f"of {self.path}")
            setattr(self, key, name)
        self.chat_template: str | None = cfg["chat_template"]
        stops = [self.eos_id] if self.eos_id is not None else []
        if self.format == "tiktoken" and not cfg["stop_ids"]:
            stops += [self.piece_to_id[t] for t in TIKTOKEN_STOP if t in names]
        stops += [i for i in cfg["stop_ids"] if 0 <= i < self.vocab_size]
        self.stop_ids: tuple[int, ...] = tuple(dict.fromkeys(stops))

    @property
    def bos_id(self) -> int | None:
        """Id of the BOS token (None if the tokenizer has none)."""
        return self.piece_to_id[self.bos] if self.bos is not None else None

    @property
    def eos_id(self) -> int | None:
        """Id of the EOS token (None if the tokenizer has none)."""
        return self.piece_to_id[self.eos] if self.eos is not None else None

    # ---- encoding ---------------------------------------------------------------------------

    def bos_prefix(self, add_bos: bool = True) -> list[int]:
        """[BOS id] when `add_bos` and the tokenizer has a BOS, else []."""
        return [self.bos_id] if add_bos and self.bos_id is not None else []

    def eos_suffix(self, add_eos: bool = True) -> list[int]:
        """[EOS id] when `add_eos` and the tokenizer has an EOS, else []."""
        return [self.eos_id] if add_eos and self.eos_id is not None else []

    def encode(self, texts: str | Sequence[str], *, add_bos: bool = False,
               add_eos: bool = False) -> list[int] | list[list[int]]:
        """Token ids of each text (a list of lists), or of one text when given a str.

        Texts are encoded without the tokenizer's post-processing; BOS / EOS are added only when
        asked for (and skipped when the tokenizer has none).
        """
        single = isinstance(texts, str)
        encs = self.hf.encode_batch([texts] if single else list(texts), add_special_tokens=False)
        pre, post = self.bos_prefix(add_bos), self.eos_suffix(add_eos)
        out = [pre + e.ids + post for e in encs]
        return out[0] if single else out

    def encode_with_offsets(self, texts: Sequence[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """(ids, (start, end) character span of each token) per text, without special tokens."""
        return [(e.ids, e.offsets) for e in
                self.hf.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text of token ids (special tokens skipped unless `skip_special` is False)."""
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def render_chat(self, messages: Sequence[Mapping[str, str]],
                    add_generation_prompt: bool = True) -> str:
        """The chat template applied to `messages` (as transformers' apply_chat_template, text)."""
        if not self.chat_template:
            raise ValueError(f"tokenizer {self.path} has no chat template (tokenizer_config.json "
                             "chat_template or chat_template.jinja)")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str):
            raise ValueError(f"chat template of {self.path}: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        return env.from_string(self.chat_template).render(
            messages=list(messages), add_generation_prompt=add_generation_prompt,
            bos_token=self.bos or "", eos_token=self.eos or "")

    # ---- properties of the vocabulary -------------------------------------------------------

    def fingerprint(self) -> str:
        """A hash of the vocabulary (pieces by id) and BOS/EOS: equal vocabularies, equal hashes."""
        h = hashlib.sha256()
        h.update(json.dumps([self.bos_id, self.eos_id]).encode())
        for piece in self.pieces:
            h.update(piece.encode("utf-8", "surrogatepass") + b"\x00")
        return h.hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        """What metadata.json records about the tokenizer."""
        return {"path": self.path, "format": self.format, "fingerprint": self.fingerprint(),
                "vocab_size": self.vocab_size, "bos_id": self.bos_id, "eos_id": self.eos_id}

    def check_fits(self, rows: int, model: str = "the model") -> None:
        """Raise ValueError unless a model with `rows` embedding rows can take every id."""
        if rows < self.vocab_size:
            raise ValueError(f"tokenizer {self.path} has {self.vocab_size} ids but {model} has "
                             f"{rows} embedding rows: they do not belong together")


def _sentencepiece_sibling(directory: str, tok: Tokenizer) -> str | None:
    """tokenizer.model beside a tokenizer.json when it is a SentencePiece model of the same pieces."""
    path = os.path.join(directory, "tokenizer.model")
    if not os.path.isfile(path) or convert.is_tiktoken_file(path):
        return None
    try:
        proto = convert.read_sentencepiece_proto(path)
    except ValueError:
        return None
    return path if [p.piece for p in proto.pieces] == tok.pieces else None


def resolve(path: str) -> tuple[str, str, str]:
    """(file, format, directory of its config files) for a tokenizer file or directory."""
    if os.path.isdir(path):
        for name in ("tokenizer.json", "tokenizer.model", os.path.join("original", "tokenizer.model")):
            file = os.path.join(path, name)
            if os.path.isfile(file):
                file, fmt, _ = resolve(file)
                return file, fmt, path
        raise FileNotFoundError(f"{path}: no tokenizer.json or tokenizer.model in this directory")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tokenizer {path!r} does not exist")
    if path.endswith(".json"):
        fmt = "tokenizer.json"
    else:
        fmt = "tiktoken" if convert.is_tiktoken_file(path) else "sentencepiece"
    return path, fmt, os.path.dirname(os.path.abspath(path))


def load_tokenizer(path: str) -> Tokenizer:
    """Load a tokenizer.json, a SentencePiece or tiktoken `.model`, or a directory holding one."""
    file, fmt, config_dir = resolve(path)
    if fmt == "tokenizer.json":
        tok = Tokenizer(file, fmt, config_dir=config_dir)
        tok.sentencepiece_model = _sentencepiece_sibling(os.path.dirname(file), tok)
        return tok
    if fmt == "tiktoken":
        return Tokenizer(file, fmt, convert.tiktoken_document(file), config_dir)
    proto = convert.read_sentencepiece_proto(file)
    return Tokenizer(file, fmt, convert.sentencepiece_document(proto, file), config_dir,
                     sentencepiece_model=os.path.abspath(file),
                     defaults=convert.sentencepiece_specials(proto))
