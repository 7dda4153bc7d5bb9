#!/usr/bin/env bash
# Import benchmark (docs/design.md §9): `imgfs image import` of a raw file of
# unique data against `cp` of the same file, and a re-import of identical
# content against `cp` again, in the same run, printed as speed ratios
# (cp time / import time; higher is better). Targets: >= 0.7 and >= 2.
# Both sides start with the source in the page cache and end with their
# output synced (cp is followed by sync; import syncs its chunks itself).
# Each round works in a directory of its own; all are removed at the end.
# (--delete-before removes the previous round's store right before the next
# import instead, as the first version did: ext4 then scans the thousands of
# just-freed inodes on every file creation, see docs/performance.md.)
#
#   tools/bench-import.sh [--dir DIR] [--mib N] [--rounds R] [--delete-before]
#
# Measurement knobs, passed through the environment to imgfs:
#   IMGFS_IMPORT_THREADS=N      import threads (default: CPUs, 1 to 4)
#   IMGFS_DIR_PUBLISH=rename    temp file + rename instead of O_TMPFILE + linkat
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
dir=/var/tmp/imgfs-bench-import
mib=1024
rounds=3
delete_before=0
while (($#)); do
  case "$1" in
    --dir) dir="$2"; shift 2 ;;
    --mib) mib="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --delete-before) delete_before=1; shift ;;
    *) echo "usage: $0 [--dir DIR] [--mib N] [--rounds R] [--delete-before]" >&2; exit 2 ;;
  esac
done
imgfs="${IMGFS:-${IMGFS_BUILD_DIR:-$here/build}/tools/imgfs}"
[[ -x "$imgfs" ]] || { echo "bench-import: build imgfs first (tools/setup.sh)" >&2; exit 1; }

rm -rf "$dir"
mkdir -p "$dir"
trap 'rm -rf "$dir"' EXIT
head -c "${mib}M" /dev/urandom > "$dir/src.img"
cat "$dir/src.img" > /dev/null
sync

now() { date +%s.%N; }


cp_times=() imp_times=() re_times=()
for ((r = 0; r < rounds; r++)); do
  if ((delete_before)); then
    round="$dir/round"
    rm -rf "$round"
  else
    round="$dir/round$r"
  fi
  mkdir -p "$round"
  "$imgfs" --store "$round/store" init >/dev/null
  sync
  t0=$(now); cp "$dir/src.img" "$round/copy.img"; sync; t1=$(now)
  cp_times+=("$(echo "$t1 - $t0" | bc -l)")
  t0=$(now); "$imgfs" --store "$round/store" image import "$dir/src.img" >/dev/null; t1=$(now)
  imp_times+=("$(echo "$t1 - $t0" | bc -l)")
  t0=$(now); "$imgfs" --store "$round/store" image import "$dir/src.img" >/dev/null; t1=$(now)
  re_times+=("$(echo "$t1 - $t0" | bc -l)")
  if ((delete_before)); then rm -f "$round/copy.img"; fi
done
# A 1 GiB sparse file with 10 MiB of data should import in about the time of
# its data: best of 3 against a dense 10 MiB file (fresh data, fresh store each).
sparse_t=() dense_t=()
for ((r = 0; r < 3; r++)); do
  s="$dir/sparse$r"
  mkdir -p "$s"
  truncate -s 1G "$s/sparse.img"
  head -c 5M /dev/urandom | dd of="$s/sparse.img" bs=1M seek=100 conv=notrunc status=none
  head -c 5M /dev/urandom | dd of="$s/sparse.img" bs=1M seek=900 conv=notrunc status=none
  head -c 10M /dev/urandom >"$s/dense.img"
  cat "$s/sparse.img" "$s/dense.img" >/dev/null
  "$imgfs" --store "$s/a" init >/dev/null
  "$imgfs" --store "$s/b" init >/dev/null
  sync
  t0=$(now); "$imgfs" --store "$s/a" image import "$s/sparse.img" >/dev/null; t1=$(now)
  sparse_t+=("$(echo "$t1 - $t0" | bc -l)")
  t0=$(now); "$imgfs" --store "$s/b" image import "$s/dense.img" >/dev/null; t1=$(now)
  dense_t+=("$(echo "$t1 - $t0" | bc -l)")
done
sparse_best=$(printf '%s\n' "${sparse_t[@]}" | sort -g | head -1)
dense_best=$(printf '%s\n' "${dense_t[@]}" | sort -g | head -1)

# Each round's ratio pairs its own cp and import, run seconds apart, so load
# from other users of the machine shifts both; best, median and worst of them.
ratios() {  # cp-times other-times -> "best median worst" of cp/other per round
  local -n a=$1 b=$2
  for i in "${!a[@]}"; do echo "${a[$i]} / ${b[$i]}" | bc -l; done |
    sort -g | awk '{v[NR]=$1} END {printf "%.2f %.2f %.2f\n", v[NR], v[int((NR+1)/2)], v[1]}'
}
read -r imp_b imp_m imp_w < <(ratios cp_times imp_times)
read -r re_b re_m re_w < <(ratios cp_times re_times)
echo "# $(date -u +%FT%TZ), $(nproc) cpus, load $(cut -d' ' -f1-3 /proc/loadavg)," \
  "threads ${IMGFS_IMPORT_THREADS:-default}, publish ${IMGFS_DIR_PUBLISH:-default}"
echo "# seconds per round: cp ${cp_times[*]}; import ${imp_times[*]}; re-import ${re_times[*]}"
printf '%-40s %6s %6s %6s %7s\n' "import, ${mib} MiB, $rounds rounds (cp/imgfs)" best median worst target
printf '%-40s %6.2f %6.2f %6.2f %7s\n' "import of unique data vs cp" "$imp_b" "$imp_m" "$imp_w" ">=0.7"
printf '%-40s %6.2f %6.2f %6.2f %7s\n' "re-import of identical content vs cp" "$re_b" "$re_m" "$re_w" ">=2"
printf '%-40s %6.2f %6s %6s %7s\n' "sparse 1G, 10M of data, vs dense 10M" \
  "$(echo "$dense_best / $sparse_best" | bc -l)" "" "" "~1"
echo "# sparse import ${sparse_best} s, dense 10 MiB import ${dense_best} s (best of 3)"
