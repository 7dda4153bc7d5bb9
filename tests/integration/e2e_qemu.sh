# qemu-system-x86_64 (TCG, paused, no display) on a disk file in the mount
# with cache=none,aio=native: QMP query-block shows it, block_resize grows it
# (the mount shows the new size), and a second qemu that opens the same disk
# for writing is refused by qemu's image locking (OFD locks on the file).
# Disk backend from IMGFS_TEST_DISKS (local or rbd).
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/e2e_lib.sh"
e2e_need qemu-system-x86_64 qemu-img python3 jq fusermount3

init_store
make_sample_raw "$T/src.raw" 64
id="$("$IMGFS" image import "$T/src.raw" --name e2e-qemu)"
"$IMGFS" disk create vm1/disk --image e2e-qemu >/dev/null
M="$T/mnt"
e2e_mount "$M"
D="$M/vm1/disk"

# qemu_start NAME: a paused TCG qemu with the disk, QMP on $T/NAME.qmp; sets
# QEMU_PID. Returns non-zero (stderr in $T/NAME.err) when qemu refuses to start.
qemu_start() {
  local name="$1" rc=0
  qemu-system-x86_64 -machine pc,accel=tcg -nodefaults -display none -S -m 64 \
    -qmp "unix:$T/$name.qmp,server=on,wait=off" \
    -drive "file=$D,format=raw,if=virtio,id=disk0,cache=none,aio=native" \
    -daemonize -pidfile "$T/$name.pid" 2>"$T/$name.err" || rc=$?
  if ((rc == 0)); then
    QEMU_PID="$(cat "$T/$name.pid")"
    on_exit "e2e_stop_pid $QEMU_PID"
  fi
  return $rc
}

qemu_start vm1 || fail "qemu on the mount's disk did not start: $(cat "$T/vm1.err")"
vm1_pid="$QEMU_PID"
[[ "$(e2e_qmp "$T/vm1.qmp" query-status | jq -r .status)" == prelaunch ]] || fail "qemu is not paused"

blk="$(e2e_qmp "$T/vm1.qmp" query-block | jq -c '.[] | select(.device == "disk0")')"
[[ -n "$blk" ]] || fail "query-block shows no disk0"
[[ "$(jq -r .inserted.file <<<"$blk")" == "$D" ]] || fail "query-block: wrong file: $blk"
[[ "$(jq -r .inserted.image.\"virtual-size\" <<<"$blk")" -eq $((64 << 20)) ]] || fail "query-block: wrong size: $blk"
[[ "$(jq -r .inserted.cache.direct <<<"$blk")" == true ]] || fail "query-block: not cache=none: $blk"
[[ "$(jq -r .inserted.ro <<<"$blk")" == false ]] || fail "query-block: read-only: $blk"

# block_resize grows the disk; the mount shows the new size.
e2e_qmp "$T/vm1.qmp" block_resize '{"device": "disk0", "size": 3221225472}' >/dev/null
[[ "$(stat -c %s "$D")" -eq $((3 << 30)) ]] || fail "after block_resize the mount shows $(stat -c %s "$D") bytes"
blk="$(e2e_qmp "$T/vm1.qmp" query-block | jq -c '.[] | select(.device == "disk0")')"
[[ "$(jq -r .inserted.image.\"virtual-size\" <<<"$blk")" -eq $((3 << 30)) ]] || fail "query-block after resize: $blk"
[[ "$("$IMGFS" --json disk info vm1/disk | jq -r .size)" -eq $((3 << 30)) ]] ||
  fail "disk info after block_resize: $("$IMGFS" --json disk info vm1/disk)"

# block_resize to a size the backend cannot hold fails (the mount's EFBIG
# reaches qemu as its truncate's error) and changes nothing.
max="$("$IMGFS" --json stats | jq .max_disk_bytes)"
err="$( (e2e_qmp "$T/vm1.qmp" block_resize "{\"device\": \"disk0\", \"size\": $((max + 4096))}") 2>&1)" &&
  fail "block_resize beyond the largest disk ($max bytes) succeeded"
[[ "$err" == *"File too large"* ]] || fail "block_resize beyond the largest disk: $err"
[[ "$(stat -c %s "$D")" -eq $((3 << 30)) ]] || fail "a refused block_resize changed the size"
[[ "$(e2e_qmp "$T/vm1.qmp" query-status | jq -r .status)" == prelaunch ]] ||
  fail "qemu is not in the state it was after a refused block_resize"

# A second qemu writing the same disk is refused by qemu's image locking.
if qemu_start vm2; then
  e2e_stop_pid "$QEMU_PID"
  fail "a second qemu opened $D for writing while the first has it (image locking does not work on the mount)"
fi
grep -q 'Failed to get "write" lock' "$T/vm2.err" || fail "second qemu failed for another reason: $(cat "$T/vm2.err")"
# ... while a read-only, shared opener (like qemu-img info -U) is allowed.
qemu-img info -U -f raw "$D" >/dev/null || fail "qemu-img info -U on a disk in use failed"

# Once the first qemu is gone, the disk can be opened for writing again.
e2e_qmp "$T/vm1.qmp" quit >/dev/null || true
tail --pid="$vm1_pid" -f /dev/null
qemu_start vm3 || fail "qemu after the first quit did not start: $(cat "$T/vm3.err")"
e2e_qmp "$T/vm3.qmp" quit >/dev/null || true
tail --pid="$QEMU_PID" -f /dev/null
cmp -n $((64 << 20)) "$T/src.raw" "$D" || fail "the disk's first 64 MiB changed"
cmp -s -n $(((3 << 30) - (64 << 20))) -i $((64 << 20)):0 "$D" /dev/zero || fail "the grown part is not zeros"
"$IMGFS" image verify "$id" >/dev/null || fail "image verify $id failed"
echo "e2e_qemu (${IMGFS_TEST_DISKS:-local}): ok"
