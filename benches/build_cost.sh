#!/usr/bin/env bash
# What each feature set costs a user of the crate: the crates it pulls
# (normal dependencies, this crate included) and a clean build of the
# library (dev profile, a fresh target directory, the machine's cores).
# Usage: benches/build_cost.sh [--no-build]   (--no-build: crate counts only)
set -euo pipefail
cd "$(dirname "$0")/.."
sets=(
  "default|"
  "file only, ring|--no-default-features --features ring,file"
  "0.1 before issue 29's default (+ axum, health, ca, acme)|--features axum,health,ca,acme"
  "everything for a server (+ redis, metrics)|--features axum,health,ca,acme,redis,metrics"
  "every source too (+ rfc2136, vault)|--features axum,health,ca,acme,redis,metrics,rfc2136,vault"
)
printf '| features | crates | clean build (s) |\n|---|---:|---:|\n'
for set in "${sets[@]}"; do
  name=${set%%|*} flags=${set#*|}
  # shellcheck disable=SC2086
  crates=$(cargo tree -e normal --prefix none $flags | sed 's/ (\*)$//' | sort -u | wc -l)
  secs=-
  if [ "${1:-}" != "--no-build" ]; then
    target=$(mktemp -d)
    start=$(date +%s.%N)
    # shellcheck disable=SC2086
    CARGO_TARGET_DIR=$target cargo build --lib --quiet $flags
    secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }')
    rm -rf "$target"
  fi
  printf '| %s | %s | %s |\n' "$name" "$crates" "$secs"
done
