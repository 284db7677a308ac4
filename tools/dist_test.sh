#!/usr/bin/env bash
# Evaluate a config on several GPUs (or CPU processes): the same as `fsa-seg dist-test`.
#   bash tools/dist_test.sh CONFIG NUM_GPUS [tools/test.py arguments ...]
# Every extra argument is passed on to tools/test.py. Multi-node: set NNODES, NODE_RANK,
# MASTER_ADDR and PORT.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PYTHONPATH="$HERE/..${PYTHONPATH:+:$PYTHONPATH}" exec python -m fsa_seg.cli dist-test "$@"
