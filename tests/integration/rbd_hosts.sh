# Three stores ("hosts") on one RBD pool namespace, as the hypervisors of a
# cluster: s1 and s2 share a RADOS chunk store, s3 has its own dir chunks.
# Every command from every store on every store's disks (docs/rbd.md,
# "Stores sharing a pool"): disk ls/info mark a parent that only another
# store holds; fsck passes on the healthy cluster and fails naming a disk
# whose published base was removed by hand; gc on each store removes nothing
# another store's disks need; image rm, disk rm and disk resize of another
# store's disks; the mounts list and read every disk of the pool. Needs the
# test cluster (tools/test.sh starts it).
source "$(dirname "$0")/lib.sh"
: "${IMGFS_CEPH_CONF:?the test runner (tools/test.sh) provides a Ceph cluster}"
make_rbd_namespace
P="$RBD_NS"
CP="${IMGFS_CEPH_CHUNK_POOL:-$IMGFS_CEPH_POOL}/hosts$$$RANDOM"
rados_chunks() {
  rados -c "$IMGFS_CEPH_CONF" --id "$IMGFS_CEPH_ID" --keyring "$IMGFS_CEPH_KEYRING" \
    -p "${CP%%/*}" -N "${CP#*/}" "$@"
}
remove_chunks() { rados_chunks ls | while read -r o; do rados_chunks rm "$o"; done; }
on_exit remove_chunks

s1() { "$IMGFS" --store "$T/s1" "$@"; }
s2() { "$IMGFS" --store "$T/s2" "$@"; }
s3() { "$IMGFS" --store "$T/s3" "$@"; }
s1 init --chunks "rados:$CP" --disks "rbd:$P" "${CEPH_ARGS_IMGFS[@]}" >/dev/null
s2 init --chunks "rados:$CP" --disks "rbd:$P" "${CEPH_ARGS_IMGFS[@]}" >/dev/null
s3 init --disks "rbd:$P" "${CEPH_ARGS_IMGFS[@]}" >/dev/null
has_base() { rbdc snap ls "$P/imgfs.base.$1" 2>/dev/null | grep -q " base "; }
children() { rbdc children "$P/imgfs.base.$1@base" | sort | tr '\n' ' '; }

for x in a b c d x; do make_sample_raw "$T/$x.raw" 6; done
A=$(s1 image import "$T/a.raw" --name a)  # s1 and s2 hold it (shared chunks)
X=$(s3 image import "$T/x.raw" --name x)  # only s3 holds it
s1 disk create vm1/disk --image "$A" >/dev/null
s2 disk create vm2/disk --image a >/dev/null
s2 disk create vm2/data --blank --size 1M >/dev/null
s3 disk create vm3/disk --image "$X" >/dev/null
expect_fail "s1 creating a disk from s3's image" s1 disk create vm9/disk --image "$X"
expect_err_contains "no image"
[[ "$(children "$A")" == "$P/vm1_disk $P/vm2_disk " ]] || fail "children of A: $(children "$A")"
[[ "$(children "$X")" == "$P/vm3_disk " ]] || fail "children of X: $(children "$X")"

# --- disk ls: every disk of the pool, from every store; a parent the store
# does not hold is marked ------------------------------------------------------------
for s in s1 s2 s3; do
  out=$($s disk ls)
  for d in vm1/disk vm2/disk vm2/data vm3/disk; do
    grep -q "^$d " <<<"$out" || fail "$s disk ls lacks $d: $out"
  done
  j=$($s --json disk ls)
  [[ "$(jq length <<<"$j")" == 4 ]] || fail "$s --json disk ls: $j"
  [[ "$(jq -r '.[] | select(.disk == "vm2/data") | .parent' <<<"$j")" == null ]] ||
    fail "$s: blank disk has a parent: $j"
done
for s in s1 s2; do
  out=$($s disk ls)
  grep -q "^vm3/disk .* $X \*$" <<<"$out" || fail "$s does not mark vm3/disk's parent: $out"
  grep -q "^vm1/disk .* $A$" <<<"$out" || fail "$s marks vm1/disk's parent: $out"
  grep -q "^\* parent image not in this store" <<<"$out" || fail "$s: no footnote: $out"
  j=$($s --json disk ls)
  [[ "$(jq '.[] | select(.disk == "vm3/disk") | .parent_in_store' <<<"$j")" == false ]] ||
    fail "$s --json: vm3/disk's parent in store: $j"
  [[ "$(jq '.[] | select(.disk == "vm1/disk") | .parent_in_store' <<<"$j")" == true ]] ||
    fail "$s --json: vm1/disk's parent not in store: $j"
