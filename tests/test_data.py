"""Data preparation and the packing loader: round trips, packing invariants, resume, sharding."""

import json
import os
import subprocess
import sys
import time

import mistral_common
import numpy as np
import pytest

from lepjax.data import records
from lepjax.data.loader import Loader, PackedRows
from lepjax.data.prepare import default_config, prepare
from lepjax.data.tokenizer import load_tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")
MISTRAL_SP = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")


def ru_lines(n=None):
    with open(os.path.join(FIXTURES, "ru_gsd_dev.txt"), encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f if line.strip()]
    return lines[:n] if n else lines


def prepared(tmp_path, lines, name="ds", **overrides):
    src = tmp_path / f"{name}.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = default_config()
    cfg.update(dict(tokenizer=MISTRAL_SP, inputs=(str(src),), output_dir=str(tmp_path / name),
                    records_per_shard=50, num_proc=1, **overrides))
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
                    prompt_field="q", target_field="a", num_proc=1))
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
    assert hf.encode_batch(lines) == sp.encode_batch(lines)
    assert (hf.bos_id, hf.eos_id) == (sp.bos_id, sp.eos_id) == (1, 2)
    assert hf.fingerprint() == sp.fingerprint()


PREPARE_CMD = [sys.executable, "-m", "lepjax.cli", "prepare", "--no-progress",
               f"--config.tokenizer={MISTRAL_SP}", "--config.records_per_shard=20",
               "--config.num_proc=1"]


def test_prepare_killed_midway_then_rerun_equals_uninterrupted(tmp_path):
    src = tmp_path / "big.txt"
    src.write_text("\n".join(ru_lines() * 3) + "\n", encoding="utf-8")
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    cmd = PREPARE_CMD + [f"--config.inputs={src}"]
    subprocess.run(cmd + [f"--config.output_dir={whole}"], check=True, timeout=300)
    proc = subprocess.Popen(cmd + [f"--config.output_dir={resumed}"])
    deadline = time.time() + 120
    while not records.shard_complete(str(resumed), 3) and time.time() < deadline:
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert not (resumed / "metadata.json").exists()
    subprocess.run(cmd + [f"--config.output_dir={resumed}"], check=True, timeout=300)
    names = sorted(f for f in os.listdir(whole) if f.endswith(".array_record"))
    assert names == sorted(f for f in os.listdir(resumed) if f.endswith(".array_record"))
    assert not [f for f in os.listdir(resumed) if ".tmp" in f]
    for name in names:
        assert (whole / name).read_bytes() == (resumed / name).read_bytes(), name


def test_split_across_workers(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("\n".join(ru_lines(200)) + "\n", encoding="utf-8")
    out = tmp_path / "multi"
    results = []
    for w in range(2):
        res = subprocess.run(PREPARE_CMD + [f"--config.inputs={src}", f"--config.output_dir={out}",
                                            "--num_workers", "2", "--worker_index", str(w)],
                             check=True, capture_output=True, text=True, timeout=300)
        results.append(json.loads(res.stdout.strip().splitlines()[-1]))
    assert results[0]["shards_written"] == results[1]["shards_written"] == 5
    assert not results[0]["complete"] and results[1]["complete"]
    assert records.open_dataset(str(out)).num_records == 200


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
                    num_proc=1))
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
                        output_dir=str(tmp_path / f"out_{name}"), num_proc=1, **extra))
        prepare(cfg, progress=False)
        ds = records.open_dataset(str(tmp_path / f"out_{name}"))
        docs = [tok.decode(r["tokens"][1:-1]) for r in map(
            records.decode, __import__("grain").sources.ArrayRecordDataSource(ds.shard_paths))]
        expected = ["\n".join(lines[:3]), lines[3]] if name == "c.txt" else lines
        assert docs == expected, name
    cfg = default_config()
    cfg.update(dict(tokenizer=MISTRAL_SP, inputs=(str(tmp_path / "b.jsonl"),),
                    output_dir=str(tmp_path / "bad"), num_proc=1))
    with pytest.raises(ValueError, match="no field .text."):
        prepare(cfg, progress=False)
