"""`lepjax compile`: the train step compiled for a TPU topology on this CPU machine (libtpu's
deviceless topologies); skipped where jax[tpu] (the `compile` extra) is not installed."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("libtpu", reason="the compile extra (jax[tpu]) is not installed")

from lepjax import compile as aot  # noqa: E402
from lepjax.cli.main import main  # noqa: E402
from lepjax.train.loop import default_config  # noqa: E402


def tiny(batch=16, seq_len=256, **model):
    cfg = default_config()
    cfg.model.update(dict(preset="tiny_llama3", **model))
    cfg.data.update(dict(batch_size=batch, seq_len=seq_len))
    return cfg


@pytest.fixture(scope="module")
def v5e16():
    return aot.target("v5e-16")


def test_targets_by_name():
    t = aot.target("v4-32")
    assert (t.platform, len(t.devices), t.memory_gib) == ("tpu", 16, 32)  # 2 cores per chip
    assert len(aot.target("2xv5e-16").devices) == 32
    with pytest.raises(ValueError, match="no standard slice"):
        aot.target("v5e-24")
    with pytest.raises(ValueError, match="unknown target"):
        aot.target("k80-8")


def test_tiny_train_step_fits_v5e_16_with_memory_figures(v5e16):
    r = aot.compile_train_step(tiny(), v5e16)
    assert r["fits"] and r["devices"] == 16 and r["mesh"]["fsdp"] == 16
    for key in ("argument_gib", "output_gib", "temp_gib", "total_gib"):
        assert r[key] >= 0
    assert 0 < r["total_gib"] < r["hbm_gib"] == 16
    assert r["all-gather"] > 0  # FSDP gathers the weights


def test_an_oversized_batch_reports_out_of_memory(v5e16):
    r = aot.compile_train_step(tiny(batch=4096, seq_len=4096, remat_policy="none"), v5e16)
    assert r["fits"] is False and "memory" in r["error"].lower()


def test_splash_follows_the_mesh_devices_and_compiles_mosaic_kernels(v5e16):
    splash = aot.compile_train_step(tiny(seq_len=512, attention="splash"), v5e16)
    auto = aot.compile_train_step(tiny(seq_len=512, attention="auto"), v5e16)
    xla = aot.compile_train_step(tiny(seq_len=512, attention="xla"), v5e16)
    assert splash["mosaic_kernels"] > 0 and auto["mosaic_kernels"] > 0
    assert xla["mosaic_kernels"] == 0


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
