"""One tokenizer interface over SentencePiece BPE (Llama 2, Mistral) and byte-level BPE (Llama 3).

    tok = load_tokenizer("path/to/tokenizer.model")   # SentencePiece .model or tiktoken ranks
    tok = load_tokenizer("path/to/model_dir")         # tokenizer.model / tokenizer.json inside
    ids, offsets = tok.encode_with_offsets("Привет, мир")
    tok.pieces[ids[0]], tok.merges[:3], tok.decode(ids)

Every tokenizer is held as its pieces by id plus the mergeable pieces in priority order (see
`lepjax.vocab.bpe`); encoding runs through the Hugging Face `tokenizers` library on the
`tokenizer.json` derived from them, which is exactly the file `save_tokenizer` writes. For
SentencePiece sources the protobuf is kept so an extended `.model` can be written too.
"""

from __future__ import annotations

import base64
import copy
import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from lepjax.vocab import bpe

SENTENCEPIECE = "sentencepiece"
BYTE_LEVEL = "byte_level"
# SentencePiece piece types (sentencepiece_model.proto).
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


@dataclass
class VocabTokenizer:
    """A BPE tokenizer as pieces by id + priority order; encodes through `tokenizers`.

    kind: "sentencepiece" ("▁" spaces, `<0xNN>` byte fallback) or "byte_level" (Llama 3).
    special: special-token pieces by id (never produced from text, never merged).
    order: mergeable pieces, highest merge priority first.
    """

    kind: str
    pieces: list[str]
    order: list[str]
    special: dict[int, str]
    bos: str | None = None
    eos: str | None = None
    unk: str | None = None
    pattern: str = bpe.LLAMA3_PATTERN
    sp_proto: Any = None  # sentencepiece ModelProto (SentencePiece sources only)
    source: str = ""
    user_defined: dict[int, str] = field(default_factory=dict)

    # ---- vocabulary -------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids (special tokens included)."""
        return len(self.pieces)

    @cached_property
    def piece_to_id(self) -> dict[str, int]:
        """Id of each piece."""
        return {p: i for i, p in enumerate(self.pieces)}

    @cached_property
    def merges(self) -> list[tuple[str, str]]:
        """BPE merges in priority order (derived from `order`)."""
        return bpe.merges_from_order(self.order)

    @cached_property
    def merges_by_result(self) -> dict[str, list[tuple[str, str]]]:
        """Every merge (a, b), grouped by the piece a + b it makes."""
        out: dict[str, list[tuple[str, str]]] = {}
        for a, b in self.merges:
            out.setdefault(a + b, []).append((a, b))
        return out

    @property
    def bos_id(self) -> int | None:
        return self.piece_to_id.get(self.bos) if self.bos else None

    @property
    def eos_id(self) -> int | None:
        return self.piece_to_id.get(self.eos) if self.eos else None

    def surface(self, piece: str) -> str:
        """The text a piece stands for (a space for "▁"; bytes decoded with replacement)."""
        if self.kind == BYTE_LEVEL:
            return bpe.piece_to_bytes(piece).decode("utf-8", errors="replace")
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            return bytes([int(piece[3:5], 16)]).decode("utf-8", errors="replace")
        return piece.replace(bpe.SPACE, " ")

    # ---- encoding ---------------------------------------------------------------------------

    def to_json(self) -> dict:
        """The Hugging Face tokenizer.json document of this tokenizer."""
        vocab = {p: i for i, p in enumerate(self.pieces)}
        added = [bpe.added_token(p, i, True) for i, p in sorted(self.special.items())]
        added += [bpe.added_token(p, i, False) for i, p in sorted(self.user_defined.items())]
        added.sort(key=lambda t: t["id"])
        if self.kind == BYTE_LEVEL:
            return bpe.byte_level_json(vocab, self.merges, added, self.bos, self.pattern)
        return bpe.sentencepiece_json(vocab, self.merges, added, self.unk, self.bos)

    @cached_property
    def hf(self):
        """The `tokenizers.Tokenizer` built from `to_json()`."""
        from tokenizers import Tokenizer

        return Tokenizer.from_str(bpe.dumps(self.to_json()))

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no BOS/EOS)."""
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text (no BOS/EOS), encoded in parallel."""
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and each token's (start, end) character span in `text`."""
        e = self.hf.encode(text, add_special_tokens=False)
        return e.ids, e.offsets

    def encode_batch_with_offsets(self, texts: list[str]):
        """[(ids, offsets)] for each text, encoded in parallel."""
        return [(e.ids, e.offsets) for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        """Text of token ids (special tokens skipped)."""
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=True)

    def segment_piece(self, piece: str) -> list[int]:
        """This tokenizer's ids for a piece's text as it appears mid-text.

        The piece string goes straight to the BPE model, so a SentencePiece piece without a
        leading "▁" is segmented as the inside of a word (no dummy prefix is added) and a
        byte-level piece as one pre-token. Characters outside the vocabulary become byte-fallback
        pieces (SentencePiece) or the unknown piece.
        """
        return [t.id for t in self.hf.model.tokenize(piece)]

    # ---- derived tokenizers -----------------------------------------------------------------

    def with_new_pieces(self, new: list[str], priority: str) -> "VocabTokenizer":
        """A copy with `new` pieces appended (ids V, V+1, ...), merged before or after the old ones."""
        if priority not in ("before", "after"):
            raise ValueError(f"merge priority must be 'before' or 'after', got {priority!r}")
        clash = [p for p in new if p in self.piece_to_id]
        if clash:
            raise ValueError(f"new pieces already in the vocabulary: {clash[:5]}")
        order = new + self.order if priority == "before" else self.order + new
        proto = None
        if self.sp_proto is not None:
            proto = extend_sentencepiece_proto(self.sp_proto, new, priority)
        return VocabTokenizer(self.kind, self.pieces + list(new), order, dict(self.special),
                              self.bos, self.eos, self.unk, self.pattern, proto, self.source,
                              dict(self.user_defined))


