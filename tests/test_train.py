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
from lepjax.config import ConfigError
from lepjax.train import flops, loop
from lepjax.train import params as P
from lepjax.train import run as run_lib
from lepjax.train import state as state_lib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MISTRAL_SP = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")


@pytest.fixture(scope="module")
def ru_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "ru"
    cfg = prepare_config()
    cfg.update(dict(tokenizer=MISTRAL_SP, inputs=(os.path.join(HERE, "fixtures", "ru_gsd_dev.txt"),),
                    output_dir=str(out)))
    cfg.engine.kind = "synchronous"
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
    before = models.io.flatten(models.io.pure_params(models.from_config(cfg.model)))
    loop.train(cfg)
    after = models.io.flatten(models.io.pure_params(run_lib.load_run(str(tmp_path / "run"))))
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
    cfg.model.update(dict(preset="tiny_mistral", dtype="float32"))
    cfg.data.update(dict(batch_size=8, seq_len=32))
    cfg.train.update(dict(micro_batches=micro_batches, loss_chunk=16, steps=10, run_dir="unused"))
    setup = state_lib.build(cfg, mesh=mesh, rules=parallel.DEFAULT_RULES)
    rng = np.random.default_rng(0)
    batch = {"tokens": rng.integers(0, 512, (8, 32)), "targets": rng.integers(0, 512, (8, 32)),
             "loss_mask": (rng.random((8, 32)) > 0.2).astype(np.float32),
             "segment_ids": np.repeat(np.array([[1] * 20 + [2] * 12]), 8, 0),
             "positions": np.repeat(np.array([list(range(20)) + list(range(12))]), 8, 0)}
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    return setup, batch


def test_gradient_accumulation_equals_full_batch():
    mesh = parallel.make_mesh({"fsdp": 1}, devices=jax.devices()[:1])
    full, batch = step_setup(mesh, 1)
    accum = step_setup(mesh, 4)[0]
    trainable = full.state["trainable"]
    g1, m1 = jax.jit(full.builder.grads)(trainable, full.frozen, batch)
    g4, m4 = jax.jit(accum.builder.grads)(trainable, full.frozen, batch)
    assert float(m1["tokens"]) == float(m4["tokens"])
    for k in g1:
        assert float(jnp.abs(g1[k] - g4[k]).max()) <= 1e-5, k


def test_sharded_step_equals_single_device():
    results = []
    for shape, devices in [({"fsdp": 1}, jax.devices()[:1]), ({"data": 2, "fsdp": 2, "tensor": 2},
                                                              None)]:
        mesh = parallel.make_mesh(shape, devices=devices)
        setup, batch = step_setup(mesh)
        new, metrics = setup.train_step()(setup.state, setup.frozen, batch)
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
    model = run_lib.load_run(str(tmp_path / "run"))
    assert all(np.isfinite(np.asarray(x)).all()
               for x in jax.tree.leaves(models.io.pure_params(model)))


def test_mtp_head_trains_and_is_dropped_at_export(ru_data, tmp_path):
    result = loop.train(config(ru_data, tmp_path / "run", steps=3, mtp=True))
    assert "mtp_loss" in result and result["mtp_loss"] > 0
    model = run_lib.load_run(str(tmp_path / "run"))
    params = models.io.flatten(models.io.pure_params(model))
    assert "mtp_head" not in params
    # `lepjax convert RUN_DIR DST`: the run exported in both formats holds the same weights.
    assert run_lib.is_run_dir(str(tmp_path / "run")) and not run_lib.is_run_dir(str(tmp_path))
    for fmt in ("hf", "lepjax"):
        out = run_lib.export_run(str(tmp_path / "run"), str(tmp_path / fmt), fmt=fmt)
        exported, _ = models.load(out)
        got = models.io.flatten(models.io.pure_params(exported))
        assert set(got) == set(params)
        for k, v in params.items():
            np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(v), err_msg=k)
    with pytest.raises(FileExistsError):
        run_lib.export_run(str(tmp_path / "run"), str(tmp_path / "hf"))
    with pytest.raises(FileNotFoundError, match="no checkpoint at step 2"):
        run_lib.load_run(str(tmp_path / "run"), step=2)


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
    initial = models.io.flatten(models.io.pure_params(models.from_config(cfg.model)))
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
    merged = models.io.flatten(models.io.pure_params(run_lib.load_run(str(run))))
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
    model = run_lib.load_run(str(run), dtype="float32")  # compute settings are run options
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


