# Bytes and sizes through a real mount: _base/<id> and a new disk read back
# the source exactly; a written pattern survives unmount and mount; truncate
# grows and a shrink fails with EPERM (allowed with -o allow_shrink).
source "$(dirname "$0")/lib.sh"

init_store
make_sample_raw "$T/src.raw" 8
id="$("$IMGFS" image import "$T/src.raw" --name sample)"
[[ "$id" =~ ^[0-9a-f]{32}$ ]] || fail "import printed '$id', not an image id"
"$IMGFS" disk create vm1/disk --image sample >/dev/null

M="$T/mnt"
mount_imgfs "$M"
[[ "$(ls "$M")" == *_base* ]] || fail "no _base in the mount"
[[ "$(ls "$M/_base")" == "$id" ]] || fail "_base lists '$(ls "$M/_base")', want $id"
cmp "$T/src.raw" "$M/_base/$id" || fail "_base/$id differs from the source"
cmp "$T/src.raw" "$M/vm1/disk" || fail "new disk differs from its image"
[[ "$(stat -c %s "$M/vm1/disk")" -eq $((8 << 20)) ]] || fail "disk size"

# A pattern written in the middle (crossing chunk boundaries) and at the end.
head -c 300000 /dev/urandom >"$T/pat"
dd if="$T/pat" of="$M/vm1/disk" bs=1000 seek=1000 conv=notrunc,fsync status=none
# The tail of this one passes the end: the disk grows.
dd if="$T/pat" of="$M/vm1/disk" bs=4096 seek=$(((8 << 20) / 4096 - 10)) conv=notrunc status=none
cp "$T/src.raw" "$T/want"
dd if="$T/pat" of="$T/want" bs=1000 seek=1000 conv=notrunc status=none
dd if="$T/pat" of="$T/want" bs=4096 seek=$(((8 << 20) / 4096 - 10)) conv=notrunc status=none
cmp "$T/want" "$M/vm1/disk" || fail "written pattern does not read back"
unmount_imgfs "$M" "$MOUNT_PID"
mountpoint -q "$M" && fail "still mounted after SIGTERM"
mount_imgfs "$M"
cmp "$T/want" "$M/vm1/disk" || fail "written pattern lost across unmount and mount"
cmp "$T/src.raw" "$M/_base/$id" || fail "the image changed"

# Grow in O(1) with truncate; shrinking is refused and changes nothing.
size="$(stat -c %s "$M/vm1/disk")"
truncate -s 20G "$M/vm1/disk"
[[ "$(stat -c %s "$M/vm1/disk")" -eq $((20 << 30)) ]] || fail "truncate did not grow"
expect_errno "shrink" "Operation not permitted" truncate -s 1G "$M/vm1/disk"
expect_errno "shrink to 0" "Operation not permitted" truncate -s 0 "$M/vm1/disk"
[[ "$(stat -c %s "$M/vm1/disk")" -eq $((20 << 30)) ]] || fail "refused shrink changed the size"
cmp -n "$size" "$T/want" "$M/vm1/disk" || fail "grow changed the data"
cmp -i "$size:0" -n 1048576 "$M/vm1/disk" /dev/zero || fail "the grown area does not read zeros"
[[ "$("$IMGFS" --json disk info vm1/disk)" == *"$((20 << 30))"* ]] \
  || fail "disk info does not show the grown size"

# A size the backend cannot hold is EFBIG, whichever way it is asked for,
# and changes nothing (tests/integration/disk_limits.sh tries the limits).
max="$("$IMGFS" --json stats | jq .max_disk_bytes)"
[[ "$max" =~ ^[0-9]+$ ]] || fail "stats shows no largest disk: $("$IMGFS" --json stats)"
expect_errno "truncate beyond the largest disk" "File too large" truncate -s $((max + 4096)) "$M/vm1/disk"
expect_errno "fallocate beyond it" "File too large" fallocate -l $((max + 4096)) "$M/vm1/disk"
expect_errno "a write beyond it" "File too large" \
  dd if=/dev/zero of="$M/vm1/disk" bs=4096 count=1 seek=$((max / 4096)) conv=notrunc status=none
expect_errno "truncate to 2P" "File too large" truncate -s 2P "$M/vm1/disk"
[[ "$(stat -c %s "$M/vm1/disk")" -eq $((20 << 30)) ]] || fail "a refused grow changed the size"
[[ "$("$IMGFS" --json disk info vm1/disk | jq .size)" -eq $((20 << 30)) ]] ||
  fail "a refused grow changed the disk: $("$IMGFS" --json disk info vm1/disk)"
grep -q "File too large\|TooLarge" "$T/mount.log" && fail "refusals logged as errors: $(cat "$T/mount.log")"

# With -o allow_shrink a shrink works.
unmount_imgfs "$M" "$MOUNT_PID"
mount_imgfs "$M" -o allow_shrink
truncate -s 4M "$M/vm1/disk"
[[ "$(stat -c %s "$M/vm1/disk")" -eq $((4 << 20)) ]] || fail "allow_shrink did not shrink"
cmp -n $((4 << 20)) "$T/want" "$M/vm1/disk" || fail "shrink changed the data before the cut"
echo "mount_bytes: ok"
