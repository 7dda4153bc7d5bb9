# Live migration with storage of a VM on a local disk (docs/operations.md,
# "Live migration"): what `virsh migrate --live --copy-storage-inc` makes
# qemu do, driven with QMP. Two hosts are two local stores with their own
# mounts; the destination disk is made from the same image, of the same size.
# On the destination: -incoming defer, nbd-server-start, block-export-add of
# its disk (writable). On the source: blockdev-add of an nbd node, then
# blockdev-mirror (sync top) onto it, wait until the job is ready, migrate,
# block-job-cancel (the mirror in sync, as libvirt ends it), and cont on the
# destination. Checks: the destination's disk equals the source's byte for
# byte; the bytes that crossed (received by the destination qemu on the NBD
# socket, as the kernel counts them) are what the source file reports as data: the VM's 16 MiB writes
# plus the base's data extents, never the holes (sent as zero requests).
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/e2e_lib.sh"
source "$(dirname "$0")/migrate_lib.sh"
e2e_need qemu-system-x86_64 python3 jq fusermount3
MiB=$((1 << 20))

# A 1 GiB base with 64 MiB of data (16 MiB at 0, 48 MiB at 512 MiB), the
# rest holes, as a cloud image: the same image in both stores.
truncate -s 1G "$T/base.raw"
head -c 16M /dev/urandom | dd of="$T/base.raw" bs=1M conv=notrunc status=none
head -c 48M /dev/urandom | dd of="$T/base.raw" bs=1M seek=512 conv=notrunc status=none
S2="$T/store2"
"$IMGFS" init >/dev/null
IMGFS_STORE="$S2" "$IMGFS" init >/dev/null
"$IMGFS" image import "$T/base.raw" --name base >/dev/null
IMGFS_STORE="$S2" "$IMGFS" image import "$T/base.raw" --name base >/dev/null
"$IMGFS" disk create vm/disk --image base >/dev/null
IMGFS_STORE="$S2" "$IMGFS" disk create vm/disk --image base >/dev/null
M1="$T/m1"
M2="$T/m2"
IMGFS_STORE="$STORE" mount_imgfs "$M1"
IMGFS_STORE="$S2" mount_imgfs "$M2"

mig_qemu src "$M1/vm/disk" || fail "source qemu: $(cat "$T/src.err")"
src_pid="$QEMU_PID"
e2e_qmp "$T/src.qmp" cont >/dev/null
# The VM writes 16 MiB: 8 MiB over base data, 8 MiB over a hole.
head -c 8M /dev/urandom >"$T/w1"
head -c 8M /dev/urandom >"$T/w2"
mig_io src "write -s $T/w1 $((4 * MiB)) 8M" >/dev/null || fail "write 1"
mig_io src "write -s $T/w2 $((300 * MiB)) 8M" >/dev/null || fail "write 2"

mig_qemu dst "$M2/vm/disk" -incoming defer || fail "destination qemu: $(cat "$T/dst.err")"
dst_pid="$QEMU_PID"
src_node="$(e2e_qmp "$T/src.qmp" query-block | jq -r '.[] | select(.device == "disk0") | .inserted."node-name"')"
dst_node="$(e2e_qmp "$T/dst.qmp" query-block | jq -r '.[] | select(.device == "disk0") | .inserted."node-name"')"
nbd_port="$(mig_free_port)"
e2e_qmp "$T/dst.qmp" nbd-server-start \
  "{\"addr\": {\"type\": \"inet\", \"data\": {\"host\": \"127.0.0.1\", \"port\": \"$nbd_port\"}}}" >/dev/null
e2e_qmp "$T/dst.qmp" block-export-add \
  "{\"type\": \"nbd\", \"id\": \"exp0\", \"node-name\": \"$dst_node\", \"name\": \"disk0\", \"writable\": true}" >/dev/null
e2e_qmp "$T/src.qmp" blockdev-add \
  "{\"driver\": \"nbd\", \"node-name\": \"mirror-target\", \"export\": \"disk0\", \"server\": {\"type\": \"inet\", \"host\": \"127.0.0.1\", \"port\": \"$nbd_port\"}}" >/dev/null
e2e_qmp "$T/src.qmp" blockdev-mirror \
  "{\"job-id\": \"mirror0\", \"device\": \"$src_node\", \"target\": \"mirror-target\", \"sync\": \"top\"}" >/dev/null
until [[ "$(e2e_qmp "$T/src.qmp" query-block-jobs | jq -r '.[] | select(.device == "mirror0") | .ready')" == true ]]; do
  sleep 0.2
done
# The bytes the destination received on the NBD connection (the kernel's
# count for the socket, ss -i).
crossed="$(ss -tinH state established "( sport = :$nbd_port )" | grep -o 'bytes_received:[0-9]*' | cut -d: -f2)"
[[ -n "$crossed" ]] || fail "no NBD connection on port $nbd_port"

port="$(mig_free_port)"
e2e_qmp "$T/dst.qmp" migrate-incoming "{\"uri\": \"tcp:127.0.0.1:$port\"}" >/dev/null
e2e_qmp "$T/src.qmp" migrate "{\"uri\": \"tcp:127.0.0.1:$port\"}" >/dev/null
[[ "$(mig_wait src)" == completed ]] || fail "the migration did not complete"
while [[ "$(mig_status dst)" == inmigrate ]]; do sleep 0.05; done
e2e_qmp "$T/src.qmp" block-job-cancel '{"device": "mirror0"}' >/dev/null
while [[ -n "$(e2e_qmp "$T/src.qmp" query-block-jobs | jq -r '.[].device')" ]]; do sleep 0.1; done
e2e_qmp "$T/dst.qmp" nbd-server-stop >/dev/null
e2e_qmp "$T/dst.qmp" cont >/dev/null
[[ "$(mig_status dst)" == running ]] || fail "the destination is $(mig_status dst)"
mig_io dst "write -P 0x5a $((700 * MiB)) 1M" >/dev/null || fail "a write on the destination"
mig_quit src "$src_pid"
mig_quit dst "$dst_pid"

# The destination's disk is the source's, plus the write made after the move.
python3 -c "import sys; sys.stdout.buffer.write(b'\x5a' * 1048576)" >"$T/w3"
cp --sparse=always "$M1/vm/disk" "$T/expected.raw"
dd if="$T/w3" of="$T/expected.raw" bs=1M seek=700 conv=notrunc status=none
cmp "$M2/vm/disk" "$T/expected.raw" || fail "the destination's disk differs from the source's"

# What crossed: the source's data extents (written 16 MiB + the base's
# 64 MiB, less the 8 MiB written over base data), not the 1 GiB.
data=$((72 * MiB))
echo "migrate_local: $((crossed / MiB)) MiB crossed for 16 MiB written over a 1 GiB base with 64 MiB of data"
((crossed >= 16 * MiB && crossed < data + 8 * MiB)) ||
  fail "$crossed bytes crossed; the source's data is $data bytes"
echo "migrate_local: ok"
