#!/usr/bin/env bash
# One GPU lease, in one go (docs/benchmarks.md, docs/results.md):
#  1. training-step and 10-sample ensemble timings on the GPU, of this code and of an older checkout (OLD), and a
#     profile of this code's ensemble;
#  2. the shipped ISIC weights (models/model.pt) fine-tuned for BUDGET seconds (init_weights) at 128 px, batch 32, in
#     fp32 (bf16 autocast measured slower for this preset on an H200: launch-bound), the best EMA weights selected on
#     the split's validation cases, as in the CPU runs. The held-out test cases are not sent.
# The fine-tuned weights come back split in 15 MiB parts (the device tool returns files of at most 16 MiB); evaluate
# them on a CPU with bench/same_budget_eval.sh (STAPLE needs SimpleITK, which is not on the GPU machine).
# D: the ISIC images and masks of the split's training and validation cases with a datalist.json of those two lists
#   (the shared data does not travel to the GPU machine); made here, before the lease, with
#   SRC=../shared/data/isic2018_task1_256 D=.gpu/isic bash bench/studies/gpu_lease.sh prepare
# OLD: a copy of the older checkout's bench/bench_sampling.py and bundle/scripts (e.g. from a c90914e worktree).
# LIMIT: seconds from the start by which the fine-tuning's budget must end (the lease's command limit, less margin).
# SKIP_BENCH=1: the fine-tuning alone; MARGIN: seconds allowed past the budget (start-up, last validation).
# Usage, from the repository root: D=.gpu/isic OLD=.gpu/old BUDGET=300 bash bench/studies/gpu_lease.sh
set -u
D=${D:-.gpu/isic}; OLD=${OLD:-.gpu/old}; BUDGET=${BUDGET:-300}; OUT=${OUT:-$PWD/bundle/runs/bench/out}; R=${R:-$PWD/bundle/runs/bench/r}; PY=${PY:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$R"
if [ "${1:-}" = prepare ]; then  # copy the training and validation cases of the ISIC split into D
  SRC=${SRC:?set SRC to the ISIC 2018 data folder} D="$D" $PY - <<'PY'
import json, os, shutil
src, dst = os.environ["SRC"], os.environ["D"]
split = json.load(open("bundle/docs/splits/isic2018_split.json"))
lists = {k: split[k] for k in ("training", "validation")}
for case in lists["training"] + lists["validation"]:
    for key in ("image", "label"):
        os.makedirs(os.path.dirname(os.path.join(dst, case[key])), exist_ok=True)
        shutil.copy(os.path.join(src, case[key]), os.path.join(dst, case[key]))
json.dump(lists, open(os.path.join(dst, "datalist.json"), "w"), indent=1)
PY
  exit
fi
D=$(realpath "$D"); OLD=$(realpath "$OLD")
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import monai, ignite, torch; print('monai', monai.__version__, 'ignite', ignite.__version__, 'torch', \
  torch.__version__)"
T0=$(date +%s)
[ "${SKIP_BENCH:-0}" = 1 ] || {
  echo "== training step, V2-small and UNet, 128 px, batch 8 (timestep groups none/2/1; fp32/bf16), then the older code"
  timeout 70 $PY bench/bench_train_step.py --device cuda --preset small --size 128 --batch 8 --groups none 2 1 \
    --amp both --warmup 3 --repeats 20 | tail -10
  timeout 30 $PY bench/bench_train_step.py --device cuda --preset small --size 128 --batch 8 --bundle "$OLD/bundle" \
    --variants v2 --warmup 3 --repeats 20 | tail -1
  echo "== training step, paper preset, 256 px, batch 8 (groups 2; fp32/bf16), then the older code"
  timeout 60 $PY bench/bench_train_step.py --device cuda --preset paper --size 256 --batch 8 --groups 2 --amp both \
    --warmup 3 --repeats 10 | tail -5
  timeout 30 $PY bench/bench_train_step.py --device cuda --preset paper --size 256 --batch 8 --bundle "$OLD/bundle" \
    --variants v2 --warmup 3 --repeats 10 | tail -1
  echo "== 10-sample DDPM-10 ensemble of one 256x256 slice, paper preset (this code, then the older code)"
  timeout 45 $PY bench/bench_sampling.py --device cuda --preset paper --size 256 --ensemble 10 --settings ddpm:10 \
    --modes cached-fp32 cached-bf16 --repeats 3 | grep -a "ddpm\|runs"
  timeout 45 $PY "$OLD/bench/bench_sampling.py" --device cuda --preset paper --size 256 --ensemble 10 \
    --settings ddpm:10 --modes cached-fp32 cached-bf16 --repeats 3 | grep -a "ddpm\|runs"
  echo "== where a denoiser step of this code spends its GPU time (torch profiler, two DDPM steps of the ensemble)"
  timeout 45 $PY bench/bench_sampling.py --device cuda --preset paper --size 256 --ensemble 10 --settings ddpm:2 \
    --modes cached-fp32 --profile 20 | grep -av "^{"
  echo "benchmarks took $(( $(date +%s) - T0 )) s"
} 2>&1 | tee "$OUT/benchmarks.log"
LEFT=$(( ${LIMIT:-470} - $(date +%s) + T0 )); [ "$LEFT" -lt "$BUDGET" ] && BUDGET=$LEFT  # fit the lease's command limit
echo "== fine-tuning the shipped ISIC weights for $BUDGET s on the GPU"
cd bundle
s=$(date +%s)
timeout $(( BUDGET + ${MARGIN:-150} )) $PY -m monai.bundle run --config_file "['configs/train.yaml']" \
  --dataset_dir "$D" --datalist "$D/datalist.json" --roi_size 128 --batch_size 32 --num_workers 8 --preset small \
  --patch_size 2 --amp "${AMP:-False}" --init_weights models/model.pt --epochs 100000 --val_interval "${VAL:-3}" \
  --time_budget_s "$BUDGET" --run_name gpu_finetune --run_dir "$R/gpu_finetune" > "$OUT/finetune.log" 2>&1
echo "fine-tune rc=$? wall=$(( $(date +%s) - s )) s"
grep -a "time budget\|waiting for data\|new best\|Key metric" "$OUT/finetune.log" | sed 's/.*INFO - //' | tail -30
ls -la "$R/gpu_finetune/models"
[ -f "$R/gpu_finetune/models/model.pt" ] && split -b 15M "$R/gpu_finetune/models/model.pt" "$OUT/model.pt.part-"
tar czf "$OUT/logs.tar.gz" -C "$R/gpu_finetune" logs 2>/dev/null
ls -la "$OUT"
