#!/usr/bin/env bash
# The distilled students of issue 20's controls, at the SAME CPU budget as scripts/distill_cpu_comparison.sh (80 steps,
# batch 8, lr 3e-4, warm-up 10, β 0.05, seed 0, the same data stream), so they compare with data/models/<model>-deltaconv-cpu
# and <model>-linear-cpu:
#   - ΔConv with K small against the grid (the paper's K = 13 on 64 tokens scaled to each model's finest grid:
#     mini-dit 16×16 -> K = 3, mini-sd 32×32 -> K = 7; every layer gets that K);
#   - the LinFusion-style student started from scratch (--init scratch: fresh q/k/v/out, as ΔConv starts from fresh
#     blocks), next to the shipped <model>-linear-cpu that starts from the teacher's attn1 weights.
# One stream, one torch thread (the machine's other core belongs to other jobs). Resumable: rerun after a kill.
#   bash scripts/distill_cpu_controls.sh        # writes runs/ctl-<model>-<name>/, then data/models/<model>-<name>-cpu/
set -u
cd "$(dirname "$0")/.."
STEPS=${STEPS:-80}
BATCH=${BATCH:-8}
COMMON="--steps $STEPS --batch $BATCH --lr 3e-4 --warmup 10 --feature-weight 0.05 --seed 0 --ckpt-every 10 --log-every 5"
LOG=runs/ctl-distill.log
run() {   # model name flags...
  local model=$1 name=$2; shift 2
  local out=runs/ctl-$model-$name dest=data/models/$model-$name-cpu
  [ -d "$dest/adapter" ] && { echo "$dest done"; return; }
  if [ ! -d "$out/adapter" ]; then
    local resume=""
    [ -f "$out/ckpt.pt" ] && resume="--resume"
    local started; started=$(date -u +%FT%TZ)
    echo "$started start $model $name" >> $LOG
    local cmd="OMP_NUM_THREADS=1 aconv distill --model $model $* $COMMON --out $out"
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/aconv distill --model "$model" "$@" $COMMON --out "$out" $resume \
      > "runs/ctl-$model-$name.log" 2>&1
    local rc=$?
    local finished; finished=$(date -u +%FT%TZ)
    echo "$finished end $model $name rc=$rc" >> $LOG
    [ $rc -eq 0 ] || return
    .venv/bin/python - "$out" "$cmd" "$started" "$finished" <<'EOF'
import json, os, platform, sys
from datetime import datetime
out, cmd, started, finished = sys.argv[1:]
t = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))
json.dump({"machine": f"this project's shared {os.cpu_count()}-core CPU ({platform.machine()}), one torch thread; other "
                      "engineers' jobs ran on the other core", "command": cmd, "script": "scripts/distill_cpu_controls.sh",
           "started": started, "finished": finished,
           "wall_minutes": round((t(finished) - t(started)).total_seconds() / 60, 1)},
          open(os.path.join(out, "run.json"), "w"), indent=1)
EOF
  fi
  mkdir -p "$dest"
  cp -r "$out/adapter" "$out/config.json" "$out/distill_log.jsonl" "$dest/"
  [ -f "$out/run.json" ] && cp "$out/run.json" "$dest/"
  echo "$(date -u +%FT%TZ) copied $out -> $dest" >> $LOG
}
mkdir -p runs
run mini-dit deltaconv-k3 --mixer deltaconv --kernel-sizes 3
run mini-sd deltaconv-k7 --mixer deltaconv --kernel-sizes 7
run mini-dit linear-scratch --mixer linear --init scratch
run mini-sd linear-scratch --mixer linear --init scratch
