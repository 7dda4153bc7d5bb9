# A backend fault reaches the guest (rbd disks): the cluster stops answering
# while the guest flushes. This test starts a Ceph cluster of its own
# (tools/ceph-cluster.sh, stopped at exit) because it pauses the OSD, which
# would stall the other tests' shared cluster; the store's Ceph timeout is
# 5 s (imgfs init --ceph-timeout). The guest (first-boot step flushfault,
# tools/guest/firstboot) unmounts its root, writes 4 KiB into its disk's page
# cache and waits;
# the host stops the OSD (SIGSTOP) and grows a second, local signal disk
# (QMP block_resize) to tell the guest; the guest's fdatasync of /dev/vda
# sends the write and the flush to the mount, whose rbd requests time out:
# the guest's fdatasync fails. The host resumes the OSD and signals again;
# the same write with fsync then succeeds, e2fsck in the guest is clean, the
# guest powers off, and the host reads the disk's partition table.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/e2e_lib.sh"
source "$(dirname "$0")/guest_lib.sh"
e2e_need jq fusermount3 sgdisk python3
[[ "${IMGFS_TEST_DISKS:-}" == rbd ]] || fail "guest_flush runs on rbd disks only (its @rbd entry)"
guest_build

IMGFS_CEPH_MEMSTORE_BYTES=$((512 << 20)) eval "$("${IMGFS_SRC:-$(dirname "$0")/../..}/tools/ceph-cluster.sh" start "$T/ceph")" ||
  fail "could not start a Ceph cluster"
on_exit "'${IMGFS_SRC:-$(dirname "$0")/../..}/tools/ceph-cluster.sh' stop '$T/ceph'"
osd_pid="$(awk '$1 ~ /^osd\./ { print $2; exit }' "$T/ceph/pids")"
[[ -n "$osd_pid" ]] || fail "no OSD pid in $T/ceph/pids"
# Runs before the cluster's stop (cleanups run in reverse): a stopped OSD
# would not see its SIGTERM.
on_exit "kill -CONT $osd_pid 2>/dev/null"

IMGFS_TEST_INIT_ARGS="--ceph-timeout 5" init_store
guest_disk
truncate -s +1G "$D"
truncate -s 1M "$T/signal.img"

guest_start flush "$D" flushfault,fsck \
  -drive "file=$T/signal.img,format=raw,if=virtio,id=signal"
signal() { e2e_qmp "$T/flush.qmp" block_resize "{\"device\": \"signal\", \"size\": $1}" >/dev/null; }
guest_wait_for flush flush_ready
kill -STOP "$osd_pid"
signal $((2 << 20))
guest_wait_for flush flush_waiting
kill -CONT "$osd_pid"
signal $((3 << 20))
guest_wait flush
[[ "$(guest_get flush flush_paused)" == error ]] ||
  fail "the guest's fdatasync succeeded while the cluster was stopped: $(guest_get flush flush_paused)"
[[ "$(guest_get flush flush_resumed)" == ok ]] ||
  fail "the guest's write and fsync after the cluster resumed: $(guest_get flush flush_resumed)"
[[ "$(guest_get flush fsck)" == ok ]] || fail "fsck in the guest: $(guest_get flush fsck)"
# The host reads the disk through the mount again: partition 1 is where it was
# (the GPT's backup header is still at the old end: nothing grew it).
e2e_part "$D"
[[ "$PART_START" -eq $((2048 * 512)) ]] || fail "partition 1 starts at byte $PART_START"
echo "guest_flush (rbd): ok"
