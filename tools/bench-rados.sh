#!/usr/bin/env bash
# Benchmark of the rados chunk backend, side by side in one run:
#   - import (chunks put one after another, and PutAsync with WINDOW in flight),
#     re-import of the same bytes (all dedup hits) and reading the image back
#     in 1 MiB requests (what the mount does for _base/<id>), through the chunk
#     store over rados and over dir (tests/bench/rados_bench.cc);
#   - `rados bench write` / `seq` with the chunk size as object size and
#     WINDOW threads: what the cluster gives to a plain librados client.
# Each figure is best of ROUNDS, rados and its baselines interleaved, printed in
# MB/s (10^6, as rados bench) with the ratios rados/dir and rados/rados-bench.
#
#   tools/bench-rados.sh [--mib N (256)] [--chunk-size BYTES (65536)]
#                        [--window W (16)] [--rounds R (3)] [--dir DIR]
#
# Uses the cluster named by IMGFS_CEPH_CONF (IMGFS_CEPH_ID, IMGFS_CEPH_KEYRING,
# IMGFS_CEPH_CHUNK_POOL or IMGFS_CEPH_POOL), else starts a throwaway one with
# tools/ceph-cluster.sh and stops it at the end. DIR (default
# /var/tmp/imgfs-bench-rados) holds the dir store; it is removed.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
mib=256 cs=65536 window=16 rounds=3 dir=/var/tmp/imgfs-bench-rados
while (($#)); do
  case "$1" in
    --mib) mib="$2"; shift 2 ;;
    --chunk-size) cs="$2"; shift 2 ;;
    --window) window="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    *) echo "usage: $0 [--mib N] [--chunk-size BYTES] [--window W] [--rounds R] [--dir DIR]" >&2
       exit 2 ;;
  esac
done

build="${IMGFS_BENCH_BUILD_DIR:-$here/build-bench}"
if [[ ! -f "$build/build.ninja" ]]; then
  cmake -S "$here" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DIMGFS_BUILD_BENCH=ON -DIMGFS_BUILD_TESTS=OFF >/dev/null
fi
cmake --build "$build" --target rados_bench -- --quiet
bench="$build/tests/bench/rados_bench"

T="$(mktemp -d /tmp/imgfs-bench-rados.XXXXXX)"
started_cluster=""
cleanup() {
  rm -rf "$dir"
  [[ -n "$started_cluster" ]] && "$here/tools/ceph-cluster.sh" stop "$started_cluster"
  rm -rf "$T"
}
trap cleanup EXIT
if [[ -z "${IMGFS_CEPH_CONF:-}" ]]; then
  started_cluster="$T/ceph"
  # Every round's objects stay until the end: room for them and for rados bench.
  export IMGFS_CEPH_MEMSTORE_BYTES=$(( (mib * 4 * rounds + 2048) << 20 ))
  eval "$("$here/tools/ceph-cluster.sh" start "$started_cluster")"
fi
pool="${IMGFS_CEPH_CHUNK_POOL:-$IMGFS_CEPH_POOL}"
rados_args=(-c "$IMGFS_CEPH_CONF" --id "${IMGFS_CEPH_ID:-admin}" -p "$pool")
[[ -n "${IMGFS_CEPH_KEYRING:-}" ]] && rados_args+=(--keyring "$IMGFS_CEPH_KEYRING")
ns_used=()
drop_namespace() {  # removes every object of namespace $1
  rados "${rados_args[@]}" -N "$1" ls 2>/dev/null | xargs -r -n 200 rados "${rados_args[@]}" -N "$1" rm
}

best() {  # KEY FILE...: the largest value of KEY over the files
  local key="$1"; shift
  awk -v k="$key" '$1 == k {print $2}' "$@" | sort -g | tail -n1
}
ratio() { echo "scale=2; $1 / $2" | bc; }

for ((r = 1; r <= rounds; r++)); do
  ns="bench-$$-$r"
  ns_used+=("$ns")
  "$bench" "rados:$pool/$ns" "$cs" "$mib" "$window" >"$T/rados.$r"
  rm -rf "$dir"; mkdir -p "$dir"
  "$bench" "dir:$dir/chunks" "$cs" "$mib" "$window" >"$T/dir.$r"
  rm -rf "$dir"
  secs=$(( mib / 50 + 5 ))
  rados "${rados_args[@]}" -N "$ns-rb" bench "$secs" write -b "$cs" -t "$window" --no-cleanup \
    >"$T/rbw.$r" 2>&1
  rados "${rados_args[@]}" -N "$ns-rb" bench "$secs" seq -t "$window" >"$T/rbs.$r" 2>&1
  {
    echo "write $(awk '/^Bandwidth \(MB\/sec\)/ {print $3}' "$T/rbw.$r")"
    echo "seq $(awk '/^Bandwidth \(MB\/sec\)/ {print $3}' "$T/rbs.$r")"
  } >"$T/rb.$r"
  rados "${rados_args[@]}" -N "$ns-rb" cleanup >/dev/null 2>&1 || true
  drop_namespace "$ns-rb"
  if [[ -z "$started_cluster" ]]; then drop_namespace "$ns"; fi
done

rb_write=$(best write "$T"/rb.*)
rb_seq=$(best seq "$T"/rb.*)
echo "# $(date -u +%FT%TZ), $(nproc) cpus, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# $mib MiB of random data, chunk size $cs, window/threads $window, best of $rounds;"
echo "# rados bench: write $rb_write MB/s, seq $rb_seq MB/s (-b $cs -t $window)"
printf '%-13s %10s %10s %10s %18s\n' what "rados MB/s" "dir MB/s" rados/dir "rados/rados-bench"
for what in import-sync import-async reimport read; do
  rv=$(best "$what" "$T"/rados.*)
  dv=$(best "$what" "$T"/dir.*)
  base=$rb_write
  [[ "$what" == read || "$what" == reimport ]] && base=$rb_seq
  printf '%-13s %10s %10s %10s %18s\n' "$what" "$rv" "$dv" "$(ratio "$rv" "$dv")" "$(ratio "$rv" "$base")"
done
