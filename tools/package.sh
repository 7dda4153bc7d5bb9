#!/usr/bin/env bash
# Builds the Debian package imgfs_VERSION_ARCH.deb (docs/operations.md,
# "Installing the package"):
#   tools/package.sh [OUTDIR]    (default OUTDIR: the build directory)
# It builds the imgfs target in $IMGFS_BUILD_DIR (default build/), installs
# it into a staging tree with `cmake --install --strip`, adds the systemd unit,
# the logrotate snippet, the manual page (made by `imgfs __man` from the
# command line's own definition) and the docs, takes the dependencies from
# what the binary links (dpkg-shlibdeps), and packs it with dpkg-deb. Prints
# the path of the .deb on stdout.
#
# VERSION is the program's version, followed by +gitDATE.COMMIT inside a git
# work tree. Needs dpkg-dev (dpkg-shlibdeps), which tools/setup.sh installs.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
build="${IMGFS_BUILD_DIR:-$here/build}"
out="${1:-$build}"

if [[ ! -f "$build/build.ninja" ]]; then
  cmake -S "$here" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
cmake --build "$build" --target imgfs -- --quiet >&2

stage="$(mktemp -d /tmp/imgfs-package.XXXXXX)"
trap 'rm -rf "$stage"' EXIT
root="$stage/root"
DESTDIR="$root" cmake --install "$build" --prefix /usr --strip >/dev/null
bin="$root/usr/bin/imgfs"
[[ -x "$bin" ]] || { echo "package: cmake --install left no usr/bin/imgfs" >&2; exit 1; }
# As dh_strip does: no compiler comments or notes either.
strip --remove-section=.comment --remove-section=.note "$bin"

version="$("$bin" --version | awk '{print $2}')"
date_r="$(date -R)"
commit=""
if git -C "$here" rev-parse --git-dir >/dev/null 2>&1; then
  commit="$(git -C "$here" rev-parse --short=12 HEAD)"
  version+="+git$(git -C "$here" log -1 --format=%cd --date=format:%Y%m%d%H%M).$commit"
  date_r="$(git -C "$here" log -1 --format=%cd --date=rfc2822)"
  # dpkg-deb clamps the files' times to it: the same tree packs the same.
  export SOURCE_DATE_EPOCH="$(git -C "$here" log -1 --format=%ct)"
fi
arch="$(dpkg --print-architecture)"
maintainer="${IMGFS_MAINTAINER:-imgfs developers <imgfs-dev@example.org>}"

install -D -m 0644 "$here/tools/debian/imgfs-mount@.service" \
  "$root/lib/systemd/system/imgfs-mount@.service"
install -D -m 0644 "$here/tools/debian/imgfs.logrotate" "$root/etc/logrotate.d/imgfs"
install -d -m 0755 "$root/usr/share/man/man1" "$root/usr/share/doc/imgfs"
"$bin" __man | gzip -9n >"$root/usr/share/man/man1/imgfs.1.gz"
doc="$root/usr/share/doc/imgfs"
install -m 0644 "$here/README.md" "$doc/README.md"
for f in "$here"/docs/*.md; do install -m 0644 "$f" "$doc/"; done
gzip -9n "$doc"/*.md
install -m 0644 "$here/tools/debian/copyright" "$doc/copyright"
cat >"$stage/changelog" <<EOF
imgfs ($version) unstable; urgency=medium

  * Built from ${commit:-a source tree outside git}.

 -- $maintainer  $date_r
EOF
gzip -9n -c "$stage/changelog" >"$doc/changelog.gz"
chmod 0644 "$doc/changelog.gz"

# Dependencies from what the binary links, as dpkg-shlibdeps sees them from
# a source tree's debian/control.
mkdir -p "$stage/src/debian"
printf 'Source: imgfs\n\nPackage: imgfs\nArchitecture: any\n' >"$stage/src/debian/control"
shlibs="$(cd "$stage/src" && dpkg-shlibdeps -O -e"$bin" 2>"$stage/shlibdeps.err" |
  sed -n 's/^shlibs:Depends=//p')" || {
  cat "$stage/shlibdeps.err" >&2
  exit 1
}
[[ -n "$shlibs" ]] || { echo "package: dpkg-shlibdeps found no dependency" >&2; exit 1; }

mkdir -p "$root/DEBIAN"
install -m 0755 "$here/tools/debian/postinst" "$here/tools/debian/postrm" "$root/DEBIAN/"
echo /etc/logrotate.d/imgfs >"$root/DEBIAN/conffiles"
size="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
cat >"$root/DEBIAN/control" <<EOF
Package: imgfs
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $size
Depends: $shlibs, fuse3
Recommends: logrotate
Suggests: ceph-common, qemu-utils
Section: admin
Priority: optional
Description: virtual machine disks as files, thin clones of images
 imgfs keeps content-addressed, deduplicated base images and the disks of
 virtual machines, thin clones of those images, on local disk or on Ceph
 (RBD disks, RADOS chunks), and mounts them with FUSE as files a
 hypervisor opens: MOUNTPOINT/_base/IMAGE and MOUNTPOINT/INSTANCE/DISK.
 .
 The package holds the imgfs command, the systemd unit imgfs-mount@.service
 (one mount per mount point), what an /etc/fstab line of type fuse.imgfs
 needs, a logrotate snippet, the manual page and the operations guide.
EOF
(cd "$root" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z |
  xargs -0 md5sum >DEBIAN/md5sums)
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"
find "$root" -type d -exec chmod 0755 {} +

mkdir -p "$out"
deb="$(cd "$out" && pwd)/imgfs_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
