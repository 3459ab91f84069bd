"""Augmentation on the preprocessing engine: `augment fiat` over 2 local worker processes keeps
`teacher.max_in_flight` as a global cap (the fake server counts the requests in flight) and writes
the same shards as one worker; `instruct-pt`'s resident memory is bounded by a shard, not by the
corpus. The teacher is a fake OpenAI server on 127.0.0.1 (tests/fake_openai.py)."""

import pytest
import json
import os
import subprocess
import sys

from conftest import MISTRAL_SP
from fake_openai import FakeServer
from lepjax.augment import fiat
from lepjax.augment.config import default_config

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
REASONING = os.path.join(REPO, "configs", "fiat", "reasoning_prompt.txt")


def rationale(prompt):
    return f" Because of input {prompt.rsplit('Input: ', 1)[1].split(chr(10))[0][:20]}.\n"


def fiat_cfg(tmp_path, url, out, workers):
    inputs = tmp_path / "in.jsonl"
    if not inputs.exists():
        inputs.write_text("".join(json.dumps({"question": f"Вопрос {i}?", "label": str(i % 2)},
                                             ensure_ascii=False) + "\n" for i in range(24)),
                          encoding="utf-8")
    cfg = default_config()
    cfg.progress = False
    cfg.engine.update(dict(kind="local", num_workers=workers))
    cfg.teacher.update(dict(backend="openai", urls=(url,), max_in_flight=4, max_retries=0,
                            timeout_s=30.0))
    cfg.fiat.update(dict(inputs=(str(inputs),), input_field="question", target_field="label",
                         reasoning_prompt=REASONING, tokenizer=MISTRAL_SP, output_dir=str(out),
                         records_per_shard=4, max_new_tokens=16, seq_len=4096))
    return cfg


def shard_bytes(out):
    """Every file of text/ and tokens/ (the output directory's own path written as OUT)."""
    return {f"{sub}/{name}": open(os.path.join(out, sub, name), "rb").read().replace(
                str(out).encode(), b"OUT")
            for sub in ("text", "tokens") for name in sorted(os.listdir(os.path.join(out, sub)))}


def test_fiat_on_two_workers_keeps_the_global_cap_and_the_one_worker_shards(tmp_path):
    with FakeServer(rationale, delay_s=0.15) as server:
        two = fiat.augment(fiat_cfg(tmp_path, server.url, tmp_path / "two", 2))
        peak_two = server.max_in_flight
        server.max_in_flight = 0
        one = fiat.augment(fiat_cfg(tmp_path, server.url, tmp_path / "one", 1))
    assert two["complete"] and one["complete"] and two["shards_written"] == 6
    # Each worker's client runs up to 4 requests at once; only the cluster-wide semaphore keeps
    # the two workers together at 4.
    assert peak_two == 4, peak_two
    assert server.max_in_flight == 4
    assert shard_bytes(tmp_path / "two") == shard_bytes(tmp_path / "one")


MEASURE = r"""
import json, sys
from lepjax.augment.config import default_config
from lepjax.augment.instruct_pt import synthesize
cfg = default_config()
cfg.update_from_flattened_dict({k: tuple(v) if isinstance(v, list) else v
                                for k, v in json.loads(sys.argv[1]).items()})
summary = synthesize(cfg)
# VmHWM, the peak of this process image: getrusage's ru_maxrss survives exec, so it would start
# at whatever the forking pytest worker held.
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"peak_kib": hwm,
                  "texts": summary["texts"], "raw": summary["documents"]["raw"],
                  "augmented": summary["documents"]["augmented"]}))
"""


def synthesis_peak(tmp_path, url, num_texts):
    """Peak resident memory (KiB) of a subprocess that runs instruct-pt on `num_texts` texts."""
    corpus = tmp_path / f"corpus{num_texts}.txt"
    corpus.write_text("".join(f"Короткий текст номер {i} о реке и городе, о мостах, улицах, "
                              "людях и погоде; о том, как течёт вода и стоят дома.\n"
                              for i in range(num_texts)), encoding="utf-8")
    settings = {"progress": False, "engine.kind": "synchronous", "teacher.backend": "openai",
                "teacher.urls": (url,), "teacher.max_in_flight": 8, "teacher.max_retries": 0,
                "synth.inputs": (str(corpus),), "synth.text_mode": "line",
                "synth.tokenizer": MISTRAL_SP, "synth.synthesizer_tokenizer": MISTRAL_SP,
                "synth.augment_fraction": 0.02, "synth.rounds": 2, "synth.max_new_tokens": 32,
                "synth.context_tokens": 512, "synth.chains_per_shard": 64,
                "synth.records_per_shard": 1000, "synth.weights.raw": 1.0,
                "synth.output_dir": str(tmp_path / f"out{num_texts}")}
    # One tokenizer thread and two malloc arenas: glibc gives each thread that allocates while
    # another holds the lock an arena of its own (kept, then partly resident), so on a loaded
    # machine the request threads' timing, not the corpus, would set the peak.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TOKENIZERS_PARALLELISM": "false",
           "MALLOC_ARENA_MAX": "2"}
    done = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(settings)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["texts"] == num_texts and got["raw"] + 2 * got["augmented"] >= num_texts - 1
    return got["peak_kib"]


# The bound: the whole process (Python, NumPy, the tokenizers, JAX's import) under 400 MiB, and
# 40,000 texts at most 4 MiB above 20,000. The Hugging Face tokenizer's word cache (10,000
# entries; a SentencePiece-style tokenizer caches whole texts, ~4 KiB each) fills over the first
# 10,000 texts and is part of the constant. The old path, which held every text, its pairs and
# its documents in memory, grew ~75 KiB per text of 1.3 KB; 20,000 more texts of ~200 bytes are
# ~8 MiB as Python strings alone.
PEAK_MIB, GROWTH_MIB = 400, 4


def test_instruct_pt_memory_is_bounded_by_a_shard_not_the_corpus(tmp_path):
    reply = " <QUE> What is it about? <ANS> A river. </END>"
    with FakeServer(lambda prompt: reply) as server:
        small = synthesis_peak(tmp_path, server.url, 20_000)
        large = synthesis_peak(tmp_path, server.url, 40_000)
    print(f"peak RSS: {small / 1024:.0f} MiB at 20,000 texts, {large / 1024:.0f} MiB at 40,000")
    assert large < PEAK_MIB * 1024, large
    assert large - small < GROWTH_MIB * 1024, (small, large)
