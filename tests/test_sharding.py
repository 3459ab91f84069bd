"""Sharded forward on 8 simulated CPU devices: same logits as one device, parameters really sharded."""

import jax
import numpy as np
import pytest
from conftest import random_tokens
from jax.sharding import PartitionSpec as P

from lepjax import models, parallel
from lepjax.config import ConfigError
from lepjax.train import loop as train_loop
from lepjax.train import state as state_lib


def test_eight_devices_are_simulated():
    assert jax.device_count() == 8


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    from conftest import make_hf_model

    path = str(tmp_path_factory.mktemp("hf") / "llama3")
    make_hf_model("llama3_1").save_pretrained(path)
    one = parallel.make_mesh({"fsdp": 1}, devices=jax.devices()[:1])
    model, _ = models.load(path, mesh=one, dtype="float32")
    tokens = random_tokens(8, 16)
    forward, state = models.make_forward(model, one)
    return path, tokens, np.asarray(forward(state, tokens))


EXPECTED = {
    # mesh -> expected PartitionSpec of a few parameters (tiny model: embed 64, 4 heads, 2 kv heads)
    "fsdp8": ({"fsdp": 8}, {
        ("embed",): P(None, "fsdp"),
        ("layers", "attn", "q"): P(None, "fsdp", None, None),
        ("layers", "mlp", "down"): P(None, None, "fsdp"),
        ("lm_head",): P("fsdp", None),
    }),
    "data2_fsdp2_tensor2": ({"data": 2, "fsdp": 2, "tensor": 2}, {
        ("embed",): P("tensor", "fsdp"),
        ("layers", "attn", "q"): P(None, "fsdp", "tensor", None),
        ("layers", "attn", "k"): P(None, "fsdp", "tensor", None),
        ("layers", "mlp", "down"): P(None, "tensor", "fsdp"),
        ("lm_head",): P("fsdp", "tensor"),
    }),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sharded_forward_matches_one_device(reference, name):
    path, tokens, ref = reference
    shape, specs = EXPECTED[name]
    mesh = parallel.make_mesh(shape)
    model, _ = models.load(path, mesh=mesh, dtype="float32")
    params = models.io.pure_params(model)
    for keys, spec in specs.items():
        arr = params
        for k in keys:
            arr = arr[k]
        assert arr.sharding.spec == spec, keys
        assert arr.sharding.mesh.devices.size == 8
        # Really split: each device holds a fraction of the parameter.
        shard = arr.addressable_shards[0].data
        assert shard.size < arr.size, keys
    forward, state = models.make_forward(model, mesh)
    out = forward(state, tokens)
    assert out.sharding.spec[0] in (("data", "fsdp"), "fsdp")
    assert np.abs(np.asarray(out) - ref).max() <= 1e-5


def test_created_model_is_sharded_at_creation():
    mesh = parallel.make_mesh({"data": 2, "fsdp": 4})
    model = models.create_model(models.get_preset("tiny_llama3"), mesh=mesh)
    q = model.layers.attn.q[...]
    assert q.sharding.spec == P(None, "fsdp", None, None)
    assert q.addressable_shards[0].data.shape == (2, 16, 4, 16)


def test_splash_kernel_sharded_matches_reference(reference):
    """The TPU kernel (Pallas interpret mode on CPU) under shard_map on a 2x2x2 mesh."""
    path, _, _ = reference
    tokens = random_tokens(4, 128)  # the kernel works in blocks of 128
    one = parallel.make_mesh({"fsdp": 1}, devices=jax.devices()[:1])
    xla, _ = models.load(path, mesh=one, dtype="float32", attention="xla")
    ref = np.asarray(xla(tokens))
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model, _ = models.load(path, mesh=mesh, dtype="float32", attention="splash")
    forward, state = models.make_forward(model, mesh)
    assert np.abs(np.asarray(forward(state, tokens)) - ref).max() <= 1e-4


def test_mesh_errors_are_clear():
    with pytest.raises(ValueError, match="needs 12 devices but 8 are available"):
        parallel.make_mesh({"data": 3, "fsdp": 4})
    with pytest.raises(ValueError, match="not divisible"):
        parallel.make_mesh({"data": 3, "fsdp": -1})
    with pytest.raises(ValueError, match="unknown mesh axes"):
        parallel.make_mesh({"pipeline": 2})


def test_logical_rules():
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert parallel.logical_to_spec(("batch", "length"), mesh=mesh) == P(("data", "fsdp"), None)
    # A dimension the mesh axes do not divide stays unsharded instead of failing.
    assert parallel.logical_to_spec(("vocab", "embed"), mesh=mesh, shape=(3, 64)) == P(None, "fsdp")
    # A mesh axis is used once per array.
    rules = (("a", "fsdp"), ("b", "fsdp"))
    assert parallel.logical_to_spec(("a", "b"), rules) == P("fsdp", None)
    with pytest.raises(KeyError, match="no sharding rule"):
        parallel.logical_to_spec(("nonsense",))


# ---- training state and batch shardings (issue 18: found by compiling for v5e-256) -------------

def test_every_state_leaf_is_sharded_on_the_mesh():
    """Explicit shardings for every leaf, Adam's `count` included (issue 18: it lost the mesh)."""
    mesh = parallel.make_mesh({"data": 2, "fsdp": 4})
    for abstract in (False, True):
        cfg = train_loop.default_config()
        cfg.model.update(dict(preset="tiny_llama3", dtype="float32"))
        cfg.data.update(dict(batch_size=8, seq_len=32))
        cfg.train.update(dict(run_dir="unused", mtp=True, trainable="embed,layers[0]"))
        cfg.train.lora.rank = 2
        build = state_lib.build_abstract if abstract else state_lib.build
        setup = build(cfg, mesh=mesh, rules=parallel.DEFAULT_RULES)
        leaves = jax.tree_util.tree_leaves_with_path(setup.state_shardings)
        assert any("count" in jax.tree_util.keystr(p) for p, _ in leaves)
        for path, sh in leaves:
            assert isinstance(sh, jax.sharding.NamedSharding) and sh.mesh == mesh, path
        for path, x in jax.tree_util.tree_leaves_with_path((setup.state, setup.frozen)):
            assert isinstance(x.sharding, jax.sharding.NamedSharding), path
            assert x.sharding.mesh == mesh, path
        moments = [sh for p, sh in leaves if "mu" in jax.tree_util.keystr(p)
                   and "'embed'" in jax.tree_util.keystr(p)]
        assert moments and all(sh == setup.state_shardings["trainable"]["embed"] for sh in moments)


def test_unshardable_batch_is_an_error_naming_batch_and_mesh():
    mesh = parallel.make_mesh({"data": 2, "fsdp": 4})
    cfg = train_loop.default_config()
    cfg.data.update(dict(batch_size=12, seq_len=32))
    cfg.train.run_dir = "unused"
    with pytest.raises(ConfigError, match=r"data.batch_size=12 .*\['data', 'fsdp'\].*8 devices.*"
                                          r"'data': 2, 'fsdp': 4"):
        state_lib.build_abstract(cfg, mesh=mesh)
    cfg.data.batch_size = 8
    cfg.train.micro_batches = 2
    with pytest.raises(ConfigError, match="micro-batch of 4 rows"):
        state_lib.build_abstract(cfg, mesh=mesh)
    # The axes the batch is not sharded over do not count.
    cfg.train.micro_batches = 1
    cfg.data.batch_size = 2
    setup = state_lib.build_abstract(cfg, mesh=parallel.make_mesh({"data": 2, "tensor": 4}))
    assert setup.batch_sharding.spec == jax.sharding.PartitionSpec("data", None)
