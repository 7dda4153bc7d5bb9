#!/usr/bin/env bash
# What a VM sees against what its user runs today (docs/performance.md, the
# headline): `qemu-img bench -t none -d DEPTH` (files also `-i native`), 4 KiB
# and 1 MiB, read and write, sequential and at scattered offsets, on a disk
# made from an image of random data, in one run:
#   local: a disk on the mount against qemu opening a qcow2 overlay whose
#          backing file is the raw image (nova's `_base` layout);
#   rbd:   a disk on the mount against qemu's own rbd driver on a twin clone
#          of the same base (only when IMGFS_CEPH_* name a cluster, or
#          IMGFS_BENCH_QEMU_CEPH=1 to start a throwaway one).
# Each job gets a fresh disk and a fresh twin, so writes copy up on both
# sides. The scattered-offset rows step by an odd multiple of the I/O size
# (`-S`), so consecutive requests land far apart across the whole disk;
# qemu-img bench has no random mode. Prints ops/s of both sides and the
# ratio (target >= 1.0), and the load average beside each row.
#
# A second mount ("B") can run beside the first in the same run to measure a
# lever before/after: IMGFS_BENCH_B_BIN (another imgfs binary) and/or
# IMGFS_BENCH_B_OPTS (its -o options); it gets a store of its own. On odd
# repeats (IMGFS_BENCH_REPEAT) B runs before A, and nova's path runs after
# both: whatever runs after a large write is slower here (the host's disk),
# even the same binary twice. With repeats, the medians close the output.
#
#   tools/bench-qemu.sh [MIB]        (disk size, default 512)
# Environment:
#   IMGFS_BENCH_BUILD_DIR       the build measured (default build-bench/, Release)
#   IMGFS_BENCH_MOUNT_OPTS      -o options for the mount
#   IMGFS_BENCH_QEMU_DEPTH      queue depth (default 16)
#   IMGFS_BENCH_QEMU_SCALE      multiplies the request counts (default 1)
#   IMGFS_BENCH_QEMU_ONLY       local or rbd: one backend only
#   IMGFS_BENCH_QEMU_JOBS       job names to run (default all; see `jobs` below)
#   IMGFS_BENCH_REPEAT          runs of every job (default 1)
#   IMGFS_BENCH_LOCAL_CHUNKS    rados: the local stores keep their chunks in a
#                               RADOS namespace of the cluster (local disks
#                               whose parent is read over the network)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
b_bin="${IMGFS_BENCH_B_BIN:-}"
b_opts="${IMGFS_BENCH_B_OPTS:-}"
mib="${1:-512}"
depth="${IMGFS_BENCH_QEMU_DEPTH:-16}"
scale="${IMGFS_BENCH_QEMU_SCALE:-1}"
repeat="${IMGFS_BENCH_REPEAT:-1}"
only="${IMGFS_BENCH_QEMU_ONLY:-}"

work="$(mktemp -d "${IMGFS_BENCH_DIR:-/tmp}/imgfs-bench-qemu.XXXXXX")"
pids=() mnts=() cdir="" namespaces=()
. "$here/tools/bench-lib.sh"
# The mount under test: the Release build (IMGFS_BENCH_BUILD_DIR, default
# build-bench/), as every bench-*.sh that sources bench-lib.sh.
bench_build imgfs
imgfs="$build/tools/imgfs"
[[ -n "$b_opts" && -z "$b_bin" ]] && b_bin="$imgfs"
cleanup() {
  local p m ns
  for p in "${pids[@]}"; do
    if kill -0 "$p" 2>/dev/null; then
      kill -TERM "$p"
      tail --pid="$p" -f /dev/null
    fi
  done
  for m in "${mnts[@]}"; do
    mountpoint -q "$m" 2>/dev/null && fusermount3 -u -z "$m"
  done
  # A throwaway cluster goes as a whole; a namespace of the caller's is
  # purged (object by object: slow for a chunk store's thousands).
  if [[ -n "$cdir" ]]; then
    "$here/tools/ceph-cluster.sh" stop "$cdir"
  else
    for ns in "${namespaces[@]}"; do bench_purge_namespace "$ns"; done
  fi
  rm -rf "$work"
}
trap cleanup EXIT

head -c "${mib}M" /dev/urandom >"$work/random.raw"

