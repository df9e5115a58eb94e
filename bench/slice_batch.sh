#!/usr/bin/env bash
# Volume inference time against slice_batch (slices sampled at once), the shipped hippocampus weights with the
# defaults of inference_volume.yaml (its sampler, members and STAPLE), N held-out hippocampus volumes, one pinned
# core with one torch thread. Prints seconds per volume for each slice_batch. From the repository root:
#   N=3 CORE=1 bash bench/slice_batch.sh
set -u
N=${N:-3}; CORE=${CORE:-1}; SIZES=${SIZES:-1 4 8 16 64}
source "$(dirname "$0")/common.sh"
R=${R:-$PWD/bundle/runs/bench/slice_batch}; rm -rf "$R"; mkdir -p "$R/in"
grep -m1 "model name" /proc/cpuinfo
$PY - "$D/msd_hippocampus" "$R/in" "$N" <<'PY'
import json, os, sys
data, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
split = json.load(open("bundle/docs/splits/msd_hippocampus_split.json"))
for case in split["test"][:n]:
    os.symlink(os.path.join(data, case["image"]), os.path.join(out, os.path.basename(case["image"])))
PY
cd bundle
for sb in $SIZES; do
  s=$(date +%s.%N)
  OMP_NUM_THREADS=1 taskset -c "$CORE" $PY -m monai.bundle run \
    --config_file "['configs/inference.yaml','configs/inference_volume.yaml']" --input "$R/in" \
    --output_dir "$R/out_$sb" --slice_batch "$sb" > "$R/sb_$sb.log" 2>&1
  rc=$?; e=$(date +%s.%N)
  echo "slice_batch $sb: rc=$rc $(echo "($e - $s) / $N" | bc -l | xargs printf '%.1f') s per volume (incl. start-up)"
done
