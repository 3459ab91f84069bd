"""LEP propagation: identity and known-matrix recovery, swap, carried-over instruct tokens, export."""

import dataclasses
import json
import os
import shutil

import mistral_common
import numpy as np
import pytest

from lepjax import models
from lepjax.cli.main import main
from lepjax.lep import solve
from lepjax.lep.propagate import propagate
from lepjax.models import io

HERE = os.path.dirname(os.path.abspath(__file__))
MISTRAL_SP = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")
ADDED = ["<|im_start|>", "<|im_end|>"]
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def with_rows(model, embed=None, lm_head=None):
    params = io.pure_params(model)
    config = model.config.replace(vocab_size=(embed if embed is not None
                                              else np.asarray(params["embed"])).shape[0])

    def make(path, struct, sharding):
        import jax

        if path == ("embed",) and embed is not None:
            return jax.device_put(embed.astype(np.float32), sharding)
        if path == ("lm_head",) and lm_head is not None:
            return jax.device_put(lm_head.astype(np.float32), sharding)
        node = params
        for k in path:
            node = node[k]
        return jax.device_put(np.asarray(node), sharding)

    return io.build_from_arrays(config, make)


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("lep")
    rng = np.random.default_rng(0)
    base = models.create_model(models.get_preset("tiny_mistral", vocab_size=32000), seed=0,
                               dtype="float32")
    b_dir = models.save_hf(base, str(root / "B"))
    shutil.copy(MISTRAL_SP, os.path.join(b_dir, "tokenizer.model"))
    # D: vocabulary extended from Russian text, embeddings initialised, then "trained" (perturbed).
    corpus = os.path.join(HERE, "fixtures", "ru_gsd_dev.txt")
    assert main(["vocab", "extend", "--no-progress", f"--config.tokenizer={b_dir}",
                 f"--config.corpus={corpus}", f"--config.output_dir={root / 'tokD'}",
                 "--config.extend.k=300"]) == 0
    assert main(["vocab", "init-embeddings", "--no-progress", f"--config.tokenizer={b_dir}",
                 f"--config.init.checkpoint={b_dir}", f"--config.init.tokenizer={root / 'tokD'}",
                 "--config.init.method=mean", f"--config.corpus={corpus}",
                 f"--config.output_dir={root / 'D0'}"]) == 0
    d0, _ = models.load(str(root / "D0"), param_dtype="float32")
    p = io.pure_params(d0)
    e_d = np.asarray(p["embed"]) + 0.01 * rng.normal(size=p["embed"].shape)
    h_d = np.asarray(p["lm_head"]) + 0.01 * rng.normal(size=p["lm_head"].shape)
    d_dir = models.save_hf(with_rows(d0, e_d, h_d), str(root / "D"),
                           tokenizer_from=str(root / "tokD"))
    # I: B's embeddings times known invertible matrices, plus two added chat tokens.
    d = base.config.hidden_size
    m_in = np.eye(d) + 0.1 * rng.normal(size=(d, d))
    m_out = np.eye(d) + 0.1 * rng.normal(size=(d, d))
    pb = io.pure_params(base)
    e_b, h_b = np.asarray(pb["embed"], np.float64), np.asarray(pb["lm_head"], np.float64).T
    e_i = np.concatenate([e_b @ m_in, rng.normal(size=(128, d)) * 0.02])
    h_i = np.concatenate([h_b @ m_out, rng.normal(size=(128, d)) * 0.02])
    inst = with_rows(base, e_i, np.ascontiguousarray(h_i.T))
    i_dir = models.save_hf(inst, str(root / "I"))
    from lepjax.vocab.tokenizer import load_vocab
    from lepjax.vocab.writer import write_tokenizer_files

    tok_b = load_vocab(b_dir)
    tok_i = dataclasses.replace(tok_b, pieces=tok_b.pieces + ADDED, sp_proto=None,
                                special={**tok_b.special, 32000: ADDED[0], 32001: ADDED[1]})
    write_tokenizer_files(tok_i, i_dir)
    cfg_path = os.path.join(i_dir, "tokenizer_config.json")
    cfg = json.load(open(cfg_path))
    cfg["chat_template"] = TEMPLATE
    json.dump(cfg, open(cfg_path, "w"))
    return {"root": root, "B": b_dir, "I": i_dir, "D": d_dir, "m_in": m_in, "m_out": m_out,
            "e_d": e_d, "h_d": h_d, "e_i": e_i, "h_i": h_i}


