# Names and attributes through a real mount: instances and disks made and
# removed from both sides, chown across a remount, and bad input.
source "$(dirname "$0")/lib.sh"

init_store
make_sample_raw "$T/src.raw" 4
id="$("$IMGFS" image import "$T/src.raw" --name sample)"
"$IMGFS" disk create vm1/disk --image sample >/dev/null
M="$T/mnt"
mount_imgfs "$M"

# A disk made with the command line while mounted is there at once, and gone
# at once when removed.
ls "$M" >/dev/null
"$IMGFS" disk create vm2/disk --image sample >/dev/null
[[ -f "$M/vm2/disk" ]] || fail "CLI-created disk not visible"
[[ "$(ls "$M/vm2")" == "disk" ]] || fail "readdir of vm2: $(ls "$M/vm2")"
cmp "$T/src.raw" "$M/vm2/disk" || fail "CLI-created disk content"
"$IMGFS" disk rm vm2/disk
[[ -z "$(ls "$M/vm2" 2>/dev/null)" ]] || fail "removed disk still listed"

# mkdir + create + truncate makes an ephemeral disk; rename keeps data.
mkdir "$M/vm3"
truncate -s 10G "$M/vm3/disk.eph0"
[[ "$(stat -c %s "$M/vm3/disk.eph0")" -eq $((10 << 30)) ]] || fail "ephemeral disk size"
"$IMGFS" disk info vm3/disk.eph0 >/dev/null || fail "ephemeral disk unknown to the CLI"
echo hello | dd of="$M/vm3/disk.eph0" bs=1 seek=4096 conv=notrunc status=none
mv "$M/vm3/disk.eph0" "$M/vm3/disk.eph1"
mv "$M/vm3/disk.eph1" "$M/vm1/eph"
[[ "$(dd if="$M/vm1/eph" bs=1 skip=4096 count=5 status=none)" == hello ]] || fail "rename lost data"
expect_errno "rmdir of a non-empty instance" "Directory not empty" rmdir "$M/vm1"
rmdir "$M/vm3"
[[ ! -e "$M/vm3" ]] || fail "rmdir did not remove vm3"

# unlink of an open disk: EBUSY, and the CLI's disk rm is refused too.
exec 3<>"$M/vm1/eph"
expect_errno "unlink of an open disk" "Device or resource busy" rm "$M/vm1/eph"
expect_fail "disk rm of a disk open in the mount" "$IMGFS" disk rm vm1/eph
exec 3>&-
rm "$M/vm1/eph"
[[ ! -e "$M/vm1/eph" ]] || fail "unlink of a closed disk"
"$IMGFS" disk info vm1/eph >/dev/null 2>&1 && fail "unlinked disk still known to the CLI"

# chown/chmod persist across a remount (libvirt relabels disk files).
chown 64055:108 "$M/vm1/disk"
chmod 0600 "$M/vm1/disk"
unmount_imgfs "$M" "$MOUNT_PID"
mount_imgfs "$M"
[[ "$(stat -c %u:%g:%a "$M/vm1/disk")" == "64055:108:600" ]] \
  || fail "owner/mode after remount: $(stat -c %u:%g:%a "$M/vm1/disk")"

# Bad input gets a clear errno and changes nothing.
expect_errno "write to _base" "Read-only file system" dd if=/dev/zero of="$M/_base/$id" bs=512 count=1 conv=notrunc status=none
expect_errno "truncate in _base" "Read-only file system" truncate -s 1G "$M/_base/$id"
expect_errno "create in _base" "Read-only file system" touch "$M/_base/new"
expect_errno "rm in _base" "Read-only file system" rm -f "$M/_base/$id"
expect_errno "instance with _" "Invalid argument" mkdir "$M/bad_name"
expect_errno "instance with a control byte" "Invalid argument" mkdir "$M/$(printf 'bad\001')"
expect_errno "disk name over 128 bytes" "Invalid argument" touch "$M/vm1/$(printf 'd%.0s' {1..129})"
expect_errno "file at the top level" "Operation not permitted" touch "$M/file"
expect_errno "directory inside an instance" "Operation not permitted" mkdir "$M/vm1/sub"
expect_errno "symlink" "Function not implemented" ln -s x "$M/vm1/link"
ls "$M" | grep -qvE '^(_base|vm1|vm2)$' && fail "bad input changed the root: $(ls "$M")"
cmp "$T/src.raw" "$M/_base/$id" || fail "the image changed"
echo "mount_names: ok"
