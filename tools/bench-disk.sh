#!/usr/bin/env bash
# Benchmark of local disks, side by side in one run (ratios; absolute numbers
# vary by machine):
#   - `imgfs disk create` + `imgfs disk resize` (grow) from a 1 GiB image and
#     from a 64 GiB sparse image, rounds interleaved: the target ratio is ~1.0
#     (both are O(1), docs/design.md §9: neither reads the image's manifest, only
#     its record);
#   - 4 KiB random reads and writes through the library (tests/bench/
#     disk_bench.cc) against the same operations on a plain file.
#   tools/bench-disk.sh [ROUNDS] [IMAGE_MIB] [OPS]   (defaults 20, 512 as the fio jobs, 100000)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
rounds="${1:-20}"
mib="${2:-512}"
ops="${3:-100000}"
build="${IMGFS_BENCH_BUILD_DIR:-$here/build-bench}"
cmake -S "$here" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DIMGFS_BUILD_BENCH=ON \
  >/dev/null
cmake --build "$build" --target imgfs disk_bench -- --quiet
imgfs="$build/tools/imgfs"

T="$(mktemp -d "${TMPDIR:-/var/tmp}/imgfs-bench-disk.XXXXXX")"
trap 'rm -rf "$T"' EXIT
export IMGFS_STORE="$T/store"
"$imgfs" -q init

echo "== images: 1 GiB of random data, 64 GiB sparse (4 MiB of data in it)"
head -c $((1 << 30)) /dev/urandom >"$T/small.raw"
"$imgfs" -q image import "$T/small.raw" --name small >/dev/null
rm -f "$T/small.raw"
truncate -s 64G "$T/big.raw"
for off in 0 17 33 63; do
  head -c $((1 << 20)) /dev/urandom | dd of="$T/big.raw" bs=1M seek=$((off * 1024)) conv=notrunc status=none
done
"$imgfs" -q image import "$T/big.raw" --name big >/dev/null
rm -f "$T/big.raw"

now() { date +%s%N; }
: >"$T/small.ns"
: >"$T/big.ns"
for ((i = 0; i < rounds; i++)); do
  # Alternate which image goes first: the second create of a round may pay
  # for the file system's journal commits of the first.
  order="small big"
  ((i % 2)) && order="big small"
  for image in $order; do
    t0=$(now)
    "$imgfs" -q disk create "r$i/$image" --image "$image"
    "$imgfs" -q disk resize "r$i/$image" 100G
    t1=$(now)
    echo $((t1 - t0)) >>"$T/$image.ns"
  done
done
# Median and minimum of each: on a shared machine one stalled round would
# dominate a mean.
stats() { sort -n "$1" | awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; print m, v[1] }'; }
read -r small_med small_min <<<"$(stats "$T/small.ns")"
read -r big_med big_min <<<"$(stats "$T/big.ns")"
awk -v sm="$small_med" -v bm="$big_med" -v s0="$small_min" -v b0="$big_min" -v n="$rounds" 'BEGIN {
  printf "disk create + grow to 100G, %d rounds, median (min): 1 GiB image %.1f ms (%.1f), 64 GiB image %.1f ms (%.1f), ratio %.2f (min %.2f; target ~1.0)\n",
    n, sm / 1e6, s0 / 1e6, bm / 1e6, b0 / 1e6, bm / sm, b0 / s0 }'

echo "== 4 KiB random I/O: library (local disk cloned from a $mib MiB image) vs plain file"
mkdir -p "$T/lib"
"$build/tests/bench/disk_bench" "$T/lib" "$mib" "$ops"