def rows(path):
    model, _ = models.load(path, param_dtype="float32")
    p = io.pure_params(model)
    return np.asarray(p["embed"]), np.asarray(p["lm_head"]).T


@pytest.mark.parametrize("method", ["conversion", "overlap"])
def test_instruct_equal_to_base_gives_identity_and_the_donor(family, tmp_path, method):
    out = propagate(family["B"], family["B"], family["D"], str(tmp_path / "o"), method=method)
    assert max(out["residuals"].values()) < 1e-6
    e, h = rows(out["output"])
    from lepjax.vocab.tokenizer import load_vocab

    tok_d = load_vocab(family["D"])
    learnt = np.array([i for i in range(tok_d.vocab_size) if i not in tok_d.special])
    assert np.abs(e[learnt] - family["e_d"][learnt]).max() <= 1e-5
    assert np.abs(h[learnt] - family["h_d"].T[learnt]).max() <= 1e-5
    # Special tokens keep the instruct model's rows (here B's own).
    b_e, _ = rows(family["B"])
    for i in tok_d.special:
        np.testing.assert_array_equal(e[i], b_e[i])


def test_conversion_recovers_a_known_matrix_and_swap_keeps_donor_rows(family, tmp_path):
    from lepjax.vocab.tokenizer import load_vocab

    vd = load_vocab(family["D"]).vocab_size
    out = propagate(family["B"], family["I"], family["D"], str(tmp_path / "conv"))
    e, h = rows(out["output"])
    special = set(load_vocab(family["D"]).special)
    learnt = np.array([i for i in range(vd) if i not in special])
    np.testing.assert_allclose(e[learnt], (family["e_d"][learnt].astype(np.float64)
                                           @ family["m_in"]), atol=1e-5)
    np.testing.assert_allclose(h[learnt], (family["h_d"].T[learnt].astype(np.float64)
                                           @ family["m_out"]), atol=1e-5)
    # The fitted W itself is M (checked on the solver directly).
    b_e, _ = rows(family["B"])
    w, res = solve.fit("conversion", b_e[:32000], b_e[:32000] @ family["m_in"],
                       to_new=lambda x: x[:2000])
    np.testing.assert_allclose(w, family["m_in"], atol=1e-5)
    swap = propagate(family["B"], family["I"], family["D"], str(tmp_path / "swap"), method="swap")
    e_s, _ = rows(swap["output"])
    np.testing.assert_array_equal(e_s[learnt], family["e_d"][learnt].astype(np.float32))


def test_instruct_tokens_and_chat_template_survive(family, tmp_path):
    from lepjax.vocab.tokenizer import load_vocab

    inst = str(tmp_path / "I")  # I ends turns with its added <|im_end|> as well as </s>
    shutil.copytree(family["I"], inst)
    with open(os.path.join(inst, "config.json")) as f:
        cfg = json.load(f)
    cfg["eos_token_id"] = [2, 32001]
    with open(os.path.join(inst, "config.json"), "w") as f:
        json.dump(cfg, f)
    out = propagate(family["B"], inst, family["D"], str(tmp_path / "o"))
    assert out["added_from_instruct"] == ADDED
    tok = load_vocab(out["output"])
    vd = load_vocab(family["D"]).vocab_size
    assert tok.pieces[vd:vd + 2] == ADDED
    mc = models.load(out["output"], param_dtype="float32")[1]
    assert mc.eos_token_id == (2, vd + 1) and mc.bos_token_id == 1  # ids in the new vocabulary
    e, h = rows(out["output"])
    np.testing.assert_allclose(e[vd:vd + 2], family["e_i"][32000:32002], atol=1e-7)
    np.testing.assert_allclose(h[vd:vd + 2], family["h_i"][32000:32002], atol=1e-7)
    with open(os.path.join(out["output"], "tokenizer_config.json")) as f:
        assert json.load(f)["chat_template"] == TEMPLATE
    from tokenizers import Tokenizer

    t = Tokenizer.from_file(os.path.join(out["output"], "tokenizer.json"))
    assert t.encode("<|im_start|>user", add_special_tokens=False).ids[0] == vd


