# Live migration of a running qemu between two hosts on an rbd disk
# (docs/rbd.md, "Live migration"): two stores on one RBD namespace, each with
# its own mount ("two hosts"), qemu-system-x86_64 on each, driven with QMP as
# libvirt does (-incoming defer, migrate-incoming, migrate, cont, quit of the
# source). Checks:
#   - the destination opens the disk while the source runs (standby) and, once
#     qemu hands over, its writes land in the RBD image (rbd export);
#   - after the hand-over a write through the source host's mount fails with
#     EBUSY and never reaches the image;
#   - 6 hops (the first and 5 ping-pongs), each with a write of random bytes on
#     the new host and a write on the old host after the new one had opened the
#     disk (read back on the new host: nothing stale is served, not even from
#     the local parent reads), all compared byte for byte at the end;
#   - a migration whose destination is killed midway: the source goes on
#     running and writing;
#   - a disk grown (block_resize) on the source during a migration has the
#     new size on the destination (query-block, stat through the mount) and
#     takes writes there.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/e2e_lib.sh"
source "$(dirname "$0")/migrate_lib.sh"
e2e_need qemu-system-x86_64 qemu-img python3 jq fusermount3 rbd
: "${IMGFS_CEPH_CONF:?the test runner (tools/test.sh) provides a Ceph cluster}"
make_rbd_namespace
P="$RBD_NS"
MiB=$((1 << 20))

# Two hosts: the same image in each store (dir chunks: the clone's parent
# bytes are read from the local store while the lock is held).
S1="$STORE"
S2="$T/store2"
"$IMGFS" init --disks "rbd:$P" "${CEPH_ARGS_IMGFS[@]}" >/dev/null
IMGFS_STORE="$S2" "$IMGFS" init --disks "rbd:$P" "${CEPH_ARGS_IMGFS[@]}" >/dev/null
head -c 64M /dev/urandom >"$T/src.raw"
"$IMGFS" image import "$T/src.raw" --name mig >/dev/null
IMGFS_STORE="$S2" "$IMGFS" image import "$T/src.raw" --name mig >/dev/null
"$IMGFS" disk create vm/disk --image mig >/dev/null
cp "$T/src.raw" "$T/expected.raw"

M1="$T/m1"
M2="$T/m2"
IMGFS_STORE="$S1" mount_imgfs "$M1"
IMGFS_STORE="$S2" mount_imgfs "$M2"
disk_on() { if (($1 == 1)); then echo "$M1/vm/disk"; else echo "$M2/vm/disk"; fi; }

# expect FILE OFFSET: records that FILE's bytes are at OFFSET of the disk.
expect() {
  dd if="$1" of="$T/expected.raw" bs=64K seek="$2" oflag=seek_bytes conv=notrunc status=none
}
# rbd_bytes OFFSET LEN: the disk's bytes read from RBD itself.
rbd_export() { rm -f "$T/export.raw"; rbdc export --no-progress "$P/vm_disk" "$T/export.raw" >/dev/null; }
region_sum() { dd if="$1" bs=64K skip="$2" count="$3" iflag=skip_bytes,count_bytes status=none | sha256sum; }

mig_qemu q0 "$(disk_on 1)" || fail "qemu on host 1: $(cat "$T/q0.err")"
pids=("$QEMU_PID")
e2e_qmp "$T/q0.qmp" cont >/dev/null
head -c 1M /dev/urandom >"$T/w0"
mig_io q0 "write -s $T/w0 0 1M" >/dev/null || fail "write on host 1"
expect "$T/w0" 0

