#!/usr/bin/env bash
# One training session on a lent GPU machine (the workplace's `device` tool), which starts bare:
# installs the few packages its image lacks from carried wheels, trains for a fixed wall-clock
# budget, and leaves the final checkpoint (split into parts under 16 MiB), the metrics and the
# log in $OUT.  Prepare here first:  scripts/pack_training_set.py  (writes .gpu/train) and the
# wheels in .whl (docs/training.md, "Training on a lent GPU").
#   carry: .whl .gpu      command: bash scripts/device_train.sh [hydra overrides...]
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
RUN=/tmp/lic_run
export PYTHONUNBUFFERED=1 PROJECT_ROOT=$PWD
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 3; }
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, lightning, compressai, constriction, hydra; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'lightning', lightning.__version__)" \
  || exit 3
# hard stop a little after the budget in case the trainer does not stop by itself
timeout -s INT "${LIC_HARD_LIMIT:-570}" python3 train.py experiment=gpu_vr data.train_dir=$PWD/.gpu/train \
  hydra.run.dir=$RUN "$@" 2>&1 | tee "$OUT/train.log" | grep -v -E "^\s*$|Warning|warn\(" | tail -n 40
ck=$RUN/checkpoints/final.ckpt
[ -f "$ck" ] || ck=$RUN/checkpoints/last.ckpt
if [ -f "$ck" ]; then
  split -b 15M -d "$ck" "$OUT/final.ckpt.part"
  sha256sum "$ck" | cut -d' ' -f1 > "$OUT/final.ckpt.sha256"
  echo "checkpoint $(basename "$ck"): $(stat -c %s "$ck") bytes -> $(ls "$OUT" | grep -c part) parts"
else
  echo "no checkpoint written"
fi
m=$(ls $RUN/csv/*/metrics.csv 2>/dev/null | head -1)
[ -n "$m" ] && cp "$m" "$OUT/metrics.csv" && cp $RUN/config.yaml "$OUT/config.yaml" 2>/dev/null
ls -la "$OUT"
