#!/usr/bin/env bash
# One training session on a lent GPU machine (the workplace's `device` tool), which starts bare:
# installs the few packages its image lacks from carried wheels, trains for a fixed wall-clock
# budget, and leaves the final checkpoint (split into parts under 16 MiB: weights-only always, with
# the optimizer when it fits), the metrics and the log in $OUT (rejoin: cat weights.ckpt.part* > w.ckpt).
# Prepare here first:  scripts/pack_training_set.py  (writes .gpu/train) and the wheels in .whl (docs/training.md, "Training on a lent GPU").
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
# experiment=gpu_vr unless the arguments name another experiment
exp=experiment=gpu_vr; for a in "$@"; do [[ $a == experiment=* ]] && exp=; done
timeout -s INT "${LIC_HARD_LIMIT:-570}" python3 train.py $exp data.train_dir=$PWD/.gpu/train \
  hydra.run.dir=$RUN "$@" 2>&1 | tee "$OUT/train.log" | grep -v -E "^\s*$|Warning|warn\(" | tail -n 40
ck=$(readlink -f $RUN/checkpoints/last.ckpt)   # a link to the newest checkpoint, the state at the end
if [ -f "$ck" ]; then
  # What comes back is limited (16 MiB a file, about 64 MiB in all): the full checkpoint (with
  # Adam's state, 3x the weights) comes back only when it fits; the weights-only one always
  # does (same keys and training stats, no optimizer: for export and init_from, not resume).
  python3 -c "import sys, torch; c = torch.load(sys.argv[1], map_location='cpu', weights_only=False)
c.pop('optimizer_states', None); c.pop('lr_schedulers', None); torch.save(c, sys.argv[2])" "$ck" /tmp/weights.ckpt
  split -b 15M -d /tmp/weights.ckpt "$OUT/weights.ckpt.part"
  sha256sum /tmp/weights.ckpt | cut -d' ' -f1 > "$OUT/weights.ckpt.sha256"
  if [ "$(stat -c %s "$ck")" -lt $((40 * 1024 * 1024)) ]; then
    split -b 15M -d "$ck" "$OUT/final.ckpt.part"
    sha256sum "$ck" | cut -d' ' -f1 > "$OUT/final.ckpt.sha256"
  fi
  echo "checkpoint $(basename "$ck"): $(stat -c %s "$ck") bytes; weights-only $(stat -c %s /tmp/weights.ckpt) bytes"
else
  echo "no checkpoint written"
fi
m=$(ls $RUN/csv/*/metrics.csv 2>/dev/null | head -1)
[ -n "$m" ] && cp "$m" "$OUT/metrics.csv" && cp $RUN/config.yaml "$OUT/config.yaml" 2>/dev/null
ls -la "$OUT"
