"""Bad input fails with a message naming the culprit; configs load, override and dump."""

import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from lepjax import config as config_lib
from lepjax import models
from lepjax.cli.main import VERBS, main
from lepjax.models.safetensors_io import open_tensors, write_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORWARD = os.path.join(REPO, "configs", "forward.py")


def drop_tensor(path, name):
    f = os.path.join(path, "model.safetensors")
    tensors = {k: np.asarray(v) for k, v in open_tensors(f).items()}
    del tensors[name]
    os.remove(f)
    write_file(f, [(k, v.shape, v.dtype) for k, v in tensors.items()], lambda k: tensors[k])


def test_missing_weight_is_named(hf_dir):
    path, _ = hf_dir("llama2")
    drop_tensor(path, "model.layers.1.mlp.up_proj.weight")
    with pytest.raises(ValueError, match=r"missing weight\(s\) \['model.layers.1.mlp.up_proj"):
        models.load(path)


def test_tensor_that_does_not_fit_the_config_is_named(hf_dir):
    path, _ = hf_dir("llama2")
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    cfg["intermediate_size"] = 128
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    with pytest.raises(ValueError, match=r"weight model.layers.\d.mlp.\w+_proj.weight has shape"):
        models.load(path)


def test_truncated_safetensors_is_named(hf_dir):
    path, _ = hf_dir("llama2")
    f = os.path.join(path, "model.safetensors")
    with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) // 2)
    with pytest.raises(ValueError, match=r"model.safetensors: truncated"):
        models.load(path)


def test_missing_shard_is_named(hf_dir, tmp_path):
    path, _ = hf_dir("llama2")
    model, _ = models.load(path)
    out = models.save_hf(model, str(tmp_path / "sharded"), max_shard_bytes=100_000)
    second = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))[1]
    os.remove(os.path.join(out, second))
    with pytest.raises(FileNotFoundError, match=second):
        models.load(out)


def test_lepjax_checkpoint_missing_a_parameter_is_named(hf_dir, tmp_path):
    path, _ = hf_dir("llama2")
    lep = str(tmp_path / "lep")
    assert main(["convert", path, lep]) == 0
    meta = os.path.join(lep, "lepjax.json")
    with open(meta) as f:
        data = json.load(f)
    data["model"]["tie_word_embeddings"] = False
    data["model"]["num_layers"] = 3
    with open(meta, "w") as f:
        json.dump(data, f)
    with pytest.raises(ValueError, match=r"parameter layers/attn/k has shape \(2, "):
        models.load(lep)
    shutil.rmtree(os.path.join(lep, "params"))
    with pytest.raises(FileNotFoundError, match="missing params/"):
        models.load(lep)


