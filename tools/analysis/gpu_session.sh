#!/usr/bin/env bash
# Issue 10's GPU measurements in one device call, ending with one summary:
#   0. tests      the tests that need CUDA (FSA in fp64 against the reference, fp16/bf16 against
#                 fp64 on the golden crop, CUDA's own host-synchronisation check on FSA and crops)
#   1. plugin     FSA (the fused Triton kernel it picks on CUDA, its torch.sort path, and the
#                 former replayed from a CUDA graph) vs the official formulation (eager, and
#                 replayed from a CUDA graph against ours replayed), N = 1764 and 4096, fp16 and
#                 fp32, and where an eager run of ours spends its host time (cProfile; in
#                 steps.log also the 20 kernels with the most GPU time of each variant)
#      kernel     FSA's fused pruning kernel alone, FSA's launch beside other launch settings
#                 (rows and warps per program, parts a step of its top-p search),
#                 N = 1764 and 4096: for tuning its launch. The steps after it launch FSA's
#                 kernel as the fastest one at a crop's N (1764) that keeps FSA's entries
#                 (model.plugin.pruning_launch), if one beats FSA's own launch; and the
#                 KL product q·log qᵀ as fp32 models make it and from fp16 halves (fp16/bf16
#                 models), timed side by side, with each one's difference from fp64, both
#                 against log q's rows padded to a multiple of 8 (as FSA makes them), and
#                 the latter once more unpadded (n x n, as before: an align2 GEMM kernel);
#                 and FSA's operand [V, A·V + V] with the branch tokens, from its kernel and
#                 from torch's copies and sum (as before session 15), timed side by side;
#                 and the KL terms' kernel at 2 to 16 tokens a program beside FSA's launch
#   2. proxyclip  one ProxyCLIP B/16 + DINO-B/8 crop (336, Q = 171) +- FSA, fp32, then fp16
#                 (fp16: a batch of 2, as the graphed crops, and the 45 kernels that take
#                 the most GPU time in each variant: their difference is where FSA's time goes);
#                 proxyclip_graphs: batches of 2 such crops in fp16, replayed from CUDA graphs
#   3. e2e        tools/test.py's path on 20 generated 375x500 images, +- FSA, fp32 / fp16 / bf16:
#                 images/s, where the model's time goes, agreement with fp32
#   4. e2e_graphs the same with crop batches replayed from CUDA graphs (model.cuda_graphs), fp16
#                 and fp32 +- FSA: FSA's share once the host no longer issues every kernel
#   5. cass       one CASS crop (CLIP B/16 + DINO-B/8, 336, fp32 as its official code, eager: it
#                 runs host code per crop) +- FSA, measured apart as issue 10 asks
# All with random weights of the real sizes (the GPU machine reaches no network).
#
# Prepare, here (a machine with PyPI), in the repository root, once:
#     echo /.whl/ >> .git/info/exclude
#     bash tools/analysis/gpu_session.sh --download
# which saves pure-Python wheels (about 8 MB) of what the GPU image lacks into .whl/: mmengine,
# mmcv-lite, mmsegmentation, open_clip_torch, timm (pinned to the versions tested here) and their
# pure-Python needs. The compiled dependencies come from the GPU image (torch 2.11, Python 3.12):
# numpy, opencv-python-headless, scipy, matplotlib, pillow, pyyaml, regex, safetensors, plus
# torchvision, tqdm, rich, huggingface_hub.
# Run, on the GPU machine (device tool: carry ['.whl'], timeout_s 600), from the repository root:
#     bash tools/analysis/gpu_session.sh
# Each step has its own time limit (740 s in all, more than one device call allows); the steps run
# in order of priority while they fit in BUDGET seconds (540), the rest are named as skipped, and
# the summary always prints: a second call with STEPS="..." runs those. The output of each step,
# its JSON and the summary are written to $OUT (else a new /tmp folder), the JSON and logs packed
# into results.tgz at the end.
# SMOKE=1 runs the same steps at tiny sizes on the CPU: a check of this script, not a measurement.
# STEPS="tests e2e" runs only the steps named (tests plugin kernel proxyclip_fp32 proxyclip_fp16
# proxyclip_graphs e2e e2e_graphs cass).
set -u
cd "$(dirname "$0")/../.."
REPO=$PWD

WHEELS=(mmengine==0.10.7 mmcv-lite==2.1.0 mmsegmentation==1.2.2 open_clip_torch==3.3.0
        timm==1.0.31 ftfy==6.3.1 wcwidth==0.7.0 addict==2.4.0 yapf==0.43.0
        platformdirs==4.14.8 termcolor==3.3.0 prettytable==3.18.0)

