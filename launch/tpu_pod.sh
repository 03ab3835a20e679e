#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: runs the same command on every worker VM.
#
#   launch/tpu_pod.sh TPU_NAME ZONE [--project P] -- --config paper key=value ...
#
# Every worker runs `whisper-llada train` from the same checkout path; JAX finds the
# coordinator, process count and process id from the TPU environment itself
# (jax.distributed.initialize() with no arguments on TPU VMs), so nothing per worker is passed.
set -euo pipefail

usage() { echo "usage: $0 TPU_NAME ZONE [--project P] [--repo DIR] -- TRAIN_ARGS..." >&2; exit 2; }
[[ $# -ge 2 ]] || usage
TPU_NAME=$1; ZONE=$2; shift 2
PROJECT_FLAG=()
REPO_DIR='~/whisper-llada-jax'
while [[ $# -gt 0 && $1 != "--" ]]; do
  case $1 in
    --project) PROJECT_FLAG=(--project "$2"); shift 2 ;;
    --repo) REPO_DIR=$2; shift 2 ;;
    *) usage ;;
  esac
done
[[ ${1:-} == "--" ]] || usage
shift
TRAIN_ARGS=$(printf '%q ' "$@")

# One command line for all workers; logs go to each worker's own file.
REMOTE="cd ${REPO_DIR} && .venv/bin/whisper-llada train ${TRAIN_ARGS} 2>&1 | tee -a train_\$(hostname).log"

exec gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone "${ZONE}" "${PROJECT_FLAG[@]}" \
  --worker=all --command "${REMOTE}"
