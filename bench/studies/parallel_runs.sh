#!/usr/bin/env bash
# Sourced by the study scripts: run_specs PAR name:"overrides" ... calls the caller's `run name "overrides"` for each
# spec in the background, keeping PAR of them running (a new one starts as soon as one ends), and waits for all.
run_specs() {
  local par=$1 spec
  shift
  for spec in "$@"; do
    while [ "$(jobs -rp | wc -l)" -ge "$par" ]; do wait -n; done
    run "${spec%%:*}" "${spec#*:}" &
  done
  wait
}
