# Two qemus on two hosts run the same rbd disk with no migration under way:
# the disk cannot be corrupted (docs/rbd.md, "Live migration", "A second
# writer"). Two stores on one pool namespace with a shared RADOS chunk store
# (--chunks rados:POOL/NS --disks rbd:POOL/NS), each with its own mount, one
# qemu on each, both running.
#   - host 2's qemu starts (its disk opens in standby) and reads what host 1's
#     qemu writes, also later writes (its reads go to the cluster);
#   - each of host 2's writes fails (EBUSY, after the hand-over wait) and
#     nothing of it reaches the image; a plain writer through host 2's mount
#     fails the same way;
#   - host 1's qemu goes on writing;
#   - once host 1's qemu has quit (its writer closed the disk), host 2's qemu
#     may write: the disk has one writer again.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/e2e_lib.sh"
source "$(dirname "$0")/migrate_lib.sh"
e2e_need qemu-system-x86_64 python3 jq fusermount3 rbd
: "${IMGFS_CEPH_CONF:?the test runner (tools/test.sh) provides a Ceph cluster}"
make_rbd_namespace
P="$RBD_NS"
MiB=$((1 << 20))
chunks="rados:$IMGFS_CEPH_CHUNK_POOL/${P#*/}"
on_exit "rados -c '$IMGFS_CEPH_CONF' --id '$IMGFS_CEPH_ID' --keyring '$IMGFS_CEPH_KEYRING' \
  -p '$IMGFS_CEPH_CHUNK_POOL' -N '${P#*/}' ls 2>/dev/null | while read -r o; do \
  rados -c '$IMGFS_CEPH_CONF' --id '$IMGFS_CEPH_ID' --keyring '$IMGFS_CEPH_KEYRING' \
  -p '$IMGFS_CEPH_CHUNK_POOL' -N '${P#*/}' rm \"\$o\"; done"

S2="$T/store2"
"$IMGFS" init --chunks "$chunks" --disks "rbd:$P" "${CEPH_ARGS_IMGFS[@]}" >/dev/null
IMGFS_STORE="$S2" "$IMGFS" init --chunks "$chunks" --disks "rbd:$P" "${CEPH_ARGS_IMGFS[@]}" >/dev/null
head -c 4M /dev/urandom >"$T/src.raw"
"$IMGFS" image import "$T/src.raw" --name two >/dev/null
"$IMGFS" disk create vm/disk --image two >/dev/null
M1="$T/m1"
M2="$T/m2"
IMGFS_STORE="$STORE" mount_imgfs "$M1"
IMGFS_STORE="$S2" mount_imgfs "$M2"

mig_qemu a "$M1/vm/disk" || fail "qemu a: $(cat "$T/a.err")"
a_pid="$QEMU_PID"
e2e_qmp "$T/a.qmp" cont >/dev/null
mig_io a "write -P 0xa1 0 1M" >/dev/null || fail "host 1's first write"

# Host 2's qemu starts (no migration) and runs: qemu's image locking cannot
# see host 1's locks (they are local to each mount), imgfs opens it in standby.
mig_qemu b "$M2/vm/disk" || fail "qemu b did not start: $(cat "$T/b.err")"
b_pid="$QEMU_PID"
e2e_qmp "$T/b.qmp" cont >/dev/null
[[ "$(mig_status b)" == running ]] || fail "qemu b is $(mig_status b)"
mig_io b "read -P 0xa1 0 1M" >/dev/null || fail "host 2 does not read host 1's write"

# Host 2's writes fail; host 1's go on.
if out="$(mig_io b "write -P 0xb2 $MiB 1M" 2>&1)"; then fail "host 2's qemu wrote while host 1's runs: $out"; fi
[[ "$out" == *"Device or resource busy"* ]] || fail "host 2's write failed for another reason: $out"
if out="$(mig_io b "write -z 0 4096" 2>&1)"; then fail "host 2's qemu zeroed while host 1's runs"; fi
expect_errno "a plain writer on host 2" "Device or resource busy" \
  dd if=/dev/zero of="$M2/vm/disk" bs=64K count=1 seek=48 conv=notrunc,fsync status=none
mig_io a "write -P 0xa3 $((2 * MiB)) 1M" >/dev/null || fail "host 1's write after host 2's attempts"
mig_io b "read -P 0xa3 $((2 * MiB)) 1M" >/dev/null || fail "host 2 does not read host 1's later write"
mig_io a "read -P 0xa1 0 4096" >/dev/null || fail "host 1 reads host 2's zeroes"

# The image holds host 1's writes and the parent's bytes, nothing of host 2.
rbdc export --no-progress "$P/vm_disk" "$T/export.raw" >/dev/null
python3 - "$T/export.raw" "$T/src.raw" <<'EOF' || fail "the image is not host 1's writes over the parent"
import sys
got = open(sys.argv[1], "rb").read()
want = bytearray(open(sys.argv[2], "rb").read())
M = 1 << 20
want[0:M] = b"\xa1" * M
want[2 * M:3 * M] = b"\xa3" * M
sys.exit(0 if got == want else 1)
EOF

# Once host 1's qemu has quit, its mount lets the lock go, and host 2's qemu
# is the one writer.
mig_quit a "$a_pid"
mig_io b "write -P 0xb4 $((3 * MiB)) 1M" >/dev/null || fail "host 2 cannot write after host 1's qemu quit"
mig_quit b "$b_pid"
rbdc export --no-progress "$P/vm_disk" "$T/export2.raw" >/dev/null
cmp -s -n $MiB -i $((3 * MiB)):0 "$T/export2.raw" <(python3 -c "import sys; sys.stdout.buffer.write(b'\xb4' * 1048576)") ||
  fail "host 2's write after host 1 quit is not in the image"
echo "migrate_two_writers: ok"
