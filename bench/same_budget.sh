#!/usr/bin/env bash
# Same wall-clock budget for V2 and the UNet baseline on a CPU (docs/results.md): both train at once on the ISIC split
# (ROI x ROI, batch 8, the small V2 preset with train.yaml's defaults; configs/baseline.yaml) or, with
# DATA=hippocampus, on the MSD hippocampus split (volume.yaml: ROI x ROI in-plane, batch 2 volumes x 4 slices, ROI
# defaults to 64, validation on the 20 whole validation volumes), each pinned to its own
# core with one torch thread, for BUDGET seconds, into runs/<NAME>_v2 and runs/<NAME>_unet; validation every VAL
# epochs of 50 iterations picks model.pt. RESUME=True continues both runs from their latest checkpoints (a further
# BUDGET seconds each), so a long budget can be spread over several sittings.
# Usage, from the repository root: BUDGET=7200 ROI=128 bash bench/same_budget.sh   (then RESUME=True ... to continue)
# V2ARGS: more V2 settings, with V2NAME naming that run (runs/<NAME>_<V2NAME>); UNETARGS: more UNet settings (they
# come last, so they override the common batch size); RUNS: which of the two to train; V2CORE: V2's core (default 0;
# 1 trains a second V2 variant beside a first); UNETNAME and UNETCORE (default unet, 1) name and pin the UNet run the
# same way, so two UNet settings can be tuned side by side, e.g.
#   V2NAME=v2p2 V2ARGS="--patch_size 2" RUNS=v2 VAL=8 BUDGET=5700 ROI=128 bash bench/same_budget.sh
set -u
source "$(dirname "$0")/common.sh"
DATA=${DATA:-isic}; BUDGET=${BUDGET:-3600}; VAL=${VAL:-10}; RESUME=${RESUME:-False}
if [ "$DATA" = hippocampus ]; then ROI=${ROI:-64}; else ROI=${ROI:-128}; fi; NAME=${NAME:-same_budget_$DATA$ROI}
V2NAME=${V2NAME:-v2}; V2ARGS=${V2ARGS:-}; UNETARGS=${UNETARGS:-}; RUNS=${RUNS:-v2 unet}; V2CORE=${V2CORE:-0}
UNETNAME=${UNETNAME:-unet}; UNETCORE=${UNETCORE:-1}
R=${R:-$PWD/bundle/runs/bench/$NAME}; mkdir -p "$R"
cd bundle
if [ "$DATA" = hippocampus ]; then
  SET="--dataset_dir $D/msd_hippocampus --datalist $PWD/docs/splits/msd_hippocampus_split.json --roi_size $ROI"
  SET="$SET --batch_size 2 --slices_per_volume 4"; VOL=",'configs/volume.yaml'"
else
  SET="--dataset_dir $D/isic2018_task1_256 --datalist $PWD/docs/splits/isic2018_split.json --roi_size $ROI"
  SET="$SET --batch_size 8"; VOL=""
fi
COMMON="--num_workers 0 --preset small --epochs 100000 --train#trainer#epoch_length 50"
COMMON="$COMMON --val_interval $VAL --time_budget_s $BUDGET --resume $RESUME"
train() {  # core name configs [settings]
  local s; s=$(date +%s)
  OMP_NUM_THREADS=1 taskset -c "$1" $PY -m monai.bundle run --config_file "$3" $SET $COMMON --run_name "${NAME}_$2" \
    ${4:-} >> "$R/$2.train.log" 2>&1
  echo "$2 train rc=$? wall=$(( $(date +%s) - s ))s resume=$RESUME" >> "$R/summary.txt"
}
[[ " $RUNS " == *" v2 "* ]] && train "$V2CORE" "$V2NAME" "['configs/train.yaml'$VOL]" "$V2ARGS" &
UNET="['configs/train.yaml'$VOL,'configs/baseline.yaml']"
[[ " $RUNS " == *" unet "* ]] && train "$UNETCORE" "$UNETNAME" "$UNET" "$UNETARGS" &
wait
