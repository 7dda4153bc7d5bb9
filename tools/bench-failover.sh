#!/usr/bin/env bash
# The daemon's life (docs/operations.md, "Crashes and upgrades"; targets in
# docs/performance.md): on a local disk, and on an rbd disk when a cluster is
# given (IMGFS_CEPH_CONF...; tools/ceph-cluster.sh start prints them):
#   - the time from SIGKILL of the server to the first read served again
#     (iocheck probe, O_DIRECT 4 KiB), 10 kills: median and worst;
#   - the longest write fio sees (clat max, random 4 KiB writes, iodepth 16,
#     O_DIRECT) during 5 hot upgrades, against the same fio run without
#     upgrades in the same run;
#   - with IMGFS_BASELINE_BIN (an imgfs without the supervisor, e.g. built
#     from the commit before it): the four fio jobs of docs/design.md §9 through a
#     mount of this build against the same jobs through a mount of that one.
# Environment: IMGFS_BENCH_RUNTIME (seconds per fio job, default 10),
# IMGFS_BENCH_DIR (default /tmp).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
build="${IMGFS_BUILD_DIR:-$here/build}"
imgfs="$build/tools/imgfs"
iocheck="$build/tests/iocheck"
[[ -x "$imgfs" && -x "$iocheck" ]] || { "$here/tools/setup.sh" && ninja -C "$build" iocheck >/dev/null; }
runtime="${IMGFS_BENCH_RUNTIME:-10}"

