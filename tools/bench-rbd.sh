#!/usr/bin/env bash
# RBD benchmarks, side by side with librbd alone in the same run (ratios;
# absolute numbers vary by machine and load):
#   1. the four fio jobs of docs/design.md §9 with --ioengine=libaio --iodepth=DEPTH
#      on an rbd disk through the mount (a clone of a MIB image of random
#      data, so reads hit the base and writes copy up) against
#      `rbd bench --io-threads DEPTH` with the same I/O size and pattern on a
#      twin clone of the same base; target >= 0.8; also the mount daemon's
#      CPU per I/O, and the same fio job with fio's rbd engine (no FUSE) on a
#      third twin (in the pool's default namespace) for comparison; the read
#      jobs also run with the disk held open for writing, as qemu holds a
#      VM's disk, when the parent's bytes are read from the local store;
#   2. the backend alone (tests/bench/rbd_disk_bench): publication against the
#      same bytes written with 4 MiB aio writes, and its async I/O against
#      rbd bench on a twin clone.
# Uses the cluster named by IMGFS_CEPH_* or starts a throwaway one. Builds in
# build-bench/ (IMGFS_BUILD_BENCH=ON, Release), like the other bench scripts.
#   tools/bench-rbd.sh [MIB] [DEPTH]
# Environment: IMGFS_BENCH_RUNTIME (seconds per fio job, default 10),
# IMGFS_BENCH_MOUNT_OPTS (-o options for the mount),
# IMGFS_BENCH_RBD_SKIP_MOUNT=1 / IMGFS_BENCH_RBD_SKIP_BACKEND=1.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
mib="${1:-512}"
depth="${2:-16}"
runtime="${IMGFS_BENCH_RUNTIME:-10}"
. "$here/tools/bench-lib.sh"
targets=(imgfs)
[[ "${IMGFS_BENCH_RBD_SKIP_BACKEND:-0}" == 1 ]] || targets+=(rbd_disk_bench)
bench_build "${targets[@]}"
bench="$build/tests/bench/rbd_disk_bench"
imgfs="$build/tools/imgfs"

work="$(mktemp -d /tmp/imgfs-bench-rbd.XXXXXX)"
cdir="" mnt="$work/mnt" pid="" ns=""
cleanup() {
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    tail --pid="$pid" -f /dev/null
  fi
  mountpoint -q "$mnt" 2>/dev/null && fusermount3 -u -z "$mnt"
  if [[ -n "$ns" ]]; then
    rbdc rm --no-progress "$IMGFS_CEPH_POOL/imgfs-bench-fio.$ns" >/dev/null 2>&1 || true
    bench_purge_namespace "$ns"
  fi
  [[ -n "$cdir" ]] && "$here/tools/ceph-cluster.sh" stop "$cdir"
  rm -rf "$work"
}
trap cleanup EXIT

if [[ -z "${IMGFS_CEPH_CONF:-}" ]]; then
  cdir="$work/ceph"
  eval "$(IMGFS_CEPH_MEMSTORE_BYTES=$(((6 * mib + 1024) << 20)) "$here/tools/ceph-cluster.sh" start "$cdir")"
fi
export IMGFS_CEPH_CONF IMGFS_CEPH_ID IMGFS_CEPH_KEYRING IMGFS_CEPH_POOL
echo "# $(date -u +%FT%TZ) $(nproc) cpus, load $(cut -d' ' -f1-3 /proc/loadavg); cluster $IMGFS_CEPH_CONF"

