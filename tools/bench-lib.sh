# Sourced by the benchmark scripts (bench-rbd.sh, bench-migrate.sh,
# bench-qemu.sh, bench-scale.sh): their build and the rbd cleanup they share.
# The caller sets `here` (the checkout) and, before calling the rbd helpers,
# IMGFS_CEPH_CONF, IMGFS_CEPH_ID, IMGFS_CEPH_KEYRING and IMGFS_CEPH_POOL.

# Builds TARGETS in the benchmark build and sets `build` to it:
# IMGFS_BENCH_BUILD_DIR, default build-bench/ (Release, IMGFS_BUILD_BENCH=ON).
bench_build() {
  build="${IMGFS_BENCH_BUILD_DIR:-$here/build-bench}"
  if [[ ! -f "$build/build.ninja" ]]; then
    cmake -S "$here" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DIMGFS_BUILD_BENCH=ON -DIMGFS_BUILD_TESTS=OFF >/dev/null
  fi
  cmake --build "$build" --target "$@" -- --quiet
}

rbdc() { rbd -c "$IMGFS_CEPH_CONF" --id "$IMGFS_CEPH_ID" --keyring "$IMGFS_CEPH_KEYRING" "$@"; }
radosc() { rados -c "$IMGFS_CEPH_CONF" --id "$IMGFS_CEPH_ID" --keyring "$IMGFS_CEPH_KEYRING" "$@"; }

# Removes everything of namespace NS in the pool: the disks (clones, four
# at a time), then the published bases with their snapshots, then any object
# left, then the namespace. Never fails: it runs from EXIT traps.
bench_purge_namespace() {
  local ns="$1" img o
  local at="$IMGFS_CEPH_POOL/$ns"
  radosc -p "$IMGFS_CEPH_POOL" -N "$ns" ls 2>/dev/null | sed -n 's/^rbd_id\.//p' |
    grep -v '^imgfs\.' |
    xargs -r -P 4 -I{} rbd -c "$IMGFS_CEPH_CONF" --id "$IMGFS_CEPH_ID" \
      --keyring "$IMGFS_CEPH_KEYRING" rm --no-progress "$at/{}" >/dev/null 2>&1 || true
  for img in $(rbdc ls "$at" 2>/dev/null); do
    rbdc snap unprotect "$at/$img@base" >/dev/null 2>&1 || true
    rbdc snap purge --no-progress "$at/$img" >/dev/null 2>&1 || true
    rbdc rm --no-progress "$at/$img" >/dev/null 2>&1 || true
  done
  for o in $(radosc -p "$IMGFS_CEPH_POOL" -N "$ns" ls 2>/dev/null); do
    radosc -p "$IMGFS_CEPH_POOL" -N "$ns" rm "$o" >/dev/null 2>&1 || true
  done
  rbdc namespace remove "$at" >/dev/null 2>&1 || true
}
