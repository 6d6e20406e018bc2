#!/usr/bin/env bash
# Clean `cargo build --release` time of each engine crate alone, after fetching.
# Usage: bench/engines/build_time.sh   (from anywhere; writes under $CARGO_TARGET_DIR or /work/target-engines)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
base="${CARGO_TARGET_DIR:-/work/target-engines}/buildtime"
mkdir -p "$base"
dep_line() {
  case "$1" in
    redb)  echo 'redb = "=5.0.0"' ;;
    fjall) echo 'fjall = "=3.1.13"' ;;
    heed)  echo 'heed = { version = "=0.23.1", default-features = false }' ;;
  esac
}
for e in ${ENGINES:-redb fjall heed}; do
  d="$base/$e"
  rm -rf "$d"; mkdir -p "$d/src"
  printf '[package]\nname = "bt-%s"\nversion = "0.0.0"\nedition = "2021"\n\n[workspace]\n\n[dependencies]\n%s\n' "$e" "$(dep_line "$e")" > "$d/Cargo.toml"
  echo 'fn main() {}' > "$d/src/main.rs"
  cp "$here/Cargo.lock" "$d/Cargo.lock"   # same pinned versions as the benchmark
  (cd "$d" && cargo fetch -q)
  load="$(cut -d' ' -f1-3 /proc/loadavg)"
  start=$(date +%s.%N)
  (cd "$d" && CARGO_TARGET_DIR="$d/target" nice -n 19 cargo build --release -q)
  end=$(date +%s.%N)
  n=$(cd "$d" && cargo tree -e normal --prefix none 2>/dev/null | sort -u | wc -l)
  printf '%s\tbuild_secs=%.1f\tcrates=%s\tloadavg_before=%s\n' "$e" "$(echo "$end - $start" | bc)" "$n" "$load"
done