def extend_sentencepiece_proto(proto, new: list[str], priority: str):
    """A copy of a SentencePiece ModelProto with `new` NORMAL pieces scored above or below the rest."""
    import numpy as np

    out = copy.deepcopy(proto)
    scores = [p.score for p in proto.pieces if p.type == _NORMAL]
    edge = min(scores) if priority == "after" else max(scores)
    # Scores are float32: step by at least the float32 spacing at the scores' magnitude.
    reach = abs(edge) + 2.0 * (len(new) + 1) * max(1.0, float(np.spacing(np.float32(abs(edge)))))
    step = max(1.0, float(np.spacing(np.float32(reach))) * 2)
    for i, piece in enumerate(new):
        score = edge - step * (i + 1) if priority == "after" else edge + step * (len(new) - i)
        p = out.pieces.add()
        p.piece, p.score, p.type = piece, score, _NORMAL
    return out


# ---- loading ---------------------------------------------------------------------------------


def from_sentencepiece_proto(proto, source: str = "") -> VocabTokenizer:
    """A tokenizer from a SentencePiece BPE ModelProto."""
    if proto.trainer_spec.model_type not in (0, 2):  # UNIGRAM=1, BPE=2 (0 = unset, BPE-like)
        raise ValueError(f"{source or 'SentencePiece model'}: only BPE SentencePiece models are "
                         f"supported (model_type={proto.trainer_spec.model_type})")
    pieces = [p.piece for p in proto.pieces]
    normal = [(-p.score, i) for i, p in enumerate(proto.pieces) if p.type == _NORMAL]
    order = [pieces[i] for _, i in sorted(normal)]
    special = {i: p.piece for i, p in enumerate(proto.pieces) if p.type in (_CONTROL, _UNKNOWN)}
    user = {i: p.piece for i, p in enumerate(proto.pieces) if p.type == _USER_DEFINED}
    spec = proto.trainer_spec

    def name(i: int, default: str) -> str | None:
        return pieces[i] if 0 <= i < len(pieces) else (None if i < 0 else default)

    return VocabTokenizer(SENTENCEPIECE, pieces, order, special, bos=name(spec.bos_id, "<s>"),
                          eos=name(spec.eos_id, "</s>"), unk=name(spec.unk_id, "<unk>"),
                          sp_proto=proto, source=source, user_defined=user)


