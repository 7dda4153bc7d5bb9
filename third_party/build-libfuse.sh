#!/usr/bin/env bash
# Builds the pinned libfuse 3.18.2 of this folder (FUSE over io_uring, which
# Debian 12's libfuse 3.14 lacks) and installs it into PREFIX, after checking
# the tarball against its .sha256. Idempotent: does nothing when PREFIX holds
# this version already. imgfs builds against it with
# -DIMGFS_LIBFUSE_PREFIX=PREFIX (docs/performance.md, "FUSE over io_uring").
#   third_party/build-libfuse.sh PREFIX
# Needs meson, ninja-build, pkg-config, liburing-dev and libnuma-dev
# (tools/setup.sh): without either library libfuse builds without io_uring,
# which this script refuses.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version=3.18.2
tarball="$here/libfuse-$version.tar.gz"
prefix="${1:?usage: build-libfuse.sh PREFIX}"
mkdir -p "$prefix"
prefix="$(cd "$prefix" && pwd)"

if [[ "$(PKG_CONFIG_PATH="$prefix/lib/pkgconfig" pkg-config --modversion fuse3 2>/dev/null)" == "$version" ]]; then
  exit 0
fi
if ! (cd "$here" && sha256sum --quiet -c "libfuse-$version.tar.gz.sha256"); then
  echo "build-libfuse: $tarball does not match its checksum" >&2
  exit 1
fi
src="$prefix/src"
rm -rf "$src"
mkdir -p "$src"
tar -xzf "$tarball" -C "$src"
meson setup "$src/build" "$src/libfuse-$version" --prefix="$prefix" --libdir=lib \
  --buildtype=release -Denable-io-uring=true -Dtests=false -Dexamples=false -Dutils=false \
  -Duseroot=false -Dinitscriptdir= -Dudevrulesdir="$prefix/udev" >"$src/meson.log" 2>&1 || {
  echo "build-libfuse: meson setup failed, see $src/meson.log" >&2
  exit 1
}
if ! grep -q '^#define HAVE_URING' "$src/build/fuse_config.h"; then
  echo "build-libfuse: libfuse would build without io_uring (liburing-dev and libnuma-dev" \
    "are needed), see $src/meson.log" >&2
  exit 1
fi
ninja -C "$src/build" install >"$src/ninja.log" 2>&1 || {
  echo "build-libfuse: the build failed, see $src/ninja.log" >&2
  exit 1
}
echo "build-libfuse: libfuse $version in $prefix"
