"""`lepjax adapt` on the demo family: every stage runs, the result improves, a rerun skips stages,
and a run killed in the middle of training finishes with the result of an uninterrupted run.
adapt's config is the real sections of the verbs it runs: any `lepjax train` key reaches the
trainings, and a wrong value fails when the config loads, before anything is read or written."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lepjax.cli.main import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(REPO, "tests", "fixtures")
DEMO = os.path.join(REPO, "configs", "demo.py")
TEXTS = [f"--config.target_text={FIX}/ru_gsd_dev.txt",
         f"--config.heldout_text={FIX}/ru_gsd_test.txt", "--config.eval.max_examples=200"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The reduced demo, every stage including self-calibration: (run dir, argv)."""
    run = tmp_path_factory.mktemp("adapt") / "demo"
    args = ["adapt", f"--config={DEMO}", f"--config.run_dir={run}",
            f"--config.demo.english_text={FIX}/en_ewt_dev.txt,{FIX}/en_ewt_test.txt", *TEXTS,
            "--config.demo.base_steps=60", "--config.demo.instruct_steps=10",
            "--config.train.steps=60", "--config.calibrate.enabled=true",
            "--config.calibrate.prompts=16", "--config.calibrate.steps=5",
            "--config.calibrate.max_new_tokens=8"]
    assert main(args) == 0
    return run, args


def test_demo_pipeline_end_to_end_and_resumable(demo_run, capsys):
    run, args = demo_run
    summary = json.loads((run / "summary.json").read_text())
    cpt = summary["chars_per_token"]
    assert cpt["after"] > 2 * cpt["before"]  # the extended vocabulary covers Cyrillic
    bpb = summary["bits_per_byte"]
    assert bpb["adapted_base"] < bpb["base"]  # embedding training on Russian helped
    assert all(0 < r < 1 for r in summary["lep_residuals"].values())
    from transformers import AutoModelForCausalLM, AutoTokenizer

    inst = summary["exported"]["adapted_instruct"]
    AutoModelForCausalLM.from_pretrained(inst)
    tok = AutoTokenizer.from_pretrained(inst)
    assert "<|im_start|>" in tok.get_vocab()
    assert tok.apply_chat_template([{"role": "user", "content": "Привет"}], tokenize=False)
    # Calibration records: the template renders the BOS text; the record holds one BOS id.
    from lepjax.data import records

    bos = tok.bos_token_id
    assert tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False).startswith(
        tok.bos_token)
    ds = records.open_dataset(str(run / "calibrate" / "data"))
    firsts = [records.decode(blob)["tokens"][:2].tolist()
              for path in ds.shard_paths for blob in _read_all(path)]
    assert firsts and all(f[0] == bos and f[1] != bos for f in firsts)
    stamps = {f: (run / "stages" / f).stat().st_mtime for f in os.listdir(run / "stages")}
    assert set(stamps) == {f"{s}.json" for s in
                           ("demo", "vocab", "prepare", "train", "propagate", "calibrate",
                            "export", "evaluate")}
    capsys.readouterr()
    assert main(args) == 0  # a rerun finds every stage complete
    assert {f: (run / "stages" / f).stat().st_mtime for f in stamps} == stamps


def _read_all(path):
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(path)
    try:
        return reader.read_all()
    finally:
        reader.close()


