# The rbd disk backend through the command line, the rbd tool and qemu-img,
# against the test cluster (tools/test.sh starts it). Works in its own RBD
# namespace, removed at the end.
source "$(dirname "$0")/lib.sh"
: "${IMGFS_CEPH_CONF:?the test runner (tools/test.sh) provides a Ceph cluster}"
qemu_rbd() { echo "rbd:$1:conf=$IMGFS_CEPH_CONF:id=$IMGFS_CEPH_ID:keyring=$IMGFS_CEPH_KEYRING"; }
make_rbd_namespace
P="$RBD_NS"
ns="${P#*/}"
ceph_args=("${CEPH_ARGS_IMGFS[@]}")

"$IMGFS" init --disks "rbd:$P" "${ceph_args[@]}" >/dev/null
make_sample_raw "$T/src.raw" 16
id="$("$IMGFS" image import "$T/src.raw" --name sample)"
[[ "$id" =~ ^[0-9a-f]{32}$ ]] || fail "import printed '$id'"
"$IMGFS" disk create i1/disk --image sample >/dev/null
"$IMGFS" disk create i1/disk.eph0 --blank --size 1G >/dev/null

# The rbd tool sees a clone of the one publication, and the publication is thin.
rbdc ls "$P" >"$T/ls"
[[ "$(cat "$T/ls")" == $'i1_disk\ni1_disk.eph0\nimgfs.base.'"$id" ]] || fail "rbd ls: $(cat "$T/ls")"
rbdc info "$P/i1_disk" >"$T/info"
grep -q "parent: $P/imgfs.base.$id@base" "$T/info" || fail "rbd info: $(cat "$T/info")"
grep -q "exclusive-lock" "$T/info" || fail "no exclusive-lock: $(cat "$T/info")"
rbdc snap ls "$P/imgfs.base.$id" | grep -q " base " || fail "no snapshot base"
rbdc info "$P/imgfs.base.$id@base" | grep -q "protected: True" || fail "base not protected"
used() { rbdc du --format json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["images"][0]["used_size"])'; }
# The sample has data in MiB 0, 2-3 and 15: RBD objects 0 and 3 (4 MiB each).
[[ "$(used "$P/imgfs.base.$id@base")" -eq $((8 << 20)) ]] || fail "base uses $(used "$P/imgfs.base.$id@base")"
[[ "$(used "$P/i1_disk")" -eq 0 ]] || fail "fresh clone uses $(used "$P/i1_disk")"
[[ "$(used "$P/i1_disk.eph0")" -eq 0 ]] || fail "blank disk uses $(used "$P/i1_disk.eph0")"

# qemu-img reads the disk straight from RBD: identical to the image.
qemu-img compare -f raw -F raw "$T/src.raw" "$(qemu_rbd "$P/i1_disk")" >/dev/null ||
  fail "qemu-img compare of rbd:$P/i1_disk and the source differ"

# A second host (another store, same pool) sees the disks and reuses the base.
S2="$T/store2"
IMGFS_STORE="$S2" "$IMGFS" init --disks "rbd:$P" "${ceph_args[@]}" >/dev/null
IMGFS_STORE="$S2" "$IMGFS" disk ls | grep -q "i1/disk" || fail "host 2 does not see i1/disk"
id2="$(IMGFS_STORE="$S2" "$IMGFS" image import "$T/src.raw")"
[[ "$id2" == "$id" ]] || fail "same content, different id: $id2"
IMGFS_STORE="$S2" "$IMGFS" disk create i2/disk --image "$id" >/dev/null
[[ "$(rbdc ls "$P" | grep -c '^imgfs\.')" -eq 1 ]] || fail "a second base: $(rbdc ls "$P")"

# Through the mount: written bytes reach RBD (qemu-img reads them there), and
# while the mount has the disk open for writing, host 2 can neither write it
# (its own mount gets EBUSY) nor remove or resize it.
M="$T/mnt"
mount_imgfs "$M"
m1_pid="$MOUNT_PID"
head -c 3M /dev/urandom >"$T/patch"
dd if="$T/patch" of="$M/i1/disk" bs=1M seek=5 conv=notrunc,fsync status=none
qemu-img compare -f raw -F raw "$M/i1/disk" "$(qemu_rbd "$P/i1_disk")" >/dev/null ||
  fail "the mount's i1/disk and rbd:$P/i1_disk differ"
cmp -s -i $((5 << 20)):0 -n $((3 << 20)) "$M/i1/disk" "$T/patch" || fail "patch not read back"
exec 3<>"$M/i1/disk"
M2="$T/mnt2"
IMGFS_STORE="$S2" mount_imgfs "$M2"
expect_errno "second writer" "Device or resource busy" \
  dd if="$T/patch" of="$M2/i1/disk" bs=1M count=1 conv=notrunc status=none
