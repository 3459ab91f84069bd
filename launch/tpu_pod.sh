#!/usr/bin/env bash
# Any lepjax verb on an existing Cloud TPU VM slice (creates nothing): copy this checkout to every
# worker, install it, and run `lepjax VERB` on all workers at once, with a log per worker.
#
#   launch/tpu_pod.sh --tpu NAME --zone ZONE [--project P] [--skip-install] [--dry-run] \
#       -- VERB CONFIG.py [--config.key=value ...]
#   launch/tpu_pod.sh --tpu my-v5e-256 --zone us-west4-a -- adapt configs/lep/llama3_8b_ru.py
#
# The config is first validated here (`lepjax VERB --dry_run`), so a typo fails before any worker
# is touched; --dry-run (or DRY_RUN=1) then prints the gcloud commands instead of running them.
# Every worker runs the same command; jax.distributed finds the other workers from the TPU
# environment. For several slices (multislice) set --config.mesh.dcn_data=<slices>. A Python error
# on one worker stops `lepjax adapt` on all of them at once; a worker that dies outright is noticed
# by jax.distributed's heartbeat (100 s), which then stops the others.
set -euo pipefail

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
TPU="" ZONE="" PROJECT="" INSTALL=1 DRY=${DRY_RUN:-0}
while [ $# -gt 0 ]; do
  case "$1" in
    --tpu) TPU=$2; shift 2 ;;
    --zone) ZONE=$2; shift 2 ;;
    --project) PROJECT=$2; shift 2 ;;
    --skip-install) INSTALL=0; shift ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "tpu_pod.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
[ -n "$TPU" ] && [ -n "$ZONE" ] || { echo "tpu_pod.sh: --tpu and --zone are required" >&2; exit 2; }
[ $# -ge 2 ] || { echo "tpu_pod.sh: give the verb and the config file after --, e.g. -- adapt CONFIG.py" >&2; exit 2; }
VERB=$1 CONFIG=$2; shift 2
case "$VERB" in
  *.py) echo "tpu_pod.sh: the verb comes first, e.g. -- adapt $VERB" >&2; exit 2 ;;
esac
lepjax "$VERB" --config="$CONFIG" "$@" --dry_run > /dev/null

REPO=$(cd "$(dirname "$0")/.." && pwd)
gc=(gcloud compute tpus tpu-vm)
where=(--zone="$ZONE" --worker=all)
[ -n "$PROJECT" ] && where+=(--project="$PROJECT")
overrides=$(printf ' %q' "$@")
run() { if [ "$DRY" = 1 ]; then printf '%q ' "$@"; echo; else "$@"; fi; }

# The committed checkout (git archive: no virtualenvs, runs or caches), unpacked on every worker.
TARBALL=${TMPDIR:-/tmp}/lepjax-$TPU.tar.gz
run git -C "$REPO" archive --format=tar.gz -o "$TARBALL" HEAD
run "${gc[@]}" scp "$TARBALL" "$TPU":lepjax.tar.gz "${where[@]}"
setup="rm -rf ~/lepjax && mkdir -p ~/lepjax && tar xzf ~/lepjax.tar.gz -C ~/lepjax"
[ "$INSTALL" = 1 ] && setup="$setup && cd ~/lepjax && python3 -m pip install -q -e '.[tpu]'"
run "${gc[@]}" ssh "$TPU" "${where[@]}" --command="$setup"
run "${gc[@]}" ssh "$TPU" "${where[@]}" \
  --command="cd ~/lepjax && mkdir -p logs && lepjax $VERB --config=$(printf %q "$CONFIG")$overrides 2>&1 | tee logs/worker_\$(hostname).log"
