#!/usr/bin/env bash
# The query-bank term on a trained DreamPRVR index (docs/BENCHMARKS.md, "The bank term on a trained DreamPRVR index"):
# exact float32 Flat indexes of a checkpoint on capproxy val, without and with `--query-bank train`, then R@K / SumR
# through the index (scripts/index_recall.py). Resumable: an index whose recall line exists is skipped.
#   bash scripts/bench_bank_trained.sh CHECKPOINT DATA OUT_DIR     (PRVR_VENV: the virtualenv, default .venv)
set -euo pipefail
checkpoint=${1:?checkpoint}; data=${2:?data root}; out=${3:?out dir}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$out"
run() {  # name, then extra build-index options
  local name=$1; shift
  if [ -s "$out/$name.json" ]; then echo "skip $name"; return; fi
  rm -rf "$out/$name"
  local began=$(date +%s)
  ${PRVR_VENV:-.venv}/bin/prvr build-index --checkpoint "$checkpoint" --data "$data" --collection capproxy --split val \
      --factory IDMap2,Flat --token-dtype float32 --out "$out/$name" --no-progress "$@"
  local built=$(( $(date +%s) - began ))
  ${PRVR_VENV:-.venv}/bin/python scripts/index_recall.py --index "$out/$name" --data "$data" --collection capproxy --split val \
      | python3 -c "import json,sys; r=json.loads(sys.stdin.read()); r.update(name='$name', build_s=$built, options='$*'); print(json.dumps(r))" \
      > "$out/$name.json"
  cat "$out/$name.json"
}
run plain
run bank_k500_a0.5 --query-bank train --bank-k 500 --bank-alpha 0.5
run bank_k200_a0.5 --query-bank train --bank-k 200 --bank-alpha 0.5
run bank_k500_a1.0 --query-bank train --bank-k 500 --bank-alpha 1.0
run bank_k2000_a0.3 --query-bank train --bank-k 2000 --bank-alpha 0.3
