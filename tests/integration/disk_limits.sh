# The largest disk each backend accepts, end to end: a store on ext4 (4 KiB
# blocks), xfs and tmpfs file systems made here, and on rbd: `imgfs stats`
# names the limit; a blank disk of exactly that size is created, its last
# 4 KiB block written and read back through the mount, and fsck finds
# nothing; one block more is refused by `disk create`, `disk resize`,
# truncate, fallocate and a write past the end (EFBIG), changing nothing.
# On xfs a store with 4 KiB chunks also shows the allocation map's limit
# (2^34 chunks: 64 TiB). The rbd disk is sparse: its cluster holds one object.
source "$(dirname "$0")/lib.sh"
for t in mkfs.ext4 mkfs.xfs losetup jq; do
  command -v "$t" >/dev/null || fail "$t is missing (tools/setup.sh installs it)"
done

# sweep LABEL MAX [RESIZE]: the store $IMGFS_STORE is initialised; MAX is its
# limit. With RESIZE=no a disk is not grown to MAX (an rbd image that large
# takes librbd minutes to remove: it walks every object).
sweep() {
  local label="$1" max="$2" resize="${3:-yes}" M="$T/mnt.$1" size
  [[ "$("$IMGFS" --json stats | jq .max_disk_bytes)" == "$max" ]] ||
    fail "$label: stats: $("$IMGFS" --json stats)"
  "$IMGFS" disk create vm1/max --blank --size "$max" || fail "$label: a disk of $max bytes"
  expect_fail "$label: one block more" "$IMGFS" disk create vm1/over --blank --size $((max + 4096))
  expect_err_contains "more than this store's disks can hold: at most"
  expect_err_contains "($max bytes, "
  expect_fail "$label: info of the refused disk" "$IMGFS" disk info vm1/over
  "$IMGFS" disk create vm1/small --blank --size 1G
  expect_fail "$label: resize one block more" "$IMGFS" disk resize vm1/small $((max + 4096))
  if [[ "$resize" == yes ]]; then
    "$IMGFS" disk resize vm1/small "$max" || fail "$label: resize to the largest size"
  fi

  mount_imgfs "$M"
  head -c 4096 /dev/urandom >"$T/last"
  dd if="$T/last" of="$M/vm1/max" bs=4096 seek=$((max / 4096 - 1)) conv=notrunc,fsync \
    status=none || fail "$label: writing the last block"
  expect_errno "$label: truncate one block more" "File too large" \
    truncate -s $((max + 4096)) "$M/vm1/max"
  expect_errno "$label: fallocate one block more" "File too large" \
    fallocate -l $((max + 4096)) "$M/vm1/max"
  expect_errno "$label: a write past the end" "File too large" \
    dd if="$T/last" of="$M/vm1/max" bs=4096 seek=$((max / 4096)) conv=notrunc status=none
  size="$(stat -c %s "$M/vm1/max")"
  [[ "$size" == "$max" ]] || fail "$label: the mount shows $size bytes, not $max"
  unmount_imgfs "$M" "$MOUNT_PID"
  mount_imgfs "$M"
  dd if="$M/vm1/max" bs=4096 skip=$((max / 4096 - 1)) count=1 status=none | cmp - "$T/last" ||
    fail "$label: the last block did not read back"
  # The block before it was never written: zeros.
  dd if="$M/vm1/max" bs=4096 skip=$((max / 4096 - 2)) count=1 status=none |
    cmp -n 4096 - /dev/zero || fail "$label: an unwritten block is not zeros"
  unmount_imgfs "$M" "$MOUNT_PID"
  "$IMGFS" fsck >/dev/null || fail "$label: fsck: $("$IMGFS" fsck 2>&1)"
  [[ "$("$IMGFS" --json disk info vm1/max | jq .size)" == "$max" ]] || fail "$label: size changed"
  echo "$label: $max bytes ok"
}

# mount_fs TYPE DIR: a small file system of TYPE at DIR (loop device over a
# sparse file, or tmpfs), unmounted at exit.
mount_fs() {
  local type="$1" dir="$2"
  mkdir -p "$dir"
  case "$type" in
    ext4) truncate -s 256M "$T/$type.img"; mkfs.ext4 -q -F -b 4096 "$T/$type.img" ;;
    xfs) truncate -s 512M "$T/$type.img"; mkfs.xfs -q -f "$T/$type.img" ;;
  esac
  if [[ "$type" == tmpfs ]]; then
    mount -t tmpfs -o size=256M tmpfs "$dir"
  else
    mount -o loop "$T/$type.img" "$dir"
  fi
  on_exit "umount '$dir' 2>/dev/null || umount -l '$dir'"
}

for type in ext4 xfs tmpfs; do
  mount_fs "$type" "$T/$type"
  export IMGFS_STORE="$T/$type/store"
  "$IMGFS" init >/dev/null
  if [[ "$type" == ext4 ]]; then
    sweep ext4 $(((16 << 40) - 4096))
    want="largest disk:  16T - 4K (the largest file ext4 allows in $IMGFS_STORE/disks)"
  else
    sweep "$type" $((1 << 50))
    want="largest disk:  1P (imgfs's largest local disk)"
  fi
  "$IMGFS" stats | grep -qxF "$want" || fail "$type: stats: $("$IMGFS" stats)"
done

# xfs, 4 KiB chunks: a disk made from an image has at most 2^34 chunks.
export IMGFS_STORE="$T/xfs/store4k"
"$IMGFS" init --chunk-size 4K >/dev/null
head -c 1M /dev/urandom >"$T/img.raw"
"$IMGFS" image import "$T/img.raw" --name img >/dev/null
[[ "$("$IMGFS" --json stats | jq .max_disk_bytes)" == $((64 << 40)) ]] ||
  fail "xfs, 4K chunks: stats: $("$IMGFS" --json stats)"
"$IMGFS" disk create vm1/clone --image img --size 64T || fail "a 64T clone with 4K chunks"
expect_fail "a 4K-chunk clone one block larger" "$IMGFS" disk create vm1/over --image img \
  --size $(((64 << 40) + 4096))
expect_err_contains "2^34 chunks of 4K"
"$IMGFS" disk create vm1/blank --blank --size 1P || fail "a blank 1P disk (64K chunks)"

# rbd: 2^24 objects of 4 MiB.
if [[ -n "${IMGFS_CEPH_CONF:-}" ]]; then
  export IMGFS_STORE="$T/rbd-store"
  make_rbd_namespace
  "$IMGFS" init --disks "rbd:$RBD_NS" "${CEPH_ARGS_IMGFS[@]}" >/dev/null
  sweep rbd $((64 << 40)) no
  "$IMGFS" stats | grep -q "^largest disk:  64T (2^24 RBD objects of 4M" ||
    fail "rbd: stats: $("$IMGFS" stats)"
  # What the cluster holds: sparse, the one object written.
  objects="$(rbdc du --format json "$RBD_NS/vm1_max" | jq '.images[0].used_size')"
  ((objects <= 4 << 20)) || fail "rbd: the 64T disk uses $objects bytes"
else
  fail "no test cluster: tools/test.sh starts one (IMGFS_CEPH_CONF)"
fi
echo "disk_limits: ok"
