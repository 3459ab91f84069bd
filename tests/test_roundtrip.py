"""HF -> lepjax -> HF round trips: bit-identical tensors, loadable by transformers, same logits."""

import json
import os

import numpy as np
import pytest
from conftest import hf_logits, random_tokens

from lepjax import models
from lepjax.cli.main import main
from lepjax.models.safetensors_io import open_tensors


def read_all(path):
    out = {}
    for f in sorted(os.listdir(path)):
        if f.endswith(".safetensors"):
            out.update({k: np.asarray(v) for k, v in open_tensors(os.path.join(path, f)).items()})
    return out


def reference_tensors(hf):
    import torch

    return {k: v.detach().to(torch.float32).numpy() for k, v in hf.state_dict().items()
            if not (k == "lm_head.weight" and hf.config.tie_word_embeddings)}


@pytest.mark.parametrize("case,dtype", [("llama3_1", None), ("mistral", "bfloat16"),
                                        ("tied", None)])
def test_hf_lepjax_hf_is_bit_identical(hf_dir, tmp_path, case, dtype):
    from transformers import AutoModelForCausalLM

    src, _ = hf_dir(case, dtype=dtype)
    # Reference: transformers' own load of the source directory (a model cast with .to(bf16)
    # would also have rounded its rotary buffers).
    hf = AutoModelForCausalLM.from_pretrained(src).eval().float()
    lep = str(tmp_path / "lep")
    out = str(tmp_path / "out")
    assert main(["convert", src, lep]) == 0
    assert models.detect_format(lep) == "lepjax"
    assert main(["convert", lep, out]) == 0
    original, exported = read_all(src), read_all(out)
    assert sorted(original) == sorted(exported)
    for name, t in original.items():
        assert exported[name].dtype == t.dtype, name
        np.testing.assert_array_equal(exported[name].view(np.uint8), t.view(np.uint8), err_msg=name)
    # The exported directory loads in transformers and gives the original logits.
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    tokens = random_tokens(2, 12)
    ref = hf_logits(hf, tokens)
    np.testing.assert_allclose(hf_logits(reloaded.float(), tokens), ref, atol=1e-5)
    # ...and so does lepjax from either directory.
    for path in (lep, out):
        model, _ = models.load(path, dtype="float32")
        assert np.abs(np.asarray(model(tokens)) - ref).max() <= 1e-4
    with open(os.path.join(lep, "resolved_config.json")) as f:
        assert json.load(f)["command"] == {"verb": "convert", "src": src, "dst": lep,
                                           "overwrite": False}


def test_sharded_export_with_index_loads_in_transformers(hf_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    src, hf = hf_dir("llama2")
    model, _ = models.load(src, dtype="float32")
    out = models.save_hf(model, str(tmp_path / "sharded"), max_shard_bytes=100_000)
    files = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
    assert len(files) > 2
    with open(os.path.join(out, "model.safetensors.index.json")) as f:
        index = json.load(f)
    assert set(index["weight_map"].values()) == set(files)
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    tokens = random_tokens(1, 10)
    np.testing.assert_allclose(hf_logits(reloaded, tokens), hf_logits(hf, tokens), atol=1e-5)
    # And lepjax reads the sharded directory back to the same weights.
    again, _ = models.load(out, dtype="float32")
    import jax

    for a, b in zip(jax.tree.leaves(models.io.pure_params(model)),
                    jax.tree.leaves(models.io.pure_params(again))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_export_refuses_to_overwrite(hf_dir, tmp_path):
    src, _ = hf_dir("llama2")
    dst = tmp_path / "taken"
    dst.mkdir()
    (dst / "keep.txt").write_text("precious")
    assert main(["convert", src, str(dst)]) == 1
    assert (dst / "keep.txt").read_text() == "precious"


def test_tokenizer_files_travel_with_the_weights(hf_dir, tmp_path):
    src, _ = hf_dir("llama2")
    with open(os.path.join(src, "tokenizer_config.json"), "w") as f:
        json.dump({"model_max_length": 128}, f)
    lep, out = str(tmp_path / "lep"), str(tmp_path / "out")
    assert main(["convert", src, lep]) == 0 and main(["convert", lep, out, "--to", "hf"]) == 0
    assert os.path.isfile(os.path.join(out, "tokenizer_config.json"))


def test_compute_settings_are_not_stored_with_the_model(tmp_path):
    """A model trained with attention=splash, dtype=float32 yields a directory that stores the
    architecture only: loaded without overrides it runs the platform's kernel (xla on CPU) on a
    length splash refuses (not a multiple of 128)."""
    splash = models.create_model(models.get_preset("tiny_llama3"), seed=0, attention="splash",
                                 dtype="float32", remat_policy="none")
    lep = models.save(splash, str(tmp_path / "lep"))
    hf = models.save_hf(splash, str(tmp_path / "hf"))
    with open(os.path.join(lep, "lepjax.json")) as f:
        stored = json.load(f)["model"]
    assert not {"dtype", "param_dtype", "attention", "remat_policy"} & set(stored)
    tokens = random_tokens(1, 40, vocab=512)
    ref = np.asarray(models.create_model(models.get_preset("tiny_llama3"), seed=0,
                                         attention="xla", dtype="float32")(tokens))
    for path in (lep, hf):
        model, _ = models.load(path)
        assert model.compute == models.Compute()
        assert models.attention.resolve_implementation(model.compute.attention,
                                                       model.compute.dtype) == "xla"
        model, _ = models.load(path, dtype="float32")
        np.testing.assert_allclose(np.asarray(model(tokens)), ref, atol=1e-5)


def test_model_directory_with_stored_compute_settings_runs_with_the_callers(tmp_path):
    """lepjax.json files written when compute settings were stored (attention=splash) load with
    the loading command's settings; a compute key as an architecture override is refused."""
    path = models.save(models.create_model(models.get_preset("tiny_llama3")), str(tmp_path / "m"))
    meta_path = os.path.join(path, "lepjax.json")
    with open(meta_path) as f:
        meta = json.load(f)
    meta["model"].update(dtype="float32", param_dtype="float32", attention="splash",
                         remat_policy="dots")
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    model, _ = models.load(path, remat_policy="none")
    assert model.compute == models.Compute(remat_policy="none")
    model(random_tokens(1, 40, vocab=512))  # splash would refuse a length of 40
    with pytest.raises(ValueError, match="compute settings, not architecture"):
        models.get_preset("tiny_llama3", attention="xla")
    with pytest.raises(ValueError, match="not compute settings"):
        models.load(path, vocab_size=8)


def test_validate_compute_names_the_key_and_the_closest_value():
    from ml_collections import ConfigDict

    from lepjax.config import ConfigError

    ok = models.validate_compute(ConfigDict(dict(path="", dtype="float32", attention="splash")))
    assert ok == models.Compute(dtype="float32", attention="splash")
    for key, bad, close in [("attention", "cudn", "cudnn"), ("dtype", "bfloat61", "bfloat16"),
                            ("remat_policy", "dot", "dots"), ("param_dtype", "flaot32", "float32")]:
        with pytest.raises(ConfigError, match=f"model.{key}='{bad}'.*'{close}'"):
            models.validate_compute(ConfigDict({key: bad}))
