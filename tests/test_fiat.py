"""FIAT as Wang, Wieting and Clark define it: fiat-infer keeps the rationales (and predictions) it
had when killed and a rerun asks the teacher only for the rest (one engine task per shard that
misses some); a record too long for seq_len is cut in x only (never I_τ, the rationale or y) or
refused; accuracy and token F1 beside exact match, the eval package's own functions. The teacher is a fake OpenAI server on 127.0.0.1 (tests/fake_openai.py)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import MISTRAL_SP, tiny_sp_checkpoint
from fake_openai import FakeServer
from lepjax import config as config_lib
from lepjax.augment import fiat, fiat_infer, shards
from lepjax.data import records
from lepjax.tokenizer import load_tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CONFIGS = os.path.join(REPO, "configs", "fiat")
RUN_INFER = """
import sys
from lepjax import config as config_lib
from lepjax.augment.fiat_infer import infer
infer(config_lib.load(sys.argv[1], [tuple(a.split("=", 1)) for a in sys.argv[2:]]))
"""


def rationale(prompt):
    return f" Because of input {prompt.rsplit('Input: ', 1)[1].split(chr(10))[0][:20]}.\n"


def write_inputs(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    return str(path)


def teacher_overrides(url):
    return [("teacher.backend", "openai"), ("teacher.urls", url), ("teacher.max_in_flight", "1"),
            ("teacher.max_retries", "0"), ("teacher.timeout_s", "30"), ("progress", "false"),
            ("engine.kind", "synchronous")]


def kept_rationales(directory):
    """The complete rationale lines of every shard file."""
    out = []
    for name in sorted(os.listdir(directory)) if directory.exists() else []:
        for line in (directory / name).read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # the line a kill cut short
                pass
    return out


def test_fiat_infer_killed_keeps_rationales_and_rerun_sends_only_the_rest(tmp_path):
    """Killed in process after 3 rationales; the rerun runs one engine task per shard that still
    misses some, on 2 local workers."""
    student = tiny_sp_checkpoint(tmp_path / "student", "tiny_llama2", seed=1)
    rows = [{"question": f"Вопрос {i}: есть ли ответ?", "label": "да" if i % 2 else "нет"}
            for i in range(8)]
    inputs = write_inputs(tmp_path / "in.jsonl", rows)
    preds = tmp_path / "preds.jsonl"
    with FakeServer(rationale, delay_s=0.3) as server:
        overrides = teacher_overrides(server.url) + [
            ("fiat.inputs", inputs), ("fiat.input_field", "question"),
            ("fiat.target_field", "label"), ("fiat.tokenizer", student),
            ("fiat.records_per_shard", "2"),
            ("fiat.infer.student", student), ("fiat.infer.output", str(preds)),
            ("fiat.infer.dtype", "float32"), ("fiat.infer.max_new_tokens", "3"),
            ("fiat.infer.length_bucket", "64"), ("fiat.infer.batch_size", "4")]
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
        proc = subprocess.Popen(
            [sys.executable, "-c", RUN_INFER, os.path.join(CONFIGS, "infer.py")]
            + [f"{k}={v}" for k, v in overrides], cwd=REPO, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        cache = tmp_path / "preds.jsonl.rationales"
        deadline = time.time() + 180
        while len(kept_rationales(cache)) < 3:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.time() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kept = kept_rationales(cache)
        assert 3 <= len(kept) < len(rows) and not preds.exists()
        sent = len(server.prompts)
        cfg = config_lib.load(os.path.join(CONFIGS, "infer.py"), overrides + [
            ("engine.kind", "local"), ("engine.num_workers", "2")])
        summary = fiat_infer.infer(cfg)
        resent = server.prompts[sent:]
    assert len(resent) == len(rows) - len(kept)  # only the rationales it did not have
    kept_inputs = {rows[r["index"]]["question"] for r in kept}
    assert not [p for p in resent if any(q in p for q in kept_inputs)]
    # One request at a time in process, in input order: the shards complete before the kill
    # are not run again.
    assert summary["shards_total"] == 4 and summary["shards_run"] == 4 - len(kept) // 2
    out = [json.loads(line) for line in preds.read_text(encoding="utf-8").splitlines()]
    assert [r["input"] for r in out] == [r["question"] for r in rows]
    for r in out:
        assert r["rationale"] == rationale("Input: " + r["input"]).strip()
        assert "Reasoning: " + r["rationale"] in r["prompt"]
    assert {"exact_match", "accuracy", "token_f1"} <= set(summary)
    assert not cache.exists() and not (tmp_path / "preds.jsonl.predictions.jsonl").exists()


def test_predictions_already_on_disk_are_reused(tmp_path):
    """A rerun after the student had answered some inputs decodes only the others."""
    path = tmp_path / "p.jsonl"
    shas = {i: shards.sha(p) for i, p in enumerate(("a", "b", "c"))}
    log = fiat_infer.Appender(str(path), shas)
    log.add(0, prediction="yes")
    log.add(2, prediction="no")
    log.close()
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"index": 1, "sha": "')  # the line a kill cut short
    again = fiat_infer.Appender(str(path), {**shas, 2: shards.sha("changed")})
    assert {i: r["prediction"] for i, r in again.done.items()} == {0: "yes"}
    again.add(1, prediction="maybe")
    again.close()
    assert set(fiat_infer.Appender(str(path), shas).done) == {0, 1, 2}


def fiat_cfg(tmp_path, url, inputs, **fiat_keys):
    cfg = config_lib.load(os.path.join(CONFIGS, "augment.py"), teacher_overrides(url) + [
        ("fiat.inputs", inputs), ("fiat.input_field", "question"),
        ("fiat.target_field", "label"), ("fiat.tokenizer", MISTRAL_SP),
        ("fiat.output_dir", str(tmp_path / "out")), ("fiat.records_per_shard", "2")])
    cfg.fiat.update(fiat_keys)
    return cfg


def test_an_over_long_record_is_cut_in_x_only_or_refused(tmp_path):
    long_x = "Вопрос: что написано? Passage: " + "Москва стоит на реке. " * 60
    rows = [{"question": long_x, "label": "да"}, {"question": "Короткий вопрос?", "label": "нет"}]
    inputs = write_inputs(tmp_path / "long.jsonl", rows)
    tok = load_tokenizer(MISTRAL_SP)
    with FakeServer(rationale) as server:
        with pytest.raises(shards.AugmentError, match=r"record 0 \(long.jsonl:1\).*fiat.seq_len"):
            fiat.augment(fiat_cfg(tmp_path, server.url, inputs, seq_len=128, on_long="error"))
        summary = fiat.augment(fiat_cfg(tmp_path / "t", server.url, inputs, seq_len=128))
    assert summary["records_truncated_this_run"] == 1
    text = shards.read_text_shard(summary["text"], 0)
    ds = records.open_dataset(summary["tokens"])
    assert ds.metadata["max_record_tokens"] <= 128
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(ds.shard_paths[0])
    recs = [records.decode(b) for b in reader.read([0, 1])]
    cfg = fiat_cfg(tmp_path, "", inputs)
    for row, rec, x in zip(text, recs, rows):
        assert len(rec["tokens"]) <= 128
        head, rest = row["prompt"].split("\n\nInput: ", 1)
        x_in_prompt, tail = rest.split("\n\nReasoning: ", 1)
        assert head == cfg.fiat.task_instruction  # I_τ whole
        assert tail == row["rationale"] + "\n\nAnswer:"  # the rationale whole
        assert x["question"].startswith(x_in_prompt)
        assert row["input_truncated"] == (x is rows[0]) == (x_in_prompt != x["question"])
        target = tok.decode(rec["tokens"][rec["loss_mask"] == 1].tolist())
        assert target.strip() == x["label"]  # the target whole (EOS skipped by decode)
    assert len(recs[0]["tokens"]) > 100  # cut to fit, not to nothing


def test_accuracy_and_token_f1_beside_exact_match():
    rows = [{"prediction": "Yes.", "target": "yes"},
            {"prediction": "the Moskva river", "target": "Moskva river"},
            {"prediction": "no", "target": "no"},
            {"prediction": "1147 year", "target": "in 1147"}]
    got = fiat_infer.score(rows)
    assert got["exact_match"] == 0.75  # after normalising case, punctuation and articles
    assert got["accuracy"] == 0.25  # only "no" is the label string itself
    assert got["token_f1"] == pytest.approx((1 + 1 + 1 + 0.5) / 4)
    assert fiat_infer.score([{"prediction": "x"}]) == {}
    # The eval package's generation metrics are the same functions (lepjax.answers).
    from lepjax import answers
    from lepjax.eval import metrics

    assert metrics.EXAMPLE_METRICS["exact_match"] is answers.exact_match
    assert metrics.EXAMPLE_METRICS["f1"] is answers.token_f1


def test_fiat_infer_never_writes_onto_its_inputs_or_an_existing_output(tmp_path):
    """Both refused before a teacher or a student is loaded, and nothing on disk changes."""
    src = write_inputs(tmp_path / "in.jsonl", [{"input": "2+2?", "target": "4"}])
    done = tmp_path / "pred.jsonl"
    done.write_text('{"prediction": "4"}\n', encoding="utf-8")
    prompt = tmp_path / "reasoning.txt"
    prompt.write_text("Think.\nInput: {input}\n", encoding="utf-8")
    before = {p: open(p, "rb").read() for p in (src, done)}
    for output, match in [(src, "is one of fiat.inputs"),
                          (done, "exists; set fiat.infer.overwrite")]:
        cfg = config_lib.load(os.path.join(CONFIGS, "infer.py"), teacher_overrides(
            "http://127.0.0.1:9") + [("fiat.inputs", src), ("fiat.reasoning_prompt", str(prompt)),
                                     ("fiat.infer.student", str(tmp_path / "no-student")),
                                     ("fiat.infer.output", str(output))])
        with pytest.raises(shards.AugmentError, match=match):
            fiat_infer.infer(cfg)
    assert {p: open(p, "rb").read() for p in (src, done)} == before
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl", "pred.jsonl", "reasoning.txt"]
