"""Data pipeline throughput, as JSON: `lepjax prepare` tokens/s per core, loader tokens/s.

    python benchmarks/data_throughput.py [--copies 40 --seq-len 2048 --batch 64 --batches 100]

Builds a corpus of `--copies` copies of the bundled Russian sample (UD Russian-GSD, test fixtures),
prepares it with the Mistral 7B v0.1 SentencePiece tokenizer (from `mistral-common`) on every
core and on one core (the ratio is the parallel speed-up), then reads packed rows of `--seq-len`
in batches of `--batch`. The loader target: >= 1,000,000 tokens/s (an H100 trains a 1B model at
about 70,000 tokens/s), reported as `loader_vs_h100_1b_demand`.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "tests", "fixtures")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--copies", type=int, default=40)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=100)
    a = p.parse_args()

    import mistral_common

    from lepjax.data.loader import Loader
    from lepjax.data.prepare import default_config, prepare

    sp = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")
    work = tempfile.mkdtemp(prefix="lepjax_data_bench_")
    try:
        text = "".join(open(os.path.join(FIXTURES, f), encoding="utf-8").read()
                       for f in ("ru_gsd_dev.txt", "ru_gsd_test.txt"))
        corpus = os.path.join(work, "corpus.txt")
        with open(corpus, "w", encoding="utf-8") as f:
            for _ in range(a.copies):
                f.write(text)
        results = {}
        for label, procs in (("all_cores", 0), ("one_core", 1)):
            cfg = default_config()
            cfg.update(dict(tokenizer=sp, inputs=(corpus,), output_dir=os.path.join(work, label),
                            records_per_shard=2000, engine=dict(num_workers=procs)))
            start = time.perf_counter()
            summary = prepare(cfg, progress=False)
            sec = time.perf_counter() - start
            results[label] = {"tokens": summary["num_tokens"], "seconds": round(sec, 2),
                              "tokens_per_s": round(summary["num_tokens"] / sec),
                              "processes": procs or os.cpu_count()}
        loader = Loader([os.path.join(work, "all_cores")], seq_len=a.seq_len, batch_size=a.batch,
                        process_index=0, process_count=1)
        next(loader)
        start = time.perf_counter()
        tokens = real = 0
        for _ in range(a.batches):
            b = next(loader)
            tokens += b["tokens"].size
            real += int((b["segment_ids"] > 0).sum())
        sec = time.perf_counter() - start
        loader_tps = tokens / sec
        print(json.dumps({
            "benchmark": "data_throughput", "cpu_count": os.cpu_count(),
            "prepare_all_cores": results["all_cores"], "prepare_one_core": results["one_core"],
            "prepare_tokens_per_s_per_core": round(results["all_cores"]["tokens_per_s"]
                                                   / results["all_cores"]["processes"]),
            "prepare_parallel_speedup": round(results["all_cores"]["tokens_per_s"]
                                              / results["one_core"]["tokens_per_s"], 2),
            "loader_rows": [a.batch, a.seq_len], "loader_batches": a.batches,
            "loader_tokens_per_s": round(loader_tps),
            "loader_packing_efficiency": round(real / tokens, 4),
            "loader_vs_h100_1b_demand": round(loader_tps / 70000, 1),
        }, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