# mount_store BIN OPTS DIR [init args...]: a store in DIR with the random
# image imported as "bench", mounted at DIR/mnt.
mount_store() {
  local bin="$1" opts="$2" dir="$3"
  shift 3
  mkdir -p "$dir/mnt"
  IMGFS_STORE="$dir/store" "$bin" init "$@" >/dev/null
  IMGFS_STORE="$dir/store" "$bin" -q image import "$work/random.raw" --name bench >/dev/null
  mnts+=("$dir/mnt")
  # shellcheck disable=SC2086
  IMGFS_STORE="$dir/store" "$bin" mount "$dir/mnt" --pid-file "$dir/pid" \
    --log-file "$dir/mount.log" ${opts:+-o $opts}
  pids+=("$(cat "$dir/pid")")
}
unmount_all() {
  local p
  for p in "${pids[@]}"; do
    kill -TERM "$p"
    tail --pid="$p" -f /dev/null
  done
  pids=() mnts=()
}

# qbench ARGS... -> ops per second of one `qemu-img bench` run.
qbench() {
  local out secs count="" a prev=""
  for a in "$@"; do
    [[ "$prev" == -c ]] && count="$a"
    prev="$a"
  done
  out="$(qemu-img bench -d "$depth" -t none "$@" 2>&1)" || {
    echo "bench-qemu: qemu-img bench $* failed: $out" >&2
    return 1
  }
  # "Run completed in 1.234 seconds."
  secs="$(sed -n 's/.*completed in \([0-9.]*\) seconds.*/\1/p' <<<"$out")"
  awk -v c="$count" -v s="$secs" 'BEGIN { printf "%.0f", (s > 0 ? c / s : 0) }'
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (a > 0 ? b / a : 0) }'; }
load() { cut -d' ' -f1 /proc/loadavg; }

# An odd number of blocks near 0.38 of the disk: stepping by it visits
# blocks far apart, wrapping around the disk.
stride() {  # BLOCK_BYTES -> step in bytes
  local blocks=$(((mib << 20) / $1))
  local s=$((blocks * 38 / 100))
  ((s % 2 == 0)) && s=$((s + 1))
  echo $((s * $1))
}

# name: request size, write?, scattered?, count (local), count (rbd)
jobs=(
  "read-4k 4k - - 100000 30000"
  "write-4k 4k w - 100000 30000"
  "read-1M 1M - - 2000 1000"
  "write-1M 1M w - 2000 1000"
  "randread-4k 4k - r 100000 30000"
  "randwrite-4k 4k w r 100000 30000"
  "randread-1M 1M - r 2000 1000"
  "randwrite-1M 1M w r 2000 1000"
)
selected() { [[ -z "${IMGFS_BENCH_QEMU_JOBS:-}" ]] || [[ " $IMGFS_BENCH_QEMU_JOBS " == *" $1 "* ]]; }

header() {
  if [[ -n "$b_bin" ]]; then
    printf '%-34s %12s %12s %6s %12s %6s %6s %5s\n' "qemu-img bench ($1)" "$2" "imgfs" "ratio" \
      "B" "ratio" "target" "load"
  else
    printf '%-34s %12s %12s %6s %6s %5s\n' "qemu-img bench ($1)" "$2" "imgfs" "ratio" "target" "load"
  fi
}
# line NAME BASE A [B]
line() {
  if [[ -n "$b_bin" ]]; then
    printf '%-34s %12s %12s %6s %12s %6s %6s %5s\n' "$1" "$2/s" "$3/s" "$(ratio "$2" "$3")" \
      "$4/s" "$(ratio "$2" "$4")" ">= 1.0" "$(load)"
  else
    printf '%-34s %12s %12s %6s %6s %5s\n' "$1" "$2/s" "$3/s" "$(ratio "$2" "$3")" ">= 1.0" "$(load)"
  fi
}

# job_args NAME SIZE W R COUNT -> qemu-img bench's arguments
job_args() {
  local bytes=4096 args=(-c "$5" -s "$2")
  [[ "$2" == 1M ]] && bytes=$((1 << 20))
  [[ "$3" == w ]] && args+=(-w)
  [[ "$4" == r ]] && args+=(-S "$(stride "$bytes")")
  echo "${args[@]}"
}

