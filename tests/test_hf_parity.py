"""lepjax logits against transformers' PyTorch Llama/Mistral on the same weights (float32)."""

import numpy as np
from flax import nnx
import pytest
from conftest import HF_CASES, hf_logits, make_hf_model, random_tokens

from lepjax import models

TOL = 1e-4


@pytest.mark.parametrize("case", sorted(HF_CASES))
def test_logits_match_transformers(hf_dir, case):
    path, hf = hf_dir(case)
    model, config = models.load(path, dtype="float32")
    tokens = random_tokens(2, 24)
    ref = hf_logits(hf, tokens)
    ours = np.asarray(model(tokens))
    assert ours.shape == ref.shape == (2, 24, 256)
    assert np.abs(ours - ref).max() <= TOL
    # The reference is sensitive enough for the check to mean something.
    assert np.abs(ref).mean() > 0.1


def test_case_features_matter(hf_dir):
    """Each case's distinguishing feature changes the logits, so the parity above covers it."""
    tokens = random_tokens(1, 24)
    for case, feature in [("llama3_1", dict(rope_scaling=None)),
                          ("mistral", dict(sliding_window=None)),
                          ("llama3_1", dict(rope_theta=10000.0))]:
        path, _ = hf_dir(case)
        with_feature, _ = models.load(path, dtype="float32")
        # The same weights under the architecture without the feature.
        graphdef, _ = models.io.abstract_model(with_feature.config.replace(**feature),
                                               with_feature.compute)
        without = nnx.merge(graphdef, nnx.state(with_feature))
        diff = np.abs(np.asarray(with_feature(tokens)) - np.asarray(without(tokens))).max()
        assert diff > 1e-3, (case, feature)


def test_config_from_hf_reads_architecture(hf_dir):
    path, _ = hf_dir("llama3_1")
    c = models.ModelConfig.from_hf(path)
    assert (c.num_heads, c.num_kv_heads, c.head_dim, c.rope_theta) == (4, 2, 16, 500000.0)
    assert c.rope_scaling == models.RopeScaling(8.0, 1.0, 4.0, 16)
    m = models.ModelConfig.from_hf(hf_dir("mistral")[0])
    assert m.architecture == "mistral" and m.sliding_window == 5
    assert models.ModelConfig.from_hf(hf_dir("tied")[0]).tie_word_embeddings


@pytest.mark.parametrize("case", ["llama3_1", "mistral"])
def test_packed_row_equals_documents_alone(hf_dir, case):
    """Two documents packed in one row give, per document, the logits they give alone."""
    path, _ = hf_dir(case)
    model, _ = models.load(path, dtype="float32")
    a, b = random_tokens(1, 9, seed=1)[0], random_tokens(1, 14, seed=2)[0]
    packed = np.concatenate([a, b])[None]
    segment_ids = np.array([[1] * len(a) + [2] * len(b)])
    positions = np.array([list(range(len(a))) + list(range(len(b)))])
    out = np.asarray(model(packed, segment_ids=segment_ids, positions=positions))[0]
    alone_a = np.asarray(model(a[None]))[0]
    alone_b = np.asarray(model(b[None]))[0]
    assert np.abs(out[: len(a)] - alone_a).max() <= 1e-5
    assert np.abs(out[len(a):] - alone_b).max() <= 1e-5
    # Without segment ids the second document would see the first: the mask matters.
    leaky = np.asarray(model(packed, positions=positions))[0]
    assert np.abs(leaky[len(a):] - alone_b).max() > 1e-3


def test_bf16_and_fp16_checkpoints_load_exactly(hf_dir):
    for dtype in ("bfloat16", "float16"):
        path, hf = hf_dir("llama2", dtype=dtype)
        model, config = models.load(path, param_dtype="float32", dtype="float32")
        assert config.checkpoint_dtype == dtype
        ref = hf.model.layers[1].self_attn.q_proj.weight.detach().float().numpy()
        ours = np.asarray(model.layers.attn.q[...][1])  # [D, H, hd]
        np.testing.assert_array_equal(ours.transpose(1, 2, 0).reshape(ref.shape), ref)


def test_model_weights_on_random_init_are_not_hf_ones():
    """Sanity: a random lepjax model differs from a HF one (the parity test is not vacuous)."""
    hf = make_hf_model("llama2")
    model = models.create_model(models.get_preset("tiny_llama2", vocab_size=256,
                                                  intermediate_size=96, head_dim=16),
                                dtype="float32")
    tokens = random_tokens(1, 8)
    assert np.abs(np.asarray(model(tokens)) - hf_logits(hf, tokens)).max() > 1e-2
