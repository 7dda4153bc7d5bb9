#!/usr/bin/env bash
# Chunk store benchmark: put/get throughput of the dir backend against plain
# file writes/reads of the same bytes in the same run (as ratios), the cost of
# opening a file per chunk, XXH3-128 throughput, and optionally the dedup of
# two related images per chunk size.
#
#   tools/bench-chunkstore.sh [--dir DIR] [--mib N] [--threads T] [--rounds R]
#                             [--chunk-sizes "4096 65536 1048576"]
#                             [--dedup IMAGE_A IMAGE_B]
#
# DIR (default /var/tmp/imgfs-bench-chunkstore) must be on the file system to
# measure; it is created and removed. Builds tests/bench/chunkstore_bench in
# its own build directory (build-bench/, IMGFS_BUILD_BENCH=ON, Release).
# Figures are best-of-R with baseline and subject interleaved; compare ratios,
# not absolute numbers, between runs.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
dir=/var/tmp/imgfs-bench-chunkstore
mib=128
threads=1
rounds=3
sizes="4096 65536 1048576"
dedup_a="" dedup_b=""
while (($#)); do
  case "$1" in
    --dir) dir="$2"; shift 2 ;;
    --mib) mib="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --chunk-sizes) sizes="$2"; shift 2 ;;
    --dedup) dedup_a="$2"; dedup_b="$3"; shift 3 ;;
    *) echo "usage: $0 [--dir DIR] [--mib N] [--threads T] [--rounds R] [--chunk-sizes \"S...\"] [--dedup A B]" >&2
       exit 2 ;;
  esac
done

build="${IMGFS_BENCH_BUILD_DIR:-$here/build-bench}"
if [[ ! -f "$build/build.ninja" ]]; then
  cmake -S "$here" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DIMGFS_BUILD_BENCH=ON -DIMGFS_BUILD_TESTS=OFF >/dev/null
fi
cmake --build "$build" --target chunkstore_bench -- --quiet
bench="$build/tests/bench/chunkstore_bench"

cleanup() { rm -rf "$dir"; }
trap cleanup EXIT

echo "# $(date -u +%FT%TZ) $(uname -r), $(nproc) cpus, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# file system of $(dirname "$dir"): $(df -T "$(dirname "$dir")" | awk 'NR==2 {print $2}')"
echo
"$bench" xxh3 512
for size in $sizes; do
  echo
  "$bench" putget "$dir" "$size" "$mib" "$threads" "$rounds"
done
if [[ -n "$dedup_a" ]]; then
  echo
  echo "dedup of $dedup_a and $dedup_b:"
  for size in $sizes; do "$bench" dedup "$size" "$dedup_a" "$dedup_b"; done
fi
