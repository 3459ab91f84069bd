"""`lepjax propagate`: move the embeddings a base model learnt for a new vocabulary into its
instruction-tuned sibling.

Inputs: the original base model B, its instruct sibling I (same architecture, I's vocabulary
starts with B's), and the donor D = B after vocabulary adaptation and embedding training, with
its new tokenizer. For the input embeddings and for the LM head separately, LEP fits W
(`lepjax.lep.solve`) and sets I's new rows to E(D) · W. Tokens I has beyond B's vocabulary
(chat-template and other added tokens) and I's special tokens keep I's own rows; the output
tokenizer is D's vocabulary plus those added tokens, with I's chat template. Tied embeddings are
projected once and stay tied.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from typing import Any

import numpy as np

from lepjax import config as config_lib
from lepjax.lep import solve

OUTPUT_FORMATS = ("lepjax", "hf")

log = logging.getLogger("lepjax.lep")


def _rows(params: dict, module: str) -> np.ndarray:
    from lepjax.models import io

    x = io.to_host(params[module])
    return x if module == "embed" else x.T  # the LM head is stored [embed, vocab]


def validate_section(section) -> None:
    """Model-free check of a propagate config (method, output_format, pad_multiple)."""
    config_lib.check_choice("propagate.method", section.method, solve.METHODS)
    config_lib.check_choice("propagate.output_format", section.output_format, OUTPUT_FORMATS)
    if int(section.pad_multiple) < 1:
        raise config_lib.ConfigError(f"config key 'propagate.pad_multiple' must be >= 1, got "
                                     f"{section.pad_multiple}")


def validate_config(cfg) -> None:
    """Check the propagate settings of a verb's whole config before any weight is read.

    `cfg` is the `lepjax propagate` config itself or a config holding a `propagate` section
    (`lepjax adapt`); ConfigError names the key and the closest valid values.
    """
    if "propagate" in cfg:
        validate_section(cfg.propagate)
    elif "method" in cfg and "donor" in cfg:
        validate_section(cfg)


def propagate(base: str, instruct: str, donor: str, output_dir: str, *, method: str = "conversion",
              base_tokenizer: str = "", instruct_tokenizer: str = "", donor_tokenizer: str = "",
              output_format: str = "lepjax", pad_multiple: int = 128,
              overwrite: bool = False) -> dict[str, Any]:
    """Write the adapted instruct model to `output_dir`; returns a summary with the residuals."""
    import jax

    from lepjax import models
    from lepjax.models import io
    from lepjax.vocab.checkpoint import round_up
    from lepjax.vocab.embedding_init import build_matrix, copy_map, plan_rows
    from lepjax.vocab.tokenizer import load_vocab
    from lepjax.vocab.writer import check_output, write_tokenizer_files

    config_lib.check_choice("propagate.method", method, solve.METHODS)
    config_lib.check_choice("propagate.output_format", output_format, OUTPUT_FORMATS)
    check_output(output_dir, overwrite, [base, instruct, donor, base_tokenizer,
                                         instruct_tokenizer, donor_tokenizer])
    t0 = time.perf_counter()
    tok_b = load_vocab(base_tokenizer or base)
    tok_i = load_vocab(instruct_tokenizer or instruct)
    tok_d = load_vocab(donor_tokenizer or donor)
    vb = tok_b.vocab_size
    if tok_i.pieces[:vb] != tok_b.pieces:
        raise ValueError(f"the instruct tokenizer ({tok_i.source}) does not start with the base "
                         f"vocabulary ({tok_b.source}): LEP needs siblings")
    model_b, cb = models.load(base, param_dtype="float32")
    model_i, ci = models.load(instruct, param_dtype="float32")
    model_d, cd = models.load(donor, param_dtype="float32")
    for name, c, tok in (("base", cb, tok_b), ("instruct", ci, tok_i), ("donor", cd, tok_d)):
        if c.vocab_size < tok.vocab_size:
            raise ValueError(f"{name} checkpoint has {c.vocab_size} embedding rows but its "
                             f"tokenizer has {tok.vocab_size} tokens: they do not belong together")
    if (cb.hidden_size, ci.hidden_size, cd.hidden_size) != (ci.hidden_size,) * 3:
        raise ValueError("base, instruct and donor must share the hidden size")
    pb, pi, pd = (io.pure_params(m) for m in (model_b, model_i, model_d))
    del model_b, model_d

    plan = plan_rows(tok_b, tok_d, "mean", progress=False)
    special_b = set(tok_b.special)
    stat_rows = np.array([i for i in range(vb) if i not in special_b], np.int64)
    to_new = lambda e: build_matrix(np.asarray(e, np.float64), plan, tok_d.vocab_size,  # noqa: E731
                                    stat_rows)
    shared = copy_map(tok_b, tok_d)
    overlap_rows = shared[shared >= 0]
    # I's own tokens: those beyond B's vocabulary (appended) and I's special tokens (kept).
    d_ids = tok_d.piece_to_id
    added = [(i, p) for i, p in enumerate(tok_i.pieces[vb:], start=vb) if p not in d_ids]
    kept = [(i, d_ids[p]) for i, p in tok_i.special.items() if p in d_ids]
    kept += [(i, d_ids[p]) for i, p in enumerate(tok_i.pieces[vb:], start=vb) if p in d_ids]
    rows_out = round_up(tok_d.vocab_size + len(added), pad_multiple)

    modules = ["embed"] if ci.tie_word_embeddings else ["embed", "lm_head"]
    new_rows, residuals = {}, {}
    for module in modules:
        e_b, e_i, e_d = _rows(pb, module), _rows(pi, module), _rows(pd, module)
        w, res = solve.fit(method, e_b[:vb], e_i[:vb], overlap_rows=overlap_rows, to_new=to_new)
        out = np.zeros((rows_out, e_i.shape[1]), np.float32)
        out[: tok_d.vocab_size] = solve.apply(e_d[: tok_d.vocab_size], w, np.float32)
        for i_id, d_id in kept:
            out[d_id] = e_i[i_id]
        for k, (i_id, _) in enumerate(added):
            out[tok_d.vocab_size + k] = e_i[i_id]
        new_rows[module] = out
        residuals[module] = res
        log.info("LEP %s %s: relative residual %.3e", method, module, res)

    # I's BOS / EOS ids in the output vocabulary (its EOS may be an added chat token).
    out_ids = {p: i for i, p in enumerate(tok_d.pieces)}
    out_ids.update({p: tok_d.vocab_size + k for k, (_, p) in enumerate(added)})

    def remap(i_id):
        if i_id is None:
            return None
        if isinstance(i_id, (tuple, list)):
            return tuple(x for x in (remap(j) for j in i_id) if x is not None)
        piece = tok_i.pieces[i_id] if 0 <= i_id < len(tok_i.pieces) else None
        return out_ids.get(piece, i_id if i_id < tok_d.vocab_size else None)

    config = ci.replace(vocab_size=rows_out, bos_token_id=remap(ci.bos_token_id),
                        eos_token_id=remap(ci.eos_token_id))

    def make(path, struct, sharding):
        if path == ("embed",):
            return jax.device_put(new_rows["embed"], sharding)
        if path == ("lm_head",):
            return jax.device_put(np.ascontiguousarray(new_rows["lm_head"].T), sharding)
        node = pi
        for k in path:
            node = node[k]
        return jax.device_put(np.asarray(io.to_host(node), struct.dtype), sharding)

    adapted = io.build_from_arrays(config, make)
    # The output tokenizer: D's vocabulary + I's added tokens; I's BOS/EOS and chat template.
    pieces = tok_d.pieces + [p for _, p in added]
    special = dict(tok_d.special)
    user = dict(tok_d.user_defined)
    for k, (i_id, p) in enumerate(added):
        (special if i_id in tok_i.special else user)[tok_d.vocab_size + k] = p
    tok_out = dataclasses.replace(tok_d, pieces=pieces, special=special, user_defined=user,
                                  sp_proto=None if added else tok_d.sp_proto, bos=tok_i.bos,
                                  eos=tok_i.eos, chat_template=tok_i.chat_template)
    with tempfile.TemporaryDirectory() as tdir:
        write_tokenizer_files(tok_out, tdir)
        save = models.save_hf if output_format == "hf" else models.save
        out = save(adapted, output_dir, tokenizer_from=tdir, overwrite=overwrite)
    return {"output": out, "method": method, "format": output_format,
            "residuals": residuals, "donor_vocab": tok_d.vocab_size,
            "added_from_instruct": [p for _, p in added], "kept_from_instruct": len(kept),
            "rows": rows_out, "tied": ci.tie_word_embeddings,
            "seconds": round(time.perf_counter() - t0, 2)}


def default_config():
    """The `lepjax propagate` config.

    Keys:
      base: the original base model B (HF or lepjax directory, with its tokenizer).
      instruct: its instruction-tuned sibling I.
      donor: D, B after vocabulary adaptation and embedding training, with the new tokenizer.
      base_tokenizer, instruct_tokenizer, donor_tokenizer: tokenizers when not in the model dirs.
      method: conversion (default) | overlap | swap.
      output_dir: the adapted instruct model.
      output_format: lepjax | hf.
      pad_multiple: embedding rows padded to a multiple of this.
      overwrite: replace an existing output_dir.
    """
    from ml_collections import ConfigDict

    return ConfigDict(dict(base="", instruct="", donor="", base_tokenizer="",
                           instruct_tokenizer="", donor_tokenizer="", method="conversion",
                           output_dir="", output_format="lepjax", pad_multiple=128,
                           overwrite=False))
