#!/usr/bin/env bash
# Start a Ray worker node on GPUs of this host that no other worker replica holds, so that
# `docker compose up --scale worker=N` puts N workers on N distinct sets of GPUs.
#
#   xmem-worker-start [COMMAND ...]     (default command: join the head, block)
#
# Every replica sees all of the host's GPUs (docker/compose.yaml asks for `count: all`): a
# plain `count: 1` would give every replica the same first GPU. Each replica claims
# XMEM_GPUS_PER_WORKER GPUs (default 1; 0: a CPU-only worker) by taking an exclusive lock on
# one file per GPU in XMEM_GPU_LOCKS, a folder all replicas share (a volume); it holds the
# locks as long as its Ray node runs, and the kernel releases them when the container stops.
# The command then runs with CUDA_VISIBLE_DEVICES set to the claimed GPUs, which are the ones
# Ray hands out to trials.
set -euo pipefail

per_worker="${XMEM_GPUS_PER_WORKER:-1}"
locks="${XMEM_GPU_LOCKS:-/opt/xmem-locks}"
claimed=()
if (( per_worker > 0 )); then
  if ! command -v nvidia-smi > /dev/null; then
    echo "xmem-worker-start: no nvidia-smi, so no GPU is visible in this container. Install the" \
         "NVIDIA Container Toolkit on the host, or set XMEM_GPUS_PER_WORKER=0 for CPU-only workers." >&2
    exit 1
  fi
  mkdir -p "$locks"
  mapfile -t gpus < <(nvidia-smi --query-gpu=index --format=csv,noheader)
  for index in "${gpus[@]}"; do
    (( ${#claimed[@]} < per_worker )) || break
    exec {lock}> "$locks/gpu${index// /}.lock"   # stays open (and locked) through the exec below
    if flock --nonblock "$lock"; then
      claimed+=("${index// /}")
    else
      exec {lock}>&-
    fi
  done
  if (( ${#claimed[@]} < per_worker )); then
    echo "xmem-worker-start: this host has ${#gpus[@]} GPU(s), other workers hold" \
         "$(( ${#gpus[@]} - ${#claimed[@]} )), and XMEM_GPUS_PER_WORKER asks for $per_worker." \
         "Run fewer workers:" \
         "docker compose up --scale worker=$(( ${#gpus[@]} / per_worker ))" >&2
    exit 1
  fi
fi

# nvidia-smi numbers GPUs in PCI bus order; make CUDA (and so Ray and torch) use the same order.
export CUDA_DEVICE_ORDER=PCI_BUS_ID
CUDA_VISIBLE_DEVICES="$(IFS=,; echo "${claimed[*]}")"
export CUDA_VISIBLE_DEVICES
echo "xmem-worker-start: GPUs [${CUDA_VISIBLE_DEVICES}] for this worker"
if (( $# == 0 )); then
  set -- ray start --address="${RAY_ADDRESS:-head:6379}" --num-gpus="$per_worker" --block
fi
exec "$@"