cur=1
for i in 1 2 3 4 5 6; do
  dst=$((3 - cur))
  prev="q$((i - 1))"
  # The destination opens the disk for writing while the source runs.
  mig_qemu "q$i" "$(disk_on "$dst")" -incoming defer ||
    fail "hop $i: the destination qemu did not start: $(cat "$T/q$i.err")"
  pids+=("$QEMU_PID")
  # The source writes after that open (object 8+i): the destination must
  # see these bytes, not its parent's and not what it read at open.
  late=$(((8 + i) * 4 * MiB + 12345))
  mig_io "$prev" "write -P $((0x40 + i)) $late 512K" >/dev/null || fail "hop $i: late write on the source"
  python3 -c "import sys; sys.stdout.buffer.write(bytes([0x40 + $i]) * 524288)" >"$T/late$i"
  expect "$T/late$i" "$late"

  mig_migrate "$prev" "q$i"
  [[ "$(mig_status "$prev")" == postmigrate ]] || fail "hop $i: source is $(mig_status "$prev")"
  e2e_qmp "$T/q$i.qmp" cont >/dev/null
  [[ "$(mig_status "q$i")" == running ]] || fail "hop $i: destination is $(mig_status "q$i")"

  # A checksummed write on the new host (object i, not aligned), then the
  # source's late bytes read back there.
  head -c 1M /dev/urandom >"$T/w$i"
  off=$((i * 4 * MiB + 4096))
  mig_io "q$i" "write -s $T/w$i $off 1M" >/dev/null || fail "hop $i: write on the destination"
  expect "$T/w$i" "$off"
  mig_io "q$i" "read -P $((0x40 + i)) $late 512K" >/dev/null ||
    fail "hop $i: the destination does not read the source's last write"

  if ((i == 1)); then
    # The write landed in the RBD image.
    rbd_export
    [[ "$(region_sum "$T/export.raw" "$off" $MiB)" == "$(region_sum "$T/w1" 0 $MiB)" ]] ||
      fail "the destination's write is not in rbd:$P/vm_disk"
    # The source host's mount cannot write any more: EBUSY, and nothing of it
    # reaches the image.
    head -c 64K /dev/urandom >"$T/stale"
    expect_errno "a write through the source host's mount after the hand-over" \
      "Device or resource busy" \
      dd if="$T/stale" of="$(disk_on "$cur")" bs=64K seek=$((40 * 16)) conv=notrunc,fsync status=none
    rbd_export
    [[ "$(region_sum "$T/export.raw" $((40 * MiB)) 65536)" == "$(region_sum "$T/src.raw" $((40 * MiB)) 65536)" ]] ||
      fail "the source host's refused write reached the image"
  fi
  # The source quits (libvirt's Confirm step).
  mig_quit "$prev" "${pids[i - 1]}"
  cur=$dst
done

# Everything written on either host, in every hop, is in the image and reads
# the same through the mount of the host that runs the VM now.
rbd_export
cmp "$T/export.raw" "$T/expected.raw" || fail "rbd:$P/vm_disk differs from the writes of the 6 hops"
cmp "$(disk_on "$cur")" "$T/expected.raw" || fail "host $cur's mount differs from the writes of the 6 hops"
for i in 0 1 2 3 4 5 6; do
  off=$((i * 4 * MiB + (i > 0 ? 4096 : 0)))
  [[ "$(region_sum "$T/export.raw" "$off" $MiB)" == "$(region_sum "$T/w$i" 0 $MiB)" ]] ||
    fail "checksum of the write of hop $i"
done
last=q6
last_pid="${pids[6]}"

# A migration that fails (the destination is killed midway): the source goes
# on running and writing.
e2e_qmp "$T/$last.qmp" migrate-set-parameters '{"max-bandwidth": 131072}' >/dev/null
mig_qemu qf "$(disk_on $((3 - cur)))" -incoming defer || fail "qemu qf: $(cat "$T/qf.err")"
qf_pid="$QEMU_PID"
port="$(mig_free_port)"
e2e_qmp "$T/qf.qmp" migrate-incoming "{\"uri\": \"tcp:127.0.0.1:$port\"}" >/dev/null
e2e_qmp "$T/$last.qmp" migrate "{\"uri\": \"tcp:127.0.0.1:$port\"}" >/dev/null
until [[ "$(e2e_qmp "$T/$last.qmp" query-migrate | jq -r '.ram.transferred // 0')" -gt 0 ]]; do sleep 0.1; done
kill -KILL "$qf_pid"
tail --pid="$qf_pid" -f /dev/null
[[ "$(mig_wait "$last")" == failed ]] || fail "the migration to a killed destination did not fail"
[[ "$(mig_status "$last")" == running ]] || fail "the source is $(mig_status "$last") after a failed migration"
mig_io "$last" "write -P 0x77 $((50 * MiB)) 1M" >/dev/null || fail "the source cannot write after a failed migration"
python3 -c "import sys; sys.stdout.buffer.write(b'\x77' * 1048576)" >"$T/w77"
expect "$T/w77" $((50 * MiB))
rbd_export
cmp "$T/export.raw" "$T/expected.raw" || fail "the image after the failed migration"

