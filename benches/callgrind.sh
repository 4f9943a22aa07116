#!/usr/bin/env bash
# Instructions per full TLS 1.3 handshake, per variant, counted by callgrind:
# repeatable on a noisy machine where wall time is not. Each variant runs
# N1 and N2 handshakes; (I(N2) - I(N1)) / (N2 - N1) removes the setup cost.
# Usage: benches/callgrind.sh   (needs valgrind)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
bin=$(cargo bench --bench handshake --no-run --message-format=json 2>/dev/null \
  | sed -n 's/.*"executable":"\([^"]*handshake[^"]*\)".*/\1/p' | tail -n 1)
N1=20 N2=80
keys=$(mktemp -d)
trap 'rm -rf "$keys"' EXIT
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$keys/rsa.pem" 2>/dev/null
export CERTROTATE_BENCH_RSA_KEY="$keys/rsa.pem"
count() { # variant key n -> instructions
  local out
  out=$(mktemp)
  valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" --callgrind "$1" "$2" "$3" >/dev/null 2>&1
  awk '/^summary:/ {print $2}' "$out"
  rm -f "$out"
}
echo "| key | variant | instructions per handshake | ratio vs static |"
echo "|---|---|---:|---:|"
for key in p256 rsa; do
  base=""
  for variant in static certrotate config-swap; do
    a=$(count "$variant" "$key" "$N1"); b=$(count "$variant" "$key" "$N2")
    per=$(( (b - a) / (N2 - N1) ))
    [ -n "$base" ] || base=$per
    ratio=$(awk -v p="$per" -v b="$base" 'BEGIN { printf "%.4f", p / b }')
    echo "| $key | $variant | $per | $ratio |"
  done
done
