#!/usr/bin/env bash
# Install lepjax into ./.venv (created if missing) and run the main job on the CPU: the whole LEP
# adaptation (`lepjax adapt --config=configs/demo.py`) on a tiny model family built on the spot
# (a base pre-trained briefly on bundled English text and an instruct sibling tuned from it),
# adapted to the bundled Russian sample: vocabulary extension, embedding training, LEP, exports
# and evaluation, with a summary at the end. A few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q -e .
lepjax adapt --config=configs/demo.py "$@"