def _reference_logprobs(hidden, head, targets, limit=None):
    """log p(target) from float64 NumPy logits (columns >= limit dropped)."""
    logits = np.einsum("btd,dv->btv", np.float64(hidden), np.float64(head))
    if limit is not None:
        logits = logits[..., :limit]
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    return np.take_along_axis(logits, targets[..., None], -1)[..., 0] - lse


def test_chunked_lm_head_loss_matches_float64_reference():
    from lepjax.models.loss import chunk_size, token_scores

    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(2, 12, 16)).astype(np.float32)
    head = rng.normal(size=(16, 40)).astype(np.float32)
    targets = rng.integers(0, 40, (2, 12))
    assert chunk_size(12, 5) == 4 and chunk_size(12, 0) == 12
    ref = _reference_logprobs(hidden, head, targets)
    for chunk in (1, 5, 12, 100):
        s = token_scores(jnp.asarray(hidden), jnp.asarray(head), jnp.asarray(targets), chunk=chunk)
        np.testing.assert_allclose(np.asarray(s.logprob), ref, atol=1e-4)
        logits = np.einsum("btd,dv->btv", hidden, head)
        np.testing.assert_array_equal(np.asarray(s.greedy), logits.argmax(-1) == targets)


def test_padding_rows_are_excluded_from_the_loss():
    """Columns >= vocab_limit (embedding padding) get -inf: no probability, no gradient."""
    from lepjax.models.loss import token_scores

    rng = np.random.default_rng(1)
    hidden = rng.normal(size=(2, 8, 16)).astype(np.float32)
    head = rng.normal(size=(16, 48)).astype(np.float32)
    head[:, 40:] = 5.0  # padding columns with large logits
    targets = rng.integers(0, 40, (2, 8))
    ref = _reference_logprobs(hidden, head, targets, limit=40)
    got = token_scores(jnp.asarray(hidden), jnp.asarray(head), jnp.asarray(targets), chunk=4,
                       vocab_limit=40)
    np.testing.assert_allclose(np.asarray(got.logprob), ref, atol=1e-4)
    unmasked = token_scores(jnp.asarray(hidden), jnp.asarray(head), jnp.asarray(targets), chunk=4)
    assert np.abs(np.asarray(unmasked.logprob) - ref).max() > 0.1  # the padding did take mass

    def loss(w):
        return -token_scores(jnp.asarray(hidden), w, jnp.asarray(targets), chunk=4,
                             vocab_limit=40).logprob.sum()

    g = np.asarray(jax.grad(loss)(jnp.asarray(head)))
    assert np.all(g[:, 40:] == 0) and np.abs(g[:, :40]).max() > 0
    with pytest.raises(ValueError, match="vocab_limit=49"):
        token_scores(jnp.asarray(hidden), jnp.asarray(head), jnp.asarray(targets), vocab_limit=49)


@pytest.fixture
def unreadable_weights(tmp_path):
    """A HF model directory whose config.json is fine but whose weights cannot be read."""
    model = models.create_model(models.get_preset("tiny_llama2", vocab_size=32000),
                                dtype="float32")
    path = models.save_hf(model, str(tmp_path / "model"))
    for f in os.listdir(path):
        if f.endswith(".safetensors"):
            with open(os.path.join(path, f), "wb") as fh:
                fh.write(b"not a safetensors file")
    with pytest.raises(Exception) as e:  # the premise: loading would fail
        models.load(path)
    assert not isinstance(e.value, ConfigError)
    return path


