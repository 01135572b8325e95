#!/usr/bin/env bash
# Equal-budget CPU distillation of the embedded models into ΔConv and LinFusion-style students (chapter 8, Table 3).
# Every run: from scratch (ΔConv: fresh blocks; linear: initialised from the teacher's attn1), the same seed, data
# stream, steps, batch and hyper-parameters; only --mixer differs. One torch thread per run; the two models run side
# by side (two streams), each stream deltaconv then linear. Resumable: rerun this script after a kill.
#   bash scripts/distill_cpu_comparison.sh            # writes runs/cmp-<model>-<mixer>/ and logs
# The adapters, logs and configs are then copied to data/models/<model>-<mixer>-cpu/ (see chapter 8).
set -u
cd "$(dirname "$0")/.."
STEPS=${STEPS:-80}
BATCH=${BATCH:-8}
COMMON="--steps $STEPS --batch $BATCH --lr 3e-4 --warmup 10 --feature-weight 0.05 --seed 0 --ckpt-every 10 --log-every 5"
stream() {
  local model=$1
  for mixer in deltaconv linear; do
    local out=runs/cmp-$model-$mixer
    local resume=""
    [ -f "$out/ckpt.pt" ] && resume="--resume"
    [ -d "$out/adapter" ] && { echo "$out done"; continue; }
    echo "$(date -u +%FT%TZ) start $model $mixer" >> runs/cmp-distill.log
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/aconv distill --model "$model" --mixer "$mixer" $COMMON \
      --out "$out" $resume > "runs/cmp-$model-$mixer.log" 2>&1
    echo "$(date -u +%FT%TZ) end $model $mixer rc=$?" >> runs/cmp-distill.log
  done
}
mkdir -p runs
stream mini-sd &
stream mini-dit &
wait
