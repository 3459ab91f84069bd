"""Training: loss falls, exact resume after SIGTERM / SIGKILL, frozen parameters, accumulation,
sharded step, non-finite loss, FLOP counting."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import mistral_common
import numpy as np
import pytest

from lepjax import models, parallel
from lepjax.data.prepare import default_config as prepare_config
from lepjax.data.prepare import prepare
from lepjax.train import flops, loop
from lepjax.train import params as P

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MISTRAL_SP = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")


@pytest.fixture(scope="module")
def ru_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "ru"
    cfg = prepare_config()
    cfg.update(dict(tokenizer=MISTRAL_SP, inputs=(os.path.join(HERE, "fixtures", "ru_gsd_dev.txt"),),
                    output_dir=str(out), num_proc=1))
    prepare(cfg, progress=False)
    return str(out)


def config(data, run_dir, **train):
    cfg = loop.default_config()
    cfg.model.update(dict(preset="tiny_llama3", dtype="float32", vocab_size=32000))
    cfg.data.update(dict(paths=(data,), seq_len=64, batch_size=8, seed=0))
    cfg.optim.update(dict(lr=3e-3, warmup_steps=5, weight_decay=0.01))
    cfg.train.update(dict(run_dir=str(run_dir), steps=20, log_every=1, save_every=0,
                          loss_chunk=32, progress=False, async_checkpointing=False))
    cfg.train.update(train)
    return cfg


def losses(run_dir):
    out = {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            m = json.loads(line)
            if "loss" in m:
                out[m["step"]] = m["loss"]
    return out


def test_loss_falls(ru_data, tmp_path):
    result = loop.train(config(ru_data, tmp_path / "run", steps=120, log_every=10))
    ls = losses(tmp_path / "run")
    assert ls[10] > 9.0  # ~ln(32000) at the start
    assert result["loss"] < ls[10] - 3.0
    events = os.listdir(tmp_path / "run" / "tensorboard")
    assert any(f.startswith("events.out.tfevents") for f in events)


TRAIN_CMD = [sys.executable, "-m", "lepjax.cli", "train"]


def cli_args(data, run_dir, steps, save_every):
    return [f"--config.data.paths={data}", f"--config.train.run_dir={run_dir}",
            f"--config.train.steps={steps}", f"--config.train.save_every={save_every}",
            "--config.train.log_every=1", "--config.train.progress=false",
            "--config.model.dtype=float32", "--config.model.vocab_size=32000",
            "--config.data.seq_len=64", "--config.data.batch_size=8", "--config.train.loss_chunk=32",
            "--config.optim.lr=3e-3", "--config.optim.warmup_steps=5"]


def wait_for(predicate, timeout=300):
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise TimeoutError
        time.sleep(0.05)


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_kill_and_resume_gives_the_same_losses(ru_data, tmp_path, how):
    steps = 16
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    subprocess.run(TRAIN_CMD + cli_args(ru_data, ref_dir, steps, 4), check=True, timeout=600,
                   capture_output=True)
    proc = subprocess.Popen(TRAIN_CMD + cli_args(ru_data, run_dir, steps, 4),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = run_dir / "checkpoints"
    if how == "sigterm":
        wait_for(lambda: os.path.exists(run_dir / "metrics.jsonl") and len(losses(run_dir)) >= 5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=300) == 0
    else:  # SIGKILL after a completed save
        wait_for(lambda: (ckpts / "8").exists() and not any(".orbax-checkpoint-tmp" in f
                                                                for f in os.listdir(ckpts)))
        proc.kill()
        proc.wait()
    stopped = max(int(d) for d in os.listdir(ckpts) if d.isdigit())
    assert 4 <= stopped < steps
    subprocess.run(TRAIN_CMD + cli_args(ru_data, run_dir, steps, 4), check=True, timeout=600,
                   capture_output=True)
    ref, got = losses(ref_dir), losses(run_dir)
    assert sorted(got) == list(range(1, steps + 1))
    for step in range(stopped + 1, steps + 1):
        assert got[step] == ref[step], step  # bit-identical on CPU


@pytest.mark.parametrize("mode", ["embeddings", "2x2ls"])
def test_frozen_parameters_stay_bit_identical(ru_data, tmp_path, mode):
    cfg = config(ru_data, tmp_path / "run", steps=3, trainable=mode)
    cfg.model.preset = "tiny_llama2"
    cfg.model.vocab_size = 32000
    with cfg.unlocked():
        cfg.model.path = ""
    before = P.flatten(models.io.pure_params(models.from_config(cfg.model)))
    loop.train(cfg)
    after = P.flatten(models.io.pure_params(loop.load_run(str(tmp_path / "run"))))
    trained_layers = {0, 1} if mode == "2x2ls" else set()  # tiny_llama2 has 2 layers
    for path, b in before.items():
        a, b = np.asarray(after[path]), np.asarray(b)
        if path in ("embed", "lm_head") or (mode == "2x2ls" and path == "final_norm/scale"):
            assert not np.array_equal(a, b), path
        elif path.startswith("layers/") and trained_layers:
            assert not np.array_equal(a, b), path
        else:
            np.testing.assert_array_equal(a, b, err_msg=path)
    # The optimiser state holds only the trained parameters.
    from lepjax.train.checkpoint import Checkpointer

    meta = Checkpointer(str(tmp_path / "run")).state_metadata(3)
    assert set(meta["trainable"]) == ({"embed", "lm_head"} if mode == "embeddings"
                                      else set(before))
    mu = meta["opt_state"][1][0]["mu"] if isinstance(meta["opt_state"], (list, tuple)) else None
    if mu is not None:
        assert set(mu) == set(meta["trainable"])


def test_layer_selection_frozen_slices(tmp_path):
    """With more layers than selected, unselected slices of stacked params stay frozen."""
    flat = {"layers/attn/q": jnp.arange(6.0).reshape(6, 1), "embed": jnp.ones((4, 2)),
            "final_norm/scale": jnp.ones(2)}
    sel = P.select("2x2ls", list(flat), 6)
    assert sel == {"layers/attn/q": (0, 1, 4, 5), "embed": None, "final_norm/scale": None}
    trainable, frozen = P.split(flat, sel)
    trainable = {k: v * 0 - 1 for k, v in trainable.items()}
    merged = P.merge(trainable, frozen, sel)
    np.testing.assert_array_equal(np.asarray(merged["layers/attn/q"])[:, 0], [-1, -1, 2, 3, -1, -1])


def step_setup(mesh, micro_batches=1):
    cfg = loop.default_config()
    cfg.train.micro_batches = micro_batches
    cfg.train.loss_chunk = 16
    model = models.create_model(models.get_preset("tiny_mistral", dtype="float32"), mesh=mesh)
    from flax import nnx

    graphdef, state = nnx.split(model)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
    paths = ["/".join(str(k.key) for k in p if isinstance(k, jax.tree_util.DictKey))
             for p, _ in leaves]
    flat = dict(zip(paths, [x for _, x in leaves]))
    sel = P.select("all", paths, 2)
    trainable, frozen = P.split(flat, sel)
    from lepjax.train.optim import make_optimizer
    from lepjax.train.step import StepBuilder

    tx, schedule = make_optimizer(cfg.optim, 10, trainable)
    builder = StepBuilder(graphdef, treedef, paths, sel, tx, schedule, cfg.train, mesh)
    rng = np.random.default_rng(0)
    batch = {"tokens": rng.integers(0, 512, (8, 32)), "targets": rng.integers(0, 512, (8, 32)),
             "loss_mask": (rng.random((8, 32)) > 0.2).astype(np.float32),
             "segment_ids": np.repeat(np.array([[1] * 20 + [2] * 12]), 8, 0),
             "positions": np.repeat(np.array([list(range(20)) + list(range(12))]), 8, 0)}
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    return builder, trainable, frozen, batch, tx


def test_gradient_accumulation_equals_full_batch():
    mesh = parallel.make_mesh({"fsdp": 1}, devices=jax.devices()[:1])
    full, trainable, frozen, batch, _ = step_setup(mesh, 1)
    accum = step_setup(mesh, 4)[0]
    g1, m1 = jax.jit(full.grads)(trainable, frozen, batch)
    g4, m4 = jax.jit(accum.grads)(trainable, frozen, batch)
    assert float(m1["tokens"]) == float(m4["tokens"])
    for k in g1:
        assert float(jnp.abs(g1[k] - g4[k]).max()) <= 1e-5, k


def test_sharded_step_equals_single_device():
    results = []
    for shape, devices in [({"fsdp": 1}, jax.devices()[:1]), ({"data": 2, "fsdp": 2, "tensor": 2},
                                                              None)]:
        mesh = parallel.make_mesh(shape, devices=devices)
        builder, trainable, frozen, batch, tx = step_setup(mesh)
        state = {"step": jnp.zeros((), jnp.int32), "trainable": trainable,
                 "opt_state": tx.init(trainable)}
        new, metrics = jax.jit(builder.train_step)(state, frozen, batch)
        results.append((float(metrics["loss"]), jax.device_get(new["trainable"])))
    assert abs(results[0][0] - results[1][0]) <= 1e-5
    for k in results[0][1]:
        assert np.abs(results[0][1][k] - results[1][1][k]).max() <= 1e-5, k


def test_nan_stops_with_clear_error_and_checkpoint_intact(ru_data, tmp_path, monkeypatch):
    from lepjax.data.loader import Loader

    original = Loader.global_batch
    calls = {"n": 0}

    def poisoned(batch, mesh, rules=None):
        calls["n"] += 1
        if calls["n"] == 5:
            batch = dict(batch, loss_mask=np.full_like(batch["loss_mask"], np.nan))
        return original(batch, mesh, rules)

    monkeypatch.setattr(Loader, "global_batch", staticmethod(poisoned))
    with pytest.raises(loop.NonFiniteLossError, match=r"at step 5; .*checkpoint \(step 4\)"):
        loop.train(config(ru_data, tmp_path / "run", steps=10, save_every=2))
    model = loop.load_run(str(tmp_path / "run"))
    assert all(np.isfinite(np.asarray(x)).all()
               for x in jax.tree.leaves(models.io.pure_params(model)))


def test_mtp_head_trains_and_is_dropped_at_export(ru_data, tmp_path):
    result = loop.train(config(ru_data, tmp_path / "run", steps=3, mtp=True))
    assert "mtp_loss" in result and result["mtp_loss"] > 0
    model = loop.load_run(str(tmp_path / "run"))
    assert "mtp_head" not in P.flatten(models.io.pure_params(model))


def test_flops_hand_computed_for_llama2_7b():
    c = models.get_preset("llama2_7b")
    # per layer: attention 4096*128*(2*32 + 2*32) = 67,108,864; MLP 3*4096*11008 = 135,266,304
    assert flops.layer_matmul_params(c) == 202_375_168
    # forward at t = 4096: 2*(32*202,375,168 + 4096*32000) + 32 * 4*2048*32*128
    assert flops.flops_per_token(c, 4096, backward=False) == 14_287_896_576
    # full training: 6N (N = 6,607,077,376 matmul params) + 3 x attention (3,221,225,472)
    assert flops.flops_per_token(c, 4096) == 42_863_689_728
    # embeddings only: forward + activation grads through all layers + LM-head weight grads
    assert flops.flops_per_token(c, 4096, trained_layers=0, lowest_trained_layer=0,
                                 head_trained=True) == 29_911_678_976
    assert flops.peak_flops("NVIDIA H100 80GB HBM3") == 989e12


def test_lora_trains_only_adapters_and_merges_exactly(ru_data, tmp_path):
    from transformers import AutoModelForCausalLM

    from lepjax.train.checkpoint import Checkpointer, restore_frozen

    run = tmp_path / "run"
    cfg = config(ru_data, run, steps=4, trainable="none")
    cfg.model.preset = "tiny_llama2"
    cfg.train.lora.update(dict(rank=4, alpha=8.0, targets=("q", "v", "down"), layers="0"))
    initial = P.flatten(models.io.pure_params(models.from_config(cfg.model)))
    loop.train(cfg)
    ckpt = Checkpointer(str(run))
    meta = ckpt.state_metadata(4)
    assert all(k.startswith("lora/") for k in meta["trainable"]) and len(meta["trainable"]) == 6
    abstract = {k: jax.ShapeDtypeStruct(m.shape, m.dtype) for k, m in meta["trainable"].items()}
    state, _ = ckpt.restore(4, {"step": jax.ShapeDtypeStruct((), jnp.int32), "trainable": abstract,
                                "opt_state": jax.tree.map(lambda m: jax.ShapeDtypeStruct(
                                    m.shape, m.dtype), meta["opt_state"],
                                    is_leaf=lambda x: hasattr(x, "shape"))})
    frozen = restore_frozen(str(run), {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
                                       for k, v in initial.items()})
    for k, v in initial.items():  # the base weights are untouched
        np.testing.assert_array_equal(np.asarray(frozen[k]), np.asarray(v), err_msg=k)
    b = np.asarray(state["trainable"]["lora/layers/attn/q/b"], np.float64)
    assert np.abs(b).max() > 0  # the adapters trained
    # Export merges W + alpha/r * A.B into layer 0 only (checked in float64 NumPy).
    merged = P.flatten(models.io.pure_params(loop.load_run(str(run))))
    for name in ("layers/attn/q", "layers/attn/v", "layers/mlp/down"):
        a = np.asarray(state["trainable"][f"lora/{name}/a"], np.float64)[0]
        bb = np.asarray(state["trainable"][f"lora/{name}/b"], np.float64)[0]
        w0 = np.asarray(initial[name], np.float64)
        expected = w0[0] + 2.0 * np.tensordot(a, bb, axes=([a.ndim - 1], [0]))
        np.testing.assert_allclose(np.asarray(merged[name])[0], expected, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(merged[name])[1], np.asarray(initial[name])[1])
    np.testing.assert_array_equal(np.asarray(merged["layers/attn/k"]),
                                  np.asarray(initial["layers/attn/k"]))
    # The merged model exported to HF gives the logits of the unmerged training-time model.
    model = loop.load_run(str(run))
    out = models.save_hf(model, str(tmp_path / "hf"))
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    from conftest import hf_logits, random_tokens

    tokens = random_tokens(2, 16, vocab=32000)
    np.testing.assert_allclose(hf_logits(hf, tokens), np.asarray(model(tokens)), atol=1e-4)


def test_eval_reports_loss_and_bits_per_byte(ru_data, tmp_path):
    cfg = config(ru_data, tmp_path / "run", steps=4, eval_every=2, eval_batches=3)
    cfg.data.eval_paths = (ru_data,)
    loop.train(cfg)
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        evals = [m for m in map(json.loads, f) if "eval_loss" in m]
    assert [m["step"] for m in evals] == [2, 4]
    for m in evals:
        # bits per byte = nats per token / ln 2 * tokens / bytes; Russian is ~2 bytes a char
        assert 0 < m["eval_bits_per_byte"] < m["eval_loss"] / np.log(2)


def test_token_byte_lengths_sum_to_text_bytes():
    from lepjax.data.tokenizer import load_tokenizer

    tok = load_tokenizer(MISTRAL_SP)
    table = tok.token_byte_lengths()
    with open(os.path.join(HERE, "fixtures", "ru_gsd_test.txt"), encoding="utf-8") as f:
        lines = f.read().splitlines()[:100]
    for line, ids in zip(lines, tok.encode_batch(lines)):
        assert table[ids].sum() == len(line.encode()) + 1  # + SentencePiece's leading space
    assert table[tok.bos_id] == table[tok.eos_id] == 0