@pytest.mark.parametrize("key,value,expected", [
    ("train.trainable", "embeding,lm_head", r"train.trainable.*'embeding'.*did you mean.*'embed'"),
    ("train.trainable", "layers[0,7]", r"train.trainable: layer indices \[7\].*2 layers"),
    ("optim.schedule", "cosin", r"optim.schedule='cosin'.*did you mean 'cosine'"),
    ("train.lora.targets", ("q", "gat"), r"train.lora.targets.*'gat'.*did you mean 'gate'"),
])
def test_config_typo_fails_before_any_weight_is_read(ru_data, tmp_path, unreadable_weights, key,
                                                     value, expected):
    cfg = config(ru_data, tmp_path / "run", steps=2)
    cfg.model.path = unreadable_weights
    cfg.train.lora.rank = 2 if key == "train.lora.targets" else 0
    section, _, name = key.rpartition(".")
    node = cfg
    for part in section.split("."):
        node = node[part]
    node[name] = value
    with pytest.raises(ConfigError, match=expected):
        loop.train(cfg)
    assert not (tmp_path / "run").exists()  # nothing written either


def test_train_eval_bits_per_byte_equals_lepjax_eval(ru_data, tmp_path):
    """Training's held-out bits per byte is `lepjax eval`'s on the same shards."""
    from lepjax.eval.bpb import shard_bits_per_byte
    from lepjax.eval.loglik import Scorer
    from lepjax.tokenizer import load_tokenizer

    with open(os.path.join(HERE, "fixtures", "ru_gsd_test.txt"), encoding="utf-8") as f:
        lines = [x for x in f.read().splitlines() if 10 < len(x) < 80][:12]
    (tmp_path / "heldout.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    pcfg = prepare_config()
    pcfg.update(dict(tokenizer=MISTRAL_SP, inputs=(str(tmp_path / "heldout.txt"),),
                     output_dir=str(tmp_path / "heldout")))
    pcfg.engine.kind = "synchronous"
    prepare(pcfg, progress=False)
    cfg = config(ru_data, tmp_path / "run", steps=2, eval_every=2, eval_batches=0)
    cfg.mesh.update(dict(fsdp=1, tensor=8))  # the batch axes have size 1: one row per batch
    cfg.data.update(dict(batch_size=1, seq_len=128, eval_paths=(str(tmp_path / "heldout"),)))
    loop.train(cfg)
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        (m,) = [m for m in map(json.loads, f) if "eval_loss" in m]
    model = run_lib.load_run(str(tmp_path / "run"), dtype="float32")
    want = shard_bits_per_byte(model, load_tokenizer(MISTRAL_SP), str(tmp_path / "heldout"),
                               scorer=Scorer(model, batch_size=4, length_bucket=64))
    assert want["documents"] == len(lines)
    assert m["eval_bits_per_byte"] == pytest.approx(want["bits_per_byte"], rel=1e-4)


def test_embedding_padding_rows_take_no_part_in_the_training_loss(ru_data, tmp_path):
    """A model padded past its tokenizer (32,128 rows for Mistral's 32,000 ids) trains with the
    loss of the unpadded model: the padding rows of the LM head get no probability."""
    import shutil

    from safetensors.numpy import load_file, save_file

    padded = models.save_hf(models.create_model(
        models.get_preset("tiny_llama2", vocab_size=32128), seed=0, dtype="float32"),
        str(tmp_path / "padded"))
    shutil.copy(MISTRAL_SP, os.path.join(padded, "tokenizer.model"))
    (name,) = [f for f in os.listdir(padded) if f.endswith(".safetensors")]
    weights = load_file(os.path.join(padded, name))
    weights["lm_head.weight"][32000:] = 3.0 * weights["lm_head.weight"][:128]  # confident rows
    save_file(weights, os.path.join(padded, name), metadata={"format": "pt"})
    exact = tmp_path / "exact"
    shutil.copytree(padded, exact)
    save_file({k: (v[:32000] if v.shape[0] == 32128 else v) for k, v in weights.items()},
              os.path.join(exact, name), metadata={"format": "pt"})
    with open(exact / "config.json") as f:
        hf_config = json.load(f)
    with open(exact / "config.json", "w") as f:
        json.dump({**hf_config, "vocab_size": 32000}, f)
    first = {}
    for label, path, rows in [("padded", padded, 32128), ("exact", str(exact), 32000)]:
        cfg = config(ru_data, tmp_path / f"run-{label}", steps=1)
        cfg.model.update(dict(path=path, preset="", vocab_size=rows))
        loop.train(cfg)
        first[label] = losses(tmp_path / f"run-{label}")[1]
    assert first["padded"] == pytest.approx(first["exact"], abs=1e-5)


@pytest.fixture(scope="module")
def qa_records(tmp_path_factory):
    """200 short prompt/target records (Russian sentences and their first word), tokenised."""
    with open(os.path.join(HERE, "fixtures", "ru_gsd_dev.txt"), encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()][:200]
    src = tmp_path_factory.mktemp("qa") / "qa.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"Текст: {t[:120]}\nПервое слово:",
                                       "target": t.split()[0]}, ensure_ascii=False) + "\n"
                           for t in lines), encoding="utf-8")
    out = src.parent / "tokens"
    cfg = prepare_config()
    cfg.update(dict(tokenizer=MISTRAL_SP, inputs=(str(src),), output_dir=str(out),
                    prompt_field="prompt", target_field="target"))
    cfg.engine.kind = "synchronous"
    prepare(cfg, progress=False)
    return str(out)


