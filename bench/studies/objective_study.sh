#!/usr/bin/env bash
# Fixed-budget study of the objective and conditioning switches (docs/results.md): each run trains V2 (small preset)
# for BUDGET seconds, on ISIC 2018 at 64x64 or on MSD hippocampus (64x64 in-plane, sliced axially), with the splits in
# docs/splits, and validates at the end with one DDIM-10 sample, the anchor Dice and the image reliance.
# ISIC runs validate every VAL epochs of 50 iterations and are then scored by configs/evaluate.yaml on the 64
# validation cases: 10-sample ensemble, DDPM-10, STAPLE, with the anchor Dice and the image reliance. Hippocampus runs
# validate only at the end (HIPPO_VAL) and are scored by that validation on the 20 validation volumes, unless
# HIPPO_EVAL=True adds the ensemble evaluation (about 20 CPU-minutes per run).
# A spec is [data/]name:"overrides", data isic (default) or hippocampus; PAR runs go at once, THREADS torch threads each;
# RELIANCE=False skips the swapped sampling in evaluation; EXTRA=",'configs/baseline.yaml'" adds overlays after the
# data's configs (e.g. the UNet baseline; then RELIANCE=False); SPLIT=test scores the held-out list.
# bench/studies/study_table.py prints the table. Usage, from the repository root:
#   BUDGET=900 PAR=2 THREADS=1 bash bench/studies/objective_study.sh paper:"--prediction_type epsilon" hippocampus/x0:"..."
set -u
BUDGET=${BUDGET:-300}; R=${R:-$PWD/bundle/runs/study_logs}; PAR=${PAR:-2}; THREADS=${THREADS:-1}
VAL=${VAL:-4}; HIPPO_VAL=${HIPPO_VAL:-100000}; HIPPO_EVAL=${HIPPO_EVAL:-False}
RELIANCE=${RELIANCE:-True}; EXTRA=${EXTRA:-}; SPLIT=${SPLIT:-validation}; mkdir -p "$R"
source "$(dirname "$0")/../common.sh"
cd bundle
SPL=$PWD/docs/splits
run() {  # [data/]name "overrides"
  local data=isic name=$1 over=$2 s cfg args val eval_batch evaluate=True
  if [[ $name == */* ]]; then data=${name%%/*}; name=${name#*/}; fi
  if [ "$data" = isic ]; then
    args="--dataset_dir $D/isic2018_task1_256 --datalist $SPL/isic2018_split.json --roi_size 64 --batch_size 8"
    cfg="'configs/train.yaml'"; eval_batch=4; val=$VAL
  else
    args="--dataset_dir $D/msd_hippocampus --datalist $SPL/msd_hippocampus_split.json --roi_size 64 --batch_size 2"
    args="$args --slices_per_volume 4"; name="hippocampus_$name"
    cfg="'configs/train.yaml','configs/volume.yaml'"; eval_batch=1; val=$HIPPO_VAL; evaluate=$HIPPO_EVAL
  fi
  # epochs of 50 iterations, so that the wall-clock budget ends within a minute of BUDGET
  s=$(date +%s)
  OMP_NUM_THREADS=$THREADS $PY -m monai.bundle run --config_file "[$cfg$EXTRA]" $args --preset small --num_workers 0 \
    --epochs 100000 --train#trainer#epoch_length 50 --val_interval "$val" --time_budget_s "$BUDGET" $over \
    --run_name "study_$name" > "$R/$name.train.log" 2>&1
  echo "$name train rc=$? wall=$(( $(date +%s) - s ))s" >> "$R/summary.txt"
  [ "$evaluate" = True ] || return 0
  local ev=eval; [ "$SPLIT" = validation ] || ev=eval_$SPLIT  # runs/study_<name>/<ev>/, read by study_table.py
  s=$(date +%s)
  OMP_NUM_THREADS=$THREADS $PY -m monai.bundle run --config_file "[$cfg,'configs/evaluate.yaml'$EXTRA]" $args \
    --preset small --num_workers 0 $over --sampler ddpm --num_inference_steps 10 --ensemble_size 10 --fusion staple \
    --eval_batch_size $eval_batch --grid_cases 8 --val_reliance $RELIANCE --run_name "study_$name" \
    --eval_split "$SPLIT" --eval_dir "runs/study_$name/$ev" > "$R/$name.$ev.log" 2>&1
  echo "$name $ev rc=$? wall=$(( $(date +%s) - s ))s" >> "$R/summary.txt"
}
run_specs "$PAR" "$@"
