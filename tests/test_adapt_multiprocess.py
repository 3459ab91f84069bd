"""`lepjax adapt --config=configs/demo.py` on several real JAX processes (launch/local.sh:
jax.distributed on 127.0.0.1, gloo collectives, a shared run directory).

Two processes give the exported weights of one process on the same global mesh; a process
killed in the middle of training stops the other, and a rerun resumes to the uninterrupted
result; a stage failing on one process stops both with its error. Step counts are reduced. The
tests share their runs, so they form one xdist group (`pytest -n 2 --dist loadgroup` runs them
on one worker, once).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCAL = os.path.join(REPO, "launch", "local.sh")
FIX = os.path.join(REPO, "tests", "fixtures")

pytestmark = pytest.mark.xdist_group("adapt_multiprocess")

# The demo, reduced: every stage runs; data.streams is fixed, so the batches (and the results)
# do not depend on the process count.
REDUCED = ["--config.demo.base_steps=10", "--config.demo.instruct_steps=3",
           "--config.train.steps=16", "--config.train.save_every=4",
           "--config.eval.max_examples=8", "--config.extend.k=100",
           "--config.extend.aux_vocab_size=600", "--config.data.streams=2",
           "--config.train.progress=false"]


def _env(devices: int | None = None) -> dict[str, str]:
    """This interpreter's `lepjax` first on PATH; `devices` CPU devices for a direct run."""
    bindir = os.path.dirname(sys.executable)
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""),
               JAX_PLATFORMS="cpu", LEPJAX_STOP_GRACE="5")
    env.pop("XLA_FLAGS", None)
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def adapt_args(run_dir, *extra) -> list[str]:
    return ["lepjax", "adapt", "--config=configs/demo.py", f"--config.run_dir={run_dir}",
            *REDUCED, *extra]


def local(processes: int, devices: int, log_dir, args) -> list[str]:
    return [LOCAL, str(processes), "--cpu-devices", str(devices), "--log-dir", str(log_dir),
            "--", *args]


def run_one_process(run_dir, devices: int, *extra) -> None:
    res = subprocess.run(adapt_args(run_dir, *extra), cwd=REPO, env=_env(devices),
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]


