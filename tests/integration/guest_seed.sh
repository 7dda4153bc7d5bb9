# The seed's flow for real, ending inside a booted guest, on the disk backend
# that IMGFS_TEST_DISKS names (local or rbd): the test guest's "cloud images"
# (GPT with an ext4 root partition, and one with xfs; tools/guest/) are
# imported as qcow2; disk create; mount; truncate +1 GiB (nova's resize);
# qemu (TCG) boots the guest from the mount's file (virtio-blk, cache=none,
# aio=native, discard=unmap); its first-boot script runs growpart and
# resize2fs / xfs_growfs on the mounted root, as cloud-init does, then
# unmounts it and runs e2fsck -fn / xfs_repair -n. Its report shows the
# partition and the file system filling the disk and the checks clean. Then
# the host sees the same partition table through the mount, also after a
# remount, and the base image is unchanged.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/e2e_lib.sh"
source "$(dirname "$0")/guest_lib.sh"
e2e_need jq fusermount3 sgdisk
guest_build

init_store
declare -A id
for fs in ext4 xfs; do
  id[$fs]="$("$IMGFS" image import "$GUEST_DIR/$fs.qcow2" --name "guest-$fs")"
  [[ "${id[$fs]}" =~ ^[0-9a-f]{32}$ ]] || fail "import of $fs.qcow2 printed '${id[$fs]}'"
  "$IMGFS" disk create "vm-$fs/disk" --image "guest-$fs" >/dev/null
done

M="$T/mnt"
e2e_mount "$M"
declare -A size
for fs in ext4 xfs; do
  D="$M/vm-$fs/disk"
  size0="$(stat -c %s "$D")"
  truncate -s +1G "$D"
  size[$fs]=$((size0 + (1 << 30)))
  [[ "$(stat -c %s "$D")" -eq "${size[$fs]}" ]] || fail "$fs: truncate +1G gave $(stat -c %s "$D") bytes"

  guest_start "seed-$fs" "$D" grow,fsck
  guest_wait "seed-$fs"
  [[ "$(guest_get "seed-$fs" fstype)" == "$fs" ]] || fail "$fs: the guest's root is $(guest_get "seed-$fs" fstype)"
  guest_check_grown "seed-$fs" "${size[$fs]}" "$size0"
  [[ "$(guest_get "seed-$fs" fsck)" == ok ]] || fail "$fs: fsck in the guest: $(guest_get "seed-$fs" fsck)"
done

# The host reads what the guest wrote through the mount, also after a remount.
check_host() {
  local fs="$1" D="$M/vm-$1/disk" v
  [[ "$(stat -c %s "$D")" -eq "${size[$fs]}" ]] || fail "$fs: the disk is $(stat -c %s "$D") bytes"
  v="$(sgdisk -v "$D" 2>&1)" && [[ "$v" == *"No problems found"* ]] || fail "$fs: sgdisk -v on the host: $v"
  e2e_part "$D"
  [[ "$PART_START" -eq $(($(guest_get "seed-$fs" part_start) * 512)) &&
    "$PART_LEN" -eq $(($(guest_get "seed-$fs" part_sectors) * 512)) ]] ||
    fail "$fs: the host sees partition 1 at $PART_START+$PART_LEN, the guest made it $(guest_get "seed-$fs" part_start)+$(guest_get "seed-$fs" part_sectors) sectors"
  e2e_loop "$D" "$PART_START" "$PART_LEN"
  if [[ "$fs" == ext4 ]]; then
    v="$(e2fsck -fn "$LOOP" 2>&1)" || fail "ext4: e2fsck -fn on the host: $v"
  else
    v="$(xfs_repair -n "$LOOP" 2>&1)" || fail "xfs: xfs_repair -n on the host: $v"
  fi
  e2e_unloop "$LOOP"
}
for fs in ext4 xfs; do check_host "$fs"; done
unmount_imgfs "$M" "$MOUNT_PID"
e2e_mount "$M"
for fs in ext4 xfs; do
  check_host "$fs"
  "$IMGFS" image verify "${id[$fs]}" >/dev/null || fail "$fs: image verify ${id[$fs]} failed"
  qemu-img compare -q -f qcow2 -F raw "$GUEST_DIR/$fs.qcow2" "$M/_base/${id[$fs]}" ||
    fail "$fs: _base/${id[$fs]} differs from the cloud image"
done
echo "guest_seed (${IMGFS_TEST_DISKS:-local}): ok"