done
out=$(s3 disk ls)
grep -q "^vm1/disk .* $A \*$" <<<"$out" || fail "s3 does not mark vm1/disk's parent: $out"
grep -q "^vm2/disk .* $A \*$" <<<"$out" || fail "s3 does not mark vm2/disk's parent: $out"
grep -q "^vm3/disk .* $X$" <<<"$out" || fail "s3 marks its own parent: $out"

# --- disk info: the parent only another store holds, and its published base ---
out=$(s3 disk info vm1/disk)
grep -q "^parent: *$A (held by another store; published base present in the pool)$" <<<"$out" ||
  fail "s3 disk info vm1/disk: $out"
grep -q "^base: *rbd:$P/imgfs.base.$A@base (present)$" <<<"$out" || fail "s3 disk info base: $out"
out=$(s1 disk info vm1/disk)
grep -q "^parent: *$A (a)$" <<<"$out" || fail "s1 disk info vm1/disk: $out"
grep -q "^base: *rbd:$P/imgfs.base.$A@base (present)$" <<<"$out" || fail "s1 disk info base: $out"
out=$(s2 disk info vm3/disk)
grep -q "^parent: *$X (held by another store; published base present in the pool)$" <<<"$out" ||
  fail "s2 disk info vm3/disk: $out"
j=$(s1 --json disk info vm3/disk)
[[ "$(jq -c '[.parent_in_store, .parent_base.present, .parent_base.location]' <<<"$j")" == \
  "[false,true,\"rbd:$P/imgfs.base.$X@base\"]" ]] || fail "s1 --json disk info vm3/disk: $j"
out=$(s3 disk info vm2/data)
grep -q "^parent: *- (blank)$" <<<"$out" || fail "s3 disk info vm2/data: $out"
grep -q "^base:" <<<"$out" && fail "a blank disk shows a base: $out"

# --- fsck: clean on every store, counting the disks whose parent another
# store holds ------------------------------------------------------------------------
for s in s1 s2 s3; do
  $s fsck >"$T/fsck.out" || fail "$s fsck on a healthy cluster: $(cat "$T/fsck.out")"
  grep -q "4 disks.*: clean$" "$T/fsck.out" || fail "$s fsck: $(cat "$T/fsck.out")"
done
[[ "$(s1 --json fsck | jq .disks_parent_elsewhere)" == 1 ]] || fail "s1 fsck: $(s1 --json fsck)"
[[ "$(s3 --json fsck | jq .disks_parent_elsewhere)" == 2 ]] || fail "s3 fsck: $(s3 --json fsck)"
grep -q "(2 with a parent held by another store; published base present in the pool)" \
  <<<"$(s3 fsck)" || fail "s3 fsck does not say why: $(s3 fsck)"

# --- the mounts list every disk of the pool and read them, parents held
# elsewhere included (from the cluster) ----------------------------------------------
IMGFS_STORE="$T/s3" mount_imgfs "$T/m3"
m3_pid="$MOUNT_PID"
IMGFS_STORE="$T/s1" mount_imgfs "$T/m1"
for m in m1 m3; do
  [[ "$(ls "$T/$m" | grep -v '^_' | tr '\n' ' ')" == "vm1 vm2 vm3 " ]] ||
    fail "$m lists: $(ls "$T/$m")"
  [[ "$(ls "$T/$m/vm2" | tr '\n' ' ')" == "data disk " ]] || fail "$m/vm2: $(ls "$T/$m/vm2")"
done
cmp "$T/m3/vm1/disk" "$T/a.raw" || fail "s3's mount reads vm1/disk (parent on s1) wrongly"
cmp "$T/m1/vm3/disk" "$T/x.raw" || fail "s1's mount reads vm3/disk (parent on s3) wrongly"
[[ ! -e "$T/m3/_base/$A" ]] || fail "s3's mount shows an image it does not hold"

# --- disk resize and disk rm of another store's disk: refused while it is open
# for writing anywhere, then done ----------------------------------------------------
exec 7<>"$T/m3/vm1/disk"  # s3's mount holds s1's disk open for writing
head -c 4096 /dev/urandom >"$T/patch"
dd if="$T/patch" of="$T/m3/vm1/disk" bs=4096 seek=1 conv=notrunc,fsync status=none
for s in s1 s2; do
  expect_fail "$s resizing vm1/disk open on s3" $s disk resize vm1/disk 8M
  expect_err_contains "in use"
  expect_fail "$s removing vm1/disk open on s3" $s disk rm vm1/disk
  expect_err_contains "in use"
