#!/usr/bin/env bash
# Scale: how listings, lookups, creation, the mount's start and its memory
# grow with the number of rbd disks in the pool (docs/performance.md,
# "Scale"). Fills an RBD namespace with N disks (one instance each, clones
# of one 8 MiB image), measures, fills it to 4N, measures again, and prints
# one line a figure for each:
#   disk ls            `imgfs disk ls` of the whole pool (target <= 1 s per 1,000)
#   stat cold          `stat` of a disk through the mount never looked up
#                      before, median of 20 (target <= 5 ms, independent of N)
#   ls root            `ls` of the mount root (target <= 1 s per 1,000)
#   disk create        one `imgfs disk create`, mean of 5 (independent of N)
#   mount start        `imgfs mount` until it answers (independent of N)
# and once, at 4N: the serving process's RSS with 200 disks open for writing
# (each written once), per disk (target <= 1 MiB).
# Uses the cluster named by IMGFS_CEPH_* or starts a throwaway one; the
# binary from IMGFS_BENCH_BUILD_DIR (default build-bench/, Release).
#   tools/bench-scale.sh [N]       (N defaults to 500)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
n="${1:-500}"
. "$here/tools/bench-lib.sh"
bench_build imgfs
imgfs="$build/tools/imgfs"

work="$(mktemp -d /tmp/imgfs-bench-scale.XXXXXX)"
cdir="" mnt="$work/mnt" pid="" ns="" holder=""
stop_mount() {
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    tail --pid="$pid" -f /dev/null
  fi
  pid=""
  if mountpoint -q "$mnt" 2>/dev/null; then fusermount3 -u -z "$mnt"; fi
}
cleanup() {
  if [[ -n "$holder" ]] && kill -0 "$holder" 2>/dev/null; then
    kill "$holder"
    tail --pid="$holder" -f /dev/null
  fi
  stop_mount
  [[ -n "$ns" ]] && bench_purge_namespace "$ns"
  if [[ -n "$cdir" ]]; then "$here/tools/ceph-cluster.sh" stop "$cdir"; fi
  rm -rf "$work"
}
trap cleanup EXIT

if [[ -z "${IMGFS_CEPH_CONF:-}" ]]; then
  cdir="$work/ceph"
  eval "$("$here/tools/ceph-cluster.sh" start "$cdir")"
fi
export IMGFS_CEPH_CONF IMGFS_CEPH_ID IMGFS_CEPH_KEYRING IMGFS_CEPH_POOL
echo "# $(date -u +%FT%TZ) $(nproc) cpus, load $(cut -d' ' -f1-3 /proc/loadavg); N=$n"

ns="scale$RANDOM$RANDOM"
rbdc namespace create "$IMGFS_CEPH_POOL/$ns"
export IMGFS_STORE="$work/store"
"$imgfs" init --disks "rbd:$IMGFS_CEPH_POOL/$ns" --ceph-conf "$IMGFS_CEPH_CONF" \
  --ceph-id "$IMGFS_CEPH_ID" --keyring "$IMGFS_CEPH_KEYRING" >/dev/null
head -c 8M /dev/urandom >"$work/small.raw"
"$imgfs" -q image import "$work/small.raw" --name small >/dev/null
mkdir -p "$mnt"

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# fill FROM TO: disks vm<i>/disk for FROM <= i < TO, four creations at once.
fill() {
  seq -f 'vm%06g' "$1" "$(($2 - 1))" |
    xargs -P 4 -I{} "$imgfs" -q disk create "{}/disk" --image small
}

mount_fs() {
  local t0
  t0="$(now)"
  "$imgfs" mount "$mnt" --pid-file "$work/pid" --log-file "$work/mount.log"
  pid="$(cat "$work/pid")"
  stat "$mnt/_base" >/dev/null
  echo "$(secs "$t0" "$(now)")"
}

measure() {
  local count="$1" t0 t i c
  t0="$(now)"
  c="$("$imgfs" disk ls | tail -n +2 | wc -l)"
  t="$(secs "$t0" "$(now)")"
  ((c == count)) || { echo "disk ls listed $c disks, not $count" >&2; exit 1; }
  echo "disks $count: disk ls $t s"
  t="$(mount_fs)"
  echo "disks $count: mount start $t s"
  t0="$(now)"
  c="$(ls "$mnt" | wc -l)"
  t="$(secs "$t0" "$(now)")"
  echo "disks $count: ls root $t s ($c entries)"
  # Timed inside one process: a fork of `stat` and `date` costs more than
  # the lookup on a loaded machine.
  python3 - "$mnt" "$count" <<'EOF'
import os, statistics, sys, time
mnt, count = sys.argv[1], int(sys.argv[2])
ms = []
for i in range(1, 21):
    p = f"{mnt}/vm{(i * 7919) % count:06d}/disk"
    t = time.perf_counter()
    os.stat(p)
    ms.append((time.perf_counter() - t) * 1000)
print(f"disks {count}: stat cold median {statistics.median(ms):.2f} ms "
      f"(min {min(ms):.2f}, max {max(ms):.2f})")
EOF
  stop_mount
  t0="$(now)"
  for i in 1 2 3 4 5; do "$imgfs" -q disk create "extra$count$i/disk" --image small; done
  echo "disks $count: disk create $(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.3f", (b - a) / 5 }') s each"
  for i in 1 2 3 4 5; do "$imgfs" -q disk rm "extra$count$i/disk"; done
}

fill 0 "$n"
measure "$n"
fill "$n" "$((4 * n))"
measure "$((4 * n))"

# 200 disks (or all, when fewer) open for writing through one mount, each
# written once.
held=$((4 * n < 200 ? 4 * n : 200))
mount_fs >/dev/null
# The serving process, not the supervisor the pid file names.
server="$("$imgfs" --json mount --status "$mnt" | jq -r .server_pid)"
rss0="$(awk '/^VmRSS/ { print $2 }' "/proc/$server/status")"
python3 - "$mnt" "$work/held" "$held" <<'EOF' &
import os, sys, time
mnt, flag, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
fds = []
for i in range(count):
    fd = os.open(f"{mnt}/vm{i:06d}/disk", os.O_RDWR)
    os.pwrite(fd, b"x" * 4096, 0)
    fds.append(fd)
open(flag, "w").close()
time.sleep(3600)
EOF
holder=$!
while [[ ! -e "$work/held" ]]; do
  if ! kill -0 "$holder" 2>/dev/null; then
    holder=""
    echo "bench-scale: opening $held disks through the mount failed" >&2
    exit 1
  fi
  sleep 0.5
done
rss1="$(awk '/^VmRSS/ { print $2 }' "/proc/$server/status")"
echo "$held disks open: RSS $((rss0 / 1024)) MiB -> $((rss1 / 1024)) MiB," \
  "$(awk -v a="$rss0" -v b="$rss1" -v n="$held" 'BEGIN { printf "%.2f", (b - a) / 1024 / n }') MiB per disk"
kill "$holder"
tail --pid="$holder" -f /dev/null
holder=""
