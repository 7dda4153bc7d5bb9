#!/usr/bin/env bash
# The cost of local disks' checksums on 1 MiB reads of owned data
# (docs/performance.md, "Checksums of local disks' data"), side by side in one
# run: for each imgfs binary given, a store with two 512 MiB blank disks
# written whole through its mount, one of them then made a version 1 disk
# (no checksums: read-only opens of it, as fio's read jobs make, verify
# nothing); then rounds of a fio job of 1 MiB sequential reads (psync,
# --direct=1) on each disk of each binary, interleaved.
#
#   tools/bench-csum.sh [--rounds N] [--runtime S] BINARY...
#
# Prints one line per job and round, then the median of each. Run it without
# nice; nothing else should share the machine.
set -euo pipefail
rounds=3
runtime=10
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --runtime) runtime="$2"; shift 2 ;;
    *) break ;;
  esac
done
[[ $# -ge 1 ]] || { echo "usage: $0 [--rounds N] [--runtime S] BINARY..." >&2; exit 2; }
bins=("$@")
work="$(mktemp -d "${IMGFS_BENCH_DIR:-/tmp}/imgfs-bench-csum.XXXXXX")"
pids=()
cleanup() {
  for i in "${!bins[@]}"; do
    mountpoint -q "$work/$i/mnt" 2>/dev/null && fusermount3 -u -z "$work/$i/mnt"
  done
  for p in "${pids[@]}"; do
    if kill -0 "$p" 2>/dev/null; then kill -TERM "$p"; tail --pid="$p" -f /dev/null; fi
  done
  rm -rf "$work"
}
trap cleanup EXIT

mount_store() {  # index
  local i="$1"
  IMGFS_STORE="$work/$i/store" "${bins[$i]}" mount "$work/$i/mnt" --pid-file "$work/$i/pid" \
    --log-file "$work/$i/mount.log"
  pids[$i]="$(cat "$work/$i/pid")"
}
unmount_store() {
  local i="$1"
  fusermount3 -u "$work/$i/mnt"
  tail --pid="${pids[$i]}" -f /dev/null
}

for i in "${!bins[@]}"; do
  mkdir -p "$work/$i/mnt"
  export IMGFS_STORE="$work/$i/store"
  "${bins[$i]}" init >/dev/null
  for d in csum plain; do "${bins[$i]}" disk create "bench/$d" --blank --size 512M >/dev/null; done
  mount_store "$i"
  for d in csum plain; do
    head -c 512M /dev/urandom | dd of="$work/$i/mnt/bench/$d" bs=1M iflag=fullblock \
      oflag=direct conv=notrunc,fsync status=none
  done
  unmount_store "$i"
  # bench/plain becomes a version 1 disk: metadata version 1 without its
  # checksum field, no csum file.
  meta="$IMGFS_STORE/disks/bench/plain/meta.json"
  python3 - "$meta" <<'PY'
import json, sys
p = sys.argv[1]
j = json.load(open(p))
j["version"] = 1
j.pop("xxh3", None)
open(p, "w").write(json.dumps(j, indent=2) + "\n")
PY
  rm "$IMGFS_STORE/disks/bench/plain/csum"
  mount_store "$i"
done
unset IMGFS_STORE

results="$work/results"
: >"$results"
for ((r = 1; r <= rounds; r++)); do
  for i in "${!bins[@]}"; do
    for d in csum plain; do
      out="$(fio --name=bench --filename="$work/$i/mnt/bench/$d" --rw=read --bs=1M \
        --ioengine=psync --iodepth=1 --direct=1 --size=512M --time_based --runtime="$runtime" \
        --numjobs=1 --output-format=terse --terse-version=3 2>/dev/null)"
      mibs=$(awk -F';' '{ printf "%d", $7 / 1024 }' <<<"$out")
      printf 'round %d  %-40s %-6s %6d MiB/s\n' "$r" "${bins[$i]}" "$d" "$mibs"
      echo "$i $d $mibs" >>"$results"
    done
  done
done
echo "medians:"
for i in "${!bins[@]}"; do
  for d in csum plain; do
    med=$(awk -v i="$i" -v d="$d" '$1 == i && $2 == d { print $3 }' "$results" | sort -n |
      awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
    printf '  %-40s %-6s %6d MiB/s\n' "${bins[$i]}" "$d" "$med"
  done
done
for i in "${!bins[@]}"; do unmount_store "$i"; done
