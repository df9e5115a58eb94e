#!/usr/bin/env bash
# Do timestep groups and bf16 autocast change what training learns? (docs/benchmarks.md) Trains the default V2-small
# on the ISIC split at 64x64 for ITERS iterations (same seed, data order and validation cases) once per setting given
# as name:"overrides", PAR at a time with THREADS torch threads each, validating every 100 iterations, then prints
# per 100 iterations the mean training loss (L_n) and the validation Dice (one DDIM-10 sample), anchor Dice and image
# reliance. Usage, from the repository root:
#   ITERS=400 PAR=2 bash bench/studies/groups_amp_study.sh groups2:"" per_case:"--timestep_groups '$None'" bf16:"--amp True"
set -u
ITERS=${ITERS:-400}; R=${R:-$PWD/bundle/runs/bench/groups_amp}; PAR=${PAR:-2}; THREADS=${THREADS:-1}; mkdir -p "$R"
source "$(dirname "$0")/../common.sh"
cd bundle
run() {  # name "overrides"
  local s; s=$(date +%s)
  OMP_NUM_THREADS=$THREADS $PY -m monai.bundle run --config_file "['configs/train.yaml']" \
    --dataset_dir "$D/isic2018_task1_256" --datalist docs/splits/isic2018_split.json --roi_size 64 --batch_size 8 \
    --preset small --num_workers 0 --epochs $((ITERS / 50)) --train#trainer#epoch_length 50 --val_interval 2 \
    --run_name "groups_amp_$1" $2 > "$R/$1.log" 2>&1
  echo "$1 rc=$? wall=$(( $(date +%s) - s ))s" >> "$R/summary.txt"
}
run_specs "$PAR" "$@"
cat "$R/summary.txt"
echo "| run | iterations | mean L_n | val Dice | val anchor Dice | val image reliance |"
echo "|---|---:|---:|---:|---:|---:|"
for spec in "$@"; do
  name=${spec%%:*}
  # epochs of 50 iterations: loss averaged over each pair of epochs, metrics from the validation at its end
  grep -a -o "Epoch: [0-9]*/[0-9]*, Iter: [0-9]*/50 -- loss_anchor: [0-9.]* loss_n: [0-9.]*" "$R/$name.log" |
    awk '{split($2, e, "/"); n[int((e[1] - 1) / 2)]++; s[int((e[1] - 1) / 2)] += $9}
         END {for (k in n) printf "%d %.4f\n", (k + 1) * 100, s[k] / n[k]}' | sort -n > "$R/$name.loss"
  grep -a -o "Epoch\[[0-9]*\] Metrics -- .*" "$R/$name.log" |
    sed -E 's/Epoch\[([0-9]+)\] Metrics -- val_anchor_dice: ([0-9.-]+) val_image_reliance: ([0-9.-]+) val_mean_dice: ([0-9.-]+).*/\1 \4 \2 \3/' |
    awk '{printf "%d %s %s %s\n", $1 * 50, $2, $3, $4}' > "$R/$name.val"
  awk -v n="$name" 'NR == FNR {loss[$1] = $2; next} {printf "| %s | %d | %s | %s | %s | %s |\n", n, $1, loss[$1], $2, $3, $4}' \
    "$R/$name.loss" "$R/$name.val"
done
