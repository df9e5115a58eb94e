#!/usr/bin/env bash
# Evaluations of the fixed-budget V2 weights with configs/evaluate.yaml (10 samples, STAPLE) on the CPU, one after
# another: ISIC (first 16 validation cases) with DDIM-5/10/20 and DDPM-100; hippocampus (20 volumes) with DDIM-5, 5 samples.
# Usage, from the repository root: ISIC_CKPT=... HIP_CKPT=... OUT=$PWD/bundle/runs/bench/ev bash bench/studies/eval_v2.sh
set -u
OUT=${OUT:-$PWD/bundle/runs/bench/ev}; mkdir -p $OUT
source "$(dirname "$0")/../common.sh"
val_subset bundle/docs/splits/isic2018_split.json 16 "$OUT/isic_val16.json"
cd bundle
export OMP_NUM_THREADS=2
ISIC="--dataset_dir $D/isic2018_task1_256 --roi_size 128 --preset small --ckpt_path $ISIC_CKPT --num_workers 0"
ev() { local tag=$1; shift; s=$(date +%s); $PY -m monai.bundle run "$@" --eval_dir $OUT/$tag > $OUT/$tag.log 2>&1; echo "$tag rc=$? wall=$(( $(date +%s) - s ))s" >> $OUT/summary.txt; }
for k in 5 10 20; do
  ev isic16_ddim$k --config_file "['configs/train.yaml','configs/evaluate.yaml']" $ISIC --datalist $OUT/isic_val16.json --sampler ddim --num_inference_steps $k --grid_cases 0
done
ev isic16_ddpm100 --config_file "['configs/train.yaml','configs/evaluate.yaml']" $ISIC --datalist $OUT/isic_val16.json --sampler ddpm --num_inference_steps 100 --grid_cases 8
ev hip20_ddim5_ens5 --config_file "['configs/train.yaml','configs/volume.yaml','configs/evaluate.yaml']" --dataset_dir $D/msd_hippocampus --datalist docs/splits/msd_hippocampus_split.json --roi_size 64 --preset small --ckpt_path $HIP_CKPT --num_workers 0 --sampler ddim --num_inference_steps 5 --ensemble_size 5 --slice_batch 64 --grid_cases 6
echo done >> $OUT/summary.txt
