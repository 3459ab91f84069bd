"""Reruns and bad inputs never lose or misdescribe data (issue 17).

Each test runs `lepjax VERB ...` in-process and checks three things: the exit code, the single
error line naming the file or key, and that what was already written is byte-identical before
and after (hashed). Datasets are tokenised with a 300-token BPE trained here, training runs use
the tiny Llama 3 preset (512 rows).
"""

import glob
import hashlib
import json
import logging
import os
import shutil
import socket

import numpy as np
import pytest
from conftest import MISTRAL_SP

from lepjax.cli.main import main

HERE = os.path.dirname(os.path.abspath(__file__))
RU = os.path.join(HERE, "fixtures", "ru_gsd_dev.txt")
EN = os.path.join(HERE, "fixtures", "en_ewt_dev.txt")


def tree_hashes(*paths) -> dict[str, str]:
    """sha256 of every file under `paths` (files or directories), by path."""
    out = {}
    for root in map(str, paths):
        files = [root] if os.path.isfile(root) else glob.glob(os.path.join(root, "**"),
                                                               recursive=True)
        for f in files:
            if os.path.isfile(f):
                with open(f, "rb") as fh:
                    out[f] = hashlib.sha256(fh.read()).hexdigest()
    return out


def run(capsys, *argv) -> tuple[int, str]:
    """(exit code, the one error line) of `lepjax ARGV`; asserts there is one and no traceback."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) <= 1, err
    return rc, lines[0] if lines else ""


def text_head(path, dst, n_bytes) -> str:
    with open(path, "rb") as f:
        blob = f.read(n_bytes)
    blob = blob[:blob.rfind(b"\n") + 1]
    with open(dst, "wb") as f:
        f.write(blob)
    return str(dst)


def prepare_args(tokenizer, inputs, out, *extra):
    return ["prepare", f"--config.tokenizer={tokenizer}", f"--config.inputs={inputs}",
            f"--config.output_dir={out}", "--config.engine.kind=synchronous", *extra]


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    root = tmp_path_factory.mktemp("texts")
    return {"ru": text_head(RU, root / "ru.txt", 20_000),
            "en": text_head(EN, root / "en.txt", 8_000)}


@pytest.fixture(scope="module")
def small_tokenizer(texts, tmp_path_factory):
    """A byte-level BPE tokenizer.json of 300 tokens (<s>, </s> as BOS / EOS)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train([texts["ru"]], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    path = str(tmp_path_factory.mktemp("tokenizer") / "tokenizer.json")
    tok.save(path)
    return path


@pytest.fixture(scope="module")
def datasets(texts, small_tokenizer, tmp_path_factory):
    """{"ru", "en"}: small datasets prepared with `small_tokenizer`."""
    root = tmp_path_factory.mktemp("datasets")
    out = {}
    for name, path in texts.items():
        out[name] = str(root / name)
        assert main(prepare_args(small_tokenizer, path, out[name])) == 0
    return out


# ---- prepare -----------------------------------------------------------------------------------


@pytest.mark.parametrize("change", ["tokenizer", "inputs"])
def test_prepare_rerun_with_other_tokenizer_or_inputs_is_refused(datasets, texts, small_tokenizer,
                                                                 tmp_path, capsys, change):
    out = tmp_path / "d"
    shutil.copytree(datasets["ru"], out)
    before = tree_hashes(out)
    tok, inputs = ((MISTRAL_SP, texts["ru"]) if change == "tokenizer" else
                   (small_tokenizer, texts["en"]))
    rc, line = run(capsys, *prepare_args(tok, inputs, out))
    assert rc == 1
    assert f"output_dir {out} was prepared differently" in line and f"other {change}" in line
    assert "--config.overwrite=True" in line
    assert tree_hashes(out) == before
    # The way to force it: overwrite rebuilds the directory from the new inputs.
    assert run(capsys, *prepare_args(tok, inputs, out, "--config.overwrite=True"))[0] == 0
    with open(out / "metadata.json") as f:
        meta = json.load(f)
    assert meta["sources"][0]["path"] == os.path.abspath(inputs)


def test_prepare_non_utf8_input_names_file_and_byte(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes("привет\n".encode() + b"ok \xff\xfe here\n")
    rc, line = run(capsys, *prepare_args(MISTRAL_SP, bad, tmp_path / "out"))
    assert rc == 1
    assert f"{bad}: not UTF-8 text at byte 16 (line 2)" in line
    assert not (tmp_path / "out").exists()  # no empty output directory left


def test_prepare_missing_parent_directory(texts, tmp_path, capsys):
    out = tmp_path / "missing" / "d"
    rc, line = run(capsys, *prepare_args(MISTRAL_SP, texts["ru"], out))
    assert rc == 1
    assert f"its parent directory {tmp_path / 'missing'} does not exist" in line
    assert not (tmp_path / "missing").exists()


def test_prepare_read_only_parent_directory(texts, tmp_path, capsys):
    if os.geteuid() == 0:  # root writes through file modes; sysfs refuses new directories
        parent = "/sys"
    else:
        parent = tmp_path / "ro"
        parent.mkdir()
        parent.chmod(0o555)
    out = os.path.join(parent, "lepjax-test-out")
    rc, line = run(capsys, *prepare_args(MISTRAL_SP, texts["ru"], out))
    assert rc == 1
    assert f"output_dir {out} cannot be created" in line
    assert not os.path.exists(out)


# ---- vocab -------------------------------------------------------------------------------------


def test_vocab_extend_non_utf8_corpus_names_file_and_byte(tmp_path, capsys):
    bad = tmp_path / "corpus.txt"
    bad.write_bytes(b"first line\nsecond \xc3 line\n")
    rc, line = run(capsys, "vocab", "extend", f"--config.tokenizer={MISTRAL_SP}",
                   f"--config.corpus={bad}", f"--config.output_dir={tmp_path / 'tok'}")
    assert rc == 1
    assert f"{bad}: not UTF-8 text at byte 18 (line 2)" in line
    assert os.listdir(tmp_path) == ["corpus.txt"]  # no output (or .partial) directory


def test_vocab_output_onto_its_input_tokenizer_is_refused(small_tokenizer, texts, tmp_path,
                                                          capsys):
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    shutil.copy(small_tokenizer, tok_dir / "tokenizer.json")
    before = tree_hashes(tmp_path)
    rc, line = run(capsys, "vocab", "extend", f"--config.tokenizer={tok_dir}",
                   f"--config.corpus={texts['ru']}", f"--config.output_dir={tok_dir}",
                   "--config.overwrite=True")
    assert rc == 1
    assert f"output {tok_dir} is (or holds) the input {tok_dir}" in line
    assert tree_hashes(tmp_path) == before


# ---- models ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random Hugging Face checkpoint (`lepjax init`)."""
    path = tmp_path_factory.mktemp("model") / "m"
    assert main(["init", str(path), "--format=hf"]) == 0
    return str(path)


def test_malformed_config_json_value_names_file_and_field(model_dir, tmp_path, capsys):
    src = tmp_path / "m"
    shutil.copytree(model_dir, src)
    with open(src / "config.json") as f:
        cfg = json.load(f)
    cfg["num_attention_heads"] = "four"
    with open(src / "config.json", "w") as f:
        json.dump(cfg, f)
    before = tree_hashes(src)
    rc, line = run(capsys, "convert", src, tmp_path / "dst")
    assert rc == 1
    assert f"{src / 'config.json'}: num_attention_heads is 'four'; expected a positive" in line
    assert not (tmp_path / "dst").exists() and tree_hashes(src) == before


def test_propagate_onto_its_instruct_model_is_refused(model_dir, tmp_path, capsys):
    instruct = tmp_path / "instruct"
    shutil.copytree(model_dir, instruct)
    before = tree_hashes(instruct)
    rc, line = run(capsys, "propagate", f"--config.base={model_dir}",
                   f"--config.instruct={instruct}", f"--config.donor={model_dir}",
                   f"--config.output_dir={instruct}", "--config.overwrite=True")
    assert rc == 1
    assert f"output {instruct} is (or holds) the input {instruct}" in line
    assert tree_hashes(instruct) == before


def test_forward_existing_report_is_refused(model_dir, tmp_path, capsys):
    out = tmp_path / "fwd"
    out.mkdir()
    (out / "forward.json").write_text('{"logits_sum": 1.0}')
    before = tree_hashes(out)
    rc, line = run(capsys, "forward", f"--config.model.path={model_dir}",
                   f"--config.output_dir={out}")
    assert rc == 1
    assert f"{out / 'forward.json'} exists" in line and "--config.overwrite=True" in line
    assert tree_hashes(out) == before


# ---- generate / serve --------------------------------------------------------------------------


def generate_args(model, prompts, output, *extra):
    return ["generate", f"--config.model.path={model}", f"--config.prompts={prompts}",
            f"--config.output={output}", "--config.max_new_tokens=2", *extra]


def test_generate_onto_its_prompts_is_refused(model_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Привет"}\n{"prompt": "Как дела?"}\n', encoding="utf-8")
    before = tree_hashes(tmp_path)
    rc, line = run(capsys, *generate_args(model_dir, prompts, prompts, "--config.overwrite=True"))
    assert rc == 1
    assert f"output {prompts} is the prompts file" in line
    assert tree_hashes(tmp_path) == before
    # --log_level=debug shows the traceback instead of the line.
    with pytest.raises(ValueError, match="is the prompts file"):
        main(["--log_level=debug", *generate_args(model_dir, prompts, prompts)])


def test_generate_existing_output_is_refused(model_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Привет\n", encoding="utf-8")
    output = tmp_path / "out.jsonl"
    output.write_text('{"completion": "earlier work"}\n')
    before = tree_hashes(tmp_path)
    rc, line = run(capsys, *generate_args(model_dir, prompts, output))
    assert rc == 1
    assert f"output {output} exists" in line and "--config.overwrite=True" in line
    assert tree_hashes(tmp_path) == before


def test_generate_malformed_jsonl_names_file_and_line(model_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Привет"}\n{"prompt": "Как дела?",, }\n', encoding="utf-8")
    before = tree_hashes(tmp_path)
    rc, line = run(capsys, *generate_args(model_dir, prompts, tmp_path / "out.jsonl"))
    assert rc == 1
    assert f"{prompts}:2:" in line
    assert tree_hashes(tmp_path) == before and not (tmp_path / "out.jsonl").exists()


def test_generate_non_utf8_prompts_names_file_and_byte(model_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes("Привет\n".encode() + b"bad \xff\n")
    rc, line = run(capsys, *generate_args(model_dir, prompts, tmp_path / "out.jsonl"))
    assert rc == 1
    assert f"{prompts}: not UTF-8 text at byte 17 (line 2)" in line
    assert os.listdir(tmp_path) == ["prompts.txt"]


def test_serve_port_in_use_is_one_line(model_dir, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc, line = run(capsys, "serve", f"--config.model.path={model_dir}",
                       f"--config.port={port}")
    assert rc == 1
    assert f"cannot listen on 127.0.0.1:{port}" in line and "--config.port" in line


# ---- augment -----------------------------------------------------------------------------------


def test_augment_unknown_teacher_backend_writes_nothing(tmp_path, capsys):
    out = tmp_path / "fiat"
    rc, line = run(capsys, "augment", "fiat", "--config.teacher.backend=vllm",
                   f"--config.fiat.output_dir={out}")
    assert rc == 1
    assert "teacher.backend" in line and "'vllm'" in line
    assert not out.exists() and os.listdir(tmp_path) == []


# ---- train -------------------------------------------------------------------------------------


def train_args(data, run_dir, steps, *extra):
    return ["train", f"--config.data.paths={data}", f"--config.train.run_dir={run_dir}",
            f"--config.train.steps={steps}", "--config.train.save_every=1",
            "--config.train.log_every=1", "--config.train.progress=false",
            "--config.train.async_checkpointing=false", "--config.model.dtype=float32",
            "--config.data.seq_len=64",
            "--config.data.batch_size=8", "--config.train.loss_chunk=32",
            "--config.optim.lr=3e-3", "--config.optim.warmup_steps=1", *extra]


@pytest.fixture(scope="module")
def base_run(datasets, tmp_path_factory):
    """A 2-step run with checkpoints at steps 1 and 2."""
    run_dir = tmp_path_factory.mktemp("train") / "run"
    assert main(train_args(datasets["ru"], run_dir, 2)) == 0
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["1", "2"]
    return run_dir


def corrupt(run_dir, step):
    """Overwrite the largest orbax blob of a checkpoint with zeros (size unchanged)."""
    blobs = glob.glob(os.path.join(run_dir, "checkpoints", str(step), "state", "**", "d", "*"),
                      recursive=True)
    blob = max(blobs, key=os.path.getsize)
    with open(blob, "r+b") as f:
        f.write(b"\0" * os.path.getsize(blob))


def losses(run_dir) -> dict[int, float]:
    out = {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for m in map(json.loads, f):
            if "loss" in m:
                out[m["step"]] = m["loss"]
    return out


def test_train_resume_with_other_data_is_refused(base_run, datasets, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(base_run, run_dir)
    before = tree_hashes(run_dir)
    rc, line = run(capsys, *train_args(datasets["en"], run_dir, 4))
    assert rc == 1
    assert f"train.run_dir {run_dir} was started with other settings" in line
    assert f"data.paths (['{datasets['ru']}'] -> ['{datasets['en']}'])" in line
    assert "data.fingerprints" in line and "lepjax convert" in line
    assert tree_hashes(run_dir) == before


def test_train_run_dir_holding_other_files_is_refused(datasets, capsys):
    before = tree_hashes(datasets["en"])
    rc, line = run(capsys, *train_args(datasets["ru"], datasets["en"], 2))
    assert rc == 1
    assert f"train.run_dir {datasets['en']} holds files but is not a run" in line
    assert tree_hashes(datasets["en"]) == before


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(base_run, datasets, tmp_path,
                                                             caplog):
    import jax

    from lepjax import models
    from lepjax.train.run import load_run

    fallback, explicit = tmp_path / "fallback", tmp_path / "explicit"
    shutil.copytree(base_run, fallback)
    shutil.copytree(base_run, explicit)
    corrupt(fallback, 2)
    kept = tree_hashes(fallback / "checkpoints" / "1")
    with caplog.at_level(logging.INFO, logger="lepjax"):
        assert main(train_args(datasets["ru"], fallback, 3)) == 0  # steps may change
    log = caplog.text
    assert f"checkpoint at step 2 in {fallback / 'checkpoints'} does not restore: " in log
    assert "ZSTD" in log or "decompress" in log.lower()
    assert "resuming from step 1, the newest intact checkpoint" in log
    assert "train.steps 2 -> 3" in log  # a change that is allowed, logged old -> new
    assert tree_hashes(fallback / "checkpoints" / "1") == kept
    assert os.path.isdir(fallback / "checkpoints_set_aside" / "2")  # moved aside, not deleted
    # The same run resumed explicitly from step 1 ends identical.
    assert main(train_args(datasets["ru"], explicit, 3, "--config.train.resume_step=1")) == 0
    got, ref = losses(fallback), losses(explicit)
    assert [got[s] for s in (2, 3)] == [ref[s] for s in (2, 3)]
    a = jax.tree_util.tree_leaves_with_path(models.io.pure_params(load_run(str(fallback))))
    b = jax.tree_util.tree_leaves_with_path(models.io.pure_params(load_run(str(explicit))))
    assert [k for k, _ in a] == [k for k, _ in b]
    for (k, x), (_, y) in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(k))
    # The resolved config of every launch is kept.
    assert len(glob.glob(str(fallback / "resolved_config*.json"))) > len(
        glob.glob(str(base_run / "resolved_config*.json")))


def test_no_intact_checkpoint_lists_directory_and_steps(base_run, datasets, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(base_run, run_dir)
    corrupt(run_dir, 2)
    corrupt(run_dir, 1)
    before = tree_hashes(run_dir)
    rc, line = run(capsys, *train_args(datasets["ru"], run_dir, 4))
    assert rc == 1
    assert f"no checkpoint in {run_dir / 'checkpoints'} restores; tried step 2 (" in line
    assert "; step 1 (" in line
    assert tree_hashes(run_dir) == before  # nothing written for a launch that could not run


def test_non_finite_loss_is_one_line_naming_step_and_checkpoint(base_run, datasets, tmp_path,
                                                                capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(base_run, run_dir)
    before = tree_hashes(run_dir / "checkpoints")
    rc, line = run(capsys, *train_args(datasets["ru"], run_dir, 6, "--config.optim.lr=1e30",
                                       "--config.train.save_every=0"))
    assert rc == 1
    assert "non-finite loss" in line and "at step " in line
    assert f"last good checkpoint (step 2) in {run_dir / 'checkpoints'} is intact" in line
    assert tree_hashes(run_dir / "checkpoints") == before
