"""KV-cache decoding against transformers' generate, sampling controls, EOS and stop strings,
attention kernels, padding rows, and one compiled program for every sampling setting."""

import mistral_common
import numpy as np
import os
import pytest
import torch
from conftest import make_hf_model

from lepjax import models
from lepjax.generate import Generator, SamplingParams, sample

MISTRAL_SP = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")


def hf_greedy(hf, prompts, n):
    P = max(map(len, prompts))
    ids = torch.zeros((len(prompts), P), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, P - len(p):] = torch.tensor(p)
        mask[r, P - len(p):] = 1
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                          eos_token_id=None, pad_token_id=0)
    return out[:, P:].tolist()


@pytest.fixture(scope="module", params=["llama3_1", "mistral", "tied"])
def pair(request, tmp_path_factory):
    hf = make_hf_model(request.param)
    path = str(tmp_path_factory.mktemp("gen") / request.param)
    hf.save_pretrained(path)
    model, _ = models.load(path, dtype="float32")
    return hf, model


def test_greedy_matches_transformers_with_padding(pair):
    hf, model = pair
    prompts = [list(np.random.default_rng(i).integers(3, 256, n)) for i, n in enumerate([5, 11, 8])]
    out = Generator(model, batch_size=4, length_bucket=8).generate(
        prompts, SamplingParams(max_new_tokens=12))
    assert [c.tokens for c in out] == hf_greedy(hf, prompts, 12)


def test_greedy_matches_transformers_without_padding(pair):
    hf, model = pair
    prompt = list(np.random.default_rng(7).integers(3, 256, 16))
    out = Generator(model, batch_size=1, length_bucket=16).generate(
        [prompt], SamplingParams(max_new_tokens=10))
    assert out[0].tokens == hf_greedy(hf, [prompt], 10)[0]


def test_eos_and_sampling_controls(pair):
    _, model = pair
    gen = Generator(model, batch_size=2, length_bucket=8)
    prompt = [5, 6, 7, 8]
    greedy = gen.generate([prompt], SamplingParams(max_new_tokens=8))[0]
    assert greedy.finish_reason == "length" and len(greedy.tokens) == 8
    eos = greedy.tokens[3]
    stopped = gen.generate([prompt], SamplingParams(max_new_tokens=8, eos_ids=(eos,)))[0]
    assert stopped.finish_reason == "eos"
    assert stopped.tokens == greedy.tokens[: greedy.tokens.index(eos)]
    hot = SamplingParams(max_new_tokens=8, temperature=1.0, seed=3)
    a, b = (gen.generate([prompt, prompt], hot) for _ in range(2))
    assert [c.tokens for c in a] == [c.tokens for c in b]  # seeded
    top1 = SamplingParams(max_new_tokens=8, temperature=1.0, top_k=1, seed=4)
    assert gen.generate([prompt], top1)[0].tokens == greedy.tokens
    tiny_p = SamplingParams(max_new_tokens=8, temperature=1.0, top_p=1e-6, seed=5)
    assert gen.generate([prompt], tiny_p)[0].tokens == greedy.tokens


def test_top_k_and_top_p_truncate():
    import jax

    logits = jax.numpy.log(jax.numpy.asarray([[0.5, 0.3, 0.15, 0.05]]))
    keys = jax.random.split(jax.random.PRNGKey(0), 200)
    draws = lambda **kw: {int(sample(logits, k, 1.0, **kw)[0]) for k in keys}  # noqa: E731
    assert draws(top_k=2, top_p=1.0) == {0, 1}
    assert draws(top_k=0, top_p=0.7) == {0, 1}  # 0.5 < 0.7 <= 0.8
    assert draws(top_k=0, top_p=1.0) == {0, 1, 2, 3}


def test_stop_strings_cut_the_text():
    from lepjax.tokenizer import load_tokenizer

    tok = load_tokenizer(MISTRAL_SP)
    model = models.create_model(models.get_preset("tiny_mistral", vocab_size=32000), seed=1,
                                dtype="float32")
    gen = Generator(model, batch_size=1, length_bucket=8)
    prompt = tok.encode("Привет, мир")
    full = gen.generate([prompt], SamplingParams(max_new_tokens=6), tokenizer=tok)[0]
    stop = tok.decode(full.tokens[3:5])
    assert stop.strip()
    cut = gen.generate([prompt], SamplingParams(max_new_tokens=6, stop=(stop,)), tokenizer=tok)[0]
    assert cut.finish_reason == "stop"
    assert stop not in cut.text and full.text.startswith(cut.text)