cmp -s -n $((1 << 20)) "$M2/i1/disk" "$M/i1/disk" || fail "host 2 cannot read i1/disk"
expect_fail "rm of a disk open elsewhere" env IMGFS_STORE="$S2" "$IMGFS" disk rm i1/disk
expect_err_contains "in use"
expect_fail "resize of a disk open elsewhere" env IMGFS_STORE="$S2" "$IMGFS" disk resize i1/disk 30G
expect_err_contains "in use"
exec 3>&-
unmount_imgfs "$M2" "$MOUNT_PID"
unmount_imgfs "$M" "$m1_pid"

# The command line: ls, info, resize, refusals.
"$IMGFS" disk ls >"$T/dls"
grep -q "i1/disk" "$T/dls" && grep -q "i1/disk.eph0" "$T/dls" || fail "disk ls: $(cat "$T/dls")"
"$IMGFS" --json disk info i1/disk >"$T/dinfo"
grep -q "$id" "$T/dinfo" || fail "disk info lacks the parent: $(cat "$T/dinfo")"
grep -q "rbd:$P/i1_disk" "$T/dinfo" || fail "disk info lacks the location: $(cat "$T/dinfo")"
"$IMGFS" disk resize i1/disk 20G >/dev/null
[[ "$(rbdc info --format json "$P/i1_disk" | python3 -c 'import json,sys; print(json.load(sys.stdin)["size"])')" \
  -eq $((20 << 30)) ]] || fail "resize did not reach RBD"
expect_fail "shrink" "$IMGFS" disk resize i1/disk 1G
# Sizes past the largest rbd disk (2^24 objects of 4 MiB: 64T) are refused
# before the cluster is asked (librbd itself would take up to 976T).
images_before="$(rbdc ls "$P" | sort)"
expect_fail "a disk past the largest" "$IMGFS" disk create i1/big --blank --size $(((64 << 40) + 4096))
expect_err_contains "at most 64T (70368744177664 bytes, 2^24 RBD objects of 4M"
expect_fail "a 1P clone" "$IMGFS" disk create i1/big --image sample --size 1P
expect_fail "resize to 1P" "$IMGFS" disk resize i1/disk 1P
expect_err_contains "at most 64T"
[[ "$(rbdc ls "$P" | sort)" == "$images_before" ]] || fail "a refused size changed the pool"
[[ "$(rbdc info --format json "$P/i1_disk" | jq .size)" -eq $((20 << 30)) ]] ||
  fail "a refused resize changed the disk"
expect_fail "image rm of a used image" "$IMGFS" image rm sample
expect_err_contains "in use"
rbdc info "$P/imgfs.base.$id" >/dev/null || fail "the base went away"
expect_fail "instance with _" "$IMGFS" disk create bad_name/disk --image sample
expect_fail "disk exists" "$IMGFS" disk create i1/disk --image sample

# Two hosts publishing a new image at the same moment: both succeed, one base.
head -c 24M /dev/urandom >"$T/two.raw"
idt="$("$IMGFS" image import "$T/two.raw")"
[[ "$(IMGFS_STORE="$S2" "$IMGFS" image import "$T/two.raw")" == "$idt" ]] || fail "ids differ"
"$IMGFS" disk create h1/disk --image "$idt" >"$T/h1.out" 2>&1 &
p1=$!
IMGFS_STORE="$S2" "$IMGFS" disk create h2/disk --image "$idt" >"$T/h2.out" 2>&1 &
p2=$!
wait "$p1" || fail "publisher 1: $(cat "$T/h1.out")"
wait "$p2" || fail "publisher 2: $(cat "$T/h2.out")"
rbdc ls "$P" >"$T/ls"
[[ "$(grep -c "^imgfs\.base\.$idt$" "$T/ls")" -eq 1 ]] || fail "bases: $(cat "$T/ls")"
grep -q "^imgfs\.tmp\." "$T/ls" && fail "left-over publication: $(cat "$T/ls")"
for h in h1 h2; do
  qemu-img compare -f raw -F raw "$T/two.raw" "$(qemu_rbd "$P/${h}_disk")" >/dev/null ||
    fail "$h/disk differs from its image"
done

# Removal: a disk no one uses goes; its instance with it.
"$IMGFS" disk rm h1/disk
rbdc info "$P/h1_disk" >/dev/null 2>&1 && fail "h1_disk still in RBD"
"$IMGFS" disk ls | grep -q "h1/" && fail "h1 still listed"

# A backend error reaches the writer: with the mount's RADOS client cut off
# (blocklisted, as when another host breaks its lock), a write and fsync of a
# disk it holds open fail with EIO; neither claims success.
M3="$T/mnt3"
mount_imgfs "$M3"
python3 - "$M3/i1/disk.eph0" "$P/i1_disk.eph0" "$M3/i1/disk" "$M3/h2/disk" <<'EOF' ||
import json, mmap, os, subprocess, sys, time
ceph = ["-c", os.environ["IMGFS_CEPH_CONF"], "--id", os.environ["IMGFS_CEPH_ID"],
        "--keyring", os.environ["IMGFS_CEPH_KEYRING"]]


