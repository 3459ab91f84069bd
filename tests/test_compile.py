"""`lepjax compile`: the train step compiled on this CPU machine for a TPU topology (libtpu's
deviceless topologies; skipped where jax[tpu], the `compile` extra, is not installed) and for GPU
nodes described by a target config (the CUDA plugin's compiler and ptxas; skipped where the
`compile-gpu` extra is not installed)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil

import pytest

from lepjax import compile as aot
from lepjax import parallel
from lepjax.cli.main import main
from lepjax.config import ConfigError
from lepjax.models import attention
from lepjax.train.loop import default_config



def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


needs_tpu = pytest.mark.skipif(not _installed("libtpu"),
                               reason="the compile extra (jax[tpu]) is not installed")
needs_gpu_compiler = pytest.mark.skipif(
    not (_installed("jax_plugins.xla_cuda12") and _installed("nvidia.cudnn")
         and shutil.which("ptxas")),
    reason="the compile-gpu extra (jax[cuda12-local], cuDNN) or ptxas is not installed")
H100 = os.path.join(os.path.dirname(__file__), "fixtures", "h100_sxm_target_config.txtpb")


def tiny(batch=16, seq_len=256, **model):
    cfg = default_config()
    cfg.model.update(dict(preset="tiny_llama3", **model))
    cfg.data.update(dict(batch_size=batch, seq_len=seq_len))
    return cfg


@pytest.fixture(scope="module")
def v5e16():
    return aot.target("v5e-16")


@needs_tpu
def test_targets_by_name():
    t = aot.target("v4-32")
    assert (t.platform, len(t.devices), t.memory_gib) == ("tpu", 16, 32)  # 2 cores per chip
    assert len(aot.target("2xv5e-16").devices) == 32
    with pytest.raises(ValueError, match="no standard slice"):
        aot.target("v5e-24")
    with pytest.raises(ValueError, match="unknown target"):
        aot.target("k80-8")


@needs_tpu
def test_tiny_train_step_fits_v5e_16_with_memory_figures(v5e16):
    r = aot.compile_train_step(tiny(), v5e16)
    assert r["fits"] and r["devices"] == 16 and r["mesh"]["fsdp"] == 16
    for key in ("argument_gib", "output_gib", "temp_gib", "total_gib"):
        assert r[key] >= 0
    assert 0 < r["total_gib"] < r["hbm_gib"] == 16
    assert r["all-gather"] > 0  # FSDP gathers the weights


@needs_tpu
def test_an_oversized_batch_reports_out_of_memory(v5e16):
    r = aot.compile_train_step(tiny(batch=4096, seq_len=4096, remat_policy="none"), v5e16)
    assert r["fits"] is False and "memory" in r["error"].lower()


@needs_tpu
def test_kernel_choice_reads_the_mesh_devices_not_the_host(v5e16):
    mesh = parallel.make_mesh({"fsdp": -1}, devices=v5e16.devices)
    assert attention.mesh_platform() == "cpu"  # no mesh: the host's backend
    assert attention.resolve_implementation("auto", "bfloat16") == "xla"
    with parallel.activation_sharding(mesh):
        assert attention.mesh_platform() == "tpu"
        assert attention.resolve_implementation("auto", "bfloat16") == "splash"
        assert attention.decode_kernels("auto", "bfloat16", length_bucket=128,
                                        head_dim=64)["prefill"] == "splash"
    with parallel.activation_sharding(parallel.make_mesh({"fsdp": -1})):  # the 8 CPU devices
        assert attention.resolve_implementation("auto", "bfloat16") == "xla"


@needs_tpu
def test_a_batch_the_mesh_cannot_shard_is_an_error_naming_both(v5e16):
    with pytest.raises(ConfigError, match=r"data.batch_size=24 .*16 devices.*'fsdp': 16"):
        aot.compile_train_step(tiny(batch=24), v5e16)


@needs_tpu
def test_splash_follows_the_mesh_devices_and_compiles_mosaic_kernels(v5e16):
    """Traced on this CPU host for a TPU mesh, splash is the Mosaic kernel, not Pallas interpret
    mode (which compiles to plain HLO); that `auto` is splash there is
    test_kernel_choice_reads_the_mesh_devices_not_the_host."""
    splash = aot.compile_train_step(tiny(attention="splash"), v5e16)
    xla = aot.compile_train_step(tiny(attention="xla"), v5e16)
    assert splash["mosaic_kernels"] > 0 and xla["mosaic_kernels"] == 0


@needs_tpu
def test_cli_writes_json_and_exits_1_when_it_does_not_fit(tmp_path, capsys):
    out = tmp_path / "fit.json"
    assert main(["compile", "--target=v5e-16", "--config.model.preset=tiny_llama3",
                 "--config.data.batch_size=16", "--config.data.seq_len=128",
                 f"--output={out}"]) == 0
    assert json.loads(out.read_text())["train"]["fits"] is True
    assert main(["compile", "--target=v5e-16", "--config.model.preset=tiny_llama3",
                 "--config.data.batch_size=4096", "--config.data.seq_len=4096",
                 "--config.model.remat_policy=none", f"--output={out}"]) == 1
    assert "does not fit on v5e-16" in capsys.readouterr().err
    assert json.loads(out.read_text())["train"]["fits"] is False
    assert os.path.getsize(out) > 0


def test_gpu_targets_need_a_target_config(capsys):
    assert main(["compile", "--target=gpu-8", "--config.model.preset=tiny_llama3"]) == 1
    assert "needs --gpu_target_config" in capsys.readouterr().err
    with pytest.raises(ValueError, match="gpu-GPUS_PER_NODE"):
        aot.target("gpu-", gpu_target_config=H100)


def _small_memory_config(tmp_path, size):
    path = tmp_path / "small.txtpb"
    with open(H100, encoding="utf-8") as f:
        path.write_text(f.read().replace("device_memory_size: 85899345920",
                                         f"device_memory_size: {size}"))
    return str(path)


@needs_gpu_compiler
def test_gpu_nodes_from_a_target_config(tmp_path):
    t = aot.target("2xgpu-4", gpu_target_config=H100)
    assert (t.platform, len(t.devices), t.memory_gib, t.num_slices) == ("gpu", 8, 80.0, 2)
    assert t.device_kind == "NVIDIA H100 80GB HBM3"
    # What scripts/gpu_target_config.py writes on a real GPU: XLA's own dump of the target.
    text = aot.gpu_target_config(t.devices[0])
    assert 'device_description_str: "NVIDIA H100 80GB HBM3"' in text
    again = tmp_path / "again.txtpb"
    again.write_text(text)
    assert aot.target("gpu-2", gpu_target_config=str(again)).memory_gib == 80.0


@needs_gpu_compiler
def test_gpu_train_step_memory_and_cudnn_kernel_from_the_mesh(tmp_path):
    """bf16 `auto` on a GPU mesh is cuDNN attention, compiled by the GPU compiler on this CPU
    machine; XLA reports no out-of-memory there, so the total is compared with the device's
    memory: the same program on a device of 1 MiB does not fit."""
    r = aot.compile_train_step(tiny(attention="auto"), aot.target("gpu-8", gpu_target_config=H100))
    assert r["fits"] and r["platform"] == "gpu" and r["mesh"]["fsdp"] == 8
    assert 0 < r["total_gib"] < r["hbm_gib"] == 80.0
    assert r["cudnn_attention_kernels"] > 0 and r["mosaic_kernels"] == 0
    assert r["all-gather"] > 0 and "no out-of-memory" in r["memory_check"]
    small = aot.target("gpu-8", gpu_target_config=_small_memory_config(tmp_path, 2**20))
    r = aot.compile_train_step(tiny(attention="xla"), small)
    assert r["fits"] is False and r["cudnn_attention_kernels"] == 0
    assert r["total_gib"] * aot.GIB > 2**20 and "exceeds the device's" in r["error"]
