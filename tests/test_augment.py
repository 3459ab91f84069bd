"""FIAT augmentation: records (rationale in the input, loss on the target), kill + resume giving
identical shards, teacher failure keeping finished shards, LoRA training on the shards, inference,
and bad input. Instruction Pre-Training: tests/test_instruct_pt.py; FIAT inference resume,
over-long records and metrics: tests/test_fiat.py."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import sentencepiece as spm

from lepjax import config as config_lib
from lepjax import models
from lepjax.augment import fiat, shards
from lepjax.augment.config import default_config
from lepjax.augment.local_teacher import LocalTeacher
from lepjax.augment.teacher import make_teacher
from lepjax.data import records
from conftest import MISTRAL_SP, tiny_sp_checkpoint

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SP = spm.SentencePieceProcessor(model_file=MISTRAL_SP)
FIAT_CONFIG = os.path.join(REPO, "configs", "fiat", "augment.py")
PER_SHARD = 3


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny random Llama with the Mistral SentencePiece tokenizer (teacher and student)."""
    return tiny_sp_checkpoint(tmp_path_factory.mktemp("models") / "tiny", "tiny_llama2", seed=3)


@pytest.fixture(scope="module")
def teacher(tiny_dir):
    return LocalTeacher(tiny_dir, dtype="float32", batch_size=4, length_bucket=64)


