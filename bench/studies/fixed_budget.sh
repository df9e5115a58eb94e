#!/usr/bin/env bash
# Fixed wall-clock comparison (docs/results.md): the small V2 preset and the UNet baseline (configs/baseline.yaml),
# trained for BUDGET seconds each on ISIC 2018 and MSD hippocampus, all four at once on one GPU; then the baselines are
# evaluated (configs/evaluate.yaml). The V2 weights are evaluated with bench/studies/eval_v2.sh (STAPLE needs SimpleITK).
# Usage, from the repository root: BUDGET=360 bash bench/studies/fixed_budget.sh   (DRY=1 skips the GPU checks)
set -u
BUDGET=${BUDGET:-400}; R=${R:-$PWD/bundle/runs/bench/r}; NW=${NW:-3}; DRY=${DRY:-0}
OUT=${OUT:-$PWD/bundle/runs/bench/out}; mkdir -p $OUT $R
PY=${PY:-python3}  # the GPU machine's Python
source "$(dirname "$0")/../common.sh"
if [ "$DRY" = 0 ]; then
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
fi
$PY -c "import monai, ignite, einops, scipy, PIL, yaml, tensorboard, nibabel, fire, torch; print('imports ok', monai.__version__, torch.__version__)" || exit 3
cd bundle
SPL=${SPL:-$PWD/docs/splits}
ISIC="--dataset_dir $D/isic2018_task1_256 --datalist $SPL/isic2018_split.json --roi_size 128 --batch_size 32"
HIP="--dataset_dir $D/msd_hippocampus --datalist $SPL/msd_hippocampus_split.json --roi_size 64 --batch_size 8 --slices_per_volume 4"
COMMON="--num_workers $NW --epochs 100000 --num_inference_steps 10 --ema_momentum 0.0001 --time_budget_s $BUDGET"
EXTRA=${EXTRA:-}
train() {  # name configs args...
  local name=$1 cfg=$2; shift 2
  ( s=$(date +%s); $PY -m monai.bundle run --config_file "$cfg" "$@" $COMMON $EXTRA --ckpt_dir $R/$name/models \
      --output_dir $R/$name/runs > $R/$name.train.log 2>&1
    echo "$name train rc=$? wall=$(( $(date +%s) - s ))s" | tee -a $R/summary.txt ) &
}
evaluate() {  # name tag configs args...
  local name=$1 tag=$2 cfg=$3; shift 3
  s=$(date +%s); $PY -m monai.bundle run --config_file "$cfg" "$@" $EXTRA --ckpt_dir $R/$name/models \
    --eval_dir $R/$name/eval_$tag > $R/$name.eval_$tag.log 2>&1
  echo "$name eval $tag rc=$? wall=$(( $(date +%s) - s ))s" | tee -a $R/summary.txt
}
T0=$(date +%s)
train isic_v2 "['configs/train.yaml']" $ISIC --preset small --val_interval 10
train isic_unet "['configs/train.yaml','configs/baseline.yaml']" $ISIC --val_interval 10
train hip_v2 "['configs/train.yaml','configs/volume.yaml']" $HIP --preset small --val_interval 20
train hip_unet "['configs/train.yaml','configs/volume.yaml','configs/baseline.yaml']" $HIP --val_interval 20
wait
echo "trainings done at $(( $(date +%s) - T0 ))s" | tee -a $R/summary.txt
evaluate isic_unet single "['configs/train.yaml','configs/evaluate.yaml','configs/baseline.yaml']" $ISIC \
  --num_workers 2 --eval_batch_size 8 --grid_cases 8 &
evaluate hip_unet single "['configs/train.yaml','configs/volume.yaml','configs/evaluate.yaml','configs/baseline.yaml']" \
  $HIP --num_workers 2 --grid_cases 8 &
wait
echo "all done at $(( $(date +%s) - T0 ))s" | tee -a $R/summary.txt
# collect: V2 weights split under 16 MiB for the device tool's file limit, logs and CSVs in results.tar.gz
cd $R
for n in isic_v2 hip_v2; do cp $n/models/model.pt $n.model.pt && split -b 15M $n.model.pt $OUT/$n.model.pt.part-; done
tar czf $OUT/results.tar.gz --exclude='*.pt' summary.txt *.log */eval_* */runs 2>/dev/null
ls -la $OUT; cat summary.txt
for f in *.train.log; do echo "== $f"; grep -a "Key metric\|budget\|Epoch\[.*Metrics" $f | tail -3; done
for f in *.eval_*.log; do echo "== $f"; grep -a "Metrics --" $f | tail -1; done