if [ "${1:-}" = --download ]; then
    exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
fi

RESULTS=${OUT:-$(mktemp -d /tmp/gpu_session.XXXXXX)}
mkdir -p "$RESULTS"
echo "outputs: $RESULTS"
LOG=$RESULTS/steps.log
: >"$LOG"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
    || echo "no nvidia-smi"
python3 -c "import importlib.util, sys, torch, mmengine, mmseg, open_clip, timm
triton = importlib.util.find_spec('triton') and __import__('triton').__version__
print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda',
      torch.cuda.is_available(), '| mmengine', mmengine.__version__, '| mmseg', mmseg.__version__,
      '| open_clip', open_clip.__version__, '| timm', timm.__version__,
      '| triton', triton or 'absent (FSA takes its torch.sort path)')" || exit 1

STATUS=()
# seconds for all steps: on the GPU the summary must print within one device call
[ "${SMOKE:-0}" = 1 ] && BUDGET=${BUDGET:-100000} || BUDGET=${BUDGET:-540}
wanted() {  # name, time limit: asked for (STEPS="tests plugin ..."; unset: all) and in budget
    [ -z "${STEPS:-}" ] || [[ " $STEPS " == *" $1 "* ]] || return 1
    if (( SECONDS + $2 > BUDGET )); then
        STATUS+=("$1: skipped, its $2 s limit would pass the ${BUDGET} s budget (STEPS=$1 runs it)")
        echo "   ${STATUS[-1]}"
        return 1
    fi
}
step() {  # name, time limit in seconds, benchmark.py arguments ...
    local name=$1 limit=$2
    shift 2
    wanted "$name" "$limit" || return 0
    local start=$SECONDS
    echo "== $name: benchmark.py $* (limit ${limit} s)" | tee -a "$LOG"
    timeout --kill-after=10 "$limit" python3 tools/analysis/benchmark.py "$@" \
        --json "$RESULTS/$name.json" >>"$LOG" 2>&1
    local rc=$?
    local how="exit $rc"
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && how="stopped at its ${limit} s limit"
    STATUS+=("$name: $how after $((SECONDS - start)) s")
    echo "   ${STATUS[-1]}"
}

TUNED=()  # the crops' --cfg-options of FSA's pruning launch: the kernel step's fastest
tune_launch() {  # N: from the kernel step's results, the fastest launch at N, if any
    [ -f "$RESULTS/kernel.json" ] || return 0
    read -r -a TUNED <<<"$(python3 -c 'import sys
from fsa_seg.analysis.kernel_benchmark import fastest_launch_options
print(fastest_launch_options(sys.argv[1], int(sys.argv[2])))' "$RESULTS/kernel.json" "$1")"
    STATUS+=("crops after the kernel step: ${TUNED[*]:-the default pruning launch}")
    echo "   ${STATUS[-1]}"
}

cuda_tests() {  # time limit in seconds: every test whose name says cuda (skipped without CUDA)
    wanted tests "$1" || return 0
    local start=$SECONDS
    echo "== tests: pytest -k cuda (limit $1 s)" | tee -a "$LOG"
    timeout --kill-after=10 "$1" python3 -m pytest -q -p no:cacheprovider -k cuda -rs \
        tests/models/plugins/test_fsa_paths.py tests/models/segmentors/test_proxyclip.py \
        tests/models/test_cuda_graphs.py tests/analysis/test_benchmark_segmentor.py \
        tests/analysis/test_benchmark_plugin.py tests/models/segmentors/test_base.py \
        >"$RESULTS/tests.log" 2>&1
    local rc=$?
    STATUS+=("tests: exit $rc after $((SECONDS - start)) s: $(tail -n 1 "$RESULTS/tests.log")")
    echo "   ${STATUS[-1]}"
}

if [ "${SMOKE:-0}" = 1 ]; then
    cuda_tests 300
    TINY=$RESULTS/tiny_proxyclip_fsa.py
    TINY_CASS=$RESULTS/tiny_cass_fsa.py
    python3 - "$TINY" "$TINY_CASS" <<'EOF' || exit 1
import sys
from fsa_seg.analysis.benchmark import PROXYCLIP_CONFIG
from fsa_seg.apis import resolve_config
from fsa_seg.models.backbones import tiny_clip_arch


