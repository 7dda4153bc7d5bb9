#!/usr/bin/env bash
# The soak (a script, not a timed test): 8 disks on one mount, one fio job per
# disk with mixed random I/O verified with crc32c, for DURATION (default 10
# minutes), the serving process killed (SIGKILL) every minute; the mount's
# supervisor starts the next one (docs/operations.md). Prints the I/O done,
# the I/O errors (target 0) and the verify failures (target 0); exits 1 if
# either is not 0.
#   tools/soak.sh [DURATION]   (seconds, or with a suffix: 90s, 10m, 1h)
# Environment: IMGFS_BUILD_DIR (default build), IMGFS_SOAK_DIR (default /tmp),
# IMGFS_SOAK_DISKS (default 8), IMGFS_SOAK_DISK_MIB (default 256),
# IMGFS_SOAK_KILL_EVERY (seconds, default 60; 0: never).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
imgfs="${IMGFS_BUILD_DIR:-$here/build}/tools/imgfs"
[[ -x "$imgfs" ]] || { echo "soak: no $imgfs (build it first)" >&2; exit 2; }
command -v fio >/dev/null || { echo "soak: fio is not installed (tools/setup.sh)" >&2; exit 2; }
dur="${1:-10m}"
case "$dur" in
  *h) secs=$((${dur%h} * 3600)) ;;
  *m) secs=$((${dur%m} * 60)) ;;
  *s) secs=${dur%s} ;;
  *) secs=$dur ;;
esac
[[ "$secs" =~ ^[0-9]+$ && "$secs" -gt 0 ]] || { echo "soak: bad duration '$dur'" >&2; exit 2; }
ndisks="${IMGFS_SOAK_DISKS:-8}"
mib="${IMGFS_SOAK_DISK_MIB:-256}"
kill_every="${IMGFS_SOAK_KILL_EVERY:-60}"

work="$(mktemp -d "${IMGFS_SOAK_DIR:-/tmp}/imgfs-soak.XXXXXX")"
mnt="$work/mnt"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do tail --pid="$p" -f /dev/null 2>/dev/null || true; done
  local sup
  sup="$(cat "$work/pid" 2>/dev/null || true)"
  if [[ -n "$sup" ]] && kill -0 "$sup" 2>/dev/null; then
    kill -TERM "$sup"
    tail --pid="$sup" -f /dev/null
  fi
  mountpoint -q "$mnt" 2>/dev/null && fusermount3 -u -z "$mnt"
  rm -rf "$work"
}
trap cleanup EXIT
export IMGFS_STORE="$work/store"
"$imgfs" init >/dev/null
head -c "${mib}M" /dev/urandom >"$work/base.raw"
"$imgfs" -q image import "$work/base.raw" --name soak >/dev/null
rm -f "$work/base.raw"
for ((i = 0; i < ndisks; i++)); do
  "$imgfs" -q disk create "vm$i/disk" --image soak >/dev/null
done
mkdir -p "$mnt"
"$imgfs" mount "$mnt" --pid-file "$work/pid" --log-file "$work/mount.log" -o crash_loop=1000/30

echo "soak: $ndisks disks of $mib MiB, ${secs}s, server killed every ${kill_every}s"
for ((i = 0; i < ndisks; i++)); do
  # Mixed random I/O, every block written checked when read back (crc32c
  # headers) and once more at the end of the run. No verify state file: fio
  # would leave one per job in the current directory.
  fio --name="soak$i" --filename="$mnt/vm$i/disk" --rw=randrw --rwmixread=50 \
    --bsrange=4k-128k --ioengine=libaio --iodepth=8 --direct=1 --size="${mib}M" \
    --time_based --runtime="$secs" --verify=crc32c --verify_fatal=0 --verify_backlog=1024 \
    --fsync=64 --continue_on_error=all --output-format=json --output="$work/fio$i.json" \
    --verify_state_save=0 >"$work/fio$i.log" 2>&1 &
  pids+=("$!")
done

kills=0
start=$SECONDS
next=$kill_every
while (( SECONDS - start < secs )); do
  sleep 1
  if (( kill_every > 0 && SECONDS - start >= next && SECONDS - start < secs - 5 )); then
    next=$((next + kill_every))
    old="$("$imgfs" --json mount --status "$mnt" | jq -r .server_pid)"
    kill -9 "$old"
    kills=$((kills + 1))
    for ((w = 0; w < 600; w++)); do
      new="$("$imgfs" --json mount --status "$mnt" 2>/dev/null | jq -r .server_pid || true)"
      [[ -n "$new" && "$new" != 0 && "$new" != "$old" ]] && break
      sleep 0.1
    done
  fi
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
pids=()

total_r=0 total_w=0 errors=0 verify=0
for ((i = 0; i < ndisks; i++)); do
  j="$work/fio$i.json"
  if [[ ! -s "$j" ]] || ! jq -e . "$j" >/dev/null 2>&1; then
    echo "soak: disk $i: fio wrote no result: $(tail -3 "$work/fio$i.log")"
    errors=$((errors + 1))
    continue
  fi
  total_r=$((total_r + $(jq '.jobs[0].read.io_bytes' "$j")))
  total_w=$((total_w + $(jq '.jobs[0].write.io_bytes' "$j")))
  errors=$((errors + $(jq '.jobs[0].total_err' "$j")))
  v=$(grep -c "verify: bad\|crc32c: verify failed\|bad magic header" "$work/fio$i.log" || true)
  verify=$((verify + v))
done
printf 'soak: %d s, %d server kills, read %d MiB, written %d MiB, I/O errors %d (target 0), verify failures %d (target 0)\n' \
  "$secs" "$kills" $((total_r >> 20)) $((total_w >> 20)) "$errors" "$verify"
if ((errors || verify || rc)); then
  echo "soak: FAILED (fio logs in $work are removed; mount log tail:)" >&2
  tail -20 "$work/mount.log" >&2
  exit 1
fi
