# A running guest's own I/O on a mount file, on the disk backend that
# IMGFS_TEST_DISKS names (local or rbd). One boot of the test guest
# (tools/guest/) from the ext4 cloud image, grown by 1 GiB before the boot as
# in guest_seed.sh; its first-boot script then:
#   grow      growpart + resize2fs at boot (the seed's flow);
#   write     64 MiB from /dev/urandom into /data.bin with fsync and sync,
#             then drops its page cache and reads the file back from the disk
#             (the checksums must match);
#   pastend   a write of the sector past the disk's end and a discard past
#             it fail in the guest (bad input), and the disk does not grow;
#   junk      writes 64 MiB more into /junk.bin, syncs and removes it;
#   waitgrow  reports "waiting" and waits for the disk to grow: the host reads
#             the disk's allocated bytes (imgfs disk info --json: owned_bytes),
#             then sends QMP block_resize (what virsh blockresize sends) for
#             +256 MiB; the guest sees the new capacity and grows its mounted
#             ext4 online (growpart + resize2fs);
#   trim      fstrim: the discards free the junk's chunks: the disk's
#             allocated bytes (local: owned_bytes; rbd: rbd du --exact, see
#             used() below) drop by at least 48 of its 64 MiB;
#   fsck      unmount, e2fsck -fn clean.
# After the power-off the host reads /data.bin through the mount (a read-only
# loop mount of the partition) and finds the guest's checksum, and again after
# the store is unmounted and mounted again.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/e2e_lib.sh"
source "$(dirname "$0")/guest_lib.sh"
e2e_need jq fusermount3 sgdisk sha256sum python3
guest_build

init_store
guest_disk
size0="$(stat -c %s "$D")"
truncate -s +1G "$D"
size1=$((size0 + (1 << 30)))
size2=$((size1 + (256 << 20)))
owned() { "$IMGFS" --json disk info vm1/disk | jq -r .owned_bytes; }
# The bytes the disk holds in its backend. Local disks: owned_bytes. rbd
# disks: `rbd du --exact`; owned_bytes (like plain `rbd du`) counts whole RADOS
# objects, and a discard inside the clone's parent overlap leaves a zero-length
# object (it must hide the parent's bytes) that still counts as 4 MiB.
used() {
  if [[ "${IMGFS_TEST_DISKS:-}" == rbd ]]; then
    rbdc du --exact --format json "$RBD_NS/vm1_disk" | jq -r '.images[0].used_size'
  else
    owned
  fi
}

guest_start online "$D" grow,write,pastend,junk,waitgrow,trim,fsck
guest_wait_for online waiting
[[ "$(guest_get online waiting)" -eq "$size1" ]] || fail "the guest waits at $(guest_get online waiting) bytes, not $size1"
guest_check_grown online "$size1" "$size0" # the boot's growth
[[ "$(guest_get online pastend_bytes)" -eq "$size1" ]] || fail "pastend: the guest saw $(guest_get online pastend_bytes) bytes"
[[ "$(guest_get online pastend_write)" == error ]] || fail "a write past the disk's end succeeded in the guest"
[[ "$(guest_get online pastend_discard)" == error ]] || fail "a discard past the disk's end succeeded in the guest"
[[ "$(guest_get online pastend_after)" -eq "$size1" && "$(stat -c %s "$D")" -eq "$size1" ]] ||
  fail "after the writes past the end the guest sees $(guest_get online pastend_after) bytes, the mount $(stat -c %s "$D")"
owned1="$(owned)"
used1="$(used)"
e2e_qmp "$T/online.qmp" block_resize "{\"device\": \"disk0\", \"size\": $size2}" >/dev/null
[[ "$(stat -c %s "$D")" -eq "$size2" ]] || fail "after block_resize the mount shows $(stat -c %s "$D") bytes"
guest_wait online
owned2="$(owned)"
used2="$(used)"
trimmed="$(guest_get online trimmed_bytes)"
echo "before fstrim: owned_bytes $owned1, used $used1; after: $owned2, $used2; the guest trimmed $trimmed bytes"

[[ "$(guest_get online grown_bytes)" -eq "$size2" ]] || fail "the guest saw the disk grow to $(guest_get online grown_bytes), not $size2"
guest_check_grown online "$size2" "$size1" # the online growth
[[ "$(guest_get online fsck)" == ok ]] || fail "fsck in the guest: $(guest_get online fsck)"
sum="$(guest_get online write_sha256)"
[[ "$sum" =~ ^[0-9a-f]{64}$ ]] || fail "write_sha256: $sum"
[[ "$(guest_get online verify_sha256)" == "$sum" ]] ||
  fail "the guest read back $(guest_get online verify_sha256), wrote $sum"
((trimmed > (64 << 20))) || fail "the guest's fstrim trimmed only $trimmed bytes"
((used1 - used2 >= (48 << 20))) ||
  fail "fstrim freed $((used1 - used2)) bytes of the disk ($used1 -> $used2), not the junk's 64 MiB"
((owned2 <= owned1)) || fail "owned_bytes grew from $owned1 to $owned2 through fstrim"

# The host reads the guest's file through the mount, also after a remount.
check_host() {
  local v
  v="$(sgdisk -v "$D" 2>&1)" && [[ "$v" == *"No problems found"* ]] || fail "sgdisk -v on the host: $v"
  e2e_part "$D"
  e2e_loop "$D" "$PART_START" "$PART_LEN"
  e2e_fs_mount "$LOOP" "$T/fs" -o ro
  v="$(sha256sum "$T/fs/data.bin" | cut -d' ' -f1)"
  [[ "$v" == "$sum" ]] || fail "$1: the host reads data.bin as $v, the guest wrote $sum"
  [[ ! -e "$T/fs/junk.bin" ]] || fail "$1: junk.bin is still there"
  e2e_fs_umount "$T/fs"
  e2e_unloop "$LOOP"
}
check_host "after the power-off"
unmount_imgfs "$M" "$MOUNT_PID"
e2e_mount "$M"
[[ "$(stat -c %s "$D")" -eq "$size2" ]] || fail "after the remount the disk is $(stat -c %s "$D") bytes"
check_host "after the remount"
echo "guest_online (${IMGFS_TEST_DISKS:-local}): ok"