def expect_eio(what, op):
    try:
        op()
    except OSError as e:
        if e.errno != 5:
            sys.exit(f"{what}: expected EIO, got {e}")
        return
    sys.exit(f"{what} succeeded for a client that was cut off")


fd = os.open(sys.argv[1], os.O_RDWR)
os.pwrite(fd, b"x" * 65536, 0)
os.fsync(fd)
# Clones open for writing read their parent's bytes from the local store
# (object 3 of i1/disk and object 0 of h2/disk were never written); once cut
# off, h2/disk's reads fail within seconds (it stats its header in the
# cluster once a second), and i1/disk's once one of its requests failed.
clone = os.open(sys.argv[3], os.O_RDWR | os.O_DIRECT)
other = os.open(sys.argv[4], os.O_RDWR | os.O_DIRECT)
buf = mmap.mmap(-1, 4096)
if os.preadv(clone, [buf], 12 << 20) != 4096 or os.preadv(other, [buf], 0) != 4096:
    sys.exit("short read of a clone")
status = json.loads(subprocess.check_output(["rbd", *ceph, "status", "--format", "json", sys.argv[2]]))
addr = status["watchers"][0]["address"]
subprocess.run(["ceph", *ceph, "osd", "blocklist", "add", addr], check=True, capture_output=True)
try:
    for _ in range(150):  # 30 s
        try:
            os.preadv(other, [buf], 0)
        except OSError as e:
            if e.errno != 5:
                sys.exit(f"a cut-off clone's read: expected EIO, got {e}")
            break
        time.sleep(0.2)
    else:
        sys.exit("a clone still read its parent's bytes locally 30 s after being cut off")
    expect_eio("write and fsync", lambda: (os.pwrite(fd, b"y" * 65536, 65536), os.fsync(fd)))
    # Object 2; the read below is of object 3.
    expect_eio("a write to the clone", lambda: (os.pwritev(clone, [buf], 9 << 20), os.fsync(clone)))
    expect_eio("a read of the clone's parent bytes after a failed request",
               lambda: os.preadv(clone, [buf], 12 << 20))
finally:
    subprocess.run(["ceph", *ceph, "osd", "blocklist", "rm", addr], check=True, capture_output=True)
    for f in (fd, clone, other):
        try:
            os.close(f)  # may report the failed flush again: that is right too
        except OSError:
            pass
EOF
  fail "a backend error was not returned"
unmount_imgfs "$M3" "$MOUNT_PID"

# A disk opened read-only (a backup, `qemu-img convert`) reads its parent's
# bytes from the local store too, where a stat in the cluster at each read
# finds no object of the clone (docs/rbd.md, "Reads of the parent from the
# local store"); what another client writes, and a shrink and regrowth it
# makes, are seen at the next read. r1/disk: 24 MiB of data, 6 objects.
"$IMGFS" disk create r1/disk --image "$idt" >/dev/null
M4="$T/mnt4"
mount_imgfs "$M4" -o "metrics_file=$T/m4.prom,metrics_interval=1"
m4_pid="$MOUNT_PID"
# local_read_bytes: r1/disk's imgfs_disk_local_parent_read_bytes_total, once
# the metrics file shows the reads made so far (it is rewritten each second).
local_read_bytes() {
  local v="" i
  sleep 1.2
  for ((i = 0; i < 30; i++)); do
    v="$(awk -v n="imgfs_disk_local_parent_read_bytes_total{mountpoint=\"$M4\",instance_name=\"r1\",disk=\"disk\"}" \
      '$1 == n { v = $2 } END { print v + 0 }' "$T/m4.prom" 2>/dev/null)"
    [[ -n "$v" ]] && break
    sleep 0.2
  done
  echo "${v:-0}"
}
# ro_read OFF LEN WANT-FILE WANT-OFF: an O_DIRECT read of r1/disk through the
# mount, opened read-only, must equal WANT-FILE's bytes at WANT-OFF
# (/dev/zero: zeros).
ro_read() {
  python3 - "$M4/r1/disk" "$@" <<'PY' || fail "read-only read of r1/disk at $1+$2 differs from $3@$4"
import mmap, os, sys
path, off, n, want, woff = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
buf = mmap.mmap(-1, n)
got = os.preadv(fd, [buf], off)
os.close(fd)
with open(want, "rb") as f:
    f.seek(woff)
    exp = f.read(n)
sys.exit(0 if got == n and buf[:] == exp else 1)
PY
}
l0="$(local_read_bytes)"
ro_read 0 $((4 << 20)) "$T/two.raw" 0
ro_read $((20 << 20)) $((4 << 20)) "$T/two.raw" $((20 << 20))
l1="$(local_read_bytes)"
((l1 - l0 == 8 << 20)) || fail "read-only reads of the parent: $((l1 - l0)) bytes locally, not 8 MiB"
# Another client writes 4 KiB in object 1 (qemu-io through librbd, which
# takes the lock: the mount holds none).
head -c 4096 /dev/urandom >"$T/w4k"
qemu-io -f raw -c "write -s $T/w4k $((5 << 20)) 4096" "$(qemu_rbd "$P/r1_disk")" >"$T/qemu-io.out" 2>&1 ||
  fail "qemu-io could not write r1_disk: $(cat "$T/qemu-io.out")"