if [[ "${IMGFS_BENCH_RBD_SKIP_MOUNT:-0}" != 1 ]]; then
  ns="bench$RANDOM$RANDOM"
  rbdc namespace create "$IMGFS_CEPH_POOL/$ns"
  export IMGFS_STORE="$work/store"
  "$imgfs" init --disks "rbd:$IMGFS_CEPH_POOL/$ns" --ceph-conf "$IMGFS_CEPH_CONF" \
    --ceph-id "$IMGFS_CEPH_ID" --keyring "$IMGFS_CEPH_KEYRING" >/dev/null
  head -c "${mib}M" /dev/urandom >"$work/random.raw"
  "$imgfs" -q image import "$work/random.raw" --name bench >/dev/null
  rm -f "$work/random.raw"
  mkdir -p "$mnt"
  # shellcheck disable=SC2086
  "$imgfs" mount "$mnt" --pid-file "$work/pid" --log-file "$work/mount.log" \
    ${IMGFS_BENCH_MOUNT_OPTS:+-o $IMGFS_BENCH_MOUNT_OPTS}
  pid="$(cat "$work/pid")"

  # fio_iops FILE RW BS -> IOPS (terse v3: read iops field 8, write 49).
  fio_iops() {
    local out
    out="$(fio --name=bench --filename="$1" --rw="$2" --bs="$3" --ioengine=libaio \
      --iodepth="$depth" --direct=1 --size="${mib}M" --time_based --runtime="$runtime" \
      --numjobs=1 --output-format=terse --terse-version=3 2>/dev/null)"
    case "$2" in
      read | randread) awk -F';' '{ print $8 }' <<<"$out" ;;
      *) awk -F';' '{ print $49 }' <<<"$out" ;;
    esac
  }
  # rbd_bench_iops IMAGE RW BS -> IOPS, the same I/O over the same span.
  # Sequential runs pass over the image 4 times (rbd bench wraps around, as
  # fio's time-based run does): one pass of 1M reads takes a fraction of a
  # second, too short to measure, and one pass of writes is all copy-up.
  rbd_bench_iops() {
    local type=read pattern=seq total="$((mib * 4))M"
    case "$2" in write | randwrite) type="write" ;; esac
    case "$2" in rand*) pattern=rand total="$((mib / 4))M" ;; esac
    rbdc bench --io-type "$type" --io-size "$3" --io-threads "$depth" --io-pattern "$pattern" \
      --io-total "$total" "$1" 2>&1 | awk '/^elapsed/ { print int($6) }' | tail -1
  }

  # fio_rbd_iops IMAGE RW BS -> IOPS of the same fio job with fio's own rbd
  # engine (librbd's C API, no FUSE) on IMAGE in the pool's default namespace
  # (the engine has no namespace option), or "-" if it cannot run.
  fio_rbd_iops() {
    local out
    out="$(CEPH_CONF="$IMGFS_CEPH_CONF" CEPH_ARGS="--keyring $IMGFS_CEPH_KEYRING" fio --name=bench \
      --ioengine=rbd --clientname="$IMGFS_CEPH_ID" --pool="$IMGFS_CEPH_POOL" --rbdname="$1" \
      --rw="$2" --bs="$3" --iodepth="$depth" --size="${mib}M" --time_based --runtime="$runtime" \
      --output-format=terse --terse-version=3 2>/dev/null)" || out=""
    case "$2" in
      read | randread) awk -F';' '{ print $8 }' <<<"$out" ;;
      *) awk -F';' '{ print $49 }' <<<"$out" ;;
    esac | grep . || echo -
  }
  fio_ref="imgfs-bench-fio.$ns"

  # daemon_ticks -> the mount daemon's CPU time so far (all threads), in ticks.
  daemon_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat"; }

  # The last columns: the mount daemon's CPU time per fio I/O (librbd's
  # threads included; fio's and the kernel's FUSE side are not); the same fio
  # job with fio's rbd engine on a third twin clone, and imgfs / that, which
  # leaves out what fio and librbd's C API cost either way.
  printf '%-46s %14s %14s %7s %8s %12s %14s %8s\n' "benchmark" "rbd bench" "imgfs" "ratio" "target" \
    "daemon us/io" "fio rbd" "ratio"
  for j in "read 1M" "write 1M" "randread 4K" "randwrite 4K"; do
    read -r rw bs <<<"$j"
    # A fresh clone for each side, so both copy up the same way.
    "$imgfs" disk create "bench/$rw" --image bench >/dev/null
    "$imgfs" disk create "bench/${rw}.ref" --image bench >/dev/null
    base_iops="$(rbd_bench_iops "$IMGFS_CEPH_POOL/$ns/bench_${rw}.ref" "$rw" "$bs")"
    cpu0="$(daemon_ticks)"
    mnt_iops="$(fio_iops "$mnt/bench/$rw" "$rw" "$bs")"
    cpu1="$(daemon_ticks)"
    ratio="$(awk -v a="$base_iops" -v b="$mnt_iops" 'BEGIN { printf "%.2f", (a > 0 ? b / a : 0) }')"
    us="$(awk -v t="$((cpu1 - cpu0))" -v hz="$(getconf CLK_TCK)" -v n="$mnt_iops" -v s="$runtime" \
      'BEGIN { printf "%.0f", (n > 0 ? t * 1e6 / hz / (n * s) : 0) }')"
    base="$(rbdc ls "$IMGFS_CEPH_POOL/$ns" | grep '^imgfs\.base\.' | head -1)"
    fio_rbd="-"
    if rbdc clone --rbd-default-clone-format 2 "$IMGFS_CEPH_POOL/$ns/$base@base" \
      "$IMGFS_CEPH_POOL/$fio_ref" >/dev/null 2>&1; then
      fio_rbd="$(fio_rbd_iops "$fio_ref" "$rw" "$bs")"
      rbdc rm --no-progress "$IMGFS_CEPH_POOL/$fio_ref" >/dev/null 2>&1 || true
    fi
    fio_ratio="$(awk -v a="$fio_rbd" -v b="$mnt_iops" 'BEGIN { printf "%.2f", (a > 0 ? b / a : 0) }')"
    printf '%-46s %14s %14s %7s %8s %12s %14s %8s\n' "fio $rw bs=$bs libaio qd=$depth (rbd disk)" \
      "$base_iops IOPS" "$mnt_iops IOPS" "$ratio" ">= 0.8" "$us" "$fio_rbd IOPS" "$fio_ratio"
    # fio opens a read job's file read-only, so the mount reads the cluster.
    # A VM's disk is open for writing (qemu opens it read-write): then the
    # parent's bytes come from the local store (rbd.md). The same job again,
    # with the file held open for writing meanwhile.
    if [[ "$rw" == read || "$rw" == randread ]]; then
      exec {wfd}<>"$mnt/bench/$rw"
      cpu0="$(daemon_ticks)"
      held_iops="$(fio_iops "$mnt/bench/$rw" "$rw" "$bs")"
      cpu1="$(daemon_ticks)"
      exec {wfd}>&-
      ratio="$(awk -v a="$base_iops" -v b="$held_iops" 'BEGIN { printf "%.2f", (a > 0 ? b / a : 0) }')"
      us="$(awk -v t="$((cpu1 - cpu0))" -v hz="$(getconf CLK_TCK)" -v n="$held_iops" -v s="$runtime" \
        'BEGIN { printf "%.0f", (n > 0 ? t * 1e6 / hz / (n * s) : 0) }')"
      printf '%-46s %14s %14s %7s %8s %12s\n' "  the same, the disk also open for writing" \
        "$base_iops IOPS" "$held_iops IOPS" "$ratio" ">= 0.8" "$us"
    fi
  done
  kill -TERM "$pid"
  tail --pid="$pid" -f /dev/null
  pid=""
fi

if [[ "${IMGFS_BENCH_RBD_SKIP_BACKEND:-0}" != 1 ]]; then
  echo "# the rbd backend alone: publication of a $((mib / 2)) MiB image (a quarter holes)"
  "$bench" publish "$((mib / 2))"
  echo "# the rbd backend alone: async I/O vs rbd bench, $((mib / 2)) MiB clone, depth $depth"
  "$bench" io "$((mib / 2))" read 1048576 "$depth" "$runtime"
  "$bench" io "$((mib / 2))" write 1048576 "$depth" "$runtime"
  "$bench" io "$((mib / 2))" randread 4096 "$depth" "$runtime"
  "$bench" io "$((mib / 2))" randwrite 4096 "$depth" "$runtime"
fi
