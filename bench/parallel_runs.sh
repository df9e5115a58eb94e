#!/usr/bin/env bash
# Sourced by the study scripts: run_specs PAR name:"overrides" ... calls the caller's `run name "overrides"` for each
# spec in the background, PAR at a time, and waits for all of them.
run_specs() {
  local par=$1 i=0 spec
  shift
  for spec in "$@"; do
    run "${spec%%:*}" "${spec#*:}" &
    i=$((i + 1))
    if [ $((i % par)) -eq 0 ]; then wait; fi
  done
  wait
}
