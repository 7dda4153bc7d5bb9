#!/usr/bin/env bash
# The benchmark entry point: one command prints the whole table.
#
# First the four fio jobs of docs/design.md §9 (one job each, --direct=1) on a
# 512 MiB disk made from an image of random data (reads hit the base, writes
# copy up), through the mount, side by side with the same job on a plain
# local file in the same run; prints each ratio and its target. Then runs
# every other tools/bench-*.sh, which print their own rows.
#
# Environment:
#   IMGFS_BENCH_RUNTIME     seconds per fio job (default 10)
#   IMGFS_BENCH_MOUNT_OPTS  -o options for the mount (to measure knobs)
#   IMGFS_BENCH_DIR         where the temporary store and files go (default /tmp)
#   IMGFS_BENCH_ONLY_FIO=1  skip the other bench-*.sh scripts
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
build="${IMGFS_BUILD_DIR:-$here/build}"
imgfs="$build/tools/imgfs"
[[ -x "$imgfs" ]] || "$here/tools/setup.sh"
runtime="${IMGFS_BENCH_RUNTIME:-10}"

work="$(mktemp -d "${IMGFS_BENCH_DIR:-/tmp}/imgfs-bench.XXXXXX")"
mnt="$work/mnt"
pid=""
cleanup() {
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    tail --pid="$pid" -f /dev/null
  fi
  mountpoint -q "$mnt" 2>/dev/null && fusermount3 -u -z "$mnt"
  rm -rf "$work"
}
trap cleanup EXIT

export IMGFS_STORE="$work/store"
"$imgfs" init >/dev/null
head -c 512M /dev/urandom >"$work/random.raw"
"$imgfs" -q image import "$work/random.raw" --name bench >/dev/null
mkdir -p "$mnt"
# shellcheck disable=SC2086
"$imgfs" mount "$mnt" --pid-file "$work/pid" --log-file "$work/mount.log" \
  ${IMGFS_BENCH_MOUNT_OPTS:+-o $IMGFS_BENCH_MOUNT_OPTS}
pid="$(cat "$work/pid")"

# fio_job FILE RW BS ENGINE DEPTH -> prints "KiB/s IOPS" (terse v3 fields).
fio_job() {
  local out
  out="$(fio --name=bench --filename="$1" --rw="$2" --bs="$3" --ioengine="$4" \
    --iodepth="$5" --direct=1 --size=512M --time_based --runtime="$runtime" \
    --numjobs=1 --output-format=terse --terse-version=3 2>/dev/null)"
  case "$2" in
    read | randread) awk -F';' '{ print $7, $8 }' <<<"$out" ;;
    *) awk -F';' '{ print $48, $49 }' <<<"$out" ;;
  esac
}

printf '%-46s %14s %14s %7s %8s\n' "benchmark" "baseline" "imgfs" "ratio" "target"
row() {  # name unit baseline value target
  local ratio
  ratio="$(awk -v a="$3" -v b="$4" 'BEGIN { printf "%.2f", (a > 0 ? b / a : 0) }')"
  printf '%-46s %14s %14s %7s %8s\n' "$1" "$3 $2" "$4 $2" "$ratio" "$5"
}

jobs=(
  "read 1M psync 1 MiB/s 0.5"
  "write 1M psync 1 MiB/s 0.4"
  "randread 4k libaio 16 IOPS 0.7"
  "randwrite 4k libaio 16 IOPS 0.5"
)
for j in "${jobs[@]}"; do
  read -r rw bs engine depth unit target <<<"$j"
  # A fresh clone and a fresh plain copy for each job, so writes copy up.
  "$imgfs" disk create "bench/$rw" --image bench >/dev/null
  cp "$work/random.raw" "$work/plain.raw"
  read -r plain_bw plain_iops <<<"$(fio_job "$work/plain.raw" "$rw" "$bs" "$engine" "$depth")"
  read -r mnt_bw mnt_iops <<<"$(fio_job "$mnt/bench/$rw" "$rw" "$bs" "$engine" "$depth")"
  if [[ "$unit" == MiB/s ]]; then
    row "fio $rw bs=$bs $engine qd=$depth (local disk)" "$unit" \
      "$((plain_bw / 1024))" "$((mnt_bw / 1024))" ">= $target"
  else
    row "fio $rw bs=$bs $engine qd=$depth (local disk)" "$unit" \
      "$plain_iops" "$mnt_iops" ">= $target"
  fi
done

kill -TERM "$pid"
tail --pid="$pid" -f /dev/null
pid=""

if [[ "${IMGFS_BENCH_ONLY_FIO:-0}" != 1 ]]; then
  for b in "$here"/tools/bench-*.sh; do
    [[ -e "$b" ]] || continue
    bash "$b"
  done
fi