def _checkpoints(run_dir):
    d = os.path.join(run_dir, "train", "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def test_adapt_killed_during_training_resumes_to_the_uninterrupted_result(demo_run, tmp_path,
                                                                          caplog):
    """SIGKILL after the first training checkpoint; the rerun keeps the finished stages, resumes
    training from the checkpoint and ends with the donor and summary of an uninterrupted run."""
    from lepjax import models

    family = json.loads((demo_run[0] / "stages" / "demo.json").read_text())["outputs"]
    common = [f"--config={DEMO}", "--config.demo.enabled=false",
              f"--config.base={family['base']}", f"--config.instruct={family['instruct']}",
              *TEXTS, "--config.train.steps=150", "--config.train.save_every=10",
              "--config.export.format=lepjax"]
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen([sys.executable, "-m", "lepjax.cli", "adapt",
                             f"--config.run_dir={killed}", *common], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not _checkpoints(killed) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    steps = _checkpoints(killed)
    assert steps and steps[-1] < 150, "the run was not killed in the middle of training"
    stages = killed / "stages"
    assert not (stages / "train.json").exists()
    stamps = {f: (stages / f).stat().st_mtime for f in ("vocab.json", "prepare.json")}

    with caplog.at_level(logging.INFO, logger="lepjax.train"):
        assert main(["adapt", f"--config.run_dir={killed}", *common]) == 0
    assert any("resumed" in r.getMessage() for r in caplog.records)
    assert {f: (stages / f).stat().st_mtime for f in stamps} == stamps  # not redone
    assert main(["adapt", f"--config.run_dir={clean}", *common]) == 0

    a = json.loads((killed / "summary.json").read_text())
    b = json.loads((clean / "summary.json").read_text())
    assert a["bits_per_byte"] == b["bits_per_byte"]
    assert a["lep_residuals"] == b["lep_residuals"]
    for name in ("donor", "adapted_instruct"):
        ma, _ = models.load(a["exported"][name], param_dtype="float32")
        mb, _ = models.load(b["exported"][name], param_dtype="float32")
        np.testing.assert_array_equal(np.asarray(ma.embed[...]),
                                      np.asarray(mb.embed[...]))
        np.testing.assert_array_equal(np.asarray(ma.lm_head_weight()),
                                      np.asarray(mb.lm_head_weight()))
    # Changed settings: the stage whose settings changed and every later one run again; the
    # earlier ones are kept.
    stages = clean / "stages"
    before = {f: (stages / f).stat().st_mtime for f in os.listdir(stages)}
    assert main(["adapt", f"--config.run_dir={clean}", *common,
                 "--config.propagate.method=swap"]) == 0
    after = {f: (stages / f).stat().st_mtime for f in os.listdir(stages)}
    rerun = {f[:-5] for f in before if after[f] != before[f]}
    assert rerun == {"propagate", "export", "evaluate"}
    c = json.loads((clean / "summary.json").read_text())
    assert c["lep_residuals"] != b["lep_residuals"]


def test_train_sections_reach_every_training_of_the_pipeline(tmp_path):
    """`lepjax adapt --config=configs/demo.py --config.optim.schedule=linear
    --config.data.streams=4 --config.mesh.fsdp=2` (2 CPU devices): the training stage runs with
    exactly those settings, read back from its resolved `lepjax train` config (and so do the
    demo's own trainings); the pipeline sets only its paths and the stage's own values."""
    run = tmp_path / "run"
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    cmd = [sys.executable, "-m", "lepjax.cli", "adapt", f"--config={DEMO}",
           "--config.optim.schedule=linear", "--config.data.streams=4", "--config.mesh.fsdp=2",
           f"--config.run_dir={run}",
           f"--config.demo.english_text={FIX}/en_ewt_dev.txt,{FIX}/en_ewt_test.txt",
           f"--config.target_text={FIX}/ru_gsd_dev.txt",
           f"--config.heldout_text={FIX}/ru_gsd_test.txt", "--config.eval.max_examples=20",
           "--config.demo.base_steps=2", "--config.demo.instruct_steps=2",
           "--config.train.steps=2", "--config.extend.k=100", "--config.extend.aux_vocab_size=600",
           "--config.train.progress=false", "--config.export.format=lepjax"]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    resolved = {d: json.loads((run / d / "resolved_config.json").read_text())
                for d in ("train", "demo/base_run", "demo/instruct_run")}
    for d, c in resolved.items():
        assert (c["optim"]["schedule"], c["data"]["streams"], c["mesh"]["fsdp"]) == \
            ("linear", 4, 2), d
    t = resolved["train"]
    assert t["train"]["trainable"] == "embeddings" and t["train"]["steps"] == 2
    assert t["model"]["path"] == str(run / "base_resized")
    assert t["data"]["paths"] == [str(run / "data" / "train")]
    assert t["train"]["run_dir"] == str(run / "train")
    assert (t["optim"]["lr"], t["data"]["seq_len"]) == (3e-3, 128)  # configs/demo.py's values
    base = resolved["demo/base_run"]
    assert base["train"]["trainable"] == "all" and base["train"]["steps"] == 2  # the demo's own
    assert base["model"]["preset"] == "tiny_llama2"
    steps = [json.loads(line)["step"] for line in (run / "train" / "metrics.jsonl").open()]
    assert steps[-1] == 2  # the training ran to its end on the 2-device mesh
    top = json.loads((run / "resolved_config.json").read_text())
    assert top["optim"]["schedule"] == "linear" and top["mesh"]["fsdp"] == 2


def test_empty_run_dir_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["adapt", f"--config={DEMO}", "--config.run_dir="]) == 1
    assert "run_dir" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def unreadable_models(tmp_path):
    """base / instruct directories whose weight file cannot be read: any attempt fails loudly."""
    dirs = []
    for name in ("base", "instruct"):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text("{}")
        (d / "model.safetensors").write_bytes(b"not a safetensors file")
        dirs.append(str(d))
    return dirs


@pytest.mark.parametrize("key,value,closest", [
    ("optim.schedule", "cosin", "cosine"),
    ("train.trainable", "embedings", "embeddings"),
    ("train.lora.targets", "q,vv", "v"),
    ("model.attention", "splsh", "splash"),
    ("init.method", "algn", "align"),
    ("propagate.method", "conversoin", "conversion"),
    ("export.format", "hff", "hf"),
])
def test_a_wrong_value_fails_at_config_load_before_any_weight_is_read(
        key, value, closest, unreadable_models, tmp_path, capsys):
    run = tmp_path / "run"
    base, instruct = unreadable_models
    assert main(["adapt", f"--config={DEMO}", "--config.demo.enabled=false",
                 f"--config.base={base}", f"--config.instruct={instruct}",
                 f"--config.run_dir={run}", *TEXTS, f"--config.{key}={value}"]) == 1
    err = capsys.readouterr().err
    assert key.rsplit(".", 1)[-1] in err and repr(closest) in err.replace('"', "'"), err
    assert "safetensors" not in err and not run.exists()


def test_the_calibration_training_is_validated_too(unreadable_models, tmp_path, capsys):
    base, instruct = unreadable_models
    assert main(["adapt", f"--config={DEMO}", "--config.demo.enabled=false",
                 f"--config.base={base}", f"--config.instruct={instruct}",
                 f"--config.run_dir={tmp_path / 'run'}", *TEXTS, "--config.calibrate.enabled=true",
                 "--config.calibrate.trainable=embed,lm_haed"]) == 1
    err = capsys.readouterr().err
    assert "calibrate" in err and "lm_head" in err, err


def test_a_path_the_pipeline_sets_is_refused(tmp_path, capsys):
    assert main(["adapt", f"--config={DEMO}", f"--config.run_dir={tmp_path / 'run'}",
                 "--config.model.path=/models/x"]) == 1
    err = capsys.readouterr().err
    assert "model.path" in err and "base" in err
    assert not (tmp_path / "run").exists()