done
[[ "$(s1 --json disk info vm1/disk | jq .size)" == $((6 << 20)) ]] || fail "refused resize resized"
exec 7>&-
unmount_imgfs "$T/m3" "$m3_pid"  # (FUSE releases the file after close returns)
s2 disk resize vm1/disk 8M
for s in s1 s2 s3; do
  [[ "$($s --json disk info vm1/disk | jq .size)" == $((8 << 20)) ]] ||
    fail "$s sees vm1/disk at $($s --json disk info vm1/disk | jq .size)"
done
cmp -i 4096:0 -n 4096 "$T/m1/vm1/disk" "$T/patch" || fail "s1's mount lacks s3's write"
s3 disk resize vm2/disk 7M
s1 disk rm vm2/data  # made on s2
expect_fail "s3 disk info vm2/data after rm" s3 disk info vm2/data
expect_err_contains "not found"

# --- image rm from every store: refused while any disk of the pool uses the
# image, naming it, changing nothing ---------------------------------------------------
expect_fail "s1 image rm A" s1 image rm "$A"
expect_err_contains "vm1/disk"
expect_fail "s2 image rm a" s2 image rm a
expect_err_contains "vm2/disk"
expect_fail "s3 image rm X" s3 image rm "$X"
expect_err_contains "vm3/disk"
expect_fail "s3 image rm A (not its image)" s3 image rm "$A"
expect_err_contains "no image"
has_base "$A" && has_base "$X" || fail "refused image rm removed a base"

# --- gc from every store: nothing another store's disks need goes --------------------
# B: published by s1, its disk gone: its base has no clone, and s3 does not
# hold B, so s3's gc takes the base (any store's next disk publishes it again).
B=$(s1 image import "$T/b.raw")
s1 disk create vm5/disk --image "$B" >/dev/null
s1 disk rm vm5/disk
# C: a disk of s1 that s2's gc records, removed afterwards: s1's image rm is
# not refused by s2's record of a disk that the pool no longer has.
C=$(s1 image import "$T/c.raw")
s1 disk create vm6/disk --image "$C" >/dev/null
out=$(s3 gc --min-age 0 --dry-run)
[[ "$out" == *"would remove published image rbd:$P/imgfs.base.$B ("* ]] ||
  fail "s3 gc --dry-run does not list B's unused base: $out"
for x in A X C; do
  [[ "$out" != *"${!x}"* ]] || fail "s3 gc --dry-run lists $x, which a disk uses: $out"
done
check_cluster() {  # WHEN: what the disks need is all there
  for x in A X; do has_base "${!x}" || fail "$1: base of $x removed"; done
  [[ "$(children "$A")" == "$P/vm1_disk $P/vm2_disk " ]] || fail "$1: children of A: $(children "$A")"
  [[ "$(children "$X")" == "$P/vm3_disk " ]] || fail "$1: children of X: $(children "$X")"
  s1 image info "$A" >/dev/null || fail "$1: image A gone from s1"
  s2 image info "$A" >/dev/null || fail "$1: image A gone from s2"
  s3 image info "$X" >/dev/null || fail "$1: image X gone from s3"
  for s in s1 s2 s3; do
    $s fsck >"$T/fsck.out" || fail "$1: $s fsck: $(cat "$T/fsck.out")"
  done
  cmp -n $((6 << 20)) "$T/m1/vm3/disk" "$T/x.raw" || fail "$1: vm3/disk reads wrongly"
}
s3 gc --min-age 0 >"$T/gc3.out"
check_cluster "after s3's gc"
has_base "$B" && fail "s3's gc kept B's unused base: $(cat "$T/gc3.out")"
s1 image info "$B" >/dev/null || fail "s3's gc removed s1's image B"
# B's base comes back with the next disk made from it.
s1 disk create vm5/disk --image "$B" >/dev/null
has_base "$B" || fail "B not published again"
s1 disk rm vm5/disk
# s2 shares s1's chunk store: its gc removes the unused image B, and B's base.
s2 gc --min-age 0 >"$T/gc2.out"
check_cluster "after s2's gc"
expect_fail "image B after s2's gc" s1 image info "$B"
has_base "$B" && fail "s2's gc kept B's base"
has_base "$C" || fail "s2's gc removed C's base, which vm6/disk uses"
s1 image info "$C" >/dev/null || fail "s2's gc removed image C, which vm6/disk uses"
s1 disk rm vm6/disk
s1 image rm "$C" || fail "image rm C refused after its only disk went"
has_base "$C" && fail "image rm left C's base"
s1 gc --min-age 0 >"$T/gc1.out"
check_cluster "after s1's gc"

