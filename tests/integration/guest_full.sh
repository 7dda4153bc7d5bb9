# A write error reaches qemu as qemu expects it: the store's file system
# fills up under a running guest (local disks). The store lives on a small
# ext4 file system (a loop device over a file) with a filler file, so that the
# guest's first 64 MiB fit and its second 64 MiB do not. The mount answers the
# write that finds no space with ENOSPC, and qemu, with its default
# werror=enospc policy (what thin-provisioned hypervisor storage relies on),
# pauses the guest with the disk's io-status "nospace" instead of failing the
# guest's write. The host frees space (removes the filler) and QMP cont
# resumes the guest: qemu retries the write, and the guest finishes without an
# error, its file reads back with the same sha256 in the guest and on the host,
# and e2fsck is clean.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/e2e_lib.sh"
source "$(dirname "$0")/guest_lib.sh"
e2e_need jq fusermount3 losetup mkfs.ext4 fallocate sha256sum python3
[[ "${IMGFS_TEST_DISKS:-local}" == local ]] || fail "guest_full runs on local disks only"
guest_build

truncate -s 256M "$T/small.img"
mkfs.ext4 -q -F "$T/small.img"
# Mounted by hand, not with e2e_fs_mount: its cleanup must run after the
# imgfs mount (registered later, so stopped earlier) has let go of the store.
small_dev="$(losetup -f --show "$T/small.img")" || fail "losetup on small.img failed"
on_exit "losetup -d '$small_dev'"
mkdir -p "$T/small"
mount "$small_dev" "$T/small" || fail "mount of the small file system failed"
on_exit "umount '$T/small' || umount -l '$T/small'"
export IMGFS_STORE="$T/small/store"
init_store
guest_disk
truncate -s +1G "$D"
# Leave 100 MiB free: the 64 MiB file and the guest's metadata fit, the next
# 64 MiB do not.
avail=$(($(df --output=avail -B1 "$T/small" | tail -1)))
((avail > (100 << 20))) || fail "the small file system has only $avail bytes free"
fallocate -l $((avail - (100 << 20))) "$T/small/filler"

guest_start full "$D" grow,write,junk,fsck
qmp() { e2e_qmp "$T/full.qmp" "$@"; }
until [[ "$(qmp query-status | jq -r .status)" == io-error ]]; do
  kill -0 "$GUEST_PID" 2>/dev/null ||
    fail "the guest ran to its end without the store filling up: $(tail -5 "$T/full.serial")"
  sleep 0.5
done
iostat="$(qmp query-block | jq -r '.[] | select(.device == "disk0") | ."io-status"')"
[[ "$iostat" == nospace ]] || fail "qemu paused the guest with io-status '$iostat', not nospace"
grep -q 'No space left on device' "$T/mount.log" || fail "the mount logged no ENOSPC: $(tail -3 "$T/mount.log")"
echo "the guest is paused on a full store (io-status $iostat); freeing space and resuming"
rm "$T/small/filler"
qmp cont >/dev/null
guest_wait full
[[ "$(guest_get full fsck)" == ok ]] || fail "fsck in the guest: $(guest_get full fsck)"
sum="$(guest_get full write_sha256)"
[[ "$(guest_get full verify_sha256)" == "$sum" ]] ||
  fail "the guest read back $(guest_get full verify_sha256), wrote $sum"
e2e_part "$D"
e2e_loop "$D" "$PART_START" "$PART_LEN"
e2e_fs_mount "$LOOP" "$T/fs" -o ro
v="$(sha256sum "$T/fs/data.bin" | cut -d' ' -f1)"
[[ "$v" == "$sum" ]] || fail "the host reads data.bin as $v, the guest wrote $sum"
echo "guest_full (local): ok"
