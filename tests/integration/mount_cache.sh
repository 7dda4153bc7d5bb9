# The mount's chunk cache (-o cache_size): verified chunks are served from
# memory, even after the stored chunk is damaged; with cache_size=0 every read
# verifies the stored chunk again, so damage is EIO at once. Bad values are
# refused.
source "$(dirname "$0")/lib.sh"
cd "$T"
"$IMGFS" init --chunk-size 64K >/dev/null
head -c 2M /dev/urandom >a.img
"$IMGFS" image import a.img --name a >/dev/null
"$IMGFS" disk create vm/d --image a

mkdir -p "$T/mnt"
for bad in "cache_size=lots" "cache_size=" "cache_size=-1"; do
  expect_fail "-o $bad" "$IMGFS" mount "$T/mnt" -o "$bad"
  expect_err_contains "cache_size"
done
mountpoint -q "$T/mnt" && fail "a refused mount left a mount behind"

# chunk_at IDX: the stored chunk file holding a.img's 64 KiB chunk IDX.
chunk_at() {
  local want f
  want=$(dd if=a.img bs=64K skip="$1" count=1 status=none | sha256sum | cut -d' ' -f1)
  while IFS= read -r f; do
    [[ "$(sha256sum <"$f" | cut -d' ' -f1)" == "$want" ]] && { echo "$f"; return; }
  done < <(find "$STORE/chunks/objects/chunk" -type f)
  fail "no stored chunk holds chunk $1"
}
read_chunk() { dd if="$1" bs=64K skip="$2" count=1 iflag=direct status=none; }

# Default cache: every chunk read once is cached; damage after that does not
# show (the cached bytes were verified), and the disk reads back whole.
"$IMGFS" -v mount "$T/mnt" --pid-file "$T/pid" --log-file "$T/mount.log" 2>"$T/mount.err"
MOUNT_PID=$(cat "$T/pid")
on_exit "unmount_imgfs '$T/mnt' '$MOUNT_PID'"
grep -q "chunk cache: .*MiB" "$T/mount.err" || fail "the mount does not log its cache size"
cmp <(dd if="$T/mnt/vm/d" bs=1M iflag=direct status=none) a.img || fail "disk differs from its image"
victim=$(chunk_at 7)
cp "$victim" "$T/victim.orig"
printf '\xff\xfe' | dd of="$victim" bs=1 seek=1000 conv=notrunc status=none
cmp <(read_chunk "$T/mnt/vm/d" 7) <(dd if=a.img bs=64K skip=7 count=1 status=none) ||
  fail "a cached chunk read wrong after its stored copy was damaged"
unmount_imgfs "$T/mnt" "$MOUNT_PID"

# cache_size=0: the damaged chunk is EIO, the others read right.
mount_imgfs "$T/mnt" -o cache_size=0
if read_chunk "$T/mnt/vm/d" 7 >/dev/null 2>err; then fail "a damaged chunk read without a cache"; fi
grep -q "Input/output error" err || fail "damaged read: $(cat err), want EIO"
for i in 0 6 8 31; do
  cmp <(read_chunk "$T/mnt/vm/d" $i) <(dd if=a.img bs=64K skip=$i count=1 status=none) ||
    fail "intact chunk $i reads wrong"
done
unmount_imgfs "$T/mnt" "$MOUNT_PID"

# A small cache (one chunk) evicts: the repaired chunk reads right again, and
# damage is found once the chunk has been evicted.
cp "$T/victim.orig" "$victim"
mount_imgfs "$T/mnt" -o cache_size=64K
cmp <(read_chunk "$T/mnt/vm/d" 7) <(dd if=a.img bs=64K skip=7 count=1 status=none) ||
  fail "the repaired chunk reads wrong"
printf '\xff\xfe' | dd of="$victim" bs=1 seek=1000 conv=notrunc status=none
read_chunk "$T/mnt/vm/d" 8 >/dev/null  # evicts chunk 7
if read_chunk "$T/mnt/vm/d" 7 >/dev/null 2>err; then fail "an evicted damaged chunk read"; fi
grep -q "Input/output error" err || fail "evicted damaged read: $(cat err), want EIO"
echo "mount_cache: ok"