def test_generate_cli_writes_completions(tmp_path):
    import json
    import shutil

    from lepjax.cli.main import main

    model = models.create_model(models.get_preset("tiny_mistral", vocab_size=32000), seed=2,
                                dtype="float32")
    path = models.save_hf(model, str(tmp_path / "m"))
    shutil.copy(MISTRAL_SP, os.path.join(path, "tokenizer.model"))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}, ensure_ascii=False)
                                 for p in ["Привет", "Как дела?", "Москва"]), encoding="utf-8")
    out = tmp_path / "out" / "c.jsonl"
    assert main(["generate", f"--config.model.path={path}", f"--config.prompts={prompts}",
                 f"--config.output={out}", "--config.max_new_tokens=5",
                 "--config.model.dtype=float32", "--config.length_bucket=8"]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["prompt"] for r in rows] == ["Привет", "Как дела?", "Москва"]
    assert all(0 < len(r["tokens"]) <= 5 or r["finish_reason"] == "eos" for r in rows)
    assert (tmp_path / "out" / "resolved_config.json").exists()


@pytest.mark.parametrize("shape", [{"fsdp": 8}, {"data": 2, "fsdp": 2, "tensor": 2}])
def test_greedy_decoding_sharded_over_the_mesh_matches_transformers(tmp_path, shape):
    """A teacher whose weights are split over 8 devices decodes the same tokens as one device."""
    from lepjax import parallel

    hf = make_hf_model("llama3_1", vocab_size=512, num_attention_heads=8, num_key_value_heads=4,
                       head_dim=8)
    hf.save_pretrained(tmp_path)
    mesh = parallel.make_mesh(shape)
    model, _ = models.load(str(tmp_path), mesh=mesh, dtype="float32")
    embed = model.embed[...]
    assert len(embed.sharding.device_set) == 8 and not embed.sharding.is_fully_replicated
    prompts = [list(np.random.default_rng(i).integers(3, 512, n)) for i, n in enumerate([6, 13])]
    out = Generator(model, mesh=mesh, batch_size=2, length_bucket=8).generate(
        prompts, SamplingParams(max_new_tokens=10))
    assert [c.tokens for c in out] == hf_greedy(hf, prompts, 10)


def test_device_steps_between_host_syncs_do_not_change_the_tokens(tmp_path):
    """Steps run in an on-device scan (steps_per_sync) give the per-step loop's tokens, greedy
    and sampled alike, and EOS / max_new_tokens cut at the same place."""
    hf = make_hf_model("llama3_1")
    hf.save_pretrained(tmp_path)
    model, _ = models.load(str(tmp_path), dtype="float32")
    prompts = [list(np.random.default_rng(i).integers(3, 256, n)) for i, n in enumerate([4, 9, 7])]
    greedy = SamplingParams(max_new_tokens=11)
    ref = Generator(model, batch_size=4, length_bucket=8, steps_per_sync=1).generate(prompts, greedy)
    assert [c.tokens for c in ref] == hf_greedy(hf, prompts, 11)
    eos = SamplingParams(max_new_tokens=11, eos_ids=(ref[1].tokens[4],))
    sampled = SamplingParams(max_new_tokens=11, temperature=1.0, top_k=20, seed=3)
    for params in (greedy, eos, sampled):
        want = Generator(model, batch_size=4, length_bucket=8, steps_per_sync=1).generate(
            prompts, params)
        for k in (3,):
            got = Generator(model, batch_size=4, length_bucket=8, steps_per_sync=k).generate(
                prompts, params)
            assert [(c.tokens, c.finish_reason) for c in got] == \
                [(c.tokens, c.finish_reason) for c in want]
    assert want[1].finish_reason == "length"
    got = Generator(model, batch_size=4, length_bucket=8).generate(prompts, eos)
    assert got[1].finish_reason == "eos" and len(got[1].tokens) <= 4


def negative_logits_model(vocab_limit: int, rows: int = 256):
    """A model whose logits are -3.2 on every real id (< vocab_limit) and exactly 0 on the
    zero padding rows: every layer is zeroed, so the hidden state is the (constant) embedding."""
    import jax.numpy as jnp
    from flax import nnx

    model = models.create_model(models.get_preset("tiny_llama3", vocab_size=rows), seed=0,
                                dtype="float32")
    state = nnx.state(model, nnx.Param)
    for path, v in nnx.to_flat_state(state):
        if path[0] == "layers" and "norm" not in path[-2]:
            v.set_value(jnp.zeros_like(v.get_value()))
    model.embed.set_value(jnp.ones_like(model.embed[...]).at[vocab_limit:].set(0.0))
    model.final_norm.scale.set_value(jnp.ones_like(model.final_norm.scale[...]))
    model.lm_head.set_value(jnp.full_like(model.lm_head[...], -0.05).at[:, vocab_limit:].set(0.0))
    return model


def test_padding_rows_are_never_generated():
    model = negative_logits_model(vocab_limit=200)
    prompts = [[5, 6, 7], [9, 8]]
    plain = Generator(model, batch_size=2, length_bucket=8).generate(
        prompts, SamplingParams(max_new_tokens=4))
    assert all(c.tokens[0] >= 200 for c in plain)  # unmasked, a zero padding row wins
    gen = Generator(model, batch_size=2, length_bucket=8, vocab_limit=200)
    for params in (SamplingParams(max_new_tokens=6),
                   SamplingParams(max_new_tokens=6, temperature=2.0, seed=1),
                   SamplingParams(max_new_tokens=6, temperature=1.0, top_p=0.5, seed=2)):
        out = gen.generate(prompts, params)
        assert all(0 <= t < 200 for c in out for t in c.tokens), params
    with pytest.raises(ValueError, match="vocab_limit=300"):
        Generator(model, vocab_limit=300)


