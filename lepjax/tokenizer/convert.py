"""SentencePiece `.model` and tiktoken ranks files as Hugging Face `tokenizer.json` documents.

The runtime tokenizer (`lepjax.tokenizer`) encodes everything through the `tokenizers` library; a
`tokenizer.json` is read as it is, and the two formats that library cannot read are converted
here into an equivalent document (tested id for id against sentencepiece and tiktoken).

Both are BPE whose merge rule is "join the adjacent pair whose concatenation is the
highest-priority piece in the vocabulary": SentencePiece ranks pieces by score, tiktoken by rank.
Such a vocabulary is fully described by its pieces in priority order; the merge list is every
split of a piece into two pieces of the vocabulary, in the piece's priority (`merges_from_order`).

Piece alphabets: SentencePiece pieces use "▁" (U+2581) for a space and `<0xNN>` byte-fallback
pieces; byte-level pieces are bytes mapped to printable characters (`bytes_to_unicode`).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Sequence
from typing import Any

SPACE = "\u2581"
SENTENCEPIECE = "sentencepiece"
BYTE_LEVEL = "byte_level"
# SentencePiece piece types (sentencepiece_model.proto).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# Llama 3's pre-tokenizer regex (tiktoken `pat_str`): contractions, letters, 1-3 digits, punctuation,
# newlines and whitespace runs.
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Llama 3's 256 special tokens, in id order after the 128,000 ranked tokens.
_LLAMA3_NAMED = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                 "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>",
                 "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>",
                 "<|python_tag|>", "<|image|>"]
LLAMA3_SPECIAL = _LLAMA3_NAMED + [f"<|reserved_special_token_{2 + i}|>"
                                  for i in range(256 - len(_LLAMA3_NAMED))]


def bytes_to_unicode() -> dict[int, str]:
    """The byte-level alphabet: each byte as one printable character (GPT-2 convention).

    Printable Latin-1 bytes stand for themselves; the others (controls, space, soft hyphen, ...)
    are shifted to U+0100 and up, in byte order.
    """
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    out, shift = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + shift)
            shift += 1
    return out


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def bytes_to_piece(data: bytes) -> str:
    """A byte string as a byte-level piece."""
    return "".join(BYTE_TO_CHAR[b] for b in data)


def piece_to_bytes(piece: str) -> bytes:
    """The bytes a byte-level piece stands for."""
    return bytes(CHAR_TO_BYTE[c] for c in piece)


def is_byte_piece(piece: str) -> bool:
    """Whether a SentencePiece-style piece is a byte-fallback piece `<0xNN>`."""
    return len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">")


def merges_from_order(order: Sequence[str], mergeable: set[str] | None = None) -> list[tuple[str, str]]:
    """Merge list equivalent to "join the pair making the highest-priority piece".

    `order` lists pieces, highest priority first. For each piece, every split into two pieces
    that are both in the vocabulary becomes a merge, in the piece's priority; splits of one piece
    are ordered by their parts' priorities. `mergeable` (default: all of `order`) limits which
    pieces can be merge results and parts (special and byte-fallback pieces never are).
    """
    rank = {p: i for i, p in enumerate(order)}
    allowed = rank if mergeable is None else {p: rank[p] for p in mergeable if p in rank}
    merges: list[tuple[str, str]] = []
    for piece in order:
        if len(piece) < 2 or piece not in allowed:
            continue
        splits = []
        for i in range(1, len(piece)):
            a, b = piece[:i], piece[i:]
            ra, rb = allowed.get(a), allowed.get(b)
            if ra is not None and rb is not None:
                splits.append((ra, rb, a, b))
        splits.sort()
        merges.extend((a, b) for _, _, a, b in splits)
    return merges


def added_token(content: str, id: int, special: bool = True) -> dict[str, Any]:
    """One `added_tokens` entry of a tokenizer.json."""
    return {"id": id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": special}


def _template(bos: str | None, bos_id: int | None) -> dict[str, Any] | None:
    if bos is None:
        return None
    seq = lambda: {"SpecialToken": {"id": bos, "type_id": 0}}  # noqa: E731
    return {"type": "TemplateProcessing",
            "single": [seq(), {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [seq(), {"Sequence": {"id": "A", "type_id": 0}}, seq(),
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}


def sentencepiece_json(vocab: dict[str, int], merges: Iterable[tuple[str, str]],
                       added: Sequence[dict[str, Any]], unk: str | None, bos: str | None) -> dict:
    """A tokenizer.json for a SentencePiece-style BPE (Llama 2, Mistral): "▁" spaces, byte fallback."""
    bos_id = vocab.get(bos) if bos else None
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": list(added),
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": SPACE},
            {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}]},
        "pre_tokenizer": None,
        "post_processor": _template(bos, bos_id),
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": unk,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True,
                  "byte_fallback": True, "ignore_merges": False, "vocab": vocab,
                  "merges": [[a, b] for a, b in merges]},
    }


def byte_level_json(vocab: dict[str, int], merges: Iterable[tuple[str, str]],
                    added: Sequence[dict[str, Any]], bos: str | None,
                    pattern: str = LLAMA3_PATTERN) -> dict:
    """A tokenizer.json for a byte-level BPE with a split regex (Llama 3 / tiktoken semantics)."""
    bos_id = next((t["id"] for t in added if t["content"] == bos), None) if bos else None
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": list(added),
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated",
             "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
             "use_regex": False}]},
        "post_processor": _template(bos, bos_id),
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        # ignore_merges: a pre-token that is itself a piece is emitted whole, as tiktoken does.
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": False,
                  "byte_fallback": False, "ignore_merges": True, "vocab": vocab,
                  "merges": [[a, b] for a, b in merges]},
    }


def dumps(doc: dict) -> str:
    """Serialise a tokenizer.json document."""
    return json.dumps(doc, ensure_ascii=False)


# ---- SentencePiece ---------------------------------------------------------------------------


def read_sentencepiece_proto(path: str):
    """The ModelProto of a SentencePiece `.model` file (ValueError naming the file otherwise)."""
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
    return proto


def sentencepiece_specials(proto) -> dict[str, str | None]:
    """BOS / EOS / unknown piece names of a SentencePiece model (None where the id is -1)."""
    spec, pieces = proto.trainer_spec, proto.pieces

    def name(i: int) -> str | None:
        return pieces[i].piece if 0 <= i < len(pieces) else None

    return {"bos": name(spec.bos_id), "eos": name(spec.eos_id), "unk": name(spec.unk_id)}


def sentencepiece_document(proto, source: str = "") -> dict:
    """The tokenizer.json document of a SentencePiece BPE ModelProto."""
    if proto.trainer_spec.model_type not in (0, 2):  # UNIGRAM=1, BPE=2 (0 = unset, BPE-like)
        raise ValueError(f"{source or 'SentencePiece model'}: only BPE SentencePiece models are "
                         f"supported (model_type={proto.trainer_spec.model_type})")
    pieces = [p.piece for p in proto.pieces]
    normal = sorted((-p.score, i) for i, p in enumerate(proto.pieces) if p.type == NORMAL)
    order = [pieces[i] for _, i in normal]
    added = [added_token(p.piece, i, p.type != USER_DEFINED) for i, p in enumerate(proto.pieces)
             if p.type in (CONTROL, UNKNOWN, USER_DEFINED)]
    names = sentencepiece_specials(proto)
    return sentencepiece_json({p: i for i, p in enumerate(pieces)}, merges_from_order(order),
                              added, names["unk"], names["bos"])


# ---- tiktoken --------------------------------------------------------------------------------


def is_tiktoken_file(path: str) -> bool:
    """Whether a file is a tiktoken ranks table ("<base64 token> <rank>" per line)."""
    try:
        with open(path, "rb") as f:
            first = f.readline().split()
        return len(first) == 2 and first[1].isdigit() and bool(base64.b64decode(first[0]))
    except (OSError, ValueError):
        return False


def tiktoken_document(path: str, special: Sequence[str] = tuple(LLAMA3_SPECIAL),
                      pattern: str = LLAMA3_PATTERN) -> dict:
    """The tokenizer.json document of a tiktoken ranks file (Llama 3 `tokenizer.model`).

    Special tokens follow the ranked tokens, in order; BOS is `<|begin_of_text|>` when present.
    """
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
    pieces = [bytes_to_piece(b) for _, b in ranked]
    vocab = {p: i for i, p in enumerate(pieces)}
    added = [added_token(s, len(pieces) + i) for i, s in enumerate(special)]
    vocab.update({t["content"]: t["id"] for t in added})
    bos = "<|begin_of_text|>" if "<|begin_of_text|>" in special else None
    return byte_level_json(vocab, merges_from_order(pieces), added, bos, pattern)
