"""Embedding initialisation on tiny models with the real Mistral 7B v0.1 / Llama 3 vocabularies.

References are independent of lepjax's tokenizer code: `mean` rows are recomputed in NumPy
float64 from sentencepiece's / tiktoken's own segmentation of each new piece.
"""

import os
import pathlib

import numpy as np
import pytest

from test_vocab_tokenizers import RU_HELDOUT, RU_TRAIN, llama3_path, mistral_path

K = 1000


@pytest.fixture(scope="module")
def mistral_setup(tmp_path_factory):
    """Mistral tokenizer, its k=1000 extension (written), a tiny random model with 32,000 rows (HF)."""
    from lepjax import models
    from lepjax.vocab import extend, load_vocab, save_tokenizer

    root = tmp_path_factory.mktemp("vocab_init")
    src = load_vocab(mistral_path())
    new, summary = extend(src, [RU_TRAIN], K, aux_vocab_size=8000, progress=False)
    tok_dir = save_tokenizer(new, str(root / "tok"), summary)
    model = models.create_model(models.get_preset("tiny_mistral", vocab_size=32000), seed=1,
                                dtype="float32")
    ckpt = models.save_hf(model, str(root / "src_hf"))
    return dict(root=root, src=src, new=new, tok_dir=tok_dir, ckpt=ckpt)


def _init(setup, method, name=None, fmt="same"):
    from lepjax.vocab import init_embeddings

    out = str(setup["root"] / (name or method))
    if not os.path.exists(out):
        init_embeddings(setup["ckpt"], setup["src"], setup["new"], setup["tok_dir"], out,
                        method=method, corpus=[RU_TRAIN], output_format=fmt, progress=False)
    return out


def _arrays(path):
    from lepjax import models
    from lepjax.models import io

    model, config = models.load(path, dtype="float32")
    p = io.pure_params(model)
    head = io.to_host(p["lm_head"]).T if "lm_head" in p else None
    return io.to_host(p["embed"]), head, config


@pytest.fixture(scope="module")
def source_arrays(mistral_setup):
    return _arrays(mistral_setup["ckpt"])


def test_mean_matches_float64_reference(mistral_setup, source_arrays):
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    E, H, _ = source_arrays
    out = _init(mistral_setup, "mean")
    E2, H2, config = _arrays(out)
    V = 32000
    assert E2.shape == (33024, 64) and H2.shape == (33024, 64) and config.vocab_size == 33024
    # Old rows bit-identical, padding rows zero.
    assert np.array_equal(E2[:V], E) and np.array_equal(H2[:V], H)
    assert not E2[V + K:].any() and not H2[V + K:].any()
    # Reference: sentencepiece itself (no dummy prefix) segments each piece's text mid-text.
    proto = pb.ModelProto()
    proto.ParseFromString(open(mistral_path(), "rb").read())
    proto.normalizer_spec.add_dummy_prefix = False
    sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    new = mistral_setup["new"]
    for t in range(V, V + K):
        ids = sp.encode(new.pieces[t].replace("\u2581", " "))
        assert ids and 0 not in ids
        for mat, ref in ((E2, E), (H2, H)):
            want = ref[ids].astype(np.float64).mean(0)
            np.testing.assert_allclose(mat[t], want.astype(np.float32), rtol=1e-6, atol=1e-7)
    assert not np.allclose(E2[V:V + K], H2[V:V + K])  # each matrix from its own rows


@pytest.mark.parametrize("method", ["merge", "align"])
def test_merge_and_align_are_convex_combinations(method, mistral_setup, source_arrays):
    from lepjax.vocab.embedding_init import plan_rows

    E, H, _ = source_arrays
    out = _init(mistral_setup, method)
    E2, H2, _ = _arrays(out)
    assert np.array_equal(E2[:32000], E) and np.array_equal(H2[:32000], H)
    plan = plan_rows(mistral_setup["src"], mistral_setup["new"], method, [RU_TRAIN],
                     progress=False)
    assert sorted(plan.weights) == list(range(32000, 32000 + K)) and not plan.fallback
    if method == "align":
        assert plan.counts["align"] > 800
    for t, w in plan.weights.items():
        cols = np.fromiter(w.keys(), np.int64)
        vals = np.fromiter(w.values(), np.float64)
        assert np.all(vals > 0) and abs(vals.sum() - 1) < 1e-12 and cols.max() < 32000
        for mat, ref in ((E2, E), (H2, H)):
            np.testing.assert_allclose(mat[t], vals @ ref[cols].astype(np.float64),
                                       rtol=1e-5, atol=1e-6)