def test_sampling_settings_compile_nothing_new(pair):
    _, model = pair
    gen = Generator(model, batch_size=2, length_bucket=8, steps_per_sync=4)
    prompt = [5, 6, 7, 8]
    gen.generate([prompt], SamplingParams(max_new_tokens=9, temperature=0.7, seed=1))
    compiled = gen.compiled_programs()
    for kw in (dict(temperature=1.3, top_k=5), dict(temperature=0.0),
               dict(temperature=0.9, top_p=0.8, top_k=0, seed=4)):
        gen.generate([prompt], SamplingParams(max_new_tokens=9, **kw))
    assert gen.compiled_programs() == compiled


def test_decode_kernel_choice_is_honoured_or_refused():
    from lepjax.models.attention import decode_kernels

    kw = dict(length_bucket=64, head_dim=64)
    assert decode_kernels("auto", "float32", platform="cpu", **kw) == {"prefill": "xla",
                                                                        "step": "xla"}
    assert decode_kernels("auto", "bfloat16", platform="gpu", **kw) == {"prefill": "cudnn",
                                                                         "step": "cudnn"}
    assert decode_kernels("cudnn", "bfloat16", platform="gpu", **kw)["step"] == "cudnn"
    assert decode_kernels("auto", "bfloat16", platform="tpu", **kw)["prefill"] == "xla"
    assert decode_kernels("auto", "bfloat16", platform="tpu", length_bucket=128,
                          head_dim=64) == {"prefill": "splash", "step": "xla"}
    for args, words in [(("cudnn", "bfloat16", "cpu", 64, 64), "needs an NVIDIA GPU"),
                        (("cudnn", "float32", "gpu", 64, 64), "bfloat16 or float16"),
                        (("cudnn", "bfloat16", "gpu", 64, 12), "multiple of 8"),
                        (("splash", "bfloat16", "tpu", 64, 64), "length_bucket=64")]:
        attention, dtype, platform, bucket, hd = args
        with pytest.raises(ValueError, match=words):
            decode_kernels(attention, dtype, platform=platform, length_bucket=bucket,
                           head_dim=hd)
    # The model's compute setting reaches the generator: cudnn on CPU is refused, not ignored.
    model = models.create_model(models.get_preset("tiny_llama3"), attention="cudnn",
                                dtype="bfloat16")
    with pytest.raises(ValueError, match="attention='cudnn' needs an NVIDIA GPU"):
        Generator(model)


def test_splash_prefill_gives_the_xla_tokens(tmp_path):
    """attention=splash prefills with the splash kernel (Pallas interpret mode on CPU) and
    decodes the same greedy tokens as xla; sliding windows and left padding included."""
    hf = make_hf_model("mistral")
    hf.save_pretrained(tmp_path)
    xla, _ = models.load(str(tmp_path), dtype="float32", attention="xla")
    splash, _ = models.load(str(tmp_path), dtype="float32", attention="splash")
    prompts = [list(np.random.default_rng(i).integers(3, 256, n)) for i, n in enumerate([5, 9])]
    params = SamplingParams(max_new_tokens=5)
    gen = Generator(splash, batch_size=2, length_bucket=128)
    assert gen.kernels == {"prefill": "splash", "step": "xla"}
    want = Generator(xla, batch_size=2, length_bucket=128).generate(prompts, params)
    assert [c.tokens for c in gen.generate(prompts, params)] == [c.tokens for c in want]
    assert [c.tokens for c in want] == hf_greedy(hf, prompts, 5)


def test_generate_refuses_an_attention_kernel_it_cannot_run_before_reading_weights(tmp_path,
                                                                                   capsys):
    import shutil

    from lepjax.cli.main import main

    path = models.save(models.create_model(models.get_preset("tiny_mistral", vocab_size=32000)),
                       str(tmp_path / "m"))
    shutil.copy(MISTRAL_SP, os.path.join(path, "tokenizer.model"))
    shutil.rmtree(os.path.join(path, "params"))  # reading any weight would fail differently
    prompts = tmp_path / "p.txt"
    prompts.write_text("Привет\n", encoding="utf-8")
    assert main(["generate", f"--config.model.path={path}", f"--config.prompts={prompts}",
                 f"--config.output={tmp_path / 'o.jsonl'}", "--config.model.attention=cudnn",
                 "--config.model.dtype=bfloat16"]) == 1
    assert "attention='cudnn' needs an NVIDIA GPU" in capsys.readouterr().err
    assert main(["generate", f"--config.model.path={path}", f"--config.prompts={prompts}",
                 f"--config.output={tmp_path / 'o.jsonl'}", "--config.model.attention=cudn"]) == 1
    assert "'cudnn'" in capsys.readouterr().err  # did-you-mean, from the config check
