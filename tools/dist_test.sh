#!/usr/bin/env bash
# Evaluate a config on several GPUs (or CPU processes) with torchrun and mmengine's launcher.
#   bash tools/dist_test.sh CONFIG NUM_GPUS [tools/test.py arguments ...]
# Every extra argument is passed on to tools/test.py. Multi-node: set NNODES, NODE_RANK,
# MASTER_ADDR and PORT.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: bash $0 CONFIG NUM_GPUS [tools/test.py arguments ...]" >&2
    exit 2
fi
CONFIG=$1
GPUS=$2
shift 2
HERE=$(cd "$(dirname "$0")" && pwd)
PYTHONPATH="$HERE/..${PYTHONPATH:+:$PYTHONPATH}" exec torchrun \
    --nnodes="${NNODES:-1}" \
    --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --master_port="${PORT:-29500}" \
    --nproc_per_node="$GPUS" \
    "$HERE/test.py" "$CONFIG" --launcher pytorch "$@"
