#!/usr/bin/env bash
# Scores the two runs of bench/same_budget.sh on the ISIC split's 131 held-out test cases (DATA=hippocampus: the
# hippocampus split's 20 test volumes, with the fixed atlas as the no-image prior) (docs/results.md): V2 with
# evaluate.yaml's default ensemble fused by STAPLE, its anchor and its image reliance; the UNet baseline with the same
# evaluation; and the best fixed disc (bench/disc_prior.py) on the same cases. Outputs: runs/<NAME>_{v2,unet}/
# eval_test/ (metrics.csv, per-case CSVs, overlay grid, reliability diagram), logs and disc.json in R.
# Usage, from the repository root: ROI=128 bash bench/same_budget_eval.sh
# RUNS: the runs to score (default "unet v2"; a V2 run trained with V2NAME/V2ARGS, e.g. RUNS=v2p2 V2ARGS="--patch_size
# 2"; a name starting with unet is scored as a UNet, with UNETARGS, its settings that differ from baseline.yaml's,
# e.g. UNETARGS="--baseline_norm batch"); DISC=False skips the disc; EVALARGS: settings for both models, e.g.
# "--largest_component True", with TAG naming their outputs (eval_<SPLIT><TAG>).
set -u
DATA=${DATA:-isic}; THREADS=${THREADS:-2}; SPLIT=${SPLIT:-test}
if [ "$DATA" = hippocampus ]; then ROI=${ROI:-64}; else ROI=${ROI:-128}; fi; NAME=${NAME:-same_budget_$DATA$ROI}
RUNS=${RUNS:-unet v2}; V2ARGS=${V2ARGS:-}; UNETARGS=${UNETARGS:-}; DISC=${DISC:-True}
EVALARGS=${EVALARGS:-}; TAG=${TAG:-}
R=${R:-$PWD/bundle/runs/bench/$NAME}; mkdir -p "$R"
source "$(dirname "$0")/common.sh"
if [ "$DATA" = hippocampus ]; then
  DS=msd_hippocampus; SPL=msd_hippocampus_split.json; PRIOR="--volume --fit_cases 200"; VOL=",'configs/volume.yaml'"; EB=1
else
  DS=isic2018_task1_256; SPL=isic2018_split.json; PRIOR="--fit_cases 300"; VOL=""; EB=4
fi
[ "$DISC" = True ] && OMP_NUM_THREADS=1 $PY bench/disc_prior.py --dataset_dir "$D/$DS" $PRIOR \
  --datalist "bundle/docs/splits/$SPL" --roi_size "$ROI" --split "$SPLIT" \
  --json "$R/disc_$SPLIT.json" > "$R/disc_$SPLIT.log" 2>&1
cd bundle
SET="--dataset_dir $D/$DS --datalist $PWD/docs/splits/$SPL --roi_size $ROI"
EVAL="--preset small --num_workers 0 --eval_split $SPLIT --grid_cases 8 --eval_batch_size $EB $EVALARGS"
evaluate() {  # name configs [settings]
  local s; s=$(date +%s)
  OMP_NUM_THREADS=$THREADS $PY -m monai.bundle run --config_file "$2" $SET $EVAL ${3:-} --run_name "${NAME}_$1" \
    --eval_dir "runs/${NAME}_$1/eval_$SPLIT$TAG" > "$R/$1.eval_$SPLIT$TAG.log" 2>&1
  echo "$1 eval_$SPLIT$TAG rc=$? wall=$(( $(date +%s) - s ))s" >> "$R/summary.txt"
}
UNET="['configs/train.yaml'$VOL,'configs/evaluate.yaml','configs/baseline.yaml']"
for run in $RUNS; do
  if [[ "$run" == unet* ]]; then evaluate "$run" "$UNET" "$UNETARGS"
  else evaluate "$run" "['configs/train.yaml'$VOL,'configs/evaluate.yaml']" "$V2ARGS"; fi
done