@pytest.fixture(scope="module")
def fiat_inputs(tmp_path_factory):
    with open(os.path.join(HERE, "fixtures", "ru_gsd_dev.txt"), encoding="utf-8") as f:
        lines = [line.strip() for line in f][:8]
    path = tmp_path_factory.mktemp("inputs") / "fiat.jsonl"
    rows = [{"question": f"Вопрос {i}: о чём текст?\nPassage: {t[:80]}", "label": "да" if i % 2
             else "нет"} for i, t in enumerate(lines)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    return str(path), rows


def fiat_overrides(tiny_dir, inputs, out):
    return [("teacher.path", tiny_dir), ("teacher.dtype", "float32"), ("teacher.batch_size", "4"),
            ("teacher.length_bucket", "64"), ("fiat.inputs", inputs),
            ("fiat.input_field", "question"), ("fiat.target_field", "label"),
            ("fiat.tokenizer", tiny_dir), ("fiat.output_dir", str(out)),
            ("fiat.records_per_shard", str(PER_SHARD)), ("fiat.max_new_tokens", "12"),
            ("progress", "false")]


def fiat_config(tiny_dir, inputs, out):
    return config_lib.load(FIAT_CONFIG, fiat_overrides(tiny_dir, inputs, out))


@pytest.fixture(scope="module")
def fiat_run(tiny_dir, teacher, fiat_inputs, tmp_path_factory):
    """An uninterrupted FIAT augmentation (in process)."""
    out = tmp_path_factory.mktemp("fiat") / "a"
    summary = fiat.augment(fiat_config(tiny_dir, fiat_inputs[0], out), teacher=teacher,
                           progress=False)
    assert summary["complete"] and summary["shards_total"] == 3
    return str(out)


def shard_files(out):
    """{relative path: bytes} of every shard and sidecar under text/ and tokens/."""
    names = [f"{sub}/{n}" for sub in ("text", "tokens") for n in os.listdir(os.path.join(out, sub))]
    return {n: open(os.path.join(out, n), "rb").read() for n in names if "/data-" in n}


def read_tokens(directory, index):
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(os.path.join(directory, records.shard_name(index)))
    return [records.decode(b) for b in reader.read(list(range(reader.num_records())))]


def test_fiat_records_put_the_rationale_in_the_input_and_train_on_the_target(
        fiat_run, fiat_inputs, tiny_dir, teacher):
    from lepjax.generate import SamplingParams

    cfg = fiat_config(tiny_dir, fiat_inputs[0], fiat_run)
    with open(os.path.join(fiat_run, "text", "metadata.json")) as f:
        assert json.load(f)["kind"] == "fiat_text"
    ds = records.open_dataset(os.path.join(fiat_run, "tokens"))
    assert ds.kind == "prompt_target" and ds.num_records == len(fiat_inputs[1])
    with pytest.raises(records.DataError, match="'fiat_text' records.*tokens"):
        records.open_dataset(os.path.join(fiat_run, "text"))  # train given text/ by mistake
    beta = fiat.load_reasoning_prompt(cfg.fiat.reasoning_prompt)
    eos = SP.eos_id()
    rows = [r for i in range(3) for r in shards.read_text_shard(os.path.join(fiat_run, "text"), i)]
    recs = [r for i in range(3) for r in read_tokens(os.path.join(fiat_run, "tokens"), i)]
    assert [r["input"] for r in rows] == [x["question"] for x in fiat_inputs[1]]
    assert sum(bool(r["rationale"]) for r in rows) >= len(rows) - 1
    for row, rec, x in zip(rows, recs, fiat_inputs[1]):
        mask, tokens = rec["loss_mask"], rec["tokens"]
        # The target continues the prompt as running text: " yes" after "Answer:" is one
        # "▁yes" token, not a lone "▁" followed by "▁yes".
        p_ids = SP.encode(row["prompt"])
        target_ids = SP.encode(row["prompt"] + " " + x["label"])[len(p_ids):] + [eos]
        assert SP.id_to_piece(target_ids[0]) != "▁"
        assert tokens[:len(p_ids) + 1].tolist() == [SP.bos_id()] + p_ids
        assert mask.tolist() == [0] * (len(tokens) - len(target_ids)) + [1] * len(target_ids)
        assert tokens[mask == 1].tolist() == target_ids
        prompt = SP.decode(tokens[mask == 0][1:].tolist())
        assert tokens[0] == SP.bos_id()
        assert row["rationale"] in prompt and x["question"].split("\n")[0] in prompt
        assert cfg.fiat.task_instruction in prompt and row["target"] == x["label"]
    # The rationale is the teacher's greedy continuation of I_β + x (decoded here directly).
    ids = [SP.bos_id()] + SP.encode(fiat.teacher_prompt(beta, rows[0]["input"]))
    out = teacher.generator.generate([ids], SamplingParams(max_new_tokens=12, eos_ids=(eos,),
                                                           stop=tuple(cfg.fiat.stop)),
                                     tokenizer=teacher.tokenizer)[0]
    assert out.text.strip() == rows[0]["rationale"]


def test_fiat_killed_and_rerun_gives_the_same_shards(fiat_run, fiat_inputs, tiny_dir, teacher,
                                                       tmp_path):
    out = tmp_path / "b"
    cmd = [sys.executable, "-m", "lepjax.cli", "augment", "fiat", f"--config={FIAT_CONFIG}"] + [
        f"--config.{k}={v}" for k, v in fiat_overrides(tiny_dir, fiat_inputs[0], out)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = out / "tokens" / (records.shard_name(0) + ".json")
    deadline = time.time() + 240
    while not first.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL) or proc.wait()
    done = [shards.shard_done(str(out), i) for i in range(3)]
    assert done[0] and not all(done), done  # killed mid-way
    stamp = os.stat(out / "text" / records.shard_name(0)).st_mtime_ns
    cfg = fiat_config(tiny_dir, fiat_inputs[0], out)
    summary = fiat.augment(cfg, teacher=teacher, progress=False)
    assert summary["complete"] and summary["shards_skipped"] >= 1
    assert os.stat(out / "text" / records.shard_name(0)).st_mtime_ns == stamp  # not redone
    assert not [n for sub in ("text", "tokens") for n in os.listdir(out / sub) if ".tmp" in n]
    reference, resumed = shard_files(fiat_run), shard_files(str(out))
    assert sorted(reference) == sorted(resumed) and len(reference) == 12
    for name in reference:
        assert reference[name] == resumed[name], name


def test_teacher_failure_names_the_shard_and_keeps_finished_ones(fiat_run, fiat_inputs, tiny_dir,
                                                                 tmp_path):
    out = tmp_path / "c"
    shutil.copytree(fiat_run, out)
    for name in [f"{sub}/{f}" for sub in ("text", "tokens") for f in os.listdir(out / sub)]:
        if name.endswith("metadata.json") or "-00000" not in name:  # as if killed after shard 0
            os.remove(out / name)
    before = shard_files(str(out))
    with socket.socket() as s:  # a port nobody listens on: connections are refused
        port = s.bind(("127.0.0.1", 0)) or s.getsockname()[1]
    cfg = default_config()
    cfg.teacher.update(dict(backend="openai", urls=(f"http://127.0.0.1:{port}/v1",), model="m",
                            max_retries=0, timeout_s=2.0, backoff_s=0.01, max_in_flight=2))
    with pytest.raises(shards.AugmentError) as err:
        fiat.augment(fiat_config(tiny_dir, fiat_inputs[0], out), teacher=make_teacher(cfg),
                     progress=False)
    msg = str(err.value)
    assert "shard 1" in msg and "record 3 (fiat.jsonl:4)" in msg and "rerun" in msg
    assert shard_files(str(out)) == before  # the finished shard is kept as it was


@pytest.fixture(scope="module")
def lora_run(fiat_run, tiny_dir, tmp_path_factory):
    from lepjax.train import loop

    run = tmp_path_factory.mktemp("lora") / "run"
    cfg = config_lib.load(os.path.join(REPO, "configs", "fiat", "lora_tune.py"), [
        ("model.path", tiny_dir), ("model.dtype", "float32"),
        ("data.paths", os.path.join(fiat_run, "tokens")), ("data.seq_len", "128"),
        ("data.batch_size", "8"), ("train.run_dir", str(run)), ("train.steps", "3"),
        ("train.log_every", "1"), ("train.save_every", "0"), ("train.loss_chunk", "64"),
        ("train.progress", "false"), ("train.async_checkpointing", "false"),
        ("train.lora.rank", "4"), ("optim.lr", "1e-2"), ("optim.warmup_steps", "1"),
        ("train.epochs", "0"), ("data.eval_fraction", "0")])  # 3 steps on 8 records
    initial = models.io.pure_params(models.load(tiny_dir, dtype="float32")[0])
    loop.train(cfg)
    return str(run), initial


def test_fiat_shards_train_a_lora_student(lora_run):
    import jax

    from lepjax.models.io import flatten
    from lepjax.train.checkpoint import Checkpointer, restore_frozen
    from lepjax.train.run import load_run

    run, initial = lora_run
    with open(os.path.join(run, "metrics.jsonl")) as f:
        losses = [json.loads(line)["loss"] for line in f if "loss" in line]
    assert len(losses) == 3 and all(np.isfinite(losses))
    meta = Checkpointer(run).state_metadata(3)
    assert meta["trainable"] and all(k.startswith("lora/") for k in meta["trainable"])
    assert {k.split("/")[-2] for k in meta["trainable"]} == {"q", "k", "v", "o", "gate", "up",
                                                             "down"}
    flat = flatten(initial)
    frozen = restore_frozen(run, {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
                                  for k, v in flat.items()})
    for k, v in flat.items():
        np.testing.assert_array_equal(np.asarray(frozen[k]), np.asarray(v), err_msg=k)
    merged = models.io.flatten(models.io.pure_params(load_run(run)))
    assert not np.array_equal(np.asarray(merged["layers/attn/q"]),
                              np.asarray(flat["layers/attn/q"]))  # the adapters moved


def test_fiat_infer_uses_teacher_rationale_then_student(lora_run, fiat_run, fiat_inputs,
                                                        tiny_dir, teacher, tmp_path):
    from lepjax.augment.fiat_infer import infer

    preds = tmp_path / "preds.jsonl"
    cfg = config_lib.load(os.path.join(REPO, "configs", "fiat", "infer.py"),
                          fiat_overrides(tiny_dir, fiat_inputs[0], tmp_path / "unused") + [
                              ("fiat.infer.student", lora_run[0]),
                              ("fiat.infer.output", str(preds)), ("fiat.infer.dtype", "float32"),
                              ("fiat.infer.max_new_tokens", "4"),
                              ("fiat.infer.length_bucket", "64")])
    summary = infer(cfg, teacher=teacher, progress=False)
    rows = [json.loads(line) for line in preds.read_text(encoding="utf-8").splitlines()]
    trained = [r for i in range(3) for r in shards.read_text_shard(os.path.join(fiat_run, "text"), i)]
    assert summary["inputs"] == len(rows) == len(trained) and "exact_match" in summary
    for row, t in zip(rows, trained):
        assert row["input"] == t["input"] and row["rationale"] == t["rationale"]
        assert row["prompt"] == t["prompt"]  # the student sees the format it was tuned on
        assert isinstance(row["prediction"], str) and row["target"] == t["target"]


def test_bad_input_names_file_line_and_key(fiat_run, fiat_inputs, tiny_dir, tmp_path, capsys):
    from lepjax.cli.main import main

    bad = tmp_path / "bad.jsonl"
    lines = [json.dumps(r, ensure_ascii=False) for r in fiat_inputs[1][:4]]
    lines[2] = json.dumps({"question": "без ответа"}, ensure_ascii=False)
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    args = ["augment", "fiat", f"--config={FIAT_CONFIG}"] + [
        f"--config.{k}={v}" for k, v in fiat_overrides(tiny_dir, str(bad), out)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"{bad}:3" in err and "'label'" in err
    assert not out.exists() or not any(n.startswith("data-") for sub in ("text", "tokens")
                                       for n in os.listdir(out / sub))
    bad.write_text(lines[0] + "\n{not json\n", encoding="utf-8")
    with pytest.raises(shards.AugmentError, match=f"{bad}:2: invalid JSON"):
        fiat.augment(fiat_config(tiny_dir, str(bad), out), progress=False)
    # Other inputs into a finished output directory: refused, nothing touched.
    before = shard_files(fiat_run)
    bad.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in fiat_inputs[1][:2]),
                   encoding="utf-8")
    with pytest.raises(shards.AugmentError, match="different augmentation"):
        fiat.augment(fiat_config(tiny_dir, str(bad), fiat_run), progress=False)
    assert shard_files(fiat_run) == before


