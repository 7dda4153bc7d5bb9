# The whole flow of docs/design.md §1 with real tools, on the disk backend that
# IMGFS_TEST_DISKS names (local or rbd): a GPT disk with an ext4 partition and
# one with an xfs partition, as qcow2 images; import; disk create; mount;
# truncate +1 GiB (nova's resize); growpart on the disk file (the GPT backup
# header moves to the new end); a loop device over the partition; resize2fs /
# xfs_growfs; then fsck clean, partition and filesystem fill the disk, every
# file matches its checksum, and the base image is unchanged. Everything is
# detached at exit, also when a step fails.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/e2e_lib.sh"
e2e_need qemu-img sgdisk growpart mkfs.ext4 resize2fs e2fsck dumpe2fs mkfs.xfs xfs_growfs \
  xfs_repair xfs_info losetup sha256sum fusermount3

init_store
GiB=$((1 << 30))

# Known files: random data of a few sizes, a sparse one, nested directories.
src="$T/src"
mkdir -p "$src/etc" "$src/var/lib/data"
echo "e2e-$RANDOM" >"$src/etc/hostname"
head -c 1M /dev/urandom >"$src/var/lib/data/one.bin"
head -c 7777777 /dev/urandom >"$src/var/lib/data/odd.bin"
head -c 123 /dev/urandom >"$src/small.bin"
truncate -s 5M "$src/sparse.bin"
head -c 4096 /dev/urandom | dd of="$src/sparse.bin" bs=4096 seek=600 conv=notrunc status=none
(cd "$src" && find . -type f -print0 | sort -z | xargs -0 sha256sum) >"$T/sums"

declare -A mib=([ext4]=64 [xfs]=320) # mkfs.xfs wants at least 300 MiB
declare -A id
for fs in ext4 xfs; do
  e2e_make_gpt_disk "$T/$fs.raw" "${mib[$fs]}" "$fs" "$src"
  qemu-img convert -f raw -O qcow2 "$T/$fs.raw" "$T/$fs.qcow2"
  id[$fs]="$("$IMGFS" image import "$T/$fs.qcow2" --name "e2e-$fs")"
  [[ "${id[$fs]}" =~ ^[0-9a-f]{32}$ ]] || fail "import of $fs.qcow2 printed '${id[$fs]}'"
  "$IMGFS" disk create "vm-$fs/disk" --image "e2e-$fs" >/dev/null
done

