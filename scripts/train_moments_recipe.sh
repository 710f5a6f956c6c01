#!/usr/bin/env bash
# The capproxy moment recipe (issue 19): pre-train on every timed train.json sentence (capproxy_pretrain:train),
# fine-tune on DEV-TRAIN with the localiser chosen on the first 500 DEV-VAL queries, report on the 3,033 others.
#
#   SEED=0 OUT=runs/moments_recipe_s0 bash scripts/train_moments_recipe.sh
#
# Resumable: each stage writes OUT/<stage>/DONE when it finishes; a killed stage continues from its last.pt.
# Environment: SEED (0), OUT (runs/moments_recipe_s$SEED), PRESET (cpu), PRE_EPOCHS (2), FT_EPOCHS (3), FT_LR (2e-4),
# EXTRA (more --set flags for both stages, e.g. "--set loss.weights.sim_nce=4"), PRE_INIT (a finished pre-training
# run to fine-tune from instead of pre-training here), DATA (data), PRVR (.venv/bin/prvr), PYTHON (.venv/bin/python).
set -euo pipefail
SEED=${SEED:-0}
OUT=${OUT:-runs/moments_recipe_s$SEED}
DATA=${DATA:-data}
PRVR=${PRVR:-.venv/bin/prvr}
PYTHON=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=1
COMMON=(--data "$DATA" --collection capproxy --preset "${PRESET:-cpu}" --video-feature minilm_l3 --text-feature minilm_l6
        --seed "$SEED" --set data.max_frames=32 --set loss.weights.sim_nce=0 --set train.threads=1
        --max-val-queries 500 --no-progress)
# shellcheck disable=SC2206
EXTRA_ARGS=(${EXTRA:-})

stage() {  # stage NAME ARGS...: run train-moments into OUT/NAME unless done, resuming a killed run
  local name=$1; shift
  local dir=$OUT/$name
  if [ -f "$dir/DONE" ]; then echo "$name: done"; return; fi
  local resume=()
  if [ -f "$dir/last.pt" ]; then resume=(--resume); fi
  echo "$name: start $(date -u +%FT%TZ)"
  "$PRVR" train-moments "${COMMON[@]}" "${EXTRA_ARGS[@]}" --out "$dir" "${resume[@]}" "$@"
  touch "$dir/DONE"
  echo "$name: done $(date -u +%FT%TZ)"
}

PRE=${PRE_INIT:-$OUT/pre}
if [ -z "${PRE_INIT:-}" ]; then
  stage pre --train-split capproxy_pretrain:train --set train.epochs="${PRE_EPOCHS:-2}" \
    --set train.warmup_fraction=0.05 --set train.lr_decay=linear --no-select
fi
stage ft --init-from "$PRE/last.pt" --set train.epochs="${FT_EPOCHS:-3}" --set train.lr="${FT_LR:-2e-4}" \
  --set train.warmup_fraction=0.1 --set train.lr_decay=linear
if [ ! -f "$OUT/report.json" ]; then
  "$PYTHON" scripts/bench_moments.py --data "$DATA" --collection capproxy --sections accuracy \
    --checkpoint "$(basename "$OUT")=$OUT/ft/best.pt" --skip-queries 500 \
    --out-json "$OUT/report.json" --out-md "$OUT/report.md"
fi
echo "report: $OUT/report.md"
