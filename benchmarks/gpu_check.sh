#!/usr/bin/env bash
# The GPU check, as one script (GPU time is scarce: everything it needs was tried on the CPU first).
#   bash benchmarks/gpu_check.sh OUT_DIR                         # on a CUDA machine
#   ACCEL=cpu QUICK=1 bash benchmarks/gpu_check.sh /tmp/gpu_dry  # dry run of the same steps on a CPU
# Steps, most important first, each under its own limit and all under one deadline (BUDGET seconds):
#   1. the CUDA tests (tests/tasks/test_gpu.py): the finite-loss guard's CUDA branch, train.py + report on the GPU,
#      GPU vs CPU probabilities;
#   2. bench, cached, batch 128: MobileNetV2, DenseNet121, InceptionV3 (299 px): floor, full path, plain loop,
#      inference;
#   3. bench, streaming (no cache), batch 128: does the loader keep up?
#   4. bench, cached, batch 32;
#   5. bench, cached, batch 128, compile=true.
# Each bench job writes bench.json; each step's are collected into OUT_DIR/bench_gpu_<step>.json.
set -uo pipefail
OUT_DIR=${1:-${OUT:-/tmp/gpu_check}}
ACCEL=${ACCEL:-gpu}
QUICK=${QUICK:-0}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TIMM_USE_HF_HUB=0 PYTHONPATH=${PYTHONPATH:-}:$PWD
WORK=$(mktemp -d /tmp/bcc_gpu_XXXX)
DEADLINE=$(( $(date +%s) + ${BUDGET:-520} ))
log() { echo "[$(date +%T)] $*" | tee -a "$OUT_DIR/steps.log"; }

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null; nproc;
  python3 -c "import torch, torchvision, lightning, timm; print(torch.__version__, torchvision.__version__, lightning.__version__, timm.__version__, torch.cuda.is_available())"; } \
  2>&1 | tee "$OUT_DIR/env.txt"

if [ "$QUICK" = 1 ]; then
  EXTRA="model.img_size=64 warmup=1 steps=2 repeats=1"; MODELS=mobilenetv2; MODELS2=mobilenetv2; LIMIT=300
  DATA="--renders 3 --copies 1"
else
  EXTRA="warmup=3 steps=20 repeats=3"; MODELS=mobilenetv2,densenet121,inceptionv3; MODELS2=mobilenetv2,densenet121
  LIMIT=120; DATA="--renders 16 --copies 48"  # 45 batches of 128: no timed window crosses an epoch
fi

step() {  # step NAME SECONDS COMMAND...
  local name=$1 seconds=$2; shift 2
  local started left
  started=$(date +%s); left=$(( DEADLINE - started ))
  [ "$left" -lt "$seconds" ] && seconds=$left
  if [ "$seconds" -lt 20 ]; then log "skip $name (deadline)"; return; fi
  log "start $name (limit ${seconds}s)"
  timeout "$seconds" "$@" >"$OUT_DIR/$name.log" 2>&1
  log "end $name rc=$? $(( $(date +%s) - started ))s"
  tail -n 25 "$OUT_DIR/$name.log"
}

bench() {  # bench NAME SECONDS OVERRIDES...: a Hydra multirun of bcc-bench, results collected as one JSON list
  local name=$1 seconds=$2; shift 2
  # shellcheck disable=SC2086
  step "$name" "$seconds" python3 -m bcc_lightning.tasks.bench -m "hydra.sweep.dir=$WORK/$name" \
    trainer.accelerator="$ACCEL" data.root="$WORK/data" naive=false loader_workers=[] $EXTRA "$@"
  python3 -c "import json, sys; from pathlib import Path; runs = [json.loads(p.read_text()) for p in sorted(Path(sys.argv[1]).rglob('bench.json'))]; Path(sys.argv[2]).write_text(json.dumps(runs, indent=1)); print(len(runs), 'results')" \
    "$WORK/$name" "$OUT_DIR/bench_gpu_$name.json"
}

step tests "$LIMIT" python3 -m pytest -q -p no:cacheprovider tests/tasks/test_gpu.py tests/models/test_finite_loss.py
# shellcheck disable=SC2086
step data 60 python3 benchmarks/bench_data.py "$WORK/data" $DATA
bench cached_b128 "$((LIMIT * 2))" model="$MODELS" data.batch_size=128 data.cache="$WORK/cache"
bench stream_b128 "$LIMIT" model="$MODELS2" data.batch_size=128 data.cache=null
bench cached_b32 "$LIMIT" model="$MODELS2" data.batch_size=32 data.cache="$WORK/cache"
bench compiled_b128 "$((LIMIT * 2))" model="$MODELS2" data.batch_size=128 data.cache="$WORK/cache" compile=true
log done
