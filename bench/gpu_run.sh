#!/usr/bin/env bash
# Issue 24's GPU run, as device commands (one device call allows 10 minutes; the two parts
# fit one each, back to back on the warm machine):
#
#   model:    bench/model_gpu.py: the R50 800x320 vehicle model (and the VoV one where spconv
#             is installed) per stage in fp32 / bf16 / fp16, eager and torch.compile (CUDA
#             graphs), TensorRT where installed; pre- and post-processing and the node path;
#             JPEG decoding on the CPU (the node's) against nvJPEG.
#             -> $OUT/gpu.json, $OUT/model_gpu.log (at most 400 s)
#   training: bench/train_step.py: a batch-4 training step of the R50 model in local AQR mode,
#             the fused attention (the dense_sdpa route on CUDA) against the dense reference;
#             bench/attention.py --train: the attention alone at CMT size, local mode (dense_sdpa,
#             the route CUDA takes, against the folded route it replaced and the dense reference).
#             -> $OUT/train_step.json, $OUT/train_step.log, $OUT/attention_train.log (at most 270 s;
#             where the dense reference runs out of memory at batch 4, also train_step_batch2.*, in
#             the time its steps did not take)
# The two together, with the machine's start, fit the 15 device minutes a task is lent.
#
# On the GPU machine (its python3 holds a CUDA torch; no ROS there, none needed), with the
# wheels of bench/gpu_wheels.sh carried in .whl/:
#     bash bench/gpu_run.sh model          then          bash bench/gpu_run.sh training
# Here, a quick CPU check of the same steps at tiny size (test/test_bench_gpu.py runs it):
#     bash bench/gpu_run.sh --check
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
PY=${PYTHON:-python3}
OUT=${OUT:-runs/bench/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
check=0
[[ ${1:-} == --check ]] && check=1
if [[ $check == 0 ]] && compgen -G ".whl/*.whl" > /dev/null; then     # cp312 wheels, for the GPU machine's Python
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/aqr_site \
        .whl/*.whl || { echo "gpu_run: installing .whl/ failed" >&2; exit 2; }
    export PYTHONPATH=/tmp/aqr_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}      # the package from this tree, not installed
if [[ $check == 0 ]]; then      # before the long steps: a missing wheel would fail each of them at its first import
    "$PY" -c "import pydantic, simplejpeg, aqr_perception.config, aqr_perception.model" 2>&1 | tail -3
    [[ ${PIPESTATUS[0]} == 0 ]] || { echo "gpu_run: the package does not import here (run bench/gpu_wheels.sh" \
        "on the dev machine and carry .whl/)" >&2; exit 2; }
fi

rc=0
step() {   # step NAME TIMEOUT_S COMMAND...: run it, keep its log, go on if it fails
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most $limit s)"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local code=${PIPESTATUS[0]}
    [[ $code == 0 ]] || { echo "== $name: exit code $code"; rc=1; }
}

if [[ $check == 1 ]]; then
    step model_gpu 300 "$PY" bench/model_gpu.py --tiny --device cpu --dtypes fp32 --json "$OUT/gpu.json"
    step train_step 300 "$PY" bench/train_step.py --tiny --device cpu --json "$OUT/train_step.json"
    echo "== attention_train: not in --check (30 s on this CPU; test/test_fused_attention.py covers the routes)"
    exit $rc
fi
part=${1:-}
[[ $part == model || $part == training ]] || { echo "usage: bench/gpu_run.sh model|training|--check" >&2; exit 2; }
{ nvidia-smi -L; "$PY" -c "import torch; print('torch', torch.__version__, torch.version.cuda)"; } 2>&1 \
    | tee "$OUT/machine.log"
if [[ $part == model ]]; then
    # the 80 s between the budget and the limit: a compile started within budget that runs long
    step model_gpu 400 "$PY" bench/model_gpu.py --device cuda --budget-s 320 --json "$OUT/gpu.json"
else
    t0=$SECONDS
    step train_step 150 "$PY" bench/train_step.py --device cuda --json "$OUT/train_step.json"
    # the dense reference may not fit at batch 4 (~11 GB of scores per layer): then the ratio
    # at batch 2, in the time the dense steps did not take (so the part stays within 270 s)
    left=$((150 - (SECONDS - t0)))
    if (( left >= 30 )) && "$PY" -c "import json, sys
sys.exit(0 if json.load(open(sys.argv[1]))['rows']['dense'].get('out_of_memory') else 1)" \
            "$OUT/train_step.json" 2> /dev/null; then
        step train_step_batch2 $((left < 60 ? left : 60)) "$PY" bench/train_step.py --device cuda --batch 2 \
            --steps 3 --json "$OUT/train_step_batch2.json"
    fi
    # local mode only (where the CUDA routes differ; a fresh process per method, 5 of them)
    step attention_train 120 "$PY" bench/attention.py --device cuda --train --sizes cmt --modes local --runs 5
fi
exit $rc