def from_sentencepiece(path: str) -> VocabTokenizer:
    """Read a SentencePiece `.model` file."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    with open(path, "rb") as f:
        data = f.read()
    try:
        proto.ParseFromString(data)
    except Exception as e:  # protobuf's DecodeError
        raise ValueError(f"{path}: not a SentencePiece model ({e})") from None
    if not proto.pieces:
        raise ValueError(f"{path}: not a SentencePiece model (no pieces)")
    return from_sentencepiece_proto(proto, os.path.abspath(path))


def is_tiktoken_file(path: str) -> bool:
    """Whether a file is a tiktoken ranks table ("<base64 token> <rank>" per line)."""
    try:
        with open(path, "rb") as f:
            first = f.readline().split()
        return len(first) == 2 and first[1].isdigit() and bool(base64.b64decode(first[0]))
    except (OSError, ValueError):
        return False


def from_tiktoken(path: str, special: list[str] | None = None) -> VocabTokenizer:
    """Read a tiktoken ranks file (Llama 3 `tokenizer.model`); specials follow the ranks."""
    ranked: list[tuple[int, bytes]] = []
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[1].isdigit():
                raise ValueError(f"{path}:{n}: expected '<base64 token> <rank>'")
            ranked.append((int(parts[1]), base64.b64decode(parts[0])))
    ranked.sort()
    if [r for r, _ in ranked] != list(range(len(ranked))):
        raise ValueError(f"{path}: tiktoken ranks are not 0..{len(ranked) - 1}")
    pieces = [bpe.bytes_to_piece(b) for _, b in ranked]
    special = bpe.LLAMA3_SPECIAL if special is None else special
    specials = {len(pieces) + i: s for i, s in enumerate(special)}
    bos = next((s for s in special if s == "<|begin_of_text|>"), None)
    eos = next((s for s in special if s == "<|end_of_text|>"), None)
    return VocabTokenizer(BYTE_LEVEL, pieces + list(special), list(pieces), specials, bos=bos,
                          eos=eos, source=os.path.abspath(path))


def from_tokenizer_json(path: str) -> VocabTokenizer:
    """Read a Hugging Face tokenizer.json holding a BPE model (SentencePiece-style or byte-level)."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable tokenizer.json ({e})") from None
    model = doc.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(f"{path}: model type {model.get('type')!r}; only BPE tokenizers are supported")
    text = json.dumps([doc.get("pre_tokenizer"), doc.get("decoder")])
    kind = BYTE_LEVEL if "ByteLevel" in text else SENTENCEPIECE
    vocab: dict[str, int] = dict(model["vocab"])
    added = doc.get("added_tokens") or []
    for t in added:
        vocab.setdefault(t["content"], t["id"])
    size = max(vocab.values()) + 1
    pieces = [""] * size
    for p, i in vocab.items():
        pieces[i] = p
    if "" in pieces:
        raise ValueError(f"{path}: token ids are not contiguous (id {pieces.index('')} is unused)")
    special = {t["id"]: t["content"] for t in added if t.get("special")}
    user = {t["id"]: t["content"] for t in added if not t.get("special")}
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in model["merges"]]
    skip = set(special.values()) | set(user.values())
    if kind == SENTENCEPIECE:
        skip |= {p for p in vocab if len(p) == 6 and p.startswith("<0x") and p.endswith(">")}
    order = [p for p in bpe.order_from_merges(vocab, merges) if p not in skip]
    pattern = bpe.LLAMA3_PATTERN
    for pre in (doc.get("pre_tokenizer") or {}).get("pretokenizers", []):
        if pre.get("type") == "Split" and "Regex" in pre.get("pattern", {}):
            pattern = pre["pattern"]["Regex"]
    cfg = _read_tokenizer_config(os.path.dirname(os.path.abspath(path)))
    names = set(special.values())
    bos = cfg.get("bos_token") or next((c for c in ("<|begin_of_text|>", "<s>") if c in names), None)
    eos = cfg.get("eos_token") or next((c for c in ("<|end_of_text|>", "</s>") if c in names), None)
    return VocabTokenizer(kind, pieces, order, special, bos=bos, eos=eos, unk=model.get("unk_token"),
                          pattern=pattern, source=os.path.abspath(path), user_defined=user)


def _read_tokenizer_config(directory: str) -> dict[str, str]:
    path = os.path.join(directory, "tokenizer_config.json")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    out = {}
    for key in ("bos_token", "eos_token"):
        value = cfg.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str):
            out[key] = value
    return out


def load_tokenizer(path: str) -> VocabTokenizer:
    """Load a SentencePiece `.model`, a tiktoken ranks file, a tokenizer.json, or a directory.

    In a directory, `tokenizer.model` is preferred when it is a SentencePiece model (it keeps
    the protobuf for writing an extended `.model`), then `tokenizer.json`, then a tiktoken
    `tokenizer.model` (also looked for under `original/`, as Llama 3 repositories keep it).
    """
    if os.path.isdir(path):
        sp = os.path.join(path, "tokenizer.model")
        js = os.path.join(path, "tokenizer.json")
        if os.path.isfile(sp) and not is_tiktoken_file(sp):
            return from_sentencepiece(sp)
        if os.path.isfile(js):
            return from_tokenizer_json(js)
        for cand in (sp, os.path.join(path, "original", "tokenizer.model")):
            if os.path.isfile(cand):
                return from_tiktoken(cand)
        raise FileNotFoundError(f"{path}: no tokenizer.model or tokenizer.json in this directory")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tokenizer {path!r} does not exist")
    if path.endswith(".json"):
        return from_tokenizer_json(path)
    if is_tiktoken_file(path):
        return from_tiktoken(path)
    return from_sentencepiece(path)
