#!/usr/bin/env bash
# Many images: how `image ls`, `fsck` and `gc` grow with the number of
# images in a store (docs/performance.md, "Many images"). Fills a store with
# N small images (8 KiB each at a 4 KiB chunk size: one chunk of its own, one
# shared by all, one hole; every other one named), measures, fills it to TOP
# (default 4N), measures again, then removes them all with one gc. Prints one
# line a figure:
#   import             the time to import the images (tests/bench/images_fill:
#                      one process, four imports at a time)
#   image ls           `imgfs image ls` of the whole store
#   fsck               `imgfs fsck` (reads and re-hashes every chunk)
#   gc, nothing to do  `imgfs gc` with every image young: the full mark and
#                      sweep over the store, removing nothing
#   gc --dry-run --min-age 0   what gc would remove: every image but the
#                      ten used, and the bytes of their objects
#   gc, all            `imgfs gc --min-age 0` removing every image but the
#                      ten that local disks use, and their chunks
# and for each gc how long it held the GC lock (from its log).
# BACKEND is dir (chunks on local disk) or rados (chunks in a namespace of
# IMGFS_CEPH_CHUNK_POOL of the cluster named by IMGFS_CEPH_*, or of a
# throwaway one). IMGFS_BENCH_GC_ALL=0 skips the last step (gc, all). The
# binary from IMGFS_BENCH_BUILD_DIR (default build-bench/, Release).
# IMGFS_BENCH_COMPARE=PATH names a second imgfs binary (e.g. a build of an
# older commit) whose `image ls`, fsck and gc
# (nothing to do) are measured too, on the same store, before this one's.
#   tools/bench-images.sh [N] [dir|rados] [TOP]   (defaults: 1250 dir 4N)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
n="${1:-1250}"
backend="${2:-dir}"
top="${3:-$((4 * n))}"
. "$here/tools/bench-lib.sh"
bench_build imgfs images_fill
imgfs="$build/tools/imgfs"
filler="$build/tests/bench/images_fill"

work="$(mktemp -d /tmp/imgfs-bench-images.XXXXXX)"
cdir="" ns=""
cleanup() {
  if [[ -n "$ns" ]]; then
    radosc -p "$IMGFS_CEPH_CHUNK_POOL" -N "$ns" ls 2>/dev/null |
      xargs -r -n 64 rados -c "$IMGFS_CEPH_CONF" --id "$IMGFS_CEPH_ID" \
        --keyring "$IMGFS_CEPH_KEYRING" -p "$IMGFS_CEPH_CHUNK_POOL" -N "$ns" rm \
        >/dev/null 2>&1 || true
  fi
  if [[ -n "$cdir" ]]; then "$here/tools/ceph-cluster.sh" stop "$cdir"; fi
  rm -rf "$work"
}
trap cleanup EXIT

export IMGFS_STORE="$work/store"
case "$backend" in
  dir) "$imgfs" init --chunk-size 4K >/dev/null ;;
  rados)
    if [[ -z "${IMGFS_CEPH_CONF:-}" ]]; then
      cdir="$work/ceph"
      eval "$("$here/tools/ceph-cluster.sh" start "$cdir")"
    fi
    ns="images$RANDOM$RANDOM"
    "$imgfs" init --chunk-size 4K --chunks "rados:$IMGFS_CEPH_CHUNK_POOL/$ns" \
      --ceph-conf "$IMGFS_CEPH_CONF" --ceph-id "$IMGFS_CEPH_ID" \
      --keyring "$IMGFS_CEPH_KEYRING" >/dev/null
    ;;
  *)
    echo "bench-images: BACKEND is dir or rados, not '$backend'" >&2
    exit 2
    ;;
esac
load() { echo "load $(cut -d' ' -f1-3 /proc/loadavg)"; }
echo "# $(date -u +%FT%TZ) $(nproc) cpus, $(load); N=$n, TOP=$top, $backend"

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# fill FROM TO: images img<i> for FROM <= i < TO, four imports at once.
fill() {
  mkdir -p "$work/src"
  python3 - "$work/src" "$1" "$2" <<'EOF'
import sys
d, lo, hi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
shared = bytes([0x5a]) * 4096
for i in range(lo, hi):
    own = (b"image %08d " % i) * 256
    with open(f"{d}/img{i:06d}", "wb") as f:
        f.write(own[:4096] + shared + bytes(4096))
EOF
  awk -v lo="$1" -v hi="$2" -v d="$work/src" 'BEGIN {
    for (i = lo; i < hi; i++) {
      f = sprintf("%s/img%06d", d, i)
      if (i % 2 == 0) printf "%s img%06d\n", f, i; else print f
    } }' >"$work/list"
  local t0
  t0="$(now)"
  "$filler" "$IMGFS_STORE" "$work/list" 4
  echo "images $2: import of $(($2 - $1)) took $(secs "$t0" "$(now)") s"
  rm -rf "$work/src"
}

# held LOG: the GC lock hold time gc logged.
held() { sed -n 's/.*gc: held the GC lock for \([0-9.]*\) s.*/\1/p' "$1" | tail -n 1; }

# measure COUNT [BINARY [LABEL]]
measure() {
  local count="$1" bin="${2:-$imgfs}" label="${3:+ ($3)}" t0 t c
  t0="$(now)"
  c="$("$bin" image ls | tail -n +2 | wc -l)"
  t="$(secs "$t0" "$(now)")"
  ((c == count)) || { echo "image ls listed $c images, not $count" >&2; exit 1; }
  echo "images $count$label: image ls $t s ($(load))"
  t0="$(now)"
  "$bin" fsck >"$work/fsck.out"
  echo "images $count$label: fsck $(secs "$t0" "$(now)") s ($(tail -n 1 "$work/fsck.out"))"
  t0="$(now)"
  "$bin" -v gc >"$work/gc.out" 2>"$work/gc.log"
  t="$(secs "$t0" "$(now)")"
  echo "images $count$label: gc, nothing to do $t s (GC lock held $(held "$work/gc.log") s)"
  t0="$(now)"
  "$bin" -v gc --dry-run --min-age 0 >"$work/gc.out" 2>"$work/gc.log"
  t="$(secs "$t0" "$(now)")"
  echo "images $count$label: gc --dry-run --min-age 0 $t s (GC lock held $(held "$work/gc.log") s)"
}
compare() {
  if [[ -n "${IMGFS_BENCH_COMPARE:-}" ]]; then measure "$1" "$IMGFS_BENCH_COMPARE" compared; fi
  measure "$1"
}

fill 0 "$n"
compare "$n"
fill "$n" "$top"
compare "$top"

# IMGFS_BENCH_GC_ALL=0 stops here (the removal of TOP images is the longest step).
[[ "${IMGFS_BENCH_GC_ALL:-1}" == 0 ]] && exit 0
for i in $(seq 0 9); do "$imgfs" -q disk create "vm$i/disk" --image "img$(printf %06d $((2 * i)))"; done
t0="$(now)"
"$imgfs" -v gc --min-age 0 >"$work/gc.out" 2>"$work/gc.log"
t="$(secs "$t0" "$(now)")"
echo "images $top: gc, all $t s (GC lock held $(held "$work/gc.log") s): $(tail -n 1 "$work/gc.out")"
c="$("$imgfs" image ls | tail -n +2 | wc -l)"
((c == 10)) || { echo "after gc, image ls listed $c images, not 10" >&2; exit 1; }
