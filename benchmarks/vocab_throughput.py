"""Vocabulary extension and `align` initialisation throughput, as JSON.

    python benchmarks/vocab_throughput.py [--sentences 100000 --k 10000 --hidden 4096]

Target (issue 5): extend the Mistral 7B v0.1 tokenizer (mistral-common) with k = 10,000 tokens
from 100,000 sentences, and `align`-initialise a 4096-wide, 32,000-row embedding, on 2 cores, in
under 5 minutes all told. The corpus is pseudo-Russian built from the bundled UD Russian-GSD
sample (test fixtures): words drawn from a character 4-gram model of its words (so the corpus has
far more distinct words than the 1,180 sentences, as a real 100K-sentence corpus would), with a
Zipf distribution over the word list. The embedding is random (no 7B checkpoint is read). The
`mean` initialisation of the same rows is timed beside `align` as the baseline (ratio reported).
"""

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "tests", "fixtures")
sys.path.insert(0, os.path.join(HERE, ".."))


def pseudo_corpus(path: str, sentences: int, words: int = 80000, seed: int = 0) -> None:
    """Write `sentences` lines of pseudo-Russian (see module docstring)."""
    rng = np.random.default_rng(seed)
    text = open(os.path.join(FIXTURES, "ru_gsd_dev.txt"), encoding="utf-8").read() + \
        open(os.path.join(FIXTURES, "ru_gsd_test.txt"), encoding="utf-8").read()
    real = [w for w in text.split() if w]
    model: dict[str, Counter] = defaultdict(Counter)
    for w in set(real):
        w = "^^^" + w + "$"
        for i in range(3, len(w)):
            model[w[i - 3:i]][w[i]] += 1
    table = {c: (list(n), np.array(list(n.values()), float) / sum(n.values()))
             for c, n in model.items()}
    vocab = set(real)
    while len(vocab) < words:
        ctx, out = "^^^", []
        while len(out) < 20:
            chars, p = table[ctx]
            c = chars[rng.choice(len(chars), p=p)]
            if c == "$":
                break
            out.append(c)
            ctx = ctx[1:] + c
        if out:
            vocab.add("".join(out))
    vocab = sorted(vocab)
    rng.shuffle(vocab)
    zipf = 1.0 / np.arange(1, len(vocab) + 1)
    lengths = rng.integers(6, 25, sentences)
    picks = rng.choice(len(vocab), lengths.sum(), p=zipf / zipf.sum())
    with open(path, "w", encoding="utf-8") as f:
        pos = 0
        for n in lengths:
            f.write(" ".join(vocab[i] for i in picks[pos:pos + n]) + "\n")
            pos += n


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sentences", type=int, default=100000)
    p.add_argument("--k", type=int, default=10000)
    p.add_argument("--aux-vocab", type=int, default=50000)
    p.add_argument("--hidden", type=int, default=4096)
    a = p.parse_args()

    import mistral_common

    from lepjax.vocab import extend, load_vocab
    from lepjax.vocab.embedding_init import build_matrix, plan_rows

    sp = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")
    work = tempfile.mkdtemp(prefix="lepjax_vocab_bench_")
    corpus = os.path.join(work, "ru.txt")
    t = time.perf_counter()
    pseudo_corpus(corpus, a.sentences)
    t_corpus = time.perf_counter() - t

    t0 = time.perf_counter()
    src = load_vocab(sp)
    new, summary = extend(src, [corpus], a.k, priority="after", aux_vocab_size=a.aux_vocab,
                          progress=False)
    t_extend = time.perf_counter() - t0

    E = np.random.default_rng(0).normal(0, 0.02, (src.vocab_size, a.hidden)).astype(np.float32)
    stat_rows = np.arange(3, src.vocab_size)
    rows = -(-new.vocab_size // 128) * 128
    timings = {}
    for method in ("mean", "align"):
        t = time.perf_counter()
        plan = plan_rows(src, new, method, [corpus], progress=False)
        t_plan = time.perf_counter() - t
        build_matrix(E, plan, rows, stat_rows)
        timings[method] = {"plan_s": round(t_plan, 2),
                           "total_s": round(time.perf_counter() - t, 2), "rows": plan.counts}
    total = t_extend + timings["align"]["total_s"]
    chars = os.path.getsize(corpus)
    print(json.dumps({
        "sentences": a.sentences, "corpus_bytes": chars, "corpus_build_s": round(t_corpus, 1),
        "k": a.k, "aux_vocab_size": summary["aux_vocab_size"],
        "extend_s": round(t_extend, 2), "extend_train_aux_s": summary["seconds_train_aux"],
        "embedding": [src.vocab_size, a.hidden],
        "init_mean": timings["mean"], "init_align": timings["align"],
        "align_over_mean": round(timings["align"]["total_s"] / timings["mean"]["total_s"], 2),
        "extend_plus_align_s": round(total, 2), "target_s": 300, "within_target": total < 300,
        "cpus": os.cpu_count(),
    }, indent=1))


if __name__ == "__main__":
    main()
