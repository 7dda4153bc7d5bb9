#!/usr/bin/env bash
# Every test: installs what is needed, builds, starts what the tests need (the
# throwaway Ceph cluster), runs ctest over everything, stops what it started,
# and exits non-zero on any failure.
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
build="${IMGFS_BUILD_DIR:-$here/build}"

"$here/tools/setup.sh" || { echo "test: setup or build failed" >&2; exit 1; }

# Clang's thread-safety analysis of the lock annotations (docs/architecture.md,
# "Locks"): a second build with clang, where every finding is an error.
clang_build="${IMGFS_CLANG_BUILD_DIR:-$here/build-clang}"
if [[ ! -f "$clang_build/build.ninja" ]]; then
  CC=clang-16 CXX=clang++-16 cmake -S "$here" -B "$clang_build" -G Ninja -DCMAKE_BUILD_TYPE=Debug \
    -DIMGFS_BUILD_TESTS=OFF >/dev/null || { echo "test: clang configure failed" >&2; exit 1; }
fi
cmake --build "$clang_build" --target imgfs -- --quiet ||
  { echo "test: the clang build (thread-safety analysis) failed" >&2; exit 1; }

cleanup() {
  if [[ -n "${IMGFS_CEPH_DIR:-}" && -x "$here/tools/ceph-cluster.sh" ]]; then
    "$here/tools/ceph-cluster.sh" stop "$IMGFS_CEPH_DIR" || true
  fi
}
trap cleanup EXIT

if [[ -x "$here/tools/ceph-cluster.sh" ]]; then
  IMGFS_CEPH_DIR="$(mktemp -d /tmp/imgfs-ceph.XXXXXX)"
  rmdir "$IMGFS_CEPH_DIR"
  if ! eval "$("$here/tools/ceph-cluster.sh" start "$IMGFS_CEPH_DIR")"; then
    echo "test: could not start the test Ceph cluster" >&2
    exit 1
  fi
  export IMGFS_CEPH_DIR IMGFS_CEPH_CONF IMGFS_CEPH_ID IMGFS_CEPH_KEYRING IMGFS_CEPH_POOL
fi

ctest --test-dir "$build" --output-on-failure -j2 "$@"
rc=$?
exit $rc
