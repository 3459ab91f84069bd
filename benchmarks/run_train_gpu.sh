#!/usr/bin/env bash
# lepjax vs transformers + PyTorch on the 1.1B Llama (batch 16 x 2,048), side by side on one GPU,
# then lepjax's 8B embeddings-only setting. Prints each JSON and the ratios to the baselines.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
python benchmarks/hf_torch_baseline.py --mode eager > "$out/torch_eager.json"
python benchmarks/hf_torch_baseline.py --mode compile > "$out/torch_compile.json"
python benchmarks/train_throughput.py --setting 1b_full > "$out/lepjax_1b.json"
python benchmarks/train_throughput.py --setting 8b_embeddings > "$out/lepjax_8b_emb.json" || true
python - "$out" <<'PY'
import json, os, sys
d = sys.argv[1]
r = {f[:-5]: json.load(open(os.path.join(d, f))) for f in sorted(os.listdir(d))}
lep = r["lepjax_1b"]["tokens_per_s"]
print(json.dumps({"results": r,
                  "lepjax_vs_torch_compile": round(lep / r["torch_compile"]["tokens_per_s"], 3),
                  "lepjax_vs_torch_eager": round(lep / r["torch_eager"]["tokens_per_s"], 3)},
                 indent=2))
PY