def test_merge_weights_follow_the_merges(mistral_setup):
    """A new piece whose every split is two old pieces: the mean over splits of 0.5/0.5."""
    from lepjax.vocab.embedding_init import plan_rows

    src, new = mistral_setup["src"], mistral_setup["new"]
    plan = plan_rows(src, new, "merge", progress=False)
    checked = 0
    for t in range(32000, 32000 + K):
        piece = new.pieces[t]
        splits = [(piece[:i], piece[i:]) for i in range(1, len(piece))
                  if piece[:i] in new.piece_to_id and piece[i:] in new.piece_to_id]
        if not splits or any(new.piece_to_id[a] >= 32000 or new.piece_to_id[b] >= 32000
                             for a, b in splits):
            continue
        want = {}
        for a, b in splits:
            for x in (a, b):
                want[src.piece_to_id[x]] = want.get(src.piece_to_id[x], 0) + 0.5 / len(splits)
        assert plan.weights[t] == pytest.approx(want)
        checked += 1
    assert checked > 100


def test_align_prefers_observed_segmentations(mistral_setup, tmp_path):
    """On a one-sentence corpus, a new piece's weights are exactly its observed source tokens."""
    from lepjax.vocab.embedding_init import plan_rows

    src, new = mistral_setup["src"], mistral_setup["new"]
    text = next(t for t in RU_HELDOUT if any(i >= 32000 for i in new.encode(t)))
    corpus = tmp_path / "one.txt"
    corpus.write_text(text + "\n", encoding="utf-8")
    plan = plan_rows(src, new, "align", [str(corpus)], progress=False)
    ids, offs = new.encode_with_offsets(text)
    sids, soffs = src.encode_with_offsets(text)
    checked = 0
    for t, (s, e) in zip(ids, offs):
        if t < 32000 or ids.count(t) > 1:
            continue
        covered = [i for i, (a, b) in zip(sids, soffs) if a < e and b > s]
        want = {}
        for i in covered:
            want[i] = want.get(i, 0) + 1 / len(covered)
        assert plan.weights[t] == pytest.approx(want)
        checked += 1
    assert checked >= 1


def test_random_matches_source_statistics(mistral_setup, source_arrays):
    E, _, _ = source_arrays
    E2, _, _ = _arrays(_init(mistral_setup, "random"))
    assert np.array_equal(E2[:32000], E)
    real = E[3:].astype(np.float64)  # rows of non-special pieces
    mu, sd = real.mean(0), real.std(0)
    new = E2[32000:32000 + K].astype(np.float64)
    assert np.all(np.abs(new.mean(0) - mu) < 5 * sd / np.sqrt(K))
    assert np.all(np.abs(new.std(0) / sd - 1) < 0.15)


def test_hf_export_gives_source_logits(mistral_setup):
    import torch
    from transformers import AutoModelForCausalLM

    out = _init(mistral_setup, "align", name="align_hf", fmt="hf")
    assert {"config.json", "tokenizer.json", "tokenizer.model"} <= set(os.listdir(out))
    src_t = AutoModelForCausalLM.from_pretrained(mistral_setup["ckpt"], dtype=torch.float32)
    new_t = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert new_t.config.vocab_size == 33024 and new_t.config.vocab_size % 128 == 0
    en = pathlib.Path(RU_TRAIN).parent.joinpath("en_ewt_test.txt").read_text().splitlines()[:4]
    src_tok, new_tok = mistral_setup["src"], mistral_setup["new"]
    for text in en:
        ids = new_tok.encode(text)[:24]
        assert ids == src_tok.encode(text)[:24] and max(ids) < 32000
        x = torch.tensor([[1] + ids])
        with torch.no_grad():
            a = src_t(x).logits.numpy()
            b = new_t(x).logits.numpy()
        assert b.shape[-1] == 33024
        np.testing.assert_allclose(b[..., :32000], a, rtol=1e-5, atol=1e-5)