echo "# $(date -u +%FT%TZ) $(nproc) cpus, load $(cut -d' ' -f1-3 /proc/loadavg), depth $depth," \
  "$mib MiB disk; imgfs $(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo '?')" \
  "${IMGFS_BENCH_MOUNT_OPTS:+-o $IMGFS_BENCH_MOUNT_OPTS}${b_bin:+; B: $b_bin ${b_opts:+-o $b_opts}}"

# local_baseline ID ARGS... -> ops/s of nova's local path: qemu on a fresh
# qcow2 overlay whose backing file is the raw image.
local_baseline() {
  shift
  qemu-img create -q -f qcow2 -b "$work/random.raw" -F raw "$work/overlay.qcow2"
  qbench -f qcow2 -i native "$@" "$work/overlay.qcow2"
  rm -f "$work/overlay.qcow2"
}
# rbd_baseline ID ARGS... -> ops/s of qemu's rbd driver on a twin: a disk of
# the same store, so a clone of the same base snapshot in the same pool.
rbd_baseline() {
  local id="$1"
  shift
  IMGFS_STORE="$work/ra/store" "$imgfs" disk create "bench/$id.ref" --image bench >/dev/null
  local spec="rbd:$IMGFS_CEPH_POOL/$ns/bench_$id.ref:id=$IMGFS_CEPH_ID"
  qbench -f raw "$@" "$spec:conf=$IMGFS_CEPH_CONF:keyring=$IMGFS_CEPH_KEYRING"
  IMGFS_STORE="$work/ra/store" "$imgfs" disk rm "bench/$id.ref" >/dev/null 2>&1 || true
}

# run_jobs BACKEND A_DIR B_DIR: every selected job, nova's path then the
# mount (then B), on fresh disks, one row each.
run_jobs() {
  local backend="$1" adir="$2" bdir="$3" n=0 rep j name size w r count_local count_rbd count
  local base a b
  local -a args
  for ((rep = 0; rep < repeat; rep++)); do
    for j in "${jobs[@]}"; do
      read -r name size w r count_local count_rbd <<<"$j"
      selected "$name" || continue
      count="$count_local"
      [[ "$backend" == rbd ]] && count="$count_rbd"
      count=$(awk -v c="$count" -v s="$scale" 'BEGIN { printf "%d", c * s }')
      read -r -a args <<<"$(job_args "$name" "$size" "$w" "$r" "$count")"
      n=$((n + 1))
      # Each side starts with nothing dirty in the page cache, so no side
      # pays for the write-back of the one before (docs/performance.md).
      # On odd repeats nova's path runs last, the mounts first (below).
      if ((rep % 2 == 0)); then
        sync
        base="$("${backend}_baseline" "$name.$n" "${args[@]}")"
      fi
      IMGFS_STORE="$adir/store" "$imgfs" disk create "bench/$name.$n" --image bench >/dev/null
      b=""
      if [[ -n "$b_bin" ]]; then
        IMGFS_STORE="$bdir/store" "$b_bin" disk create "bench/$name.$n" --image bench >/dev/null
      fi
      # The mount that runs second is slower even with the same binary on
      # both sides (0.6 to 0.9 of the first on local writes): on odd
      # repeats B runs first, so a lever is judged from both orders.
      if [[ -n "$b_bin" ]] && ((rep % 2 == 1)); then
        sync
        b="$(qbench -f raw -i native "${args[@]}" "$bdir/mnt/bench/$name.$n")"
      fi
      sync
      a="$(qbench -f raw -i native "${args[@]}" "$adir/mnt/bench/$name.$n")"
      if [[ -n "$b_bin" ]] && ((rep % 2 == 0)); then
        sync
        b="$(qbench -f raw -i native "${args[@]}" "$bdir/mnt/bench/$name.$n")"
      fi
      if ((rep % 2 == 1)); then
        sync
        base="$("${backend}_baseline" "$name.$n" "${args[@]}")"
      fi
      line "$name" "$base" "$a" "$b"
      echo "$name $base $a ${b:-0}" >>"$work/rows.$backend"
      # Room for the next job (the cluster's memory, the store's disk).
      IMGFS_STORE="$adir/store" "$imgfs" disk rm "bench/$name.$n" >/dev/null 2>&1 || true
      if [[ -n "$b_bin" ]]; then
        IMGFS_STORE="$bdir/store" "$b_bin" disk rm "bench/$name.$n" >/dev/null 2>&1 || true
      fi
    done
  done
  ((repeat > 1)) && medians "$work/rows.$backend"
}

