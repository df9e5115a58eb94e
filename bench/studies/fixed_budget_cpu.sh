#!/usr/bin/env bash
# Fixed wall-clock comparison on a CPU (docs/results.md): the small V2 preset and the UNet baseline trained one after
# the other for BUDGET seconds each on ISIC 2018 at 64x64 (configs/quick.yaml settings), then evaluated with
# configs/evaluate.yaml (V2: DDIM-10 on the 64 validation cases and DDPM-100 on the first 16; 10 samples, STAPLE).
# Usage, from the repository root: BUDGET=900 R=$PWD/bundle/runs/bench/cpu bash bench/studies/fixed_budget_cpu.sh
set -u
BUDGET=${BUDGET:-900}; R=${R:-$PWD/bundle/runs/bench/cpu}
mkdir -p $R
source "$(dirname "$0")/../common.sh"
val_subset "${SPLIT:-bundle/docs/splits/isic2018_split.json}" 16 "$R/isic_val16.json"
cd bundle
SPLIT=${SPLIT:-$PWD/docs/splits/isic2018_split.json}
ISIC="--dataset_dir $D/isic2018_task1_256 --datalist $SPLIT"
run() { local tag=$1; shift; s=$(date +%s); $PY -m monai.bundle run "$@" > $R/$tag.log 2>&1; echo "$tag rc=$? wall=$(( $(date +%s) - s ))s" | tee -a $R/summary.txt; }
TRAIN="$ISIC --epochs 100000 --val_interval 3 --time_budget_s $BUDGET"
run v2_train --config_file "['configs/train.yaml','configs/quick.yaml']" $TRAIN --ckpt_dir $R/v2/models --output_dir $R/v2/runs
run unet_train --config_file "['configs/train.yaml','configs/quick.yaml','configs/baseline.yaml']" $TRAIN --ckpt_dir $R/unet/models --output_dir $R/unet/runs
EV="--config_file ['configs/train.yaml','configs/quick.yaml','configs/evaluate.yaml']"
run v2_eval_ddim10 $EV $ISIC --ckpt_dir $R/v2/models --eval_dir $R/v2/eval_ddim10 --sampler ddim --num_inference_steps 10
run v2_eval16_ddpm100 $EV --dataset_dir $D/isic2018_task1_256 --datalist $R/isic_val16.json --ckpt_dir $R/v2/models --eval_dir $R/v2/eval16_ddpm100 --sampler ddpm --num_inference_steps 100 --grid_cases 8
run unet_eval --config_file "['configs/train.yaml','configs/quick.yaml','configs/evaluate.yaml','configs/baseline.yaml']" $ISIC --ckpt_dir $R/unet/models --eval_dir $R/unet/eval
