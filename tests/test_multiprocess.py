"""Two real JAX processes (jax.distributed on 127.0.0.1, gloo CPU collectives) train sharded,
save, resume, and match a single-process run with the same global batch."""

import json
import os
import socket
import subprocess
import sys

import mistral_common
import pytest

from lepjax.data.prepare import default_config, prepare

HERE = os.path.dirname(os.path.abspath(__file__))
MISTRAL_SP = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return {m["step"]: m["loss"] for m in map(json.loads, f) if "loss" in m}


def launch(run_dir, data, stop_at, processes, devices_per_process, steps=6):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
    args = [sys.executable, "-m", "lepjax.cli", "train", f"--config.data.paths={data}",
            f"--config.train.run_dir={run_dir}", f"--config.train.steps={steps}",
            f"--config.train.stop_at_step={stop_at}", "--config.train.save_every=3", "--config.train.log_every=1",
            "--config.train.progress=false", "--config.train.async_checkpointing=false",
            "--config.model.dtype=float32", "--config.model.vocab_size=32000",
            "--config.data.seq_len=64", "--config.data.batch_size=8",
            "--config.train.loss_chunk=32", "--config.mesh.data=2", "--config.mesh.fsdp=-1",
            "--config.data.streams=2"]
    port = free_port()
    procs = []
    for i in range(processes):
        extra = [] if processes == 1 else [
            f"--config.mesh.coordinator_address=127.0.0.1:{port}",
            f"--config.mesh.num_processes={processes}", f"--config.mesh.process_id={i}"]
        procs.append(subprocess.Popen(args + extra, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "ru"
    cfg = default_config()
    cfg.update(dict(tokenizer=MISTRAL_SP, inputs=(os.path.join(HERE, "fixtures", "ru_gsd_dev.txt"),),
                    output_dir=str(out), engine=dict(kind="synchronous")))
    prepare(cfg, progress=False)
    return str(out)


def test_two_processes_train_save_resume_and_match_one_process(data, tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    launch(single, data, 6, processes=1, devices_per_process=4)
    launch(multi, data, 3, processes=2, devices_per_process=2)
    assert sorted(os.listdir(multi / "checkpoints")) == ["3"]
    launch(multi, data, 6, processes=2, devices_per_process=2)  # resumes from step 3
    ref, got = losses(single), losses(multi)
    assert sorted(got) == list(range(1, 7))
    for step in range(1, 7):
        assert abs(got[step] - ref[step]) <= 1e-5, (step, got[step], ref[step])