work="$(mktemp -d "${IMGFS_BENCH_DIR:-/tmp}/imgfs-bench-failover.XXXXXX")"
pids=()
mounts=()
ns=""
cleanup() {
  for p in "${pids[@]}"; do
    if kill -0 "$p" 2>/dev/null; then
      kill -TERM "$p"
      tail --pid="$p" -f /dev/null
    fi
  done
  for m in "${mounts[@]}"; do mountpoint -q "$m" 2>/dev/null && fusermount3 -u -z "$m"; done
  if [[ -n "$ns" ]]; then
    rbd -c "$IMGFS_CEPH_CONF" --id "$IMGFS_CEPH_ID" --keyring "$IMGFS_CEPH_KEYRING" \
      rm --no-progress "$ns/vm1_disk" >/dev/null 2>&1 || true
    rbd -c "$IMGFS_CEPH_CONF" --id "$IMGFS_CEPH_ID" --keyring "$IMGFS_CEPH_KEYRING" \
      namespace remove "$ns" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# mount_store STORE MNT BIN [OPTIONS]: mounts, remembers the supervisor for the cleanup.
mount_store() {
  mkdir -p "$2"
  IMGFS_STORE="$1" "$3" mount "$2" --pid-file "$work/pid.$$" --log-file "$work/mount.log" ${4:+-o "$4"}
  pids+=("$(cat "$work/pid.$$")")
  mounts+=("$2")
}
server_of() { "$imgfs" --json mount --status "$1" | jq -r .server_pid; }

median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

# failover KIND STORE: prints the kill-to-served rows.
failover() {
  local kind="$1" store="$2" m="$work/mnt.$1" t=()
  mount_store "$store" "$m" "$imgfs" crash_loop=100/30  # 10 kills in 10 s are no crash loop here
  exec 9<>"$m/vm1/disk"  # a writer holds the disk (its lock must move)
  for i in $(seq 10); do
    local pid
    pid="$(server_of "$m")"
    kill -9 "$pid"
    t+=("$("$iocheck" probe "$m/vm1/disk")")
    sleep 0.5
  done
  exec 9>&-
  local med worst target
  med="$(printf '%s\n' "${t[@]}" | median)"
  worst="$(printf '%s\n' "${t[@]}" | sort -n | tail -1)"
  target=$([[ "$kind" == rbd ]] && echo 2000 || echo 1000)
  printf '%-52s %10s %10s %10s\n' "SIGKILL to served again, $kind (ms, 10 kills)" "$med" "$worst" "<= $target"
}

# fio_clat_max FILE [upgrade MNT]: the longest write (ms) of a 4k randwrite run.
fio_clat_max() {
  local f="$1" up="${2:-}" m="${3:-}" out="$work/fio.json"
  fio --name=stall --filename="$f" --rw=randwrite --bs=4k --iodepth=16 --ioengine=libaio \
    --direct=1 --size=64M --time_based --runtime="$runtime" --output-format=json \
    --output="$out" >/dev/null &
  local fpid=$!
  if [[ -n "$up" ]]; then
    sleep 1
    cp "$imgfs" "$work/imgfs-copy"
    for i in 1 2 3 4 5; do
      "$work/imgfs-copy" mount --upgrade "$m" >/dev/null
      sleep 0.5
      "$imgfs" mount --upgrade "$m" >/dev/null
      sleep 0.5
    done
  fi
  wait "$fpid"
  jq -r '"\(.jobs[0].error) \(.jobs[0].write.clat_ns.max / 1000000 | floor)"' "$out"
}

upgrade_stall() {
  local kind="$1" m="$work/mnt.$1" base up
  base="$(fio_clat_max "$m/vm1/disk")"
  up="$(fio_clat_max "$m/vm1/disk" upgrade "$m")"
  [[ "${base%% *}" == 0 && "${up%% *}" == 0 ]] || echo "fio reported errors: $base / $up"
  printf '%-52s %10s %10s %10s\n' "longest write during 10 upgrades, $kind (ms)" "${base#* }" "${up#* }" "<= 1000"
}

printf '%-52s %10s %10s %10s\n' "benchmark" "baseline" "imgfs" "target"
printf '%-52s %10s %10s %10s\n' "" "(median)" "(worst)" ""
export IMGFS_STORE="$work/local"
"$imgfs" init >/dev/null
"$imgfs" disk create vm1/disk --blank --size 256M >/dev/null
failover local "$work/local"
printf '%-52s %10s %10s %10s\n' "" "(no upgrade)" "(upgrades)" ""
upgrade_stall local

if [[ -n "${IMGFS_CEPH_CONF:-}" ]]; then
  ns="$IMGFS_CEPH_POOL/bench$RANDOM"
  rbd -c "$IMGFS_CEPH_CONF" --id "$IMGFS_CEPH_ID" --keyring "$IMGFS_CEPH_KEYRING" namespace create "$ns"
  export IMGFS_STORE="$work/rbd"
  "$imgfs" init --disks "rbd:$ns" --ceph-conf "$IMGFS_CEPH_CONF" --ceph-id "$IMGFS_CEPH_ID" \
    --keyring "$IMGFS_CEPH_KEYRING" >/dev/null
  "$imgfs" disk create vm1/disk --blank --size 256M >/dev/null
  printf '%-52s %10s %10s %10s\n' "" "(median)" "(worst)" ""
  failover rbd "$work/rbd"
  printf '%-52s %10s %10s %10s\n' "" "(no upgrade)" "(upgrades)" ""
  upgrade_stall rbd
fi

if [[ -n "${IMGFS_BASELINE_BIN:-}" ]]; then
  # The same store mounted by each binary in turn (one writer at a time).
  export IMGFS_STORE="$work/cost"
  "$imgfs" init >/dev/null
  head -c 512M /dev/urandom >"$work/random.raw"
  "$imgfs" -q image import "$work/random.raw" --name bench >/dev/null
  rm -f "$work/random.raw"
  job() {  # FILE RW BS ENGINE DEPTH -> KiB/s
    local out
    out="$(fio --name=cost --filename="$1" --rw="$2" --bs="$3" --ioengine="$4" --iodepth="$5" \
      --direct=1 --size=512M --time_based --runtime="$runtime" --output-format=terse \
      --terse-version=3 2>/dev/null)"
    case "$2" in
      read | randread) awk -F';' '{ print $7 }' <<<"$out" ;;
      *) awk -F';' '{ print $48 }' <<<"$out" ;;
    esac
  }
  # run BIN RW BS ENGINE DEPTH: one job on a fresh clone through a fresh mount.
  n=0
  run() {
    n=$((n + 1))
    "$imgfs" disk create "vm1/c$n" --image bench >/dev/null
    mount_store "$IMGFS_STORE" "$work/mnt.cost" "$1"
    job "$work/mnt.cost/vm1/c$n" "$2" "$3" "$4" "$5"
    kill -TERM "${pids[-1]}"
    tail --pid="${pids[-1]}" -f /dev/null
    "$imgfs" disk rm "vm1/c$n" >/dev/null
  }
  # Each job four times, baseline-new-new-baseline, so that neither binary
  # always runs first (the first of a pair was measured faster either way).
  printf '%-52s %10s %10s %10s\n' "fio via mount, KiB/s (sum of 2 runs each)" "no superv." "supervisor" "ratio"
  for spec in "read 1M psync 1" "write 1M psync 1" "randread 4k libaio 16" "randwrite 4k libaio 16"; do
    read -r rw bs eng depth <<<"$spec"
    o1="$(run "$IMGFS_BASELINE_BIN" "$rw" "$bs" "$eng" "$depth")"
    n1="$(run "$imgfs" "$rw" "$bs" "$eng" "$depth")"
    n2="$(run "$imgfs" "$rw" "$bs" "$eng" "$depth")"
    o2="$(run "$IMGFS_BASELINE_BIN" "$rw" "$bs" "$eng" "$depth")"
    old=$((o1 + o2))
    new=$((n1 + n2))
    printf '%-52s %10s %10s %10s\n' "$rw $bs $eng qd$depth" "$old" "$new" \
      "$(awk -v a="$old" -v b="$new" 'BEGIN { printf "%.2f", (a > 0 ? b / a : 0) }')"
  done
fi
