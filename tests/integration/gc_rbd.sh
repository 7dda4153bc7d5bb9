# gc and `image rm` on an rbd store, checked with the rbd tool: the published
# bases (imgfs.base.<id>) of removed images go, orphaned bases (their image
# gone from the store) and half-done publications go, and a base that a clone
# uses (a disk of this or another host, or a clone made with the rbd tool)
# stays, with its image. Needs the test cluster (tools/test.sh starts it).
source "$(dirname "$0")/lib.sh"
: "${IMGFS_CEPH_CONF:?the test runner (tools/test.sh) provides a Ceph cluster}"
make_rbd_namespace
P="$RBD_NS"
h1() { "$IMGFS" --store "$T/host1" "$@"; }
h2() { "$IMGFS" --store "$T/host2" "$@"; }
h1 init --disks "rbd:$P" "${CEPH_ARGS_IMGFS[@]}" >/dev/null
h2 init --disks "rbd:$P" "${CEPH_ARGS_IMGFS[@]}" >/dev/null
bases() { rbdc ls "$P" | grep '^imgfs\.' | sort | tr '\n' ' '; }
has_base() { rbdc ls "$P" | grep -qx "imgfs.base.$1"; }

for x in a b c d e f; do head -c 1M /dev/urandom >"$T/$x.raw"; done
A=$(h1 image import "$T/a.raw")  # used by a disk of host 1
B=$(h1 image import "$T/b.raw")  # published, its disk removed: unused
C=$(h1 image import "$T/c.raw")  # used only by a clone made with the rbd tool
D=$(h1 image import "$T/d.raw")  # used only by a disk of host 2 (not an image there)
h1 disk create vm1/disk --image "$A" >/dev/null
h1 disk create vm2/disk --image "$B" >/dev/null
h1 disk rm vm2/disk
h1 disk create vm3/disk --image "$C" >/dev/null
rbdc clone "$P/imgfs.base.$C@base" "$P/foreign-clone"
h1 disk rm vm3/disk
# Host 2 imports D too (same content, same id), makes a disk, and forgets the image.
[[ "$(h2 image import "$T/d.raw")" == "$D" ]] || fail "same content, another id"
h2 disk create vm4/disk --image "$D" >/dev/null
# An orphan: published from host 2, its image removed from host 2's store
# by hand (as if host 2's store were lost); host 1 never had it.
E=$(h2 image import "$T/e.raw")
h2 disk create vm5/disk --image "$E" >/dev/null
h2 disk rm vm5/disk
rm -f "$T/host2/chunks/records/images/$E"
# A half-done publication whose publisher died (no lock held).
rbdc create --size 1M "$P/imgfs.tmp.$B.deadbeefdeadbeef"
for x in A B C D E; do has_base "${!x}" || fail "base of $x was not published: $(bases)"; done

# --- dry run: lists images and bases with their bytes, removes nothing ---------------
before=$(bases)
out=$(h1 gc --min-age 0 --dry-run)
[[ "$out" == *"would remove image $B"* ]] || fail "dry run does not list image B: $out"
[[ "$out" == *"would remove published image rbd:$P/imgfs.base.$B ("* ]] ||
  fail "dry run does not list B's base: $out"
[[ "$out" == *"would remove published image rbd:$P/imgfs.base.$E ("* ]] ||
  fail "dry run does not list the orphaned base E: $out"
[[ "$out" == *"imgfs.tmp.$B.deadbeefdeadbeef"* ]] || fail "dry run misses the half-done publication: $out"
for x in A C D; do
  [[ "$out" != *"${!x}"* ]] || fail "dry run lists $x, which a clone uses: $out"
done
[[ "$out" == *"published images:"*"would be freed in the Ceph pool"* ]] || fail "no byte total: $out"
j=$(h1 --json gc --min-age 0 --dry-run)
[[ "$(jq '.published | length' <<<"$j")" == 3 ]] || fail "json dry run: $j"
[[ "$(jq "[.published[] | select(.location | endswith(\"imgfs.base.$B\")) | .used_bytes][0]" <<<"$j")" -gt 0 ]] ||
  fail "no used bytes for B's base: $j"
[[ "$(bases)" == "$before" ]] || fail "dry run changed the pool: $(bases)"

# --- the real run ----------------------------------------------------------------
h1 gc --min-age 0 >"$T/gc.out"
has_base "$A" || fail "base of A (disk vm1/disk) removed"
has_base "$C" || fail "base of C (a clone made with rbd) removed"
has_base "$D" || fail "base of D (a disk of host 2) removed"
has_base "$B" && fail "unused base of B kept"
has_base "$E" && fail "orphaned base of E kept"
rbdc ls "$P" | grep -q '^imgfs\.tmp\.' && fail "half-done publication kept: $(bases)"
h1 image info "$A" >/dev/null || fail "image A removed"
h1 image info "$C" >/dev/null || fail "image C (used by a clone) removed"
h1 image info "$D" >/dev/null || fail "image D (used by host 2's disk) removed"
expect_fail "image B after gc" h1 image info "$B"
rbdc snap ls "$P/imgfs.base.$A" | grep -q " base " || fail "A's snapshot gone"
[[ "$(rbdc children "$P/imgfs.base.$A@base")" == "$P/vm1_disk" ]] ||
  fail "children of A: $(rbdc children "$P/imgfs.base.$A@base")"
[[ "$(rbdc children "$P/imgfs.base.$C@base")" == "$P/foreign-clone" ]] ||
  fail "children of C: $(rbdc children "$P/imgfs.base.$C@base")"
# The disks still read their images.
h1 disk ls | grep -q vm1/disk || fail "vm1/disk gone"
h1 fsck >/dev/null || fail "fsck after gc"

# --- image rm ----------------------------------------------------------------------
# Refused while a clone uses its base, naming the clone, changing nothing.
expect_fail "image rm of C" h1 image rm "$C"
expect_err_contains "foreign-clone"
has_base "$C" || fail "refused image rm removed C's base"
h1 image info "$C" >/dev/null || fail "refused image rm removed C"
# Refused while a disk of another host uses it, naming the disk.
expect_fail "image rm of D" h1 image rm "$D"
expect_err_contains "vm4/disk"
has_base "$D" || fail "refused image rm removed D's base"
# An image whose base no clone uses: the base goes with it.
F=$(h1 image import "$T/f.raw")
h1 disk create vm6/disk --image "$F" >/dev/null
h1 disk rm vm6/disk
has_base "$F" || fail "base of F not published"
h1 image rm "$F"
has_base "$F" && fail "image rm left F's base: $(bases)"
expect_fail "image F after rm" h1 image info "$F"
# Once the clone is gone, C goes with its base.
rbdc rm --no-progress "$P/foreign-clone" >/dev/null
h1 image rm "$C"
has_base "$C" && fail "image rm left C's base"
echo "gc_rbd: ok"
