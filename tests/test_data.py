"""Data preparation and the packing loader: round trips, packing invariants, resume, sharding."""

import json
import os
import subprocess
import sys

import mistral_common
import numpy as np
import pytest

from lepjax.config import ConfigError
from lepjax.data import records
from lepjax.data.loader import Loader, PackedRows
from lepjax.data.prepare import default_config, prepare
from lepjax.tokenizer import load_tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")
MISTRAL_SP = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")
MISTRAL_V3 = os.path.join(os.path.dirname(mistral_common.__file__), "data",
                          "mistral_instruct_tokenizer_240323.model.v3")


def ru_lines(n=None):
    with open(os.path.join(FIXTURES, "ru_gsd_dev.txt"), encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f if line.strip()]
    return lines[:n] if n else lines


def prepared(tmp_path, lines, name="ds", **overrides):
    src = tmp_path / f"{name}.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = default_config()
    cfg.update(dict(tokenizer=MISTRAL_SP, inputs=(str(src),), output_dir=str(tmp_path / name),
                    records_per_shard=50, engine=dict(kind="synchronous"), **overrides))
    summary = prepare(cfg, progress=False)
    assert summary["complete"]
    return str(tmp_path / name)


def synthetic(tmp_path, lengths, name="syn", base=0, records_per_shard=40):
    """A dataset whose document i holds ids base + i*10000 + j: each token names its doc and slot."""
    out = tmp_path / name
    out.mkdir()
    infos = []
    for s in range(0, len(lengths), records_per_shard):
        w = records.ShardWriter(str(out), s // records_per_shard)
        for i in range(s, min(s + records_per_shard, len(lengths))):
            w.write(base + i * 10000 + np.arange(lengths[i]))
        infos.append(w.close())
    records.write_metadata(str(out), {
        "kind": "document", "tokenizer": {"fingerprint": "synthetic", "vocab_size": 10**9},
        "num_records": len(lengths), "num_tokens": int(sum(lengths)),
        "shards": [{"file": records.shard_name(i), **x} for i, x in enumerate(infos)]})
    return str(out)


def all_rows(loader, limit=100000):
    rows = []
    for batch in loader:
        rows.extend({k: v[i] for k, v in batch.items()} for i in range(len(batch["tokens"])))
        if len(rows) >= limit:
            break
    return rows


def segments(row):
    for s in np.unique(row["segment_ids"]):
        if s:
            yield np.flatnonzero(row["segment_ids"] == s)


def test_round_trip_text_to_loader(tmp_path):
    lines = ru_lines(300)
    path = prepared(tmp_path, lines)
    tok = load_tokenizer(MISTRAL_SP)
    meta = records.open_dataset(path).metadata
    assert meta["num_records"] == 300 and meta["tokenizer"]["fingerprint"] == tok.fingerprint()
    loader = Loader([path], seq_len=512, batch_size=1, num_epochs=1, seed=3)
    decoded = []
    for row in all_rows(loader):
        for idx in segments(row):
            ids = row["tokens"][idx]
            assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
            decoded.append(tok.decode(ids[1:-1]))
    assert sorted(decoded) == sorted(lines)


def test_packing_invariants_and_no_token_lost(tmp_path):
    rng = np.random.default_rng(0)
    lengths = list(rng.integers(1, 90, 150)) + [200, 333]  # some longer than a row
    path = synthetic(tmp_path, lengths)
    L = 64
    seen = []
    for row in all_rows(Loader([path], seq_len=L, batch_size=1, num_epochs=1, packing_bins=4)):
        assert row["tokens"].shape == (L,)
        for idx in segments(row):
            toks = row["tokens"][idx]
            assert np.all(np.diff(idx) == 1)  # contiguous
            assert len(set(toks // 10000)) == 1  # one document per segment
            assert np.all(np.diff(toks) == 1)  # consecutive piece of it
            np.testing.assert_array_equal(row["positions"][idx], np.arange(len(idx)))
            np.testing.assert_array_equal(row["targets"][idx[:-1]], toks[1:])
            assert row["loss_mask"][idx[:-1]].all() and row["loss_mask"][idx[-1]] == 0
            seen.extend(toks.tolist())
        pad = row["segment_ids"] == 0
        assert not row["loss_mask"][pad].any() and not row["tokens"][pad].any()
    expected = [i * 10000 + j for i, n in enumerate(lengths) for j in range(n)]
    assert sorted(seen) == expected  # every token exactly once per epoch


def test_prompt_target_loss_only_on_target(tmp_path):
    src = tmp_path / "pt.jsonl"
    pairs = [{"q": f"Вопрос {i}?", "a": f"Ответ номер {i}."} for i in range(30)]
    src.write_text("\n".join(json.dumps(p, ensure_ascii=False) for p in pairs), encoding="utf-8")
    cfg = default_config()
    cfg.update(dict(tokenizer=MISTRAL_SP, inputs=(str(src),), output_dir=str(tmp_path / "pt"),
                    prompt_field="q", target_field="a", engine=dict(kind="synchronous")))
    prepare(cfg, progress=False)
    assert records.open_dataset(str(tmp_path / "pt")).kind == "prompt_target"
    tok = load_tokenizer(MISTRAL_SP)
    answers = []
    for row in all_rows(Loader([str(tmp_path / "pt")], seq_len=256, batch_size=1, num_epochs=1)):
        for idx in segments(row):
            trained = row["targets"][idx][row["loss_mask"][idx] > 0]
            answers.append(tok.decode(trained))
    assert sorted(answers) == sorted(p["a"] for p in pairs)


def test_same_seed_same_batches_other_seed_differs(tmp_path):
    path = synthetic(tmp_path, [30] * 200)
    a = [next(Loader([path], seq_len=64, batch_size=4, seed=1))["tokens"] for _ in range(2)]
    b = next(Loader([path], seq_len=64, batch_size=4, seed=2))["tokens"]
    np.testing.assert_array_equal(a[0], a[1])
    assert not np.array_equal(a[0], b)


RESUME_SCRIPT = """
import json, sys, numpy as np
from lepjax.data.loader import Loader
args = json.loads(sys.argv[1])
loader = Loader(args["paths"], seq_len=48, batch_size=6, weights=args["weights"], seed=5,
                process_index=0, process_count=1)
loader.set_state(json.loads(open(args["state"]).read()))
np.savez(args["out"], *[next(loader)["tokens"] for _ in range(args["n"])])
"""


def test_resume_in_a_new_process_continues_exactly(tmp_path):
    paths = [synthetic(tmp_path, list(np.random.default_rng(1).integers(5, 70, 120))),
             synthetic(tmp_path, [40] * 90, name="other", base=5 * 10**6)]
    weights = [1.0, 2.0]
    loader = Loader(paths, seq_len=48, batch_size=6, weights=weights, seed=5)
    k, n = 7, 12  # crosses epoch boundaries of the smaller dataset
    for _ in range(k):
        next(loader)
    state = tmp_path / "state.json"
    state.write_text(json.dumps(loader.get_state()))
    expected = [next(loader)["tokens"] for _ in range(n)]
    out = tmp_path / "resumed.npz"
    args = json.dumps({"paths": paths, "weights": weights, "state": str(state), "out": str(out),
                       "n": n})
    subprocess.run([sys.executable, "-c", RESUME_SCRIPT, args], check=True, timeout=300)
    got = np.load(out)
    for i in range(n):
        np.testing.assert_array_equal(got[f"arr_{i}"], expected[i])


def test_mixture_token_shares_follow_weights(tmp_path):
    a = synthetic(tmp_path, [20] * 300, name="a")
    b = synthetic(tmp_path, [35] * 300, name="b", base=10**8)
    loader = Loader([a, b], weights=[0.25, 0.75], seq_len=64, batch_size=50, seed=0)
    counts = np.zeros(2)
    for _ in range(40):  # 2,000 rows
        toks, seg = (lambda bt: (bt["tokens"], bt["segment_ids"]))(next(loader))
        real = toks[seg > 0]
        counts += [(real < 10**8).sum(), (real >= 10**8).sum()]
    share = counts[0] / counts.sum()
    assert abs(share - 0.25) <= 0.02, share


PROCESS_SCRIPT = """
import json, sys
from lepjax.data.loader import PackedRows
from lepjax.data import records
path, index, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ds = records.open_dataset(path)
docs = []
for row in PackedRows([ds], seq_len=64, seed=9, shuffle=True, num_epochs=1, process_index=index,
                      process_count=count, bins=4):
    for s in set(row["segment_ids"].tolist()) - {0}:
        docs.append(int(row["tokens"][row["segment_ids"] == s][0]) // 10000)
print(json.dumps(docs))
"""


def test_processes_read_disjoint_parts_covering_the_epoch(tmp_path):
    n = 157
    path = synthetic(tmp_path, [10] * n)
    procs = [subprocess.Popen([sys.executable, "-c", PROCESS_SCRIPT, path, str(i), "2"],
                              stdout=subprocess.PIPE, text=True) for i in range(2)]
    parts = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert set(parts[0]).isdisjoint(parts[1])
    assert sorted(parts[0] + parts[1]) == list(range(n))
    assert abs(len(parts[0]) - len(parts[1])) <= 1


def test_global_batch_on_the_mesh(tmp_path):
    from lepjax import parallel

    path = synthetic(tmp_path, [30] * 100)
    loader = Loader([path], seq_len=32, batch_size=8)
    mesh = parallel.make_mesh({"data": 2, "fsdp": 4})
    batch = loader.global_batch(next(loader), mesh)
    assert batch["tokens"].shape == (8, 32)
    assert batch["tokens"].sharding.spec[0] == ("data", "fsdp")
    assert len({s.device for s in batch["tokens"].addressable_shards}) == 8


def test_hf_tokenizer_json_gives_same_ids_and_fingerprint(tmp_path):
    import shutil

    from transformers import LlamaTokenizer

    shutil.copy(MISTRAL_SP, tmp_path / "tokenizer.model")
    LlamaTokenizer.from_pretrained(str(tmp_path)).backend_tokenizer.save(
        str(tmp_path / "tokenizer.json"))
    hf, sp = load_tokenizer(str(tmp_path / "tokenizer.json")), load_tokenizer(MISTRAL_SP)
    lines = ru_lines(20)
    assert hf.encode(lines) == sp.encode(lines)
    assert (hf.bos_id, hf.eos_id) == (sp.bos_id, sp.eos_id) == (1, 2)
    assert hf.fingerprint() == sp.fingerprint()


# ---- bad input -------------------------------------------------------------------------------


def test_bad_shards_are_named(tmp_path):
    path = synthetic(tmp_path, [10] * 100)
    shard = os.path.join(path, records.shard_name(1))
    data = open(shard, "rb").read()
    with open(shard, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(records.DataError, match=rf"shard {shard} is truncated or corrupt"):
        Loader([path], seq_len=16, batch_size=1)
    with open(shard, "wb") as f:
        f.write(b"garbage" * 100)
    with pytest.raises(records.DataError, match=rf"shard {shard} is"):
        records.open_dataset(path)
    os.remove(shard)
    with pytest.raises(records.DataError, match=rf"shard {shard} is missing"):
        records.open_dataset(path)


def test_tokenizer_and_vocab_mismatch(tmp_path):
    path = prepared(tmp_path, ru_lines(40))
    with pytest.raises(records.DataError, match="does not match the model's tokenizer"):
        records.open_dataset(path, fingerprint="0123456789abcdef")
    with pytest.raises(records.DataError, match="32000 tokens .* only 256 embedding rows"):
        Loader([path], seq_len=64, batch_size=1, vocab_size=256)


def test_empty_inputs_and_bad_weights(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    cfg = default_config()
    cfg.update(dict(tokenizer=MISTRAL_SP, inputs=(str(empty),), output_dir=str(tmp_path / "e"),
                    engine=dict(kind="synchronous")))
    with pytest.raises(records.DataError, match="no documents found"):
        prepare(cfg, progress=False)
    with pytest.raises(records.DataError, match="no metadata.json"):
        records.open_dataset(str(tmp_path / "e"))
    path = synthetic(tmp_path, [10] * 10)
    with pytest.raises(ValueError, match="mixture weight 0.0 for .* is not positive"):
        Loader([path, path], weights=[1.0, 0.0], seq_len=16, batch_size=1)
    with pytest.raises(FileNotFoundError, match="matches no file"):
        cfg.inputs = (str(tmp_path / "nope.txt"),)
        prepare(cfg, progress=False)


def test_parquet_jsonl_and_paragraph_sources(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = ru_lines(30)
    pq.write_table(pa.table({"body": lines}), tmp_path / "a.parquet")
    (tmp_path / "b.jsonl").write_text(
        "\n".join(json.dumps({"body": x}, ensure_ascii=False) for x in lines), encoding="utf-8")
    (tmp_path / "c.txt").write_text("\n".join(lines[:3]) + "\n\n" + lines[3] + "\n", encoding="utf-8")
    tok = load_tokenizer(MISTRAL_SP)
    for name, extra in [("a.parquet", {"text_field": "body"}), ("b.jsonl", {"text_field": "body"}),
                        ("c.txt", {"text_mode": "paragraph"})]:
        cfg = default_config()
        cfg.update(dict(tokenizer=MISTRAL_SP, inputs=(str(tmp_path / name),),
                        output_dir=str(tmp_path / f"out_{name}"), engine=dict(kind="synchronous"), **extra))
        prepare(cfg, progress=False)
        ds = records.open_dataset(str(tmp_path / f"out_{name}"))
        docs = [tok.decode(r["tokens"][1:-1]) for r in map(
            records.decode, __import__("grain").sources.ArrayRecordDataSource(ds.shard_paths))]
        expected = ["\n".join(lines[:3]), lines[3]] if name == "c.txt" else lines
        assert docs == expected, name
    cfg = default_config()
    cfg.update(dict(tokenizer=MISTRAL_SP, inputs=(str(tmp_path / "b.jsonl"),),
                    output_dir=str(tmp_path / "bad"), engine=dict(kind="synchronous")))
    with pytest.raises(ValueError, match="no field .text."):
        prepare(cfg, progress=False)


# ---- reruns: every shard records what made it ------------------------------------------------


def tree_hashes(directory):
    import hashlib

    return {n: hashlib.sha256(open(os.path.join(directory, n), "rb").read()).hexdigest()
            for n in sorted(os.listdir(directory))}


def prepare_config(src, out, **overrides):
    cfg = default_config()
    cfg.update({**dict(tokenizer=MISTRAL_SP, inputs=(str(src),), output_dir=str(out),
                       records_per_shard=50, engine=dict(kind="synchronous")), **overrides})
    return cfg


def test_rerun_from_other_tokenizer_inputs_or_settings_is_refused(tmp_path):
    src, other = tmp_path / "a.txt", tmp_path / "b.txt"
    src.write_text("\n".join(ru_lines(120)) + "\n", encoding="utf-8")
    other.write_text("\n".join(ru_lines(120)[::-1]) + "\n", encoding="utf-8")
    out = tmp_path / "ds"
    prepare(prepare_config(src, out), progress=False)
    before = tree_hashes(out)
    sidecar = json.loads((out / "data-00000.array_record.json").read_text())
    assert sidecar["made_from"]["tokenizer"]["fingerprint"] == load_tokenizer(
        MISTRAL_SP).fingerprint()
    assert sidecar["made_from"]["inputs"][0]["path"] == str(src)
    again = prepare(prepare_config(src, out), progress=False)  # the same: nothing to redo
    assert again["shards_skipped"] == 3 and again["shards_written"] == 0
    assert tree_hashes(out) == before
    cases = [({"tokenizer": MISTRAL_V3}, r"shard 0 was made from other tokenizer \(fingerprint"),
             ({"inputs": (str(other),)}, r"other inputs \(.*a\.txt -> .*b\.txt\)"),
             ({"add_eos": False}, r"other settings add_eos \(True -> False\)"),
             ({"records_per_shard": 40}, r"settings records_per_shard \(50 -> 40\)")]
    for change, message in cases:
        with pytest.raises(records.DataError, match=message):
            prepare(prepare_config(src, out, **change), progress=False)
        assert tree_hashes(out) == before, change
    src.write_text("\n".join(ru_lines(120)[1:] + ["другая строка"]) + "\n", encoding="utf-8")
    with pytest.raises(records.DataError, match=r"inputs \(the content of .*a\.txt changed\)"):
        prepare(prepare_config(src, out), progress=False)
    assert tree_hashes(out) == before
    summary = prepare(prepare_config(src, out, tokenizer=MISTRAL_V3, overwrite=True),
                      progress=False)
    assert summary["shards_written"] == 3
    meta = records.open_dataset(str(out)).metadata
    assert meta["tokenizer"]["fingerprint"] == load_tokenizer(MISTRAL_V3).fingerprint()
    assert meta["sources"] == [{"path": str(src), "bytes": src.stat().st_size}]


def test_metadata_comes_from_the_sidecars(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("\n".join(ru_lines(120)) + "\n", encoding="utf-8")
    out = tmp_path / "ds"
    prepare(prepare_config(src, out), progress=False)
    meta = json.loads((out / "metadata.json").read_text())
    sidecars = [json.loads((out / f"{records.shard_name(i)}.json").read_text()) for i in range(3)]
    assert [s["records"] for s in meta["shards"]] == [s["records"] for s in sidecars] == [50, 50, 20]
    assert meta["settings"] == sidecars[0]["made_from"]["settings"]
    (out / "metadata.json").unlink()  # a run killed before metadata: rebuilt from the sidecars
    assert prepare(prepare_config(src, out), progress=False)["shards_written"] == 0
    assert json.loads((out / "metadata.json").read_text()) == meta


def test_a_directory_with_other_files_is_refused(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("\n".join(ru_lines(10)) + "\n", encoding="utf-8")
    out = tmp_path / "ds"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match=r"holds files that are not part of a lepjax "
                                                  r"dataset \(notes.txt\)"):
            prepare(prepare_config(src, out, overwrite=overwrite), progress=False)
    assert sorted(os.listdir(out)) == ["notes.txt"]
    with pytest.raises(ValueError, match=r"input .*a\.txt is inside output_dir"):
        prepare(prepare_config(src, tmp_path), progress=False)


def test_bad_inputs_create_nothing_and_name_the_culprit(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes("первая строка\nвторая ".encode() + b"\xff\xfe" + b" third\n")
    out = tmp_path / "out"
    offset = len("первая строка\nвторая ".encode())
    with pytest.raises(records.DataError,
                       match=rf"{bad}: not UTF-8 text at byte {offset} \(line 2\)"):
        prepare(prepare_config(bad, out), progress=False)
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{jsonl}:2: invalid JSON"):
        prepare(prepare_config(jsonl, out), progress=False)
    parquet = tmp_path / "bad.parquet"
    parquet.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(records.DataError, match=rf"{parquet}: not a readable Parquet file"):
        prepare(prepare_config(parquet, out), progress=False)
    cfg = prepare_config(jsonl, out)
    cfg.num_proc = 1  # the removed per-host split
    with pytest.raises(ConfigError, match=r"num_proc was removed.*set engine.num_workers"):
        prepare(cfg, progress=False)
    assert not out.exists()


def cli(capsys, *args):
    from lepjax.cli.main import main

    rc = main(["prepare", "--no-progress", *args])
    return rc, capsys.readouterr().err.strip().splitlines()


def test_cli_errors_are_one_line(tmp_path, capsys):
    src = tmp_path / "a.txt"
    src.write_text("\n".join(ru_lines(10)) + "\n", encoding="utf-8")
    base = [f"--config.tokenizer={MISTRAL_SP}", f"--config.inputs={src}",
            "--config.engine.kind=synchronous"]
    rc, err = cli(capsys, *base, f"--config.output_dir={tmp_path / 'x'}", "--num_workers", "2")
    assert rc == 1 and len(err) == 1 and "engine" in err[0] and "removed" in err[0], err
    rc, err = cli(capsys, *base, "--config.output_dir=/sys/lepjax_prepare_test")
    assert rc == 1 and len(err) == 1 and err[0].startswith(
        "lepjax prepare: error: output_dir /sys/lepjax_prepare_test cannot be created ("), err
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_output_dir_is_one_line(tmp_path, capsys):
    src = tmp_path / "a.txt"
    src.write_text("\n".join(ru_lines(10)) + "\n", encoding="utf-8")
    out = tmp_path / "ro"
    out.mkdir(mode=0o555)
    rc, err = cli(capsys, f"--config.tokenizer={MISTRAL_SP}", f"--config.inputs={src}",
                  "--config.engine.kind=synchronous", f"--config.output_dir={out}")
    assert rc == 1 and err == [f"lepjax prepare: error: output_dir {out} is not writable "
                               "(Permission denied)"], err


def test_scanning_in_segments_and_chunks_gives_the_same_shards(tmp_path, monkeypatch):
    from lepjax.data import sources

    src = tmp_path / "a.jsonl"
    src.write_text("".join(json.dumps({"text": x}, ensure_ascii=False) + "\n"
                           for x in ru_lines() * 2), encoding="utf-8")
    prepare(prepare_config(src, tmp_path / "whole", records_per_shard=150), progress=False)
    monkeypatch.setattr(sources, "SEGMENT_BYTES", 40_000)  # 7 scan tasks, cut mid-line
    monkeypatch.setattr(sources, "CHUNK_BYTES", 9_000)
    prepare(prepare_config(src, tmp_path / "cut", records_per_shard=150), progress=False)
    whole, cut = tree_hashes(tmp_path / "whole"), tree_hashes(tmp_path / "cut")
    shards = [n for n in whole if n.endswith(".array_record")]
    assert len(shards) == 8 and all(whole[n] == cut[n] for n in shards + ["metadata.json"])
    sidecar = json.loads((tmp_path / "cut" / "data-00001.array_record.json").read_text())
    assert len(sidecar["made_from"]["inputs"]) > 1  # the shard spans chunks
    data = src.read_bytes()
    bad = data.index(b"\n", 100_000) + 3
    src.write_bytes(data[:bad] + b"\xff" + data[bad + 1:])
    with pytest.raises(records.DataError, match=rf"{src}: not UTF-8 text at byte {bad}"):
        prepare(prepare_config(src, tmp_path / "bad"), progress=False)
