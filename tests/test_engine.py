"""`lepjax prepare` on the preprocessing engine: same shards on every engine, crash and kill safe.

One LocalCluster of 2 worker processes serves the module (`engine.kind=dask` at its address);
only two other tests start a cluster of their own (local with 1 worker; the CLI run killed).
"""

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time

import cloudpickle
import pytest

from lepjax.config import ConfigError
from lepjax.data import engine as engine_lib
from lepjax.data import records
from lepjax.data.prepare import default_config, prepare

from conftest import MISTRAL_SP

HERE = os.path.dirname(os.path.abspath(__file__))
RU = os.path.join(HERE, "fixtures", "ru_gsd_dev.txt")
EN = os.path.join(HERE, "fixtures", "en_ewt_dev.txt")

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import tests/


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client

    with engine_lib.start_local_cluster(2) as c, Client(c) as client:
        yield c, client


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three inputs; the second is over 1 MiB, so two chunks (shards cut across both)."""
    d = tmp_path_factory.mktemp("corpus")
    with open(RU, encoding="utf-8") as f:
        ru = [line for line in f if line.strip()]
    (d / "ru.txt").write_text("".join(ru * 9), encoding="utf-8")
    return [RU, str(d / "ru.txt"), EN]


def config(inputs, out, **engine):
    cfg = default_config()
    cfg.update(dict(tokenizer=MISTRAL_SP, inputs=tuple(inputs), output_dir=str(out),
                    records_per_shard=300, engine=dict(engine)))
    return cfg


def hashes(directory):
    return {name: hashlib.sha256(open(os.path.join(directory, name), "rb").read()).hexdigest()
            for name in sorted(os.listdir(directory)) if not name.startswith("resolved_config")}


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """The in-process (synchronous) preparation every engine must reproduce."""
    out = tmp_path_factory.mktemp("ref") / "ds"
    summary = prepare(config(corpus, out, kind="synchronous"), progress=False)
    assert summary["complete"] and summary["shards_total"] > 5
    return hashes(out)


def test_every_engine_writes_the_same_shards(corpus, reference, cluster, tmp_path):
    c, _ = cluster
    two = prepare(config(corpus, tmp_path / "two", kind="dask", scheduler=c.scheduler_address),
                  progress=False)
    assert two["workers"] == 2
    assert hashes(tmp_path / "two") == reference
    one = prepare(config(corpus, tmp_path / "one", kind="local", num_workers=1), progress=False)
    assert one["workers"] == 1
    assert hashes(tmp_path / "one") == reference
    assert records.open_dataset(str(tmp_path / "one")).num_records == 579 * 10 + sum(
        1 for line in open(EN, encoding="utf-8") if line.strip())


def test_a_worker_that_dies_is_replaced_and_its_task_retried(corpus, reference, cluster,
                                                             tmp_path):
    c, client = cluster
    pids = client.run(os.getpid)
    killed = []

    def kill_a_busy_worker():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            for addr, keys in client.processing().items():
                if any(str(k).startswith("shard_task") for k in keys) and addr in pids:
                    os.kill(pids[addr], signal.SIGKILL)
                    killed.append(addr)
                    return
            time.sleep(0.002)

    killer = threading.Thread(target=kill_a_busy_worker)
    killer.start()
    summary = prepare(config(corpus, tmp_path / "ds", kind="dask",
                             scheduler=c.scheduler_address), progress=False)
    killer.join()
    assert killed, "no worker was killed while running a shard task"
    assert summary["shards_written"] == summary["shards_total"]
    assert hashes(tmp_path / "ds") == reference  # no temp file left, every shard as in process


def holds_lease(name, seconds):
    with engine_lib.lease(name, 1):
        start = time.time()
        time.sleep(seconds)
        return start, time.time()


def test_semaphore_caps_holders_across_workers(cluster):
    c, _ = cluster
    section = engine_lib.engine_section()
    section.update(dict(kind="dask", scheduler=c.scheduler_address))
    with engine_lib.open_engine(section) as engine:
        spans = sorted(r for _, r in engine.map(holds_lease, [("cap1", 0.3)] * 4))
        free = sorted(r for _, r in engine.map(time_span, [(0.3,)] * 4))
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans
    assert any(a[1] > b[0] for a, b in zip(free, free[1:])), "2 workers never overlapped"


def leases_in_turn(name, count):
    for _ in range(count):
        with engine_lib.lease(name, 2):
            pass
    return os.getpid()


def test_a_worker_thread_registers_a_semaphore_once_not_per_lease(cluster):
    """Each lease is one acquire and one release; the semaphore is registered with the scheduler
    once per worker thread (and name), not once per request."""
    c, _ = cluster
    ext = c.scheduler.extensions["semaphores"]
    registered = []
    create = ext.create
    c.scheduler.handlers["semaphore_register"] = lambda **kw: (registered.append(kw["name"]),
                                                               create(**kw))[1]
    try:
        section = engine_lib.engine_section()
        section.update(dict(kind="dask", scheduler=c.scheduler_address))
        with engine_lib.open_engine(section) as engine:
            pids = {pid for _, pid in engine.map(leases_in_turn, [("cache1", 25)] * 4)}
    finally:
        c.scheduler.handlers["semaphore_register"] = create
    assert ext.metrics["acquire_total"]["cache1"] == 100
    assert ext.metrics["release_total"]["cache1"] == 100
    assert 1 <= len(registered) <= len(pids) and set(registered) == {"cache1"}, registered


def time_span(seconds):
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


def test_scheduler_file_reaches_the_cluster(cluster, tmp_path):
    import json

    c, _ = cluster
    sched = tmp_path / "scheduler.json"
    sched.write_text(json.dumps({"type": "Scheduler", "address": c.scheduler_address}))
    section = engine_lib.engine_section()
    section.update(dict(kind="dask", scheduler_file=str(sched)))
    with engine_lib.open_engine(section) as engine:  # versions checked on every worker
        assert engine.num_workers == 2
        assert sorted(engine.map(pow, [(2, 5), (3, 2)])) == [(0, 32), (1, 9)]
    section.scheduler_file = str(tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError, match="engine.scheduler_file .*missing.json does not"):
        engine_lib.open_engine(section)


def test_dask_slurm_dry_run_prints_scheduler_workers_and_driver(tmp_path):
    script = os.path.join(os.path.dirname(HERE), "launch", "dask_slurm.sbatch")
    args = ["bash", script, "prepare", os.path.join(os.path.dirname(HERE), "configs", "prepare.py"),
            f"--config.tokenizer={MISTRAL_SP}", f"--config.inputs={RU}",
            f"--config.output_dir={tmp_path / 'out'}"]
    env = {**os.environ, "DRY_RUN": "1", "SLURM_JOB_ID": "42", "SLURM_CPUS_PER_TASK": "8",
           "LEPJAX_CORES_PER_WORKER": "2", "PATH": os.path.dirname(sys.executable) + ":"
           + os.environ["PATH"]}
    res = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    sched, workers, driver = res.stdout.strip().splitlines()
    assert sched.startswith("dask scheduler --scheduler-file") and "dask-42.json" in sched
    assert "dask worker --scheduler-file" in workers and "--nworkers 4 --nthreads 1" in workers
    assert "--config.engine.kind=dask" in driver and "dask-42.json" in driver
    assert not (tmp_path / "out").exists()


def test_vocab_statistics_on_every_engine_equal_the_in_process_ones(cluster, monkeypatch):
    """align's co-occurrence counts and the efficiency report: one task per corpus chunk (many
    small chunks here), reduced to exactly the in-process numbers, down to the order in which
    each new piece's source tuples were first seen (which fixes its float weights)."""
    from lepjax.tokenizer import load_tokenizer
    from lepjax.vocab import corpus, extend, load_vocab
    from lepjax.vocab.embedding_init import plan_rows
    from lepjax.vocab.report import report

    c, _ = cluster
    src = load_vocab(MISTRAL_SP)
    new, _ = extend(src, [RU], 200, aux_vocab_size=4000, progress=False)
    tok = load_tokenizer(MISTRAL_SP)
    heldout = {"ru": [RU], "both": [RU, EN]}
    ref = plan_rows(src, new, "align", [RU, EN], progress=False)  # one chunk per file
    ref_report = report({"t": tok}, heldout, max_lines=2000)
    assert ref.counts["align"] > 150 and ref_report["results"]["both"]["t"]["sentences"] == 2000
    monkeypatch.setattr(corpus, "CHUNK_BYTES", 20_000)
    assert len(corpus.plan_chunks([RU, EN])) > 10
    for kind in ("synchronous", "dask"):
        section = engine_lib.engine_section()
        section.update(dict(kind=kind, scheduler=c.scheduler_address if kind == "dask" else ""))
        with engine_lib.open_engine(section) as engine:
            plan = plan_rows(src, new, "align", [RU, EN], progress=False, engine=engine)
            got_report = report({"t": tok}, heldout, max_lines=2000, engine=engine)
        assert plan.counts == ref.counts and plan.fallback == ref.fallback, kind
        assert {t: list(w.items()) for t, w in plan.weights.items()} == \
            {t: list(w.items()) for t, w in ref.weights.items()}, kind
        assert got_report == ref_report, kind