# fsck_fails STORE PATTERN: fsck exits 1 with one problem, matching PATTERN.
fsck_fails() {
  local rc=0
  $1 fsck >"$T/fsck.out" 2>&1 || rc=$?
  ((rc == 1)) || fail "$1 fsck exit $rc: $(cat "$T/fsck.out")"
  grep -q "$2" "$T/fsck.out" || fail "$1 fsck does not say '$2': $(cat "$T/fsck.out")"
  [[ "$(grep -c '^problem:' "$T/fsck.out")" == 1 ]] || fail "$1 fsck: $(cat "$T/fsck.out")"
}
# --- a published base that is no longer a complete publication (its mark
# removed by hand): fsck fails on every store, naming the disk -----------------------
rbdc image-meta remove "$P/imgfs.base.$X" imgfs.published
for s in s1 s2 s3; do
  fsck_fails $s "^problem: disk vm3/disk: parent image $X: .*not a complete imgfs publication"
done
grep -q "^base: *PROBLEM: .*not a complete imgfs publication" <<<"$(s1 disk info vm3/disk)" ||
  fail "s1 disk info vm3/disk: $(s1 disk info vm3/disk)"
grep -q "^parent: *$X (not in this store; its published base has a problem, below)$" \
  <<<"$(s1 disk info vm3/disk)" || fail "s1 disk info vm3/disk: $(s1 disk info vm3/disk)"
rbdc image-meta set "$P/imgfs.base.$X" imgfs.published 1
for s in s1 s2 s3; do $s fsck >/dev/null || fail "$s fsck after X's mark came back"; done

# --- a published base removed by hand: fsck on every store fails naming the
# disk ----------------------------------------------------------------------------------
# librbd refuses to unprotect a snapshot with clones; an operator who forces it
# edits the pool's clone records (rbd_children) first.
D=$(s2 image import "$T/d.raw")
s2 disk create vm7/disk --image "$D" >/dev/null
ns="${P#*/}"
pool_id=$(ceph -c "$IMGFS_CEPH_CONF" --id "$IMGFS_CEPH_ID" --keyring "$IMGFS_CEPH_KEYRING" \
  osd pool ls detail --format json | jq ".[] | select(.pool_name == \"${P%%/*}\") | .pool_id")
base_id=$(rbdc info --format json "$P/imgfs.base.$D" | jq -r .id)
snap_id=$(rbdc snap ls --format json "$P/imgfs.base.$D" | jq '.[] | select(.name == "base") | .id')
le() {  # VALUE BYTES: little-endian bytes as printf escapes
  local v=$1 i out=""
  for ((i = 0; i < $2; i++)); do out+=$(printf '\\x%02x' $(((v >> (8 * i)) & 255))); done
  printf '%s' "$out"
}
# cls_rbd's key of a parent snapshot in the namespace's rbd_children: pool id,
# image id, snapshot id.
printf "$(le "$pool_id" 8)$(le ${#base_id} 4)%s$(le "$snap_id" 8)" "$base_id" >"$T/child.key"
rados_pool() {
  rados -c "$IMGFS_CEPH_CONF" --id "$IMGFS_CEPH_ID" --keyring "$IMGFS_CEPH_KEYRING" \
    -p "${P%%/*}" -N "$ns" "$@"
}
rados_pool getomapval rbd_children --omap-key-file "$T/child.key" >/dev/null ||
  fail "no clone record for D's base"
rados_pool rmomapkey rbd_children --omap-key-file "$T/child.key"
rbdc snap unprotect "$P/imgfs.base.$D@base"
rbdc snap rm --no-progress "$P/imgfs.base.$D@base" >/dev/null
for s in s1 s2 s3; do
  fsck_fails $s "^problem: disk vm7/disk: .*published base rbd:$P/imgfs.base.$D@base, was removed"
  grep -q "^vm7/disk .*cannot be opened" <<<"$($s disk ls)" || fail "$s disk ls: $($s disk ls)"
  expect_fail "$s disk info vm7/disk" $s disk info vm7/disk
  expect_err_contains "imgfs.base.$D@base, was removed"
  [[ "$($s --json disk ls | jq -r '.[] | select(.disk == "vm7/disk") | .error')" == \
    *"cannot be opened"* ]] || fail "$s --json disk ls: $($s --json disk ls)"
done
# The other disks still read, and the broken one can be removed.
cmp -i 8192:8192 -n $(((6 << 20) - 8192)) "$T/m1/vm1/disk" "$T/a.raw" || fail "vm1/disk reads wrongly"
s3 disk rm vm7/disk
for s in s1 s2 s3; do
  $s fsck >"$T/fsck.out" || fail "$s fsck after the broken disk went: $(cat "$T/fsck.out")"
done
echo "rbd_hosts: ok"