# medians ROWS: with repeats, each job's median of each side and the ratio
# of the medians (what docs/performance.md reports).
medians() {
  echo "# medians of $repeat runs (nova's path first on even runs, last on odd ones)"
  local name base a b
  for name in $(awk '!seen[$1]++ { print $1 }' "$1"); do
    read -r base a b <<<"$(awk -v n="$name" '
      function med(col,   i, m, v, k, t) {
        m = 0
        for (i = 1; i <= cnt; i++) v[++m] = val[i, col]
        for (i = 1; i <= m; i++) for (k = i + 1; k <= m; k++) if (v[k] < v[i]) { t = v[i]; v[i] = v[k]; v[k] = t }
        return (m % 2) ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2
      }
      $1 == n { cnt++; val[cnt, 2] = $2; val[cnt, 3] = $3; val[cnt, 4] = $4 }
      END { printf "%.0f %.0f %.0f", med(2), med(3), med(4) }' "$1")"
    if [[ -n "$b_bin" ]]; then
      line "$name" "$base" "$a" "$b"
    else
      line "$name" "$base" "$a"
    fi
  done
}

ensure_cluster() {
  if [[ -z "${IMGFS_CEPH_CONF:-}" && "${IMGFS_BENCH_QEMU_CEPH:-0}" == 1 ]]; then
    cdir="$work/ceph"
    eval "$(IMGFS_CEPH_MEMSTORE_BYTES=$(((8 * mib + 1024) << 20)) "$here/tools/ceph-cluster.sh" start "$cdir")"
  fi
  [[ -n "${IMGFS_CEPH_CONF:-}" ]]
}
ceph_args=()
set_ceph_args() {
  ceph_args=(--ceph-conf "$IMGFS_CEPH_CONF" --ceph-id "$IMGFS_CEPH_ID" --keyring "$IMGFS_CEPH_KEYRING")
}

if [[ "$only" != rbd ]]; then
  if [[ "${IMGFS_BENCH_LOCAL_CHUNKS:-dir}" == rados ]]; then
    ensure_cluster || { echo "bench-qemu: IMGFS_BENCH_LOCAL_CHUNKS=rados needs a cluster" >&2; exit 1; }
    set_ceph_args
    # local_store BIN OPTS DIR: a store whose chunks are in a fresh namespace.
    local_store() {
      local ns="benchc$RANDOM$RANDOM"
      rbdc namespace create "$IMGFS_CEPH_POOL/$ns"
      namespaces+=("$ns")
      mount_store "$1" "$2" "$3" --chunks "rados:$IMGFS_CEPH_POOL/$ns" "${ceph_args[@]}"
    }
  else
    local_store() { mount_store "$@"; }
  fi
  local_store "$imgfs" "${IMGFS_BENCH_MOUNT_OPTS:-}" "$work/a"
  [[ -n "$b_bin" ]] && local_store "$b_bin" "$b_opts" "$work/b"
  header "local, chunks ${IMGFS_BENCH_LOCAL_CHUNKS:-dir}" "qcow2+raw"
  run_jobs local "$work/a" "$work/b"
  unmount_all
fi

if [[ "$only" != local ]]; then
  if ! ensure_cluster; then
    echo "# rbd: skipped (no IMGFS_CEPH_CONF; IMGFS_BENCH_QEMU_CEPH=1 starts a cluster)"
    exit 0
  fi
  set_ceph_args
  rbd_store() {  # BIN OPTS DIR
    local ns="benchq$RANDOM$RANDOM"
    rbdc namespace create "$IMGFS_CEPH_POOL/$ns"
    namespaces+=("$ns")
    echo "$ns" >"$3.ns"
    mount_store "$1" "$2" "$3" --disks "rbd:$IMGFS_CEPH_POOL/$ns" "${ceph_args[@]}"
  }
  rbd_store "$imgfs" "${IMGFS_BENCH_MOUNT_OPTS:-}" "$work/ra"
  ns="$(cat "$work/ra.ns")"
  [[ -n "$b_bin" ]] && rbd_store "$b_bin" "$b_opts" "$work/rb"
  header rbd "qemu rbd"
  run_jobs rbd "$work/ra" "$work/rb"
  unmount_all
fi