def test_not_a_model_directory(tmp_path):
    with pytest.raises(ValueError, match="neither a lepjax model directory"):
        models.load(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.load(str(tmp_path / "nope"))


def test_wrong_config_key_names_key_and_neighbours(capsys):
    rc = main(["forward", f"--config={FORWARD}", "--config.model.dtyp=float32"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "unknown config key 'model.dtyp'" in err
    assert "did you mean model.dtype" in err


def test_wrong_type_names_key(capsys):
    rc = main(["forward", f"--config={FORWARD}", "--config.batch_size=two"])
    assert rc == 1
    assert "config key 'batch_size' expects a int, got 'two'" in capsys.readouterr().err


def test_unknown_section_and_section_assignment():
    cfg = config_lib.load_file(FORWARD)
    with pytest.raises(config_lib.ConfigError, match="unknown config section 'modle'"):
        config_lib.override(cfg, "modle.dtype", "float32")
    with pytest.raises(config_lib.ConfigError, match="'mesh' is a section"):
        config_lib.override(cfg, "mesh", "1")


def test_overrides_are_typed():
    cfg = config_lib.load(FORWARD, [("batch_size", "3"), ("tokens", "1,2,3"),
                                    ("mesh.rules", "(('batch', 'data'),)"),
                                    ("model.path", "/x")])
    assert cfg.batch_size == 3 and tuple(cfg.tokens) == (1, 2, 3)
    assert tuple(map(tuple, cfg.mesh.rules))[0] == ("batch", "data")
    with pytest.raises(AttributeError):  # locked after loading
        cfg.new_key = 1


def test_config_file_without_get_config(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\n")
    with pytest.raises(config_lib.ConfigError, match="defines no get_config"):
        config_lib.load(str(bad))


def test_forward_writes_resolved_config_and_matches_across_formats(hf_dir, tmp_path, capsys):
    path, _ = hf_dir("mistral")
    lep = str(tmp_path / "lep")
    assert main(["convert", path, lep]) == 0
    reports = []
    for src in (path, lep):
        out = str(tmp_path / f"fwd_{os.path.basename(src)}")
        assert main(["forward", f"--config={FORWARD}", f"--config.model.path={src}",
                     f"--config.output_dir={out}", "--config.seq_len=12"]) == 0
        with open(os.path.join(out, "resolved_config.json")) as f:
            resolved = json.load(f)
        assert resolved["model"]["path"] == src and resolved["seq_len"] == 12
        with open(os.path.join(out, "forward.json")) as f:
            reports.append(json.load(f))
    assert reports[0]["shape"] == [2, 12, 256]
    assert reports[0]["logits_sum"] == pytest.approx(reports[1]["logits_sum"], abs=1e-6)


@pytest.mark.parametrize("verb", [None, *sorted(VERBS)])
def test_help(verb):
    args = ["--help"] if verb is None else [verb, "--help"]
    exe = shutil.which("lepjax") or sys.executable
    cmd = [exe, *args] if exe.endswith("lepjax") else [exe, "-m", "lepjax.cli", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "usage: lepjax" in res.stdout
    if verb:  # argparse wraps a long description: compare the words
        assert " ".join(VERBS[verb].HELP.split()) in " ".join(res.stdout.split())


CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.py"), recursive=True))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, REPO))
def test_every_shipped_config_loads_and_is_documented(path):
    import ast

    from ml_collections import ConfigDict

    with open(path, encoding="utf-8") as f:
        assert ast.get_docstring(ast.parse(f.read())), f"{path} has no docstring"
    cfg = config_lib.load(path, [])
    assert isinstance(cfg, ConfigDict) and len(cfg)


def test_config_module_is_the_bottom_layer():
    """lepjax/config.py imports no other lepjax module but the floor, lepjax.files (imports
    inside functions included); each section's defaults live beside the code that reads it."""
    import ast

    with open(config_lib.__file__, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {f"{n.module}.{a.name}" if n.module == "lepjax" else n.module or ""
              for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert [m for m in names if m == "lepjax" or m.startswith("lepjax.")] == ["lepjax.files"]
    from lepjax import models, parallel

    assert set(models.model_section()) >= {"path", "preset", "dtype", "attention"}
    assert set(parallel.mesh_section()) >= {"data", "fsdp", "tensor", "rules"}
    assert not hasattr(config_lib, "model_section") and not hasattr(models, "mesh_from_config")


def test_check_choice_names_the_key_and_the_closest_values():
    config_lib.check_choice("optim.schedule", "linear", ("cosine", "linear", "constant"))
    with pytest.raises(config_lib.ConfigError,
                       match=r"'optim.schedule' = 'cosin'.*did you mean 'cosine'"):
        config_lib.check_choice("optim.schedule", "cosin", ("cosine", "linear", "constant"))


def test_resolved_configs_are_kept_per_launch_and_completed_with_the_command(tmp_path):
    """A run's own start-of-run record is completed with the CLI's command (one file per
    launch); a launch under another config is kept beside it; nothing is ever lost."""
    from lepjax.config import write_resolved

    first = write_resolved({"train": {"steps": 3}}, str(tmp_path))
    assert write_resolved({"command": "lepjax train a", "train": {"steps": 3}},
                          str(tmp_path)) == first
    assert json.load(open(first)) == {"command": "lepjax train a", "train": {"steps": 3}}
    second = write_resolved({"train": {"steps": 5}}, str(tmp_path))
    write_resolved({"command": "lepjax train b", "train": {"steps": 5}}, str(tmp_path))
    assert os.path.basename(second) == "resolved_config.1.json"
    assert sorted(os.listdir(tmp_path)) == ["resolved_config.1.json", "resolved_config.json"]
    assert json.load(open(second))["command"] == "lepjax train b"
    assert json.load(open(first))["command"] == "lepjax train a"