M="$T/mnt"
e2e_mount "$M"
for fs in ext4 xfs; do
  D="$M/vm-$fs/disk"
  size0=$((mib[$fs] << 20))
  [[ "$(stat -c %s "$D")" -eq "$size0" ]] || fail "$fs: the disk is $(stat -c %s "$D") bytes, not $size0"
  cmp "$T/$fs.raw" "$D" || fail "$fs: the new disk differs from its image"

  # nova's resize: the disk file grows by 1 GiB.
  truncate -s +1G "$D"
  size=$((size0 + GiB))
  [[ "$(stat -c %s "$D")" -eq "$size" ]] || fail "$fs: truncate +1G gave $(stat -c %s "$D") bytes"

  # cloud-init's growpart, on the disk file: the partition takes the new
  # space and the GPT backup header moves to the new end.
  out="$(growpart "$D" 1 2>&1)" || fail "$fs: growpart failed: $out"
  [[ "$out" == CHANGED:* ]] || fail "$fs: growpart did not change the partition: $out"
  v="$(sgdisk -v "$D" 2>&1)" || fail "$fs: sgdisk -v failed: $v"
  [[ "$v" == *"No problems found"* ]] || fail "$fs: sgdisk -v after growpart: $v"
  e2e_part "$D"
  [[ "$LAST_USABLE" -eq $((size / 512 - 34)) ]] ||
    fail "$fs: the GPT ends at sector $LAST_USABLE, not at the disk's end ($((size / 512 - 34)))"
  # growpart may round the end down to its alignment; less than 1 MiB is left.
  ((PART_LAST <= LAST_USABLE && LAST_USABLE - PART_LAST < 2048)) ||
    fail "$fs: partition ends at $PART_LAST, the disk's last usable sector is $LAST_USABLE"

  # The partition alone through a loop device over the disk file; grow the fs.
  e2e_loop "$D" "$PART_START" "$PART_LEN"
  dev="$LOOP"
  [[ "$(blockdev --getsize64 "$dev")" -eq "$PART_LEN" ]] || fail "$fs: loop device has the wrong size"
  fsm="$T/fs-$fs"
  case "$fs" in
    ext4)
      out="$(resize2fs "$dev" 2>&1)" || fail "resize2fs failed: $out"
      out="$(e2fsck -fn "$dev" 2>&1)" || fail "e2fsck -fn after resize2fs: $out"
      bs="$(dumpe2fs -h "$dev" 2>/dev/null | awk -F: '/^Block size/ { print $2 + 0 }')"
      blocks="$(dumpe2fs -h "$dev" 2>/dev/null | awk -F: '/^Block count/ { print $2 + 0 }')"
      e2e_fs_mount "$dev" "$fsm" -o ro
      ;;
    xfs)
      e2e_fs_mount "$dev" "$fsm"
      out="$(xfs_growfs "$fsm" 2>&1)" || fail "xfs_growfs failed: $out"
      data="$(xfs_info "$fsm" | grep '^data')"
      bs="$(sed -n 's/.*bsize=\([0-9]*\).*/\1/p' <<<"$data")"
      blocks="$(sed -n 's/.*blocks=\([0-9]*\).*/\1/p' <<<"$data")"
      ;;
  esac
  fs_bytes=$((bs * blocks))
  # resize2fs leaves out a last block group too small to hold its metadata.
  ((fs_bytes <= PART_LEN && PART_LEN - fs_bytes < (1 << 20))) ||
    fail "$fs: the filesystem has $fs_bytes bytes, the partition $PART_LEN"
  ((fs_bytes > size0)) || fail "$fs: the filesystem did not grow ($fs_bytes bytes)"
  out="$(cd "$fsm" && sha256sum --strict -c "$T/sums" 2>&1)" || fail "$fs: checksums after growing: $out"
  e2e_fs_umount "$fsm"
  if [[ "$fs" == xfs ]]; then
    out="$(xfs_repair -n "$dev" 2>&1)" || fail "xfs_repair -n after xfs_growfs: $out"
  fi
  e2e_unloop "$dev"
done

# Detached and remounted: the grown disks are still whole (they are durable
# in the backend, not in the mount's memory).
unmount_imgfs "$M" "$MOUNT_PID"
e2e_mount "$M"
for fs in ext4 xfs; do
  D="$M/vm-$fs/disk"
  [[ "$(stat -c %s "$D")" -eq $(((mib[$fs] << 20) + GiB)) ]] || fail "$fs: size after remount"
  v="$(sgdisk -v "$D" 2>&1)" && [[ "$v" == *"No problems found"* ]] || fail "$fs: sgdisk -v after remount: $v"
  e2e_part "$D"
  e2e_loop "$D" "$PART_START" "$PART_LEN"
  dev="$LOOP"
  if [[ "$fs" == ext4 ]]; then
    out="$(e2fsck -fn "$dev" 2>&1)" || fail "e2fsck -fn after remount: $out"
  else
    out="$(xfs_repair -n "$dev" 2>&1)" || fail "xfs_repair -n after remount: $out"
  fi
  e2e_fs_mount "$dev" "$T/fs-$fs" -o ro
  out="$(cd "$T/fs-$fs" && sha256sum --strict -c "$T/sums" 2>&1)" || fail "$fs: checksums after remount: $out"
  e2e_fs_umount "$T/fs-$fs"
  e2e_unloop "$dev"

  # The base image is unchanged: same id, every chunk re-hashed, same bytes.
  "$IMGFS" image verify "${id[$fs]}" >/dev/null || fail "$fs: image verify ${id[$fs]} failed"
  [[ "$("$IMGFS" --json image info "e2e-$fs" | jq -r .id)" == "${id[$fs]}" ]] ||
    fail "$fs: the name e2e-$fs no longer points at ${id[$fs]}"
  cmp "$T/$fs.raw" "$M/_base/${id[$fs]}" || fail "$fs: _base/${id[$fs]} differs from the original image"
done
echo "e2e_flow (${IMGFS_TEST_DISKS:-local}): ok"
