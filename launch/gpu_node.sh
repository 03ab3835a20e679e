#!/usr/bin/env bash
# Train on one machine with several GPUs: one process drives all local GPUs.
#
#   launch/gpu_node.sh [--gpus 0,1,2,3] -- --config paper mesh.fsdp=8 key=value ...
#
# JAX sees every visible GPU as a device of one process, so no jax.distributed set-up is
# needed; the mesh (data x fsdp x tensor) spans the visible GPUs.
set -euo pipefail

GPUS=""
while [[ $# -gt 0 && $1 != "--" ]]; do
  case $1 in
    --gpus) GPUS=$2; shift 2 ;;
    *) echo "usage: $0 [--gpus LIST] -- TRAIN_ARGS..." >&2; exit 2 ;;
  esac
done
[[ ${1:-} == "--" ]] && shift
if [[ -n $GPUS ]]; then export CUDA_VISIBLE_DEVICES=$GPUS; fi
# Let XLA take most of the memory up front (no per-allocation growth) and use NCCL.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
export WLJ_AUTO_DISTRIBUTED=0
ROOT=$(cd "$(dirname "$0")/.." && pwd)
exec "${WHISPER_LLADA:-${ROOT}/.venv/bin/whisper-llada}" train "$@"
