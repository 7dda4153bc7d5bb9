#!/usr/bin/env bash
# `imgfs image import` into a rados: chunk store, side by side in one run with
#   - the same import with one put in flight per import thread
#     (IMGFS_IMPORT_WINDOW=1: what blocking puts gave before the window),
#   - `rbd import` of the same file (what nova does today; 4 MiB objects,
#     its default of 10 concurrent writes).
# (`rados put` of the whole file is no baseline: one object is capped at
# osd_max_object_size, 128 MiB by default.)
# Each figure is best of ROUNDS (the order interleaved), in MB/s (10^6, as
# rados bench) on MIB of random data, with the import's ratio to each.
#
#   tools/bench-import-rados.sh [--mib N (256)] [--rounds R (3)] [--chunk-size SIZE (64K)]
#
# Uses the cluster named by IMGFS_CEPH_CONF (IMGFS_CEPH_ID, IMGFS_CEPH_KEYRING,
# IMGFS_CEPH_POOL for rbd, IMGFS_CEPH_CHUNK_POOL or IMGFS_CEPH_POOL for chunks),
# else starts a throwaway one with tools/ceph-cluster.sh and stops it at the end.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
mib=256 rounds=3 cs=64K
while (($#)); do
  case "$1" in
    --mib) mib="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --chunk-size) cs="$2"; shift 2 ;;
    *) echo "usage: $0 [--mib N] [--rounds R] [--chunk-size SIZE]" >&2; exit 2 ;;
  esac
done
imgfs="${IMGFS:-${IMGFS_BUILD_DIR:-$here/build}/tools/imgfs}"
[[ -x "$imgfs" ]] || { echo "bench-import-rados: build imgfs first (tools/setup.sh)" >&2; exit 1; }

T="$(mktemp -d /var/tmp/imgfs-bench-import-rados.XXXXXX)"
started_cluster=""
cleanup() {
  [[ -n "$started_cluster" ]] && "$here/tools/ceph-cluster.sh" stop "$started_cluster"
  rm -rf "$T"
}
trap cleanup EXIT
if [[ -z "${IMGFS_CEPH_CONF:-}" ]]; then
  started_cluster="$T/ceph"
  # Each round writes the file three times; objects are removed after each round.
  export IMGFS_CEPH_MEMSTORE_BYTES=$(( (mib * 6 + 1024) << 20 ))
  eval "$("$here/tools/ceph-cluster.sh" start "$started_cluster")"
fi
chunk_pool="${IMGFS_CEPH_CHUNK_POOL:-$IMGFS_CEPH_POOL}"
rbd_pool="$IMGFS_CEPH_POOL"
ceph_args=(-c "$IMGFS_CEPH_CONF" --id "${IMGFS_CEPH_ID:-admin}")
[[ -n "${IMGFS_CEPH_KEYRING:-}" ]] && ceph_args+=(--keyring "$IMGFS_CEPH_KEYRING")
drop_namespace() {  # POOL NS: removes every object of the namespace
  rados "${ceph_args[@]}" -p "$1" -N "$2" ls 2>/dev/null |
    xargs -r -n 500 rados "${ceph_args[@]}" -p "$1" -N "$2" rm
}

head -c "${mib}M" /dev/urandom >"$T/src.img"
cat "$T/src.img" >/dev/null
bytes=$((mib << 20))
now() { date +%s.%N; }
mbps() { echo "scale=1; $bytes / 1000000 / ($2 - $1)" | bc; }

import_into() {  # NS [ENV...]: prints MB/s of an import into a fresh store on NS
  local ns="$1"; shift
  rm -rf "$T/store"
  "$imgfs" --store "$T/store" init --chunk-size "$cs" --chunks "rados:$chunk_pool/$ns" \
    --ceph-conf "$IMGFS_CEPH_CONF" --ceph-id "${IMGFS_CEPH_ID:-admin}" \
    ${IMGFS_CEPH_KEYRING:+--keyring "$IMGFS_CEPH_KEYRING"} >/dev/null
  local t0 t1
  t0=$(now); env "$@" "$imgfs" --store "$T/store" image import "$T/src.img" >/dev/null; t1=$(now)
  mbps "$t0" "$t1"
  rm -rf "$T/store"
  drop_namespace "$chunk_pool" "$ns"
}

: >"$T/results"
for ((r = 1; r <= rounds; r++)); do
  ns="bench-import-$$-$r"
  echo "import $(import_into "$ns")" >>"$T/results"
  echo "import-blocking $(import_into "$ns-1" IMGFS_IMPORT_WINDOW=1)" >>"$T/results"
  t0=$(now); rbd "${ceph_args[@]}" import --no-progress "$T/src.img" "$rbd_pool/bench-$$-$r"; t1=$(now)
  echo "rbd-import $(mbps "$t0" "$t1")" >>"$T/results"
  rbd "${ceph_args[@]}" rm --no-progress "$rbd_pool/bench-$$-$r" >/dev/null 2>&1
done

best() { awk -v k="$1" '$1 == k {print $2}' "$T/results" | sort -g | tail -n1; }
all() { awk -v k="$1" '$1 == k {printf "%s ", $2}' "$T/results"; }
ratio() { echo "scale=2; $1 / $2" | bc; }
imp=$(best import)
echo "# $(date -u +%FT%TZ), $(nproc) cpus, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# $mib MiB of random data, chunk size $cs, best of $rounds (MB/s per round in brackets)"
printf '%-44s %9s %14s\n' what "MB/s" "import/this"
for what in import import-blocking rbd-import; do
  v=$(best "$what")
  printf '%-44s %9s %14s\n' "$what [$(all "$what")]" "$v" "$(ratio "$imp" "$v")"
done
