"""`lepjax prepare` throughput on the engine: local Dask clusters of N workers vs in process.

    python benchmarks/preprocess_scaling.py                 # >= 50 MB corpus, 1 and 2 workers
    python benchmarks/preprocess_scaling.py --mb 2 --workers 1,2    # a quick check

The corpus is the bundled Russian and English text repeated with its lines shuffled (a fixed
seed) until it holds `--mb` megabytes, cut into files of `--file-mb`. Every run prepares the same
corpus with the same tokenizer (Mistral's SentencePiece) into a fresh directory; the clusters are
started and warmed up (tokenizer loaded in every worker) before the clock starts. Prints one JSON
object: tokens/s end to end (scan, plan, write, metadata) and of the write phase, and each
engine's ratio to the in-process (`synchronous`) run, plus whether every run wrote byte-identical
shards.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
FIXTURES = os.path.join(os.path.dirname(HERE), "tests", "fixtures")


def make_corpus(directory: str, megabytes: float, file_mb: float, seed: int = 0) -> list[str]:
    """Bundled text, lines shuffled per copy, written as files of about `file_mb` MB."""
    lines = []
    for name in ("ru_gsd_dev.txt", "ru_gsd_test.txt", "en_ewt_dev.txt", "en_ewt_test.txt"):
        with open(os.path.join(FIXTURES, name), encoding="utf-8") as f:
            lines.extend(line for line in f if line.strip())
    os.makedirs(directory, exist_ok=True)
    rng = random.Random(seed)
    target, per_file = int(megabytes * 1e6), int(file_mb * 1e6)
    paths, written, f = [], 0, None
    while written < target:
        rng.shuffle(lines)
        for line in lines:
            if f is None or f.tell() >= per_file:
                if f:
                    f.close()
                paths.append(os.path.join(directory, f"part-{len(paths):04d}.txt"))
                f = open(paths[-1], "w", encoding="utf-8")
            f.write(line)
            written += len(line.encode())
            if written >= target:
                break
    f.close()
    return paths


def shard_digest(directory: str) -> str:
    h = hashlib.sha256()
    for name in sorted(os.listdir(directory)):
        if name.endswith(".array_record") or name == "metadata.json":
            h.update(name.encode())
            with open(os.path.join(directory, name), "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mb", type=float, default=50.0, help="corpus size in MB (default 50)")
    p.add_argument("--file-mb", type=float, default=8.0, help="MB per input file (default 8)")
    p.add_argument("--workers", default="1,2", help="local worker counts (default 1,2)")
    p.add_argument("--records-per-shard", type=int, default=10000)
    a = p.parse_args()

    import mistral_common

    from lepjax.data.prepare import default_config, prepare

    sp = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")
    work = tempfile.mkdtemp(prefix="lepjax_preprocess_bench_")
    try:
        inputs = make_corpus(os.path.join(work, "corpus"), a.mb, a.file_mb)
        corpus_bytes = sum(os.path.getsize(x) for x in inputs)
        warm = os.path.join(work, "warm.txt")
        with open(inputs[0], encoding="utf-8") as src, open(warm, "w", encoding="utf-8") as dst:
            dst.writelines(line for _, line in zip(range(200), src))

        def run(label: str, engine: dict, files: list[str], out: str) -> dict:
            cfg = default_config()
            cfg.update(dict(tokenizer=sp, inputs=tuple(files), output_dir=out,
                            records_per_shard=a.records_per_shard, engine=engine))
            start = time.perf_counter()
            summary = prepare(cfg, progress=False)
            seconds = time.perf_counter() - start
            return {"engine": label, "workers": summary["workers"], "seconds": round(seconds, 2),
                    "tokens": summary["num_tokens"],
                    "tokens_per_s": round(summary["num_tokens"] / seconds),
                    "write_tokens_per_s": summary["tokens_per_s"]}

        engines = [("synchronous", {"kind": "synchronous"})] + [
            (f"local_{n}", {"kind": "local", "num_workers": int(n)})
            for n in a.workers.split(",") if n.strip()]
        results, digests = [], []
        for label, engine in engines:
            run(label, engine, [warm], os.path.join(work, f"warm_{label}"))  # start + load
            out = os.path.join(work, label)
            results.append(run(label, engine, inputs, out))
            digests.append(shard_digest(out))
            shutil.rmtree(out)
        base = results[0]["tokens_per_s"]
        for r in results:
            r["ratio_to_in_process"] = round(r["tokens_per_s"] / base, 3)
        print(json.dumps({
            "benchmark": "preprocess_scaling", "corpus_mb": round(corpus_bytes / 1e6, 1),
            "files": len(inputs), "cpus": os.cpu_count(), "results": results,
            "byte_identical": len(set(digests)) == 1}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
