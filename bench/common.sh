#!/usr/bin/env bash
# Sourced by the shell scripts of bench/ and bench/studies/, which run from the repository root:
#   source "$(dirname "$0")/common.sh"   (from bench/studies/: "$(dirname "$0")/../common.sh")
# Defaults they share, each kept where the caller (or its environment) set it first: D, the shared data folder; PY,
# the Python of the repository's virtual environment. Helpers: cpu_info, val_subset, run_specs.
D=${D:-$PWD/../shared/data}
PY=${PY:-$PWD/.venv/bin/python}

cpu_info() {  # the CPU model, and whether it has bf16 instructions (bf16 autocast is slow without them)
  grep -m1 "model name" /proc/cpuinfo
  grep -o -m1 "avx512_bf16" /proc/cpuinfo || echo "no avx512_bf16"
}

val_subset() {  # split.json N out.json: a datalist of the first N validation cases of split.json
  python3 -c "import json, sys; d = json.load(open(sys.argv[1])); \
json.dump({'validation': d['validation'][:int(sys.argv[2])]}, open(sys.argv[3], 'w'))" "$1" "$2" "$3"
}

run_specs() {  # PAR name:"overrides" ...: the caller's `run name "overrides"` for each spec in the background,
  # keeping PAR of them running (a new one starts as soon as one ends), then waits for all
  local par=$1 spec
  shift
  for spec in "$@"; do
    while [ "$(jobs -rp | wc -l)" -ge "$par" ]; do wait -n; done
    run "${spec%%:*}" "${spec#*:}" &
  done
  wait
}
