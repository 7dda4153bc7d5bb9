# Flipped bits in a local disk's own files (docs/formats.md, "Local disks"):
# its data and its checksums read as EIO through a real mount, with correct
# bytes everywhere else, and fsck names the damaged blocks; a damaged
# allocation map or metadata JSON is a clear error. Never wrong bytes.
source "$(dirname "$0")/lib.sh"
cd "$T"
"$IMGFS" init --chunk-size 64K >/dev/null
head -c 4M /dev/urandom >a.img
"$IMGFS" image import a.img --name a >/dev/null
"$IMGFS" disk create vm1/d --image a >/dev/null
"$IMGFS" disk create vm1/e --blank --size 1M >/dev/null
dir="$STORE/disks/vm1/d"
# flip FILE OFFSET: flips bit 4 of the byte at OFFSET.
flip() {
  local b
  b=$(od -An -tu1 -j "$2" -N1 "$1" | tr -d ' ')
  printf "$(printf '\\%03o' $((b ^ 16)))" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

# Guest data: 1 MiB at 1 MiB, through the mount.
head -c 1M /dev/urandom >new.bin
cp a.img want.img
dd if=new.bin of=want.img bs=1M seek=1 conv=notrunc status=none
mount_imgfs "$T/mnt"
dd if=new.bin of="$T/mnt/vm1/d" bs=1M seek=1 conv=notrunc,fsync oflag=direct status=none
unmount_imgfs "$T/mnt" "$MOUNT_PID"
"$IMGFS" fsck >/dev/null || fail "fsck of a healthy store failed"

# --- a flipped bit in the disk's data, and one in a checksum ---------------------
flip "$dir/data" $((1048576 + 5 * 4096 + 100))   # block at 1 MiB + 20 KiB
flip "$dir/csum" $((4096 + (1048576 + 40 * 4096) / 4096 * 8 + 3))  # block at 1 MiB + 160 KiB
rc=0; out=$("$IMGFS" fsck) || rc=$?
((rc == 1)) || fail "fsck of a damaged disk exited $rc, want 1: $out"
[[ "$out" == *"vm1/d"*"offset $((1048576 + 20480))"* ]] || fail "fsck does not name the damaged data block: $out"
[[ "$out" == *"vm1/d"*"offset $((1048576 + 163840))"* ]] || fail "fsck does not name the block with a damaged checksum: $out"
mount_imgfs "$T/mnt"
for off in 20 160; do
  if dd if="$T/mnt/vm1/d" of=/dev/null bs=4K skip=$((256 + off / 4)) count=1 iflag=direct \
    status=none 2>err; then
    fail "reading the damaged block at 1 MiB + $off KiB through the mount succeeded"
  fi
  grep -q "Input/output error" err || fail "damaged read: $(cat err), want EIO"
done
grep -q "does not match its checksum" "$T/mount.log" || fail "the mount log does not say why"
# Every other block reads right.
for ((i = 0; i < 1024; i++)); do
  ((i == 256 + 5 || i == 256 + 40)) && continue
  cmp <(dd if="$T/mnt/vm1/d" bs=4K skip=$i count=1 iflag=direct status=none) \
    <(dd if=want.img bs=4K skip=$i count=1 status=none) || fail "intact block $i reads wrong"
done
# Rewriting a damaged block whole heals it.
dd if=want.img of="$T/mnt/vm1/d" bs=4K skip=$((256 + 5)) seek=$((256 + 5)) count=1 \
  conv=notrunc,fsync oflag=direct status=none
unmount_imgfs "$T/mnt" "$MOUNT_PID"
out=$("$IMGFS" fsck || true)
[[ "$out" != *"offset $((1048576 + 20480))"* ]] || fail "a rewritten block is still damaged: $out"

# --- a flipped bit in the allocation map's header, and in metadata JSON -----------
flip "$STORE/disks/vm1/e/bitmap" 2
expect_fail "damaged allocation map" "$IMGFS" disk resize vm1/e 2M
expect_err_contains "allocation map"
rc=0; out=$("$IMGFS" fsck) || rc=$?
((rc == 1)) && [[ "$out" == *"vm1/e: allocation map"* ]] || fail "fsck on a damaged map: $out"
flip "$STORE/disks/vm1/e/bitmap" 2
flip "$STORE/disks/vm1/e/meta.json" 3 # inside "format"
expect_fail "damaged metadata" "$IMGFS" disk resize vm1/e 2M
expect_err_contains "vm1/e"
rc=0; out=$("$IMGFS" fsck) || rc=$?
((rc == 1)) && [[ "$out" == *"vm1/e"* ]] || fail "fsck on damaged metadata: $out"
flip "$STORE/disks/vm1/e/meta.json" 3

# --- a flipped bit in an allocation map's page ----------------------------------
# Chunk 20 of vm1/d (64 KiB chunks) was written: its bit turned clear would
# read the image's bytes there. The page's checksum makes the disk EIO.
flip "$dir/bitmap" $((4096 + 20 / 8))
mount_imgfs "$T/mnt"
if dd if="$T/mnt/vm1/d" of=/dev/null bs=64K skip=20 count=1 iflag=direct status=none 2>err; then
  fail "reading a disk with a damaged allocation map page succeeded"
fi
grep -q "Input/output error" err || fail "damaged map page: $(cat err), want EIO"
unmount_imgfs "$T/mnt" "$MOUNT_PID"
grep -q "page 0 (chunks 0 to 4031) does not match its checksum" "$T/mount.log" ||
  fail "the mount log does not name the damaged map page"
rc=0; out=$("$IMGFS" fsck) || rc=$?
((rc == 1)) && [[ "$out" == *"vm1/d"*"allocation map"*"page 0"* ]] ||
  fail "fsck on a damaged map page: $out"
flip "$dir/bitmap" $((4096 + 20 / 8))
echo "disk_damage: ok"
