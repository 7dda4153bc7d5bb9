#!/usr/bin/env bash
# Installs every Debian package imgfs needs (build, runtime and tests), then
# configures and builds, and builds the test guest (tools/guest/). Idempotent
# and quiet when everything is already there.
#   tools/setup.sh            install + build (build dir: build/)
#   tools/setup.sh --no-build install only
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"

build_pkgs=(cmake ninja-build g++ pkg-config
  libfuse3-dev fuse3 librbd-dev librados-dev libradospp-dev libxxhash-dev libspdlog-dev
  catch2 libcli11-dev nlohmann-json3-dev qemu-utils libcivetweb-dev dpkg-dev
  meson liburing-dev libnuma-dev)
test_pkgs=(ceph-mon ceph-osd ceph-mgr ceph-common fio cloud-guest-utils gdisk
  e2fsprogs xfsprogs util-linux qemu-block-extra jq
  qemu-system-x86 libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
  cpio fdisk strace
  lintian systemd socat logrotate groff-base bsdextrautils prometheus curl iproute2
  clang-16)

missing=()
for p in "${build_pkgs[@]}" "${test_pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[[ "${1:-}" == "--no-build" ]] && exit 0

# The pinned libfuse 3.18 (third_party/; FUSE over io_uring, -o io_uring)
# when the system's is older: .ci/run's second build links against it.
if ! pkg-config --atleast-version=3.18 fuse3; then
  "$here/third_party/build-libfuse.sh" "${IMGFS_LIBFUSE_DIR:-$here/build-libfuse}"
fi

build="${IMGFS_BUILD_DIR:-$here/build}"
if [[ ! -f "$build/build.ninja" ]]; then
  cmake -S "$here" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    ${IMGFS_CMAKE_ARGS:-} >/dev/null
fi
cmake --build "$build" -- --quiet
# The test guest of the guest_* tests (Debian's cloud kernel and
# busybox-static, fetched with apt-get download; cached in $build/guest, so
# only the first run takes time). The tests build it too if it is missing.
"$here/tools/guest/build.sh" "$build/guest"