cp "$T/two.raw" "$T/r1.want"
dd if="$T/w4k" of="$T/r1.want" bs=4096 seek=$(((5 << 20) / 4096)) conv=notrunc status=none
ro_read $((4 << 20)) $((4 << 20)) "$T/r1.want" $((4 << 20))
l2="$(local_read_bytes)"
((l2 == l1)) || fail "reads of an object another client wrote were served locally ($((l2 - l1)) bytes)"
# Another client shrinks the disk to 8 MiB and grows it back: MiB 8-24 read
# zeros now (above the parent overlap), not the parent's bytes.
rbdc resize --allow-shrink --size 8M "$P/r1_disk" >/dev/null 2>&1
rbdc resize --size 24M "$P/r1_disk" >/dev/null 2>&1
sleep 1
ro_read $((8 << 20)) $((16 << 20)) /dev/zero 0
ro_read 0 $((4 << 20)) "$T/two.raw" 0
l3="$(local_read_bytes)"
((l3 - l2 == 4 << 20)) || fail "after the shrink, $((l3 - l2)) bytes locally, not the 4 MiB of object 0"
unmount_imgfs "$M4" "$m4_pid"

# Bad input: init checks the cluster, the key and the pool at once, with a
# clear one-line error, and creates nothing; a dead cluster fails after the
# client timeout (--ceph-timeout), never hangs.
init_refused() {  # WHAT EXPECTED-TEXT INIT-ARGS...
  local what="$1" text="$2" store="$T/refused"
  shift 2
  expect_fail "$what" env IMGFS_STORE="$store" "$IMGFS" init "$@"
  expect_err_contains "$text"
  [[ ! -e "$store" ]] || fail "$what: init left $store behind"
}
init_refused "missing pool" "pool 'no-such-pool-$ns' does not exist" \
  --disks "rbd:no-such-pool-$ns" "${ceph_args[@]}"
init_refused "missing namespace" "does not exist" \
  --disks "rbd:${P%%/*}/no-such-ns-$ns" "${ceph_args[@]}"
init_refused "a pool that is not for RBD" "is not an RBD pool" \
  --disks "rbd:$IMGFS_CEPH_CHUNK_POOL" "${ceph_args[@]}"

ceph-authtool --create-keyring "$T/bad.keyring" --gen-key -n "client.$IMGFS_CEPH_ID" >/dev/null
init_refused "wrong key" "Permission denied" --disks "rbd:$P" \
  --ceph-conf "$IMGFS_CEPH_CONF" --ceph-id "$IMGFS_CEPH_ID" --keyring "$T/bad.keyring"

# A key that may only read the pool.
ro="imgfs-ro-$ns"
ceph -c "$IMGFS_CEPH_CONF" --id "$IMGFS_CEPH_ID" --keyring "$IMGFS_CEPH_KEYRING" \
  auth get-or-create "client.$ro" mon 'profile rbd' osd "profile rbd-read-only pool=${P%%/*}" >"$T/ro.keyring"
on_exit "ceph -c '$IMGFS_CEPH_CONF' --id '$IMGFS_CEPH_ID' --keyring '$IMGFS_CEPH_KEYRING' auth del 'client.$ro' >/dev/null 2>&1"
init_refused "read-only key" "writing to $P" --disks "rbd:$P" \
  --ceph-conf "$IMGFS_CEPH_CONF" --ceph-id "$ro" --keyring "$T/ro.keyring"

sed 's/^mon host = .*/mon host = [v2:127.0.0.1:9]/' "$IMGFS_CEPH_CONF" >"$T/dead.conf"
init_refused "dead cluster" "connecting to the cluster" --disks "rbd:$P" --ceph-timeout 3 \
  --ceph-conf "$T/dead.conf" --ceph-id "$IMGFS_CEPH_ID" --keyring "$IMGFS_CEPH_KEYRING"
expect_fail "bad timeout" env IMGFS_STORE="$T/refused" "$IMGFS" init --disks "rbd:$P" \
  --ceph-timeout 0 "${ceph_args[@]}"
echo "rbd_disks: ok"