def fails_once(marker):
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise OSError("flaky")
    return "ok"


def test_in_process_engine_retries_a_failed_task(tmp_path):
    section = engine_lib.engine_section()
    section.update(dict(kind="synchronous", retries=1))
    engine = engine_lib.open_engine(section)
    assert list(engine.map(fails_once, [(str(tmp_path / "a"),)])) == [(0, "ok")]
    with pytest.raises(OSError, match="flaky"):
        list(engine.map(fails_once, [(str(tmp_path / "b"),)], retries=0))


def test_engine_config_errors_name_the_key(tmp_path):
    section = engine_lib.engine_section()
    section.kind = "ray"
    with pytest.raises(ConfigError, match="engine.kind 'ray'; expected one of local"):
        engine_lib.open_engine(section)
    section.update(dict(kind="dask"))
    with pytest.raises(ConfigError, match="exactly one of engine.scheduler"):
        engine_lib.open_engine(section)
    section.update(dict(kind="local", scheduler="tcp://127.0.0.1:1"))
    with pytest.raises(ConfigError, match="need engine.kind=dask"):
        engine_lib.open_engine(section)


def test_unreachable_scheduler_is_one_line(monkeypatch):
    monkeypatch.setattr(engine_lib, "CONNECT_TIMEOUT_S", 2)
    section = engine_lib.engine_section()
    section.update(dict(kind="dask", scheduler="tcp://127.0.0.1:9"))
    with pytest.raises(ConfigError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        engine_lib.open_engine(section)


def test_bad_inputs_on_the_engine_are_one_line_naming_the_culprit(tmp_path, capfd,
                                                                  monkeypatch):
    """`lepjax prepare` on 2 local workers: a missing file, a corrupt Parquet file (found by a
    worker's scan task) and an unreachable scheduler each end with one line on stderr, worker
    logs included, and no output directory."""
    from lepjax.cli.main import main

    monkeypatch.setattr(engine_lib, "CONNECT_TIMEOUT_S", 2)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really parquet")
    out = tmp_path / "out"
    base = ["prepare", "--no-progress", f"--config.tokenizer={MISTRAL_SP}",
            f"--config.output_dir={out}"]
    local = ["--config.engine.kind=local", "--config.engine.num_workers=2"]
    cases = [(local + [f"--config.inputs={RU},{tmp_path / 'missing.txt'}"],
              f"{tmp_path / 'missing.txt'}"),
             (local + [f"--config.inputs={RU},{bad}"], f"{bad}: not a readable Parquet file"),
             (["--config.engine.kind=dask", "--config.engine.scheduler=tcp://127.0.0.1:9",
               f"--config.inputs={RU}"], "cannot reach the Dask scheduler at tcp://127.0.0.1:9")]
    for args, culprit in cases:
        capfd.readouterr()
        rc = main(base + args)
        time.sleep(0.5)  # a worker's log lines, if any, reach the captured stderr
        err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
        assert rc == 1 and len(err) == 1 and culprit in err[0], err
        assert err[0].startswith("lepjax prepare: error: "), err
    assert not out.exists()


def test_driver_killed_mid_run_then_rerun_is_identical(corpus, reference, tmp_path):
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "lepjax.cli", "prepare", "--no-progress",
           f"--config.tokenizer={MISTRAL_SP}", f"--config.inputs={','.join(corpus)}",
           f"--config.output_dir={out}", "--config.records_per_shard=300",
           "--config.engine.num_workers=2"]
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        deadline = time.time() + 180
        while not records.shard_complete(str(out), 2) and time.time() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        try:  # the killed driver's worker processes (same session) go too
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not (out / "metadata.json").exists()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert '"shards_skipped": 0' not in res.stdout
    assert hashes(out) == reference
