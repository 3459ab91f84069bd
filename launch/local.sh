#!/usr/bin/env bash
# Run N lepjax processes on this machine, joined by jax.distributed on 127.0.0.1: the same code
# path as a TPU pod or a SLURM cluster, for CPU devices or local GPUs.
#
#   launch/local.sh N [--cpu-devices K | --gpus] [--log-dir DIR] [--dry-run] -- lepjax VERB ARGS...
#
#   --cpu-devices K  each process runs on K simulated CPU devices (JAX_PLATFORMS=cpu)
#   --gpus           process i sees only GPU i (CUDA_VISIBLE_DEVICES=i)
#   --log-dir DIR    per-process logs DIR/process_<i>.log (default: logs/local)
#   --dry-run        print the commands instead of running them (also DRY_RUN=1)
#
#   launch/local.sh 2 --cpu-devices 1 -- lepjax adapt --config=configs/demo.py --config.run_dir=runs/demo2
#
# A `lepjax VERB` command is first validated once here with `--dry_run` (a wrong key fails before
# any process starts).
#
# SIGTERM / Ctrl-C are forwarded to every process (lepjax train then saves and stops). When one
# process fails or dies, the others are stopped (after 3 s: SIGTERM, then SIGKILL after
# LEPJAX_STOP_GRACE seconds, default 10); the exit status is the first non-zero one.
set -euo pipefail

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }
[ $# -ge 1 ] || { usage; exit 2; }
case "$1" in -h|--help) usage; exit 0 ;; esac
N=$1; shift
[[ "$N" =~ ^[1-9][0-9]*$ ]] || { echo "local.sh: N must be a positive integer, got '$N'" >&2; exit 2; }
CPU_DEVICES="" GPUS=0 LOG_DIR=logs/local DRY=${DRY_RUN:-0}
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-devices) CPU_DEVICES=$2; shift 2 ;;
    --gpus) GPUS=1; shift ;;
    --log-dir) LOG_DIR=$2; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --) shift; break ;;
    *) echo "local.sh: unknown option $1 (put the command after --)" >&2; exit 2 ;;
  esac
done
[ $# -gt 0 ] || { echo "local.sh: no command given after --" >&2; exit 2; }
if [ "$(basename "$1")" = lepjax ]; then
  "$@" --dry_run > /dev/null
fi

PORT=${LEPJAX_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
[ "$DRY" = 1 ] || mkdir -p "$LOG_DIR"
pids=()
for ((i = 0; i < N; i++)); do
  envs=(LEPJAX_COORDINATOR_ADDRESS=127.0.0.1:$PORT LEPJAX_NUM_PROCESSES=$N LEPJAX_PROCESS_ID=$i)
  if [ -n "$CPU_DEVICES" ]; then
    envs+=(JAX_PLATFORMS=cpu "XLA_FLAGS=--xla_force_host_platform_device_count=$CPU_DEVICES")
  fi
  [ "$GPUS" = 1 ] && envs+=(CUDA_VISIBLE_DEVICES=$i)
  if [ "$DRY" = 1 ]; then
    printf 'env'; printf ' %q' "${envs[@]}" "$@"; printf ' > %q 2>&1 &\n' "$LOG_DIR/process_$i.log"
    continue
  fi
  env "${envs[@]}" "$@" > "$LOG_DIR/process_$i.log" 2>&1 &
  pids+=($!)
done
[ "$DRY" = 1 ] && exit 0

forward() { kill -TERM "${pids[@]}" 2>/dev/null || true; }
trap forward TERM INT
# Wait for the processes in the order they end. The first one that fails (a Python error, a
# crash, SIGKILL) stops the others: SIGTERM, then SIGKILL after LEPJAX_STOP_GRACE seconds, since
# the survivors' collectives cannot complete without it.
declare -A running
for pid in "${pids[@]}"; do running[$pid]=1; done
status=0 killer=""
while [ ${#running[@]} -gt 0 ]; do
  done_pid=""
  set +e; wait -n -p done_pid "${!running[@]}"; rc=$?; set -e
  [ -n "${done_pid:-}" ] || continue  # a trapped signal interrupted `wait`
  unset "running[$done_pid]"
  if [ "$rc" != 0 ] && [ "$status" = 0 ]; then
    status=$rc
    echo "local.sh: a process exited with status $rc; stopping the others (logs: $LOG_DIR)" >&2
    if [ ${#running[@]} -gt 0 ]; then
      # A moment to stop by themselves (lepjax adapt's processes stop each other, with the
      # error in every log), then SIGTERM, then SIGKILL.
      others=("${!running[@]}")
      (sleep 3; kill -TERM "${others[@]}"; sleep "${LEPJAX_STOP_GRACE:-10}"
       kill -KILL "${others[@]}") > /dev/null 2>&1 &
      killer=$!
    fi
  fi
done
[ -n "$killer" ] && { kill "$killer" 2>/dev/null || true; }
exit $status
