#!/usr/bin/env bash
# Benchmark of the rbd disk backend against the same work done by librbd
# alone, side by side in one run (ratios; absolute numbers vary by machine):
#   - publication of an image (chunks streamed with aio writes, holes
#     skipped) vs the same bytes written with 4 MiB aio writes, 16 in flight;
#   - the backend's async I/O on a disk cloned from a random-data image vs
#     `rbd bench --io-threads DEPTH` on a twin clone of the same base, for
#     the four jobs of DESIGN.md §9 (1M seq read/write, 4k rand read/write).
# Uses the cluster named by IMGFS_CEPH_* or starts a throwaway one.
#   tools/bench-rbd.sh [MIB] [DEPTH]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
mib="${1:-256}"
depth="${2:-16}"
build="${IMGFS_BENCH_BUILD_DIR:-$here/build-bench}"
cmake -S "$here" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DIMGFS_BUILD_BENCH=ON \
  -DIMGFS_BUILD_TESTS=ON >/dev/null
cmake --build "$build" --target rbd_disk_bench -- --quiet
bench="$build/tests/bench/rbd_disk_bench"

if [[ -z "${IMGFS_CEPH_CONF:-}" ]]; then
  cdir="$(mktemp -d /tmp/imgfs-bench-ceph.XXXXXX)"
  rmdir "$cdir"
  trap '"$here/tools/ceph-cluster.sh" stop "$cdir"' EXIT
  eval "$(IMGFS_CEPH_MEMSTORE_BYTES=$(( (4 * mib + 1024) << 20 )) "$here/tools/ceph-cluster.sh" start "$cdir")"
fi
export IMGFS_CEPH_CONF IMGFS_CEPH_ID IMGFS_CEPH_KEYRING IMGFS_CEPH_POOL

echo "== publication of a $mib MiB image (a quarter holes)"
"$bench" publish "$mib"
echo "== async I/O through the backend vs rbd bench, $mib MiB clone, depth $depth"
"$bench" io "$mib" read 1048576 "$depth" 10
"$bench" io "$mib" write 1048576 "$depth" 10
"$bench" io "$mib" randread 4096 "$depth" 10
"$bench" io "$mib" randwrite 4096 "$depth" 10
