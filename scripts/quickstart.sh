#!/usr/bin/env bash
# Install lepjax into ./.venv (created if missing) and run the main job on the CPU: a tiny
# Llama 3 style model written in Hugging Face format, converted to lepjax, and run sharded over
# the available devices, printing a checksum of its logits.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q -e .
WORK=${WORK:-runs/quickstart}
lepjax init "$WORK/tiny-hf" --preset tiny_llama3 --format hf --overwrite
lepjax convert "$WORK/tiny-hf" "$WORK/tiny-lepjax" --overwrite
lepjax forward --config=configs/forward.py --config.model.path="$WORK/tiny-lepjax" \
  --config.output_dir="$WORK/forward"