def test_records_the_teacher_cannot_take_fail_or_are_skipped_by_on_error(
        tiny_dir, teacher, fiat_inputs, tmp_path):
    """A record whose prompt does not fit the teacher's context: `fail` names it and stops,
    `skip` leaves it out of its shard and keeps every other record."""
    rows = list(fiat_inputs[1][:6])
    rows[4] = {"question": "слово " * 600, "label": "да"}  # beyond the tiny model's context
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    with pytest.raises(shards.AugmentError, match=r"shard 1 .*record 4 \(long.jsonl:5\)"):
        fiat.augment(fiat_config(tiny_dir, str(path), tmp_path / "fail"), teacher=teacher,
                     progress=False)
    cfg = config_lib.load(FIAT_CONFIG, fiat_overrides(tiny_dir, str(path), tmp_path / "skip")
                          + [("fiat.on_error", "skip")])
    summary = fiat.augment(cfg, teacher=teacher, progress=False)
    assert summary["complete"] and summary["records_failed_this_run"] == 1
    kept = [r["input"] for i in range(2)
            for r in shards.read_text_shard(str(tmp_path / "skip" / "text"), i)]
    assert kept == [r["question"] for k, r in enumerate(rows) if k != 4]
    assert records.open_dataset(str(tmp_path / "skip" / "tokens")).num_records == 5