def test_instruct_saved_by_transformers_keeps_its_chat_tokens_and_eos(family, tmp_path):
    """I as Hugging Face tools save it (OpenChat-3.5): tokenizer.model beside a tokenizer.json
    holding the added <|im_start|>/<|im_end|>, <|im_end|> the EOS, through `lepjax propagate`."""
    from conftest import CHAT_TEMPLATE, hf_instruct_tokenizer

    from lepjax.tokenizer import load_tokenizer

    inst = tmp_path / "I"
    inst.mkdir()
    for name in os.listdir(family["I"]):  # the weights, none of lepjax's tokenizer files
        if not name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(os.path.join(family["I"], name), inst / name)
    cfg = json.load(open(inst / "config.json"))
    cfg["eos_token_id"] = 32001  # <|im_end|>
    json.dump(cfg, open(inst / "config.json", "w"))
    hf_instruct_tokenizer(inst)
    assert {"tokenizer.model", "tokenizer.json"} <= set(os.listdir(inst))
    out = tmp_path / "o"
    assert main(["propagate", f"--config.base={family['B']}", f"--config.instruct={inst}",
                 f"--config.donor={family['D']}", f"--config.output_dir={out}"]) == 0
    vd = load_tokenizer(family["D"]).vocab_size
    tok = load_tokenizer(str(out))
    assert tok.pieces[vd:vd + 2] == ADDED and tok.vocab_size == vd + 2
    assert tok.eos == "<|im_end|>" and tok.eos_id == vd + 1 and tok.bos_id == 1
    assert tok.chat_template == CHAT_TEMPLATE
    assert tok.encode("<|im_start|>user\nПривет<|im_end|>")[0] == vd
    mc = models.load(str(out), param_dtype="float32")[1]
    assert mc.eos_token_id == vd + 1 and mc.bos_token_id == 1
    e, h = rows(str(out))
    np.testing.assert_allclose(e[vd:vd + 2], family["e_i"][32000:32002], atol=1e-7)
    np.testing.assert_allclose(h[vd:vd + 2], family["h_i"][32000:32002], atol=1e-7)


def test_exported_model_loads_in_transformers_with_the_same_logits(family, tmp_path):
    from conftest import hf_logits
    from transformers import AutoModelForCausalLM

    out = propagate(family["B"], family["I"], family["D"], str(tmp_path / "hf"), output_format="hf")
    hf = AutoModelForCausalLM.from_pretrained(out["output"]).eval()
    model, _ = models.load(out["output"], dtype="float32")
    tokens = np.random.default_rng(1).integers(0, 32300, (2, 12))
    np.testing.assert_allclose(hf_logits(hf, tokens), np.asarray(model(tokens)), atol=1e-4)


def test_propagate_cli(family, tmp_path):
    out = tmp_path / "cli"
    assert main(["propagate", f"--config.base={family['B']}", f"--config.instruct={family['I']}",
                 f"--config.donor={family['D']}", f"--config.output_dir={out}",
                 "--config.method=overlap"]) == 0
    assert models.detect_format(str(out)) == "lepjax"
    assert json.load(open(out / "resolved_config.json"))["method"] == "overlap"
    assert main(["propagate", f"--config.base={family['B']}"]) == 1  # names the missing keys
