# A disk's size changed by another client while a mount has the disk open
# shows through that mount at once, not after the kernel's attr_timeout: the
# disk's header watch makes the mount drop the attributes the kernel keeps
# (docs/rbd.md, "Size"). Sizes are read as qemu reads them, with fstat(2) of
# an open descriptor (no lookup, which would fetch fresh attributes), and
# both mounts keep attributes and names for an hour: a size that only the
# timeout would bring never comes in the test's time.
# Needs the test cluster (tools/test.sh starts it).
source "$(dirname "$0")/lib.sh"
: "${IMGFS_CEPH_CONF:?the test runner (tools/test.sh) provides a Ceph cluster}"
make_rbd_namespace
P="$RBD_NS"
"$IMGFS" init --disks "rbd:$P" "${CEPH_ARGS_IMGFS[@]}" >/dev/null
"$IMGFS" disk create i1/disk --blank --size 64M >/dev/null
S2="$T/store2"
IMGFS_STORE="$S2" "$IMGFS" init --disks "rbd:$P" "${CEPH_ARGS_IMGFS[@]}" >/dev/null

M="$T/mnt"
mount_imgfs "$M" -o attr_timeout=3600,entry_timeout=3600
m_pid="$MOUNT_PID"
M2="$T/mnt2"
IMGFS_STORE="$S2" mount_imgfs "$M2" -o attr_timeout=3600,entry_timeout=3600
m2_pid="$MOUNT_PID"

# fsize FD: the size fstat(2) of descriptor FD (of this shell) shows.
fsize() { python3 -c 'import os, sys; print(os.fstat(int(sys.argv[1])).st_size)' "$1"; }
# wait_size FD BYTES WHAT: fstat(2) of FD shows BYTES within 20 s.
wait_size() {
  local i got
  for ((i = 0; i < 200; i++)); do
    got="$(fsize "$1")"
    [[ "$got" -eq "$2" ]] && return 0
    sleep 0.1
  done
  fail "$3: fstat shows $got bytes, not $2, 20 s later"
}

# The mount holds the disk's lock (open for writing, one block written);
# the kernel has its size.
exec 3<>"$M/i1/disk"
dd if=/dev/zero bs=4k count=1 conv=notrunc status=none >&3
[[ "$(fsize 3)" -eq $((64 << 20)) ]] || fail "size before"

# 1. The rbd tool grows it: librbd hands the resize to the lock's owner,
#    this mount, whose header watch sees it.
rbdc resize --size 96M "$P/i1_disk" >/dev/null 2>&1 || fail "rbd resize"
wait_size 3 $((96 << 20)) "after rbd resize, the owner's mount"

# 2. Another host has the disk open for writing in standby (a migration's
#    destination) and the owner grows it through its own mount: the
#    destination's stat shows the new size.
exec 4<>"$M2/i1/disk"
[[ "$(fsize 4)" -eq $((96 << 20)) ]] || fail "host 2's size before"
truncate -s 128M "$M/i1/disk"
wait_size 4 $((128 << 20)) "after a grow through host 1's mount, host 2's mount"
[[ "$(fsize 3)" -eq $((128 << 20)) ]] || fail "host 1's own size"
[[ "$(rbdc info --format json "$P/i1_disk" | jq .size)" -eq $((128 << 20)) ]] ||
  fail "rbd does not show the grow"

# Nothing of the data moved: the block written first still reads as zeros,
# the grown range too, and both hosts read the same bytes.
cmp -s -n $((128 << 20)) /dev/zero "$M2/i1/disk" || fail "host 2 reads other bytes"
exec 3>&- 4>&-
unmount_imgfs "$M2" "$m2_pid"
unmount_imgfs "$M" "$m_pid"
echo "rbd_size: ok"