def test_llama3_mean_and_tied_embeddings(tmp_path):
    """Byte-level Llama 3 vocabulary on a tied model, in lepjax format; reference via tiktoken."""
    import tiktoken

    from lepjax import models
    from lepjax.tokenizer.convert import piece_to_bytes
    from lepjax.vocab import extend, init_embeddings, load_vocab, save_tokenizer

    src = load_vocab(llama3_path())
    new, summary = extend(src, [RU_TRAIN], 200, aux_vocab_size=3000, progress=False)
    tok_dir = save_tokenizer(new, str(tmp_path / "tok"), summary)
    config = models.get_preset("tiny_llama3", vocab_size=128256, hidden_size=32, num_heads=2,
                               num_kv_heads=1, head_dim=16, num_layers=1, intermediate_size=32,
                               tie_word_embeddings=True)
    ckpt = models.save(models.create_model(config, dtype="float32"), str(tmp_path / "src"))
    out = init_embeddings(ckpt, src, new, tok_dir, str(tmp_path / "out"), method="mean",
                          progress=False)
    assert out["tied"] and out["rows"] == 128256 + 256 and out["format"] == "lepjax"
    E, H, _ = _arrays(ckpt)
    E2, H2, _ = _arrays(out["output"])
    assert H is None and H2 is None and np.array_equal(E2[:128256], E)
    ranks = {piece_to_bytes(p): i for i, p in enumerate(src.pieces) if i < 128000}
    enc = tiktoken.Encoding("l3", pat_str=src.pattern, mergeable_ranks=ranks, special_tokens={})
    for t in range(128256, 128256 + 200):
        ids = enc._encode_single_piece(piece_to_bytes(new.pieces[t]))
        want = E[ids].astype(np.float64).mean(0)
        np.testing.assert_allclose(E2[t], want.astype(np.float32), rtol=1e-6, atol=1e-7)


def test_vocab_mismatch_is_a_clear_error(mistral_setup, tmp_path):
    from lepjax import models
    from lepjax.vocab import init_embeddings

    small = models.save(models.create_model(models.get_preset("tiny_mistral")),
                        str(tmp_path / "tiny512"))
    with pytest.raises(ValueError, match=r"vocabulary mismatch.*32000 ids.*tiny512 has 512"):
        init_embeddings(small, mistral_setup["src"], mistral_setup["new"],
                        mistral_setup["tok_dir"], str(tmp_path / "out"), progress=False)
    assert not os.path.exists(tmp_path / "out")
    with pytest.raises(ValueError, match="unknown init method 'nearest'"):
        init_embeddings(mistral_setup["ckpt"], mistral_setup["src"], mistral_setup["new"],
                        mistral_setup["tok_dir"], str(tmp_path / "out"), method="nearest",
                        progress=False)


def test_cli_init_embeddings(mistral_setup, tmp_path):
    import json

    import lepjax.cli.main as cli

    out = tmp_path / "model"
    assert cli.main(["vocab", "init-embeddings", f"--config.tokenizer={mistral_path()}",
                     f"--config.init.checkpoint={mistral_setup['ckpt']}",
                     f"--config.init.tokenizer={mistral_setup['tok_dir']}",
                     "--config.init.method=merge", "--config.init.output_format=lepjax",
                     f"--config.output_dir={out}", "--no-progress"]) == 0
    assert json.load(open(out / "resolved_config.json"))["init"]["method"] == "merge"
    assert (out / "lepjax.json").exists() and (out / "tokenizer.json").exists()


def test_init_embeddings_sees_the_added_tokens_of_a_tokenizer_json(mistral_setup, tmp_path):
    """init.tokenizer = tokenizer.model beside a tokenizer.json with 100 added tokens (32,100
    pieces, as transformers saves them): `lepjax vocab init-embeddings` adds their rows."""
    from conftest import hf_instruct_tokenizer

    import lepjax.cli.main as cli
    from lepjax.tokenizer import load_tokenizer

    added = ("<|im_start|>", "<|im_end|>") + tuple(f"<extra_id_{i}>" for i in range(98))
    tok_dir = hf_instruct_tokenizer(tmp_path / "tok", added=added)
    out = tmp_path / "model"
    assert cli.main(["vocab", "init-embeddings", f"--config.tokenizer={mistral_path()}",
                     f"--config.init.checkpoint={mistral_setup['ckpt']}",
                     f"--config.init.tokenizer={tok_dir}", "--config.init.method=mean",
                     f"--config.output_dir={out}", "--no-progress"]) == 0
    E, H, _ = _arrays(mistral_setup["ckpt"])
    E2, H2, config = _arrays(str(out))
    assert config.vocab_size == 32128 and E2.shape == (32128, 64)
    assert np.array_equal(E2[:32000], E) and np.array_equal(H2[:32000], H)
    # Special added tokens start as the mean of the source rows; padding rows stay zero.
    np.testing.assert_allclose(E2[32000:32100], np.broadcast_to(
        E[3:].astype(np.float64).mean(0), (100, 64)), rtol=1e-5, atol=1e-6)
    assert not E2[32100:].any()
    tok = load_tokenizer(str(out))
    assert tok.vocab_size == 32100 and tok.pieces[32000:32002] == list(added[:2])