# A disk grown on the source during a migration has its new size on the
# destination. The migration is held back (8 KiB/s: a paused guest's RAM,
# mostly zero pages, then takes many seconds) until the resize is done.
e2e_qmp "$T/$last.qmp" migrate-set-parameters '{"max-bandwidth": 8192}' >/dev/null
dst=$((3 - cur))
mig_qemu qg "$(disk_on "$dst")" -incoming defer || fail "qemu qg: $(cat "$T/qg.err")"
port="$(mig_free_port)"
e2e_qmp "$T/qg.qmp" migrate-incoming "{\"uri\": \"tcp:127.0.0.1:$port\"}" >/dev/null
e2e_qmp "$T/$last.qmp" migrate "{\"uri\": \"tcp:127.0.0.1:$port\"}" >/dev/null
e2e_qmp "$T/$last.qmp" block_resize '{"device": "disk0", "size": 100663296}' >/dev/null
[[ "$(e2e_qmp "$T/$last.qmp" query-migrate | jq -r .status)" == active ]] ||
  fail "the resize did not happen during the migration"
# The destination's mount learns the new size from the header watch, which
# comes asynchronously (the mount then drops the kernel's attributes): the
# hand-over waits until a stat through the destination's mount shows it
# (docs/rbd.md, "Size"; bounded: a size that never comes fails the test).
for ((i = 0; i < 300; i++)); do
  seen="$(stat -c %s "$(disk_on "$dst")")"
  ((seen == 96 * MiB)) && break
  sleep 0.1
done
((seen == 96 * MiB)) || fail "the destination's mount still shows $seen bytes after the resize"
e2e_qmp "$T/$last.qmp" migrate-set-parameters '{"max-bandwidth": 1073741824}' >/dev/null
[[ "$(mig_wait "$last")" == completed ]] || fail "the migration after the resize did not complete"
while [[ "$(mig_status qg)" == inmigrate ]]; do sleep 0.05; done
e2e_qmp "$T/qg.qmp" cont >/dev/null
size="$(e2e_qmp "$T/qg.qmp" query-block | jq -r '.[] | select(.device == "disk0") | .inserted.image."virtual-size"')"
((size == 96 * MiB)) || fail "the destination's qemu sees $size bytes, not 96 MiB"
[[ "$(stat -c %s "$(disk_on "$dst")")" -eq $((96 * MiB)) ]] ||
  fail "the destination's mount shows $(stat -c %s "$(disk_on "$dst")") bytes"
mig_io qg "write -P 0x99 $((95 * MiB)) 1M" >/dev/null || fail "a write to the grown part on the destination"
mig_io qg "read -P 0x77 $((50 * MiB)) 1M" >/dev/null || fail "the destination after the resize"
mig_quit "$last" "$last_pid"
rbd_export
[[ "$(stat -c %s "$T/export.raw")" -eq $((96 * MiB)) ]] || fail "the image is not 96 MiB"
[[ "$(region_sum "$T/export.raw" $((95 * MiB)) $MiB)" == "$(python3 -c "import sys; sys.stdout.buffer.write(b'\x99' * 1048576)" | sha256sum)" ]] ||
  fail "the write to the grown part is not in the image"
echo "migrate_rbd: ok"
