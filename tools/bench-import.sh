#!/usr/bin/env bash
# Import benchmark (DESIGN.md §9): `imgfs image import` of a raw file of
# unique data against `cp` of the same file, and a re-import of identical
# content against `cp` again, in the same run, printed as speed ratios
# (cp time / import time; higher is better). Targets: >= 0.7 and >= 2.
# Both sides start with the source in the page cache and end with their
# output synced (cp is followed by sync; import syncs its chunks itself).
#
#   tools/bench-import.sh [--dir DIR] [--mib N] [--rounds R]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
dir=/var/tmp/imgfs-bench-import
mib=1024
rounds=3
while (($#)); do
  case "$1" in
    --dir) dir="$2"; shift 2 ;;
    --mib) mib="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    *) echo "usage: $0 [--dir DIR] [--mib N] [--rounds R]" >&2; exit 2 ;;
  esac
done
imgfs="${IMGFS:-${IMGFS_BUILD_DIR:-$here/build}/tools/imgfs}"
[[ -x "$imgfs" ]] || { echo "bench-import: build imgfs first (tools/setup.sh)" >&2; exit 1; }

rm -rf "$dir"
mkdir -p "$dir"
trap 'rm -rf "$dir"' EXIT
head -c "${mib}M" /dev/urandom > "$dir/src.img"
cat "$dir/src.img" > /dev/null

now() { date +%s.%N; }
best() { sort -g | head -1; }

cp_times=() imp_times=() re_times=()
for ((r = 0; r < rounds; r++)); do
  rm -rf "$dir/store" "$dir/copy.img"
  "$imgfs" --store "$dir/store" init >/dev/null
  sync
  t0=$(now); cp "$dir/src.img" "$dir/copy.img"; sync; t1=$(now)
  cp_times+=("$(echo "$t1 - $t0" | bc -l)")
  rm -f "$dir/copy.img"; sync
  t0=$(now); "$imgfs" --store "$dir/store" image import "$dir/src.img" >/dev/null; t1=$(now)
  imp_times+=("$(echo "$t1 - $t0" | bc -l)")
  t0=$(now); "$imgfs" --store "$dir/store" image import "$dir/src.img" >/dev/null; t1=$(now)
  re_times+=("$(echo "$t1 - $t0" | bc -l)")
done
cp_t=$(printf '%s\n' "${cp_times[@]}" | best)
imp_t=$(printf '%s\n' "${imp_times[@]}" | best)
re_t=$(printf '%s\n' "${re_times[@]}" | best)
printf '%-44s %8s %8s %7s %7s\n' "import (${mib} MiB, best of $rounds)" "imgfs s" "cp s" "ratio" "target"
printf '%-44s %8.2f %8.2f %7.2f %7s\n' "import of unique data vs cp" "$imp_t" "$cp_t" \
  "$(echo "$cp_t / $imp_t" | bc -l)" ">=0.7"
printf '%-44s %8.2f %8.2f %7.2f %7s\n' "re-import of identical content vs cp" "$re_t" "$cp_t" \
  "$(echo "$cp_t / $re_t" | bc -l)" ">=2"
