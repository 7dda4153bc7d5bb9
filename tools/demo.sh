#!/usr/bin/env bash
# The main job on the embedded local default (README command 1): installs and
# builds, creates a local store in ./demo/store, builds a small GPT disk image
# with an ext4 partition holding a file (no network, no loop devices), imports
# it, creates demo/disk at 2 GiB, mounts the store at ./demo/mnt, prints the
# libvirt <disk> element for the disk, and stays in the foreground until
# Ctrl-C, then unmounts cleanly. A second run reuses what exists.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/tools/setup.sh"
imgfs="${IMGFS_BUILD_DIR:-$here/build}/tools/imgfs"
demo="$here/demo"
mnt="$demo/mnt"
export IMGFS_STORE="$demo/store"
mkdir -p "$demo" "$mnt"

# A mount left behind by a killed run.
if mountpoint -q "$mnt"; then fusermount3 -u "$mnt" 2>/dev/null || fusermount3 -u -z "$mnt"; fi

[[ -f "$IMGFS_STORE/imgfs.json" ]] || "$imgfs" init

if ! "$imgfs" image info demo-sample >/dev/null 2>&1; then
  echo "demo: making a sample image: a 64 MiB GPT disk with an ext4 partition"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  img="$work/sample.raw"
  truncate -s 64M "$img"
  sgdisk --clear -n 1:2048:0 -t 1:8300 -c 1:demo-root "$img" >/dev/null
  first="$(sgdisk -i 1 "$img" | awk '/^First sector/ { print $3 }')"
  last="$(sgdisk -i 1 "$img" | awk '/^Last sector/ { print $3 }')"
  mkdir -p "$work/root/etc"
  echo "Hello from an imgfs disk." >"$work/root/hello.txt"
  echo "imgfs-demo" >"$work/root/etc/hostname"
  mkfs.ext4 -q -F -L demo-root -d "$work/root" "$work/part.ext4" \
    "$(((last - first + 1) / 2))k" >/dev/null
  dd if="$work/part.ext4" of="$img" bs=512 seek="$first" conv=notrunc,sparse status=none
  "$imgfs" image import "$img" --name demo-sample >/dev/null
  rm -rf "$work"
  trap - EXIT
fi
"$imgfs" image info demo-sample | sed "s/^/demo: /"

"$imgfs" disk info demo/disk >/dev/null 2>&1 || "$imgfs" disk create demo/disk --image demo-sample --size 2G

"$imgfs" mount "$mnt" --pid-file "$demo/mount.pid" --log-file "$demo/mount.log"
pid="$(cat "$demo/mount.pid")"
stop() {
  trap - INT TERM EXIT
  echo
  echo "demo: unmounting"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    tail --pid="$pid" -f /dev/null
  fi
  mountpoint -q "$mnt" && fusermount3 -u -z "$mnt"
  echo "demo: unmounted; run tools/demo.sh again to remount"
  exit 0
}
trap stop INT TERM EXIT

cat <<XML
demo: mounted the store at $mnt:
$(cd "$mnt" && ls -l _base demo | sed 's/^/  /')

demo: the libvirt disk element for $mnt/demo/disk:

    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='none' io='native' discard='unmap'/>
      <source file='$mnt/demo/disk'/>
      <target dev='vda' bus='virtio'/>
    </disk>

demo: serving until Ctrl-C ...
XML
tail --pid="$pid" -f /dev/null &
wait $! || true
stop