def write_tiny(path, base, vfm_width, extra=''):
    """The config ``base`` with a tiny CLIP and a tiny VFM ``vfm_width`` wide, at ``path``."""
    with open(path, 'w', encoding='utf-8') as handle:
        handle.write(
            f'_base_ = [{str(resolve_config(base))!r}]\n'
            f'model = dict(clip=dict(arch={tiny_clip_arch()!r}), templates="plain",\n'
            f'             vfm=dict(model_kwargs=dict(embed_dim={vfm_width}, depth=2, '
            f'num_heads=2)){extra})\n')


write_tiny(sys.argv[1], PROXYCLIP_CONFIG, 32,
           ',\n             test_cfg=dict(crop_size=(112, 112), stride=(56, 56))')
write_tiny(sys.argv[2], 'cass_fsa_vit-b16_voc21', 64)  # DINO as wide as CLIP, as CASS needs
EOF
    step plugin 120 plugin --device cpu --n 64 --q 5 --heads 2 --head-dim 8 --dtype fp16 fp32 \
        --repeat 1 --profile 5
    TRITON_INTERPRET=1 step kernel 120 kernel --device cpu --n 32 --q 5 --repeat 1 \
        --launch 4x2 8x4x4
    tune_launch 32
    step proxyclip_fp32 120 config "$TINY" --random-weights --crop 112 --q 21 --repeat 1 \
        --cfg-options model.cuda_graphs=False "${TUNED[@]}"
    step proxyclip_fp16 120 config "$TINY" --random-weights --crop 112 --q 21 --repeat 1 \
        --precision bf16 --profile 5 --cfg-options model.cuda_graphs=False "${TUNED[@]}"
    step proxyclip_graphs 120 config "$TINY" --random-weights --crop 112 --q 21 --repeat 1 \
        --batch 2 --cfg-options model.cuda_graphs=True "${TUNED[@]}"
    step e2e 240 e2e --device cpu --config "$TINY" --random-weights --images 2 \
        --precision fp32 bf16 --repeat 1 --stage-repeat 2 \
        --cfg-options model.cuda_graphs=False "${TUNED[@]}"
    step e2e_graphs 240 e2e --device cpu --config "$TINY" --random-weights --images 2 \
        --precision fp32 --repeat 1 --stage-repeat 2 \
        --cfg-options model.cuda_graphs=True "${TUNED[@]}"
    step cass 120 config "$TINY_CASS" --random-weights --crop 112 --q 21 --repeat 1 \
        --cfg-options model.cuda_graphs=False "${TUNED[@]}"
else
    # the targets first (plug-in ratios, the graphed crop, where an eager crop spends its GPU
    # time), then the rest: a second call (STEPS=...) runs what the budget left out
    cuda_tests 100
    step plugin 150 plugin --device cuda --n 1764 4096 --dtype fp16 fp32 --repeat 5 --profile 20
    step kernel 80 kernel --device cuda --repeat 20   # each launch setting compiled anew
    tune_launch 1764
    step proxyclip_graphs 90 proxyclip --device cuda --precision fp16 --batch 2 --repeat 7 \
        --cfg-options model.cuda_graphs=True "${TUNED[@]}"
    step proxyclip_fp16 100 proxyclip --device cuda --precision fp16 --batch 2 --repeat 7 \
        --profile 45 \
        --cfg-options model.cuda_graphs=False "${TUNED[@]}"
    step proxyclip_fp32 70 proxyclip --device cuda --precision fp32 --repeat 7 \
        --cfg-options model.cuda_graphs=False "${TUNED[@]}"
    step e2e_graphs 80 e2e --device cuda --random-weights --images 20 --size 375 500 \
        --precision fp32 fp16 --repeat 2 --stage-repeat 3 \
        --cfg-options model.cuda_graphs=True "${TUNED[@]}"
    step e2e 90 e2e --device cuda --random-weights --images 20 --size 375 500 \
        --precision fp32 fp16 bf16 --repeat 2 --stage-repeat 5 \
        --cfg-options model.cuda_graphs=False "${TUNED[@]}"
    step cass 90 config cass_fsa_vit-b16_voc21 --random-weights --device cuda --repeat 5 \
        --cfg-options model.cuda_graphs=False "${TUNED[@]}"
fi

# the steps asked for only (STEPS; unset: all), each without results named as such
python3 -m fsa_seg.analysis.session "$RESULTS" "${STEPS:-}" 2>&1 | tee "$RESULTS/summary.txt"
echo
printf '%s\n' "${STATUS[@]}"
# one archive of the steps' JSON and logs beside summary.txt: the device tool returns 8 files
(cd "$RESULTS" && tar czf results.tgz -- *.json *.log 2>/dev/null && rm -f -- *.json *.log)
echo "JSON and logs: $RESULTS/results.tgz"