def test_lora_tune_is_sized_by_epochs_with_a_validation_split_and_keeps_the_best(qa_records,
                                                                                tmp_path):
    """configs/fiat/lora_tune.py on 200 records: exactly `epochs` passes over the training
    records (the held-out split never trained on), validation metrics every eval_every steps,
    and the best checkpoint kept beside the latest."""
    from array_record.python.array_record_module import ArrayRecordReader

    from lepjax import config as config_lib
    from lepjax.data import records
    from lepjax.train.checkpoint import Checkpointer

    tiny = models.save_hf(models.create_model(models.get_preset("tiny_llama2", vocab_size=32000),
                                              seed=0, dtype="float32"), str(tmp_path / "student"))
    import shutil
    shutil.copy(MISTRAL_SP, os.path.join(tiny, "tokenizer.model"))
    run = tmp_path / "run"
    cfg = config_lib.load(os.path.join(REPO, "configs", "fiat", "lora_tune.py"), [
        ("model.path", tiny), ("model.dtype", "float32"), ("data.paths", qa_records),
        ("data.seq_len", "256"), ("data.batch_size", "8"), ("train.run_dir", str(run)),
        ("train.epochs", "2"), ("train.eval_every", "4"), ("train.keep_checkpoints", "1"),
        ("train.log_every", "1"), ("train.loss_chunk", "64"), ("train.progress", "false"),
        ("train.async_checkpointing", "false"), ("train.lora.rank", "4"), ("optim.lr", "3e-3")])
    summary = loop.train(cfg)
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    trained = sum(r["tokens"] for r in rows if "loss" in r)
    evals = [r for r in rows if "eval_loss" in r]
    steps = summary["step"]
    assert steps > 8 and [r["step"] for r in evals] == sorted(
        {*range(4, steps + 1, 4), steps})
    assert all(0 <= r["eval_accuracy"] <= 1 and np.isfinite(r["eval_loss"]) for r in evals)
    # Every trained target token of the records, twice, except those of the held-out 10%.
    ds = records.open_dataset(qa_records)
    total = 0
    for shard in ds.shard_paths:
        reader = ArrayRecordReader(shard)
        total += sum(int(records.decode(b)["loss_mask"][1:].sum())
                     for b in reader.read(list(range(reader.num_records()))))
    held = evals[0]["eval_tokens"]
    assert 0 < held < 0.2 * total
    assert trained == 2 * (total - held)
    assert summary["epochs"] == [pytest.approx(2.0, rel=0.15)]
    best = json.load(open(run / "best.json"))
    assert best["eval_loss"] == min(r["eval_loss"] for r in evals)
    assert summary["best_step"] == best["step"]
    kept = Checkpointer(str(run)).manager.all_steps()
    assert best["step"] in kept and steps in kept
