"""Teacher-server utilisation of `lepjax augment instruct-pt` and `fiat` on the engine.

    python benchmarks/teacher_utilisation.py                 # 256 slots; 50 ms and 2 s; 2 workers
    python benchmarks/teacher_utilisation.py --texts 1500 --latency-ms 50 --workers 1,2

The teacher is the fake OpenAI-compatible server of the tests (tests/fake_openai.py), in a process
of its own: it decodes at most `--slots` requests at once (vLLM's max_num_seqs; later ones wait
for a slot) and answers each after the latency. `teacher.max_in_flight` is the slot count, so the
cluster-wide semaphore lets exactly as many requests out as the server can decode. Utilisation is
the mean number of requests the server decodes (at most `slots`), from the first request's
arrival to the last reply, divided by `slots`; the goal is >= 0.8. At 256 slots and 50 ms the
clients must send 5,120 requests/s (`ideal_requests_per_s`); a longer latency (a real
synthesizer writes hundreds of tokens per answer) asks less of the client's CPU and shows what the
shard and round structure leaves idle. Instruction synthesis runs `--rounds` rounds per shard of
`--chains-per-shard` chains; the shards run side by side on the workers, so while one shard waits
for the slowest request of its round the others keep the server busy. Prints one JSON object
(with the machine's load average: the clients' CPU bounds the short-latency case).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))
REPLY = " <QUE> What is the text about? <ANS> A river and a city. </END>"


def synthesis(prompt: str) -> str:
    return REPLY


def rationale(prompt: str) -> str:
    return " Because the question says so.\n"


def serve(method: str, latency_s: float, slots: int, conn) -> None:
    """The fake server in a process of its own (a vLLM server is not in the driver's process):
    sends its URL, then on any message its counts."""
    from fake_openai import FakeServer

    reply = synthesis if method == "instruct-pt" else rationale
    with FakeServer(reply, delay_s=latency_s, slots=slots) as server:
        conn.send(server.url)
        conn.recv()
        conn.send({"requests": len(server.prompts), "mean_in_flight": server.mean_in_flight(),
                   "max_in_flight": server.max_in_flight})


class Server:
    """`with Server(method, latency_s, slots) as server:` -> `server.url`; `server.counts()`."""

    def __init__(self, method: str, latency_s: float, slots: int):
        import multiprocessing as mp

        self.conn, child = mp.Pipe()
        self.proc = mp.get_context("spawn").Process(
            target=serve, args=(method, latency_s, slots, child), daemon=True)

    def __enter__(self) -> "Server":
        self.proc.start()
        self.url = self.conn.recv()
        return self

    def counts(self) -> dict:
        self.conn.send("stop")
        return self.conn.recv()

    def __exit__(self, *exc) -> None:
        self.proc.join(30)


def run(method: str, a, workers: int, latency_ms: float, work: str, sp: str) -> dict:
    from lepjax.augment.config import default_config

    cfg = default_config()
    cfg.progress = False
    cfg.engine.update(dict(kind="local", num_workers=workers))
    out = os.path.join(work, f"{method}_{workers}_{latency_ms:g}")
    with Server(method, latency_ms / 1e3, a.slots) as server:
        cfg.teacher.update(dict(backend="openai", urls=(server.url,), max_in_flight=a.slots,
                                max_retries=0, timeout_s=60.0))
        if method == "instruct-pt":
            from lepjax.augment.instruct_pt import synthesize

            cfg.synth.update(dict(
                inputs=(os.path.join(work, "texts.txt"),), text_mode="line", tokenizer=sp,
                synthesizer_tokenizer=sp, rounds=a.rounds, max_new_tokens=64,
                context_tokens=2048, chains_per_shard=a.chains_per_shard,
                records_per_shard=10000, output_dir=out))
            start = time.perf_counter()
            summary = synthesize(cfg)
            requests = summary["prompts_sent"]
        else:
            from lepjax.augment.fiat import augment

            cfg.fiat.update(dict(
                inputs=(os.path.join(work, "fiat.jsonl"),), input_field="question",
                target_field="label", tokenizer=sp, output_dir=out,
                reasoning_prompt=os.path.join(REPO, "configs", "fiat", "reasoning_prompt.txt"),
                records_per_shard=a.chains_per_shard, max_new_tokens=32, seq_len=4096))
            start = time.perf_counter()
            augment(cfg)
            requests = None
        seconds = time.perf_counter() - start
        counts = server.counts()
    requests = counts["requests"] if requests is None else requests
    mean = counts["mean_in_flight"]
    return {"method": method, "workers": workers, "latency_ms": latency_ms,
            "ideal_requests_per_s": round(a.slots / (latency_ms / 1e3)), "requests": requests,
            "seconds": round(seconds, 2), "requests_per_s": round(requests / seconds, 1),
            "mean_in_flight": round(mean, 1), "max_in_flight": counts["max_in_flight"],
            "utilisation": round(mean / a.slots, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--slots", type=int, default=256)
    p.add_argument("--latency-ms", default="50,2000",
                   help="server latencies to run, comma-separated (default 50,2000)")
    p.add_argument("--texts", type=int, default=3000, help="instruct-pt texts (and FIAT records)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--chains-per-shard", type=int, default=256)
    p.add_argument("--workers", default="2", help="local worker counts (default 2)")
    p.add_argument("--methods", default="instruct-pt,fiat")
    a = p.parse_args()

    import mistral_common

    sp = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")
    work = tempfile.mkdtemp(prefix="lepjax_teacher_bench_")
    try:
        with open(os.path.join(work, "texts.txt"), "w", encoding="utf-8") as f:
            f.writelines(f"Текст {i} о реке, городе и мостах; вода течёт, дома стоят.\n"
                         for i in range(a.texts))
        with open(os.path.join(work, "fiat.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"question": f"Вопрос {i}: течёт ли река?",
                                     "label": str(i % 2)}, ensure_ascii=False) + "\n"
                         for i in range(a.texts))
        results = [run(m, a, int(w), float(ms), work, sp)
                   for ms in a.latency_ms.split(",") if ms.strip()
                   for m in a.methods.split(",") if m.strip()
                   for w in a.workers.split(",") if w.strip()]
        print(json.dumps({"benchmark": "teacher_utilisation", "slots": a.slots,
                          "texts": a.texts, "rounds": a.rounds, "cpus": os.cpu_count(),
                          "load_average": [round(x, 1) for x in os.getloadavg()],
                          "goal_utilisation": 0.8, "results": results}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
