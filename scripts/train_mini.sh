#!/usr/bin/env bash
# Train mini-sd, mini-dit and the attribute classifier concurrently (one GPU or CPU), evaluate, and pack
# the results into $OUT (or ./runs/pack). Used for the shipped weights (see notebooks/01_embedded_models).
#   DEVICE=cuda MINUTES=7.2 BATCH=256 scripts/train_mini.sh
# The shipped weights came from four phases on one H100 (the processes sharing it); phases 3-4 (the
# position fix) are in scripts/finetune_phase3.sh:
#   phase 1: DEVICE=cuda MINUTES=7.0 BATCH=256 N_EVAL=256 RUNS=/tmp/runs scripts/train_mini.sh
#   phase 2: INIT=runs/init DEVICE=cuda MINUTES=4.0 BATCH=256 N_EVAL=256 RUNS=/tmp/runs scripts/train_mini.sh
#            (runs/init/<model> = the phase-1 <model>/pipeline folders)
#   CPU experiment (a session without a GPU; NOT shipped, no gain: benchmarks/results/cpu_phase3/): from the phase-2 weights,
#            60% of each batch at high noise (t >= 800), where only the caption can place objects:
#     aconv train --model M --out runs/cpu/M --init-from data/models/M --batch 32 --max-minutes 80 \
#       --lr 3e-4 --warmup 50 --seed 3 --high-noise-frac 0.6 --high-noise-min 800 --resume
#     (mini-dit first got 300 such steps at --high-noise-frac 0.7 --high-noise-min 850, seed 2); then,
#     continuing from the raw (non-EMA) weights of each stopped run's ckpt.pt (exported by a one-off script):
#     --text-encoder-lr-mult 10 --lr 2e-4 --high-noise-frac 0.5 (seed 4, stopped after ~15 min), and
#     --position-word-norm 10 --text-encoder-lr-mult 5 --lr 2e-4 --high-noise-frac 0.5 --max-minutes 48 (seed 5)
# A CPU run: DEVICE=cpu MINUTES=150 BATCH=32 scripts/train_mini.sh (time-fitted; ~13 s/step at batch 32
# on the project's shared 2-core CPU, i.e. only ~650 steps: not enough for usable models).
set -u
DEVICE=${DEVICE:-cuda}; MINUTES=${MINUTES:-7.2}; CLF_MINUTES=${CLF_MINUTES:-$MINUTES}; BATCH=${BATCH:-256}
STEPS=${STEPS:-100000}; RUNS=${RUNS:-/tmp/runs}; OUT=${OUT:-runs/pack}; N_EVAL=${N_EVAL:-256}
PY=${PY:-python3}
mkdir -p "$RUNS" "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
common="--device $DEVICE --batch $BATCH --steps $STEPS --sample-every 1000 --ckpt-every 500"
# INIT=folder continues from <folder>/<model> pipelines (phase 2: new data seed, lower lr; TRAIN_ARGS replaces
# the default extra options '--min-snr-gamma 5'); the classifier
# is then taken from CLF_DIR instead of being trained again.
if [ -n "${INIT:-}" ]; then
  for m in mini-sd mini-dit; do
    $PY -m aconvlib train --model $m --out $RUNS/$m --max-minutes $MINUTES --lr ${LR:-4e-4} --warmup 100 --seed ${SEED:-1} \
      ${TRAIN_ARGS---min-snr-gamma 5} --init-from $INIT/$m $common --resume >$RUNS/$m.out 2>&1 &
  done
  wait; mkdir -p $RUNS/classifier; cp -r ${CLF_DIR:-data/models/classifier} $RUNS/classifier/classifier
else
  $PY -m aconvlib train --model mini-sd --out $RUNS/mini-sd --max-minutes $MINUTES --lr 6e-4 --warmup 300 $common --resume >$RUNS/mini-sd.out 2>&1 &
  $PY -m aconvlib train --model mini-dit --out $RUNS/mini-dit --max-minutes $MINUTES --lr 6e-4 --warmup 300 $common --resume >$RUNS/mini-dit.out 2>&1 &
  $PY -m aconvlib train --model classifier --out $RUNS/classifier --max-minutes $CLF_MINUTES --lr 2e-3 --warmup 100 $common --batch 128 --resume >$RUNS/classifier.out 2>&1 &
  wait
fi
tail -c 600 $RUNS/*.out
$PY - <<PYEOF > $RUNS/eval.json 2>$RUNS/eval.err
import json, torch
from aconvlib.mini.pipeline import MiniPipeline
from aconvlib.mini.evaluate import AttributeClassifier, evaluate_model
clf = AttributeClassifier.load("$RUNS/classifier/classifier", device="$DEVICE")
res = {}
for m in ("mini-sd", "mini-dit"):
    try:
        pipe = MiniPipeline.from_pretrained("$RUNS/%s/pipeline" % m, device="$DEVICE")
        r = evaluate_model(pipe, $N_EVAL, classifier=clf, batch_size=128)
        res[m] = r
    except Exception as e:
        res[m] = repr(e)
print(json.dumps(res, indent=1))
PYEOF
cat $RUNS/eval.json; tail -3 $RUNS/eval.err
for m in mini-sd mini-dit classifier; do
  (cd $RUNS/$m && tar cf "$OUT/$m.tar" --exclude=ckpt.pt --exclude='*.tmp' .)
done
cp $RUNS/eval.json $RUNS/*.out "$OUT/" 2>/dev/null
ls -la "$OUT"