def test_fiat_infer_keeps_the_teachers_rationales_when_some_inputs_fail(
        lora_run, fiat_inputs, tiny_dir, teacher, tmp_path):
    from lepjax.augment.fiat_infer import infer

    class Counting:  # the real local teacher, counting the prompts it is sent
        def __init__(self):
            self.sent = 0

        def complete(self, prompts, request, progress=False, on_result=None):
            self.sent += len(prompts)
            return teacher.complete(prompts, request, progress, on_result)

    rows = list(fiat_inputs[1][:4])
    path = tmp_path / "in.jsonl"

    def write(long_question):
        rows[2] = {**rows[2], "question": long_question}
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                        encoding="utf-8")

    write("слово " * 600)  # beyond the teacher's context
    preds = tmp_path / "preds.jsonl"
    cfg = config_lib.load(os.path.join(REPO, "configs", "fiat", "infer.py"),
                          fiat_overrides(tiny_dir, str(path), tmp_path / "unused") + [
                              ("fiat.infer.student", lora_run[0]),
                              ("fiat.infer.output", str(preds)), ("fiat.infer.dtype", "float32"),
                              ("fiat.infer.max_new_tokens", "4")])
    with pytest.raises(shards.AugmentError, match=r"input 2 \(in.jsonl:3\).*kept in"):
        infer(cfg, teacher=Counting(), progress=False)
    cache = tmp_path / "preds.jsonl.rationales"  # one JSONL per shard of inputs
    kept = [line for f in sorted(cache.iterdir()) if f.suffix == ".jsonl"
            for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    # Inputs 0 and 1 (shard 0, with the failing input 2) are kept; the run stopped before
    # shard 1 (input 3).
    assert sorted(json.loads(line)["index"] for line in kept) == [0, 1] and not preds.exists()
    write("Вопрос 2: короткий?")
    counting = Counting()
    infer(cfg, teacher=counting, progress=False)
    assert counting.sent == 2  # only the inputs without a rationale go to the teacher again
    assert len(preds.read_text(encoding="utf-8").splitlines()) == 4 and not cache.exists()


def test_a_rerun_with_another_teacher_is_recorded_and_warned(fiat_run, fiat_inputs, tiny_dir,
                                                             teacher, tmp_path, caplog):
    import logging

    out = tmp_path / "t"
    shutil.copytree(fiat_run, out)
    with open(out / "augment.json") as f:
        assert [t["path"] for t in json.load(f)["teachers"]] == [os.path.abspath(tiny_dir)]
    other = tmp_path / "other_teacher"
    shutil.copytree(tiny_dir, other)
    cfg = config_lib.load(FIAT_CONFIG, fiat_overrides(tiny_dir, fiat_inputs[0], out)
                          + [("teacher.path", str(other))])
    with caplog.at_level(logging.WARNING, logger="lepjax.augment"):
        summary = fiat.augment(cfg, teacher=teacher, progress=False)
    assert summary["shards_skipped"] == 3  # nothing redone: the shards are complete
    assert any("continues with" in r.getMessage() for r in caplog.records)
    with open(out / "augment.json") as f:
        assert [t["path"] for t in json.load(f)["teachers"]] == [os.path.abspath(tiny_dir),
                                                                  str(other)]