def run_local(processes: int, devices: int, run_dir, log_dir, *extra) -> None:
    res = subprocess.run(local(processes, devices, log_dir, adapt_args(run_dir, *extra)),
                         cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    logs = "".join(_log(log_dir, i)[-2000:] for i in range(processes))
    assert res.returncode == 0, res.stderr[-2000:] + logs


def _log(log_dir, i: int) -> str:
    path = os.path.join(log_dir, f"process_{i}.log")
    return open(path, encoding="utf-8", errors="replace").read() if os.path.exists(path) else ""


def exported(run_dir) -> dict[str, dict[str, np.ndarray]]:
    """The exported Hugging Face weights of a run: {model: {tensor name: array}}."""
    from safetensors.numpy import load_file

    out = {}
    for name in ("donor", "adapted_instruct"):
        d = os.path.join(run_dir, "export", name)
        out[name] = {k: v for f in sorted(os.listdir(d)) if f.endswith(".safetensors")
                     for k, v in load_file(os.path.join(d, f)).items()}
    return out


def max_abs_diff(a, b) -> float:
    ea, eb = exported(a), exported(b)
    assert ea.keys() == eb.keys() and all(ea[m].keys() == eb[m].keys() for m in ea)
    return max(float(np.max(np.abs(ea[m][k].astype(np.float64) - eb[m][k])))
               for m in ea for k in ea[m])


def family(run_dir) -> list[str]:
    """Overrides that reuse a finished run's demo family instead of building one."""
    fam = json.loads((run_dir / "stages" / "demo.json").read_text())["outputs"]
    return ["--config.demo.enabled=false", f"--config.base={fam['base']}",
            f"--config.instruct={fam['instruct']}"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The reduced demo on one process with 2 CPU devices and on 2 processes x 1 device."""
    root = tmp_path_factory.mktemp("adapt_mp")
    t0 = time.perf_counter()
    run_one_process(root / "one", 2)
    t1 = time.perf_counter()
    run_local(2, 1, root / "two", root / "logs_two")
    t2 = time.perf_counter()
    print(f"adapt demo (reduced): 1 process x 2 devices {t1 - t0:.0f} s, "
          f"2 processes x 1 device {t2 - t1:.0f} s")
    return root


def test_two_processes_export_the_weights_of_one_process(runs):
    diff = max_abs_diff(runs / "one", runs / "two")
    print(f"exported weights, 2 processes x 1 device vs 1 x 2: max abs diff {diff:.2e}")
    assert diff <= 1e-5
    one = json.loads((runs / "one" / "summary.json").read_text())
    two = json.loads((runs / "two" / "summary.json").read_text())
    for key in ("chars_per_token", "bits_per_byte", "lep_residuals"):
        assert one[key] == pytest.approx(two[key], rel=1e-5), key
    assert sorted(os.listdir(runs / "two" / "stages")) == sorted(
        f"{s}.json" for s in ("demo", "vocab", "prepare", "train", "propagate", "export",
                              "evaluate"))
    # Host-side work ran on process 0 only: process 1 waited for the tokenisation, the
    # tokenizer extension and the demo's SentencePiece model.
    logs = [_log(runs / "logs_two", i) for i in range(2)]
    assert "lepjax.prepare" in logs[0] and "lepjax.prepare" not in logs[1]
    assert "process 1 of 2" in logs[1] and "stage train: running" in logs[1]


def test_two_processes_of_two_devices_match_one_process_of_four(runs, tmp_path):
    """The same on 4 devices, from the family the first run built (the demo stage's trainings
    are the same code as the train stage's). 8 training steps: across 4 devices the gradient
    sums of gloo and of one process round differently, and the difference grows with steps."""
    fam = [*family(runs / "two"), "--config.train.steps=8"]
    run_one_process(tmp_path / "one", 4, *fam)
    run_local(2, 2, tmp_path / "two", tmp_path / "logs", *fam)
    diff = max_abs_diff(tmp_path / "one", tmp_path / "two")
    print(f"exported weights, 2 processes x 2 devices vs 1 x 4: max abs diff {diff:.2e}")
    assert diff <= 1e-5
    assert "4 global" in _log(tmp_path / "logs", 1)


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


def _process_id(pid: int) -> int:
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
    return int(env[b"LEPJAX_PROCESS_ID"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1][0] != "Z"


def test_a_process_killed_during_training_stops_the_other_and_the_rerun_resumes(runs, tmp_path):
    run, logs = tmp_path / "run", tmp_path / "logs"
    cmd = local(2, 1, logs, adapt_args(run, *family(runs / "two")))
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stderr=subprocess.PIPE, text=True)
    ckpts = run / "train" / "checkpoints"
    deadline = time.time() + 600
    while not (ckpts.is_dir() and any(n.isdigit() for n in os.listdir(ckpts))):
        assert proc.poll() is None and time.time() < deadline, "no training checkpoint appeared"
        time.sleep(0.05)
    workers = {_process_id(p): p for p in _children(proc.pid)}
    os.kill(workers[1], signal.SIGKILL)
    killed = time.time()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "stopping the others" in err
    assert time.time() - killed < 60
    assert not _alive(workers[0])
    steps = sorted(int(n) for n in os.listdir(ckpts) if n.isdigit())
    assert steps[-1] < 16, "the training was not interrupted"
    assert not (run / "stages" / "train.json").exists()

    res = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:] + _log(logs, 0)[-3000:]
    assert "resumed" in _log(logs, 0) and "stage vocab: complete, skipped" in _log(logs, 0)
    diff = max_abs_diff(run, runs / "two")  # the uninterrupted run
    print(f"exported weights, killed and resumed vs uninterrupted: max abs diff {diff:.2e}")
    assert diff <= 1e-5


def test_a_stage_failing_on_one_process_stops_both_with_its_error(runs, tmp_path):
    """Process 1 alone cannot read its held-out text (in the evaluate stage, which runs again
    since eval.max_examples changed): both processes stop within 60 s of the failure, process 0
    with process 1's error in its log."""
    run, logs = tmp_path / "run", tmp_path / "logs"
    shutil.copytree(runs / "two", run)
    bad = tmp_path / "heldout.txt"
    bad.write_bytes(b"\xff\xfe not UTF-8\n")
    args = adapt_args(run, "--config.eval.max_examples=6")
    # The same command on both processes, with a held-out file process 1 cannot read.
    script = ('extra=""; [ "$LEPJAX_PROCESS_ID" = 1 ] && extra="--config.heldout_text=%s"; '
              'exec "$@" $extra' % bad)
    proc = subprocess.Popen(local(2, 1, logs, ["sh", "-c", script, "sh", *args]), cwd=REPO,
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while "lepjax adapt: error:" not in _log(logs, 1):
        assert proc.poll() is None and time.time() < deadline, _log(logs, 1)[-3000:]
        time.sleep(0.05)
    failed = time.time()
    assert proc.wait(timeout=120) == 1
    assert time.time() - failed < 60
    p0, p1 = _log(logs, 0), _log(logs, 1)
    error = f"{bad}: not UTF-8 text at byte 0"
    assert "stage evaluate: running" in p1 and f"lepjax adapt: error: {error}" in p1
    assert f"process 1 failed: DataError: {error}" in p0, p0[-3000:]
