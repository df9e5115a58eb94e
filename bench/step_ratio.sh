#!/usr/bin/env bash
# Seconds per training iteration of the real `monai.bundle run` quick demo (V2, the shipped architecture: small preset,
# 128x128, 2x2 tokens, batch 8, on its embedded ISIC demo data) against the UNet baseline with the same overlay, one
# after the other on one pinned core with one torch thread; no validation inside the window. Prints both medians and
# their ratio (bench/iteration_times.py, baseline last). From the repository root:
#   BUDGET=150 CORE=0 bash bench/step_ratio.sh
set -u
BUDGET=${BUDGET:-150}; CORE=${CORE:-0}
R=${R:-$PWD/bundle/runs/bench/step_ratio}; rm -rf "$R"; mkdir -p "$R"
source "$(dirname "$0")/common.sh"
cpu_info
cd bundle
for name in v2 unet; do
  cfg="'configs/train.yaml','configs/quick.yaml'"; [ "$name" = unet ] && cfg="$cfg,'configs/baseline.yaml'"
  OMP_NUM_THREADS=1 taskset -c "$CORE" $PY -m monai.bundle run --config_file "[$cfg]" \
    --batch_size 8 --num_workers 0 --epochs 100000 --train#trainer#epoch_length 10 --val_interval 100000 \
    --time_budget_s "$BUDGET" \
    --run_name "step_ratio_$name" --ckpt_dir "$R/$name/models" --output_dir "$R/$name/logs" > "$R/$name.log" 2>&1
  echo "$name rc=$?"
done
cd ..
$PY bench/iteration_times.py "$R/v2" "$R/unet"
