#!/usr/bin/env bash
# Fixed-budget study of the objective and conditioning switches (docs/results.md): each run trains V2 (small preset)
# for BUDGET seconds on ISIC 2018 at 64x64 (the split in docs/splits), then configs/evaluate.yaml scores it on the 64
# validation cases (DATA=hippocampus: MSD hippocampus, 20 volumes): 10-sample ensemble, DDPM-10, STAPLE, with the
# anchor Dice and the image reliance.
# PAR runs go at once, each with THREADS torch threads; RELIANCE=False skips the swapped sampling in evaluation.
# Usage, from the repository root:
#   BUDGET=300 PAR=2 THREADS=1 bash bench/objective_study.sh paper:"" x0:"--prediction_type sample" ...
set -u
BUDGET=${BUDGET:-300}; D=${D:-$PWD/../shared/data}; R=${R:-/tmp/study}; PAR=${PAR:-2}; THREADS=${THREADS:-1}
PY=${PY:-$PWD/.venv/bin/python}; DATA=${DATA:-isic}; VAL=${VAL:-4}; RELIANCE=${RELIANCE:-True}; mkdir -p "$R"
source "$(dirname "$0")/parallel_runs.sh"
cd bundle
SPL=$PWD/docs/splits
if [ "$DATA" = isic ]; then
  DATA_ARGS="--dataset_dir $D/isic2018_task1_256 --datalist $SPL/isic2018_split.json --roi_size 64 --batch_size 8"
  CFG="'configs/train.yaml'"; EVAL_BATCH=4
else
  DATA_ARGS="--dataset_dir $D/msd_hippocampus --datalist $SPL/msd_hippocampus_split.json --roi_size 64 --batch_size 2 --slices_per_volume 4"
  CFG="'configs/train.yaml','configs/volume.yaml'"; EVAL_BATCH=1  # volumes of different depths: one at a time
fi
# epochs of 50 iterations so that the wall-clock budget ends within a minute of BUDGET; validation every VAL epochs
COMMON="--preset small --num_workers 0 --epochs 100000 --train#trainer#epoch_length 50 --val_interval $VAL --time_budget_s $BUDGET"
EVAL="--sampler ddpm --num_inference_steps 10 --ensemble_size 10 --fusion staple --eval_batch_size $EVAL_BATCH --grid_cases 8 --val_reliance $RELIANCE"
run() {  # name "overrides"
  local name=$1 over=$2 s
  s=$(date +%s)
  OMP_NUM_THREADS=$THREADS $PY -m monai.bundle run --config_file "[$CFG]" $DATA_ARGS $COMMON $over \
    --run_name "study_$name" > "$R/$name.train.log" 2>&1
  echo "$name train rc=$? wall=$(( $(date +%s) - s ))s" >> "$R/summary.txt"
  s=$(date +%s)
  OMP_NUM_THREADS=$THREADS $PY -m monai.bundle run --config_file "[$CFG,'configs/evaluate.yaml']" $DATA_ARGS \
    --preset small --num_workers 0 $over $EVAL --run_name "study_$name" > "$R/$name.eval.log" 2>&1
  echo "$name eval rc=$? wall=$(( $(date +%s) - s ))s" >> "$R/summary.txt"
}
run_specs "$PAR" "$@"
