"""Launchers: launch/local.sh runs real multi-process training that survives a kill; the cluster
scripts parse and print the exact commands they would run; a bad mesh fails on every process."""

import json
import os
import signal
import subprocess
import sys
import time

import mistral_common
import pytest

from lepjax.data.prepare import default_config, prepare

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
LAUNCH = os.path.join(REPO, "launch")
MISTRAL_SP = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "ru"
    cfg = default_config()
    cfg.update(dict(tokenizer=MISTRAL_SP, inputs=(os.path.join(HERE, "fixtures", "ru_gsd_dev.txt"),),
                    output_dir=str(out), engine=dict(kind="synchronous")))
    prepare(cfg, progress=False)
    return str(out)


def train_args(data, run_dir, steps=8):
    return [sys.executable, "-m", "lepjax.cli", "train", f"--config.data.paths={data}",
            f"--config.train.run_dir={run_dir}", f"--config.train.steps={steps}",
            "--config.train.save_every=2", "--config.train.log_every=1",
            "--config.train.progress=false", "--config.model.dtype=float32",
            "--config.model.vocab_size=32000", "--config.data.seq_len=64",
            "--config.data.batch_size=8", "--config.data.streams=4",
            "--config.train.loss_chunk=32", "--config.optim.lr=3e-3"]


def losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return {m["step"]: m["loss"] for m in map(json.loads, f) if "loss" in m}


def local(n, devices, args, log_dir, **kw):
    return [os.path.join(LAUNCH, "local.sh"), str(n), "--cpu-devices", str(devices),
            "--log-dir", str(log_dir), "--", *args]


@pytest.mark.parametrize("processes", [2, 4])
def test_local_launch_killed_and_resumed_matches_single_process(data, tmp_path, processes):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    single = tmp_path / "single"
    subprocess.run(train_args(data, single), check=True, env=env, timeout=600,
                   capture_output=True)
    run, logs = tmp_path / "multi", tmp_path / "logs"
    cmd = local(processes, 4 // processes, train_args(data, run), logs)
    proc = subprocess.Popen(cmd)
    deadline = time.time() + 300
    while not (run / "checkpoints" / "2").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # forwarded to every process: they save and stop
    assert proc.wait(timeout=300) == 0
    for i in range(processes):
        assert (logs / f"process_{i}.log").exists()
    stopped = max(int(d) for d in os.listdir(run / "checkpoints") if d.isdigit())
    assert 2 <= stopped < 8
    subprocess.run(cmd, check=True, timeout=600)
    ref, got = losses(single), losses(run)
    assert sorted(got) == list(range(1, 9))
    for step in range(1, 9):
        assert abs(got[step] - ref[step]) <= 1e-5, (step, got[step], ref[step])


def test_bad_mesh_fails_clearly_on_every_process(data, tmp_path):
    logs = tmp_path / "logs"
    args = train_args(data, tmp_path / "run") + ["--config.mesh.data=3"]
    res = subprocess.run(local(2, 2, args, logs), timeout=300)
    assert res.returncode != 0
    for i in range(2):
        text = (logs / f"process_{i}.log").read_text()
        assert "4 devices are not divisible by the fixed axes' product 3" in text, text[-2000:]


def _env():
    """PATH with this interpreter's `lepjax` first (the launchers validate with it)."""
    bindir = os.path.dirname(sys.executable)
    return dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""))


LLAMA = "configs/lep/llama3_8b_ru.py"
RECIPE = [f"--config.run_dir={'/runs/llama3_ru'}", "--config.train.steps=10"]


def test_scripts_parse_and_dry_run_prints_the_commands(tmp_path):
    for name in ("local.sh", "slurm_gpu.sbatch", "tpu_pod.sh"):
        subprocess.run(["bash", "-n", os.path.join(LAUNCH, name)], check=True)
    out = subprocess.run(
        ["bash", os.path.join(LAUNCH, "slurm_gpu.sbatch"), "adapt", LLAMA, *RECIPE],
        env=dict(_env(), DRY_RUN="1"), check=True, capture_output=True, text=True,
        cwd=REPO).stdout
    assert ("srun --kill-on-bad-exit=1 --ntasks-per-node=8 --gpus-per-task=1 "
            "--output=logs/lepjax-dryrun/task_%t.log --label lepjax adapt "
            f"--config={LLAMA} --config.run_dir=/runs/llama3_ru --config.train.steps=10") in out
    out = subprocess.run(
        [os.path.join(LAUNCH, "tpu_pod.sh"), "--tpu", "v4-32", "--zone", "us-central2-b",
         "--dry-run", "--", "adapt", LLAMA, *RECIPE],
        check=True, capture_output=True, text=True, env=_env(), cwd=REPO).stdout.splitlines()
    assert out[1].startswith("gcloud compute tpus tpu-vm scp ") and "--worker=all" in out[1]
    assert "pip\\ install" in out[2]
    assert out[3].startswith("gcloud compute tpus tpu-vm ssh v4-32 --zone=us-central2-b "
                             "--worker=all --command=")
    assert f"lepjax\\ adapt\\ --config={LLAMA}\\ --config.run_dir=/runs/llama3_ru" in out[3]
    out = subprocess.run([os.path.join(LAUNCH, "local.sh"), "2", "--cpu-devices", "2",
                          "--dry-run", "--", "lepjax", "adapt", "--config=configs/demo.py",
                          f"--config.run_dir={tmp_path / 'demo'}"], check=True,
                         capture_output=True, text=True, env=_env(), cwd=REPO).stdout.splitlines()
    assert len(out) == 2 and "LEPJAX_PROCESS_ID=1" in out[1] and "LEPJAX_NUM_PROCESSES=2" in out[1]
    assert "lepjax adapt --config=configs/demo.py" in out[0]
    assert not (tmp_path / "demo").exists()  # a dry run writes nothing


@pytest.mark.parametrize("launcher", ["slurm", "tpu", "local"])
def test_launcher_dry_run_refuses_a_wrong_key_before_queueing(launcher, tmp_path):
    bad = "--config.optim.lrr=1e-4"
    cmd = {"slurm": ["bash", os.path.join(LAUNCH, "slurm_gpu.sbatch"), "adapt", LLAMA, bad],
           "tpu": [os.path.join(LAUNCH, "tpu_pod.sh"), "--tpu", "t", "--zone", "z", "--dry-run",
                   "--", "adapt", LLAMA, bad],
           "local": [os.path.join(LAUNCH, "local.sh"), "2", "--dry-run", "--", "lepjax", "adapt",
                     "--config=configs/demo.py", bad]}[launcher]
    res = subprocess.run(cmd, env=dict(_env(), DRY_RUN="1"), capture_output=True, text=True,
                         cwd=REPO)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "optim.lrr" in res.stderr and "srun" not in res.stdout and "gcloud" not in res.stdout


def test_launchers_refuse_a_config_in_place_of_the_verb():
    res = subprocess.run(["bash", os.path.join(LAUNCH, "slurm_gpu.sbatch"), LLAMA],
                         env=dict(_env(), DRY_RUN="1"), capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 2 and "the verb comes first" in res.stderr
