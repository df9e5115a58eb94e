#!/usr/bin/env bash
# Training and sampling throughput against an older checkout of this repository (docs/benchmarks.md), run in one go on
# one machine so that the ratios compare like with like. OLD: the root of the older checkout (e.g. made with
# `git worktree add ../old c90914e`); D: the shared data (for the real `monai.bundle run` iterations/s).
#   OLD=../old bash bench/throughput.sh 2>&1 | tee throughput.log
set -u
OLD=${OLD:?set OLD to the root of the older checkout}
OUT=${OUT:-$PWD/bundle/runs/bench/throughput}; BUDGET=${BUDGET:-120}; mkdir -p "$OUT"
source "$(dirname "$0")/common.sh"
cpu_info; nproc
echo "== training step, V2-small and UNet, 64 px, batch 8 (this code: timestep groups 2, fp32/bf16)"
$PY bench/bench_train_step.py --preset small --size 64 --batch 8 --groups 2 --amp both --repeats 5 \
  --json "$OUT/step_small64.json" | tail -5
$PY bench/bench_train_step.py --preset small --size 64 --batch 8 --bundle "$OLD/bundle" --variants v2 --repeats 5 | tail -1
echo "== training step, V2-small and UNet, 128 px, batch 8 (this code; timestep groups none/2/1, fp32/bf16)"
$PY bench/bench_train_step.py --preset small --size 128 --batch 8 --groups none 2 1 --amp both --repeats 5 \
  --json "$OUT/step_small128.json" | tail -9
echo "== the same, older code (per-case timesteps, fp32)"
$PY bench/bench_train_step.py --preset small --size 128 --batch 8 --bundle "$OLD/bundle" --variants v2 --repeats 5 | tail -1
echo "== training step, paper preset, 256 px, batch 8 (this code: groups 2, fp32/bf16; then the older code)"
$PY bench/bench_train_step.py --preset paper --size 256 --batch 8 --groups 2 --amp both --repeats 2 \
  --json "$OUT/step_paper256.json" | tail -4
$PY bench/bench_train_step.py --preset paper --size 256 --batch 8 --bundle "$OLD/bundle" --variants v2 --repeats 2 \
  | tail -1
echo "== 10-sample DDPM-10 ensemble of one 256x256 slice, paper preset, bf16 (older code; this code: as is, with torch's"
echo "   transparent-huge-page allocations, with glibc keeping freed memory in its heap, both)"
HEAP="GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"
for run in "old:$OLD" "new:$PWD" "new_thp:$PWD" "new_heap:$PWD" "new_heap_thp:$PWD"; do
  name=${run%%:*}; root=${run#*:}; env=""
  [ "$name" = new_thp ] && env="THP_MEM_ALLOC_ENABLE=1"
  [ "$name" = new_heap ] && env="$HEAP"
  [ "$name" = new_heap_thp ] && env="$HEAP THP_MEM_ALLOC_ENABLE=1"
  env $env /usr/bin/time -f "$name: %e s wall, %U s user, %S s system, %R minor page faults, %M KiB peak RSS" \
    $PY "$root/bench/bench_sampling.py" --preset paper --size 256 --ensemble 10 --settings ddpm:10 \
    --modes cached-bf16 --repeats 2 2>&1 | grep -a "ddpm\|page faults"
done
echo "== monai.bundle run training iterations/s, shared ISIC at 128 px, batch 8, $BUDGET s each (quick vs baseline)"
cd bundle
for cfg in "v2:'configs/train.yaml','configs/quick.yaml'" "v2_patch2:'configs/train.yaml','configs/quick.yaml'" \
  "unet:'configs/train.yaml','configs/quick.yaml','configs/baseline.yaml'"; do
  name=${cfg%%:*}; patch=1; [ "$name" = v2_patch2 ] && patch=2  # SS-Former tokens of 2x2 of the deepest map
  $PY -m monai.bundle run --config_file "[${cfg#*:}]" --dataset_dir "$D/isic2018_task1_256" --patch_size $patch \
    --datalist docs/splits/isic2018_split.json --roi_size 128 --batch_size 8 --epochs 100000 \
    --train#trainer#epoch_length 20 --val_interval 100000 --time_budget_s "$BUDGET" --run_name "throughput_$name" \
    > "$OUT/bundle_$name.log" 2>&1
  echo "$name: $(grep -a 'time budget' "$OUT/bundle_$name.log" | tail -1 | sed 's/.*INFO - //')"
  grep -a "waiting for data" "$OUT/bundle_$name.log" | sed 's/.*INFO - //'
done
