# gc on a rados chunk store shared by two hosts (two store directories on one
# pool namespace): ages, images in use, named images; an import in progress
# on host 2 (from a pipe that stalls half-way) makes gc on host 1 wait, so
# none of its chunks — not even the ones it found already stored, which were
# unreferenced when it found them — is swept; an importer killed with -9
# blocks gc only until its lease runs out. Needs the test cluster
# (tools/test.sh starts it).
source "$(dirname "$0")/lib.sh"
: "${IMGFS_CEPH_CONF:?the test runner (tools/test.sh) provides a Ceph cluster}"
pool="${IMGFS_CEPH_CHUNK_POOL:-$IMGFS_CEPH_POOL}"
ns="gc-$$-$RANDOM"
rados_ns() {
  rados -c "$IMGFS_CEPH_CONF" --id "$IMGFS_CEPH_ID" --keyring "$IMGFS_CEPH_KEYRING" \
    -p "$pool" -N "$ns" "$@"
}
chunk_objects() { rados_ns ls | grep -c '^chunk\.' || true; }
chunks_at_least() { (($(chunk_objects) >= $1)); }
gc_lockers() { rados_ns lock info imgfs.lock.gc imgfs 2>/dev/null | jq '.lockers | length' || echo 0; }
remove_namespace() { rados_ns ls | while read -r o; do rados_ns rm "$o"; done; }
on_exit remove_namespace
# Host 2's operations time out after 5 s, so its GC lock lease is 15 s.
for h in host1:20 host2:5; do
  "$IMGFS" --store "$T/${h%:*}" init --chunk-size 64K --chunks "rados:$pool/$ns" \
    --ceph-conf "$IMGFS_CEPH_CONF" --ceph-id "$IMGFS_CEPH_ID" --keyring "$IMGFS_CEPH_KEYRING" \
    --ceph-timeout "${h#*:}" >/dev/null
done
h1() { "$IMGFS" --store "$T/host1" "$@"; }
h2() { "$IMGFS" --store "$T/host2" "$@"; }
# wait_until WHAT CMD...: polls for a condition the test cannot be told of.
wait_until() {
  local what="$1"; shift
  for _ in $(seq 600); do "$@" && return 0; sleep 0.1; done
  fail "gave up waiting for $what"
}

# --- ages, use, names -----------------------------------------------------------------
for x in a b c; do head -c 1M /dev/urandom >"$T/$x.raw"; done
A=$(h1 image import "$T/a.raw" --name named)
B=$(h1 image import "$T/b.raw")
C=$(h2 image import "$T/c.raw")
h1 disk create vm1/disk --image "$B" >/dev/null
[[ "$(chunk_objects)" == 48 ]] || fail "expected 48 chunk objects, found $(chunk_objects)"
h2 gc >/dev/null
[[ "$(h1 --json image ls | jq length)" == 3 ]] || fail "the default minimum age (24h) removed a new image"
h2 gc --min-age 1h >/dev/null
[[ "$(h1 --json image ls | jq length)" == 3 ]] || fail "--min-age 1h removed a new image"
j=$(h1 --json gc --min-age 0 --keep-named)
[[ "$(jq -c '[.images[].id]' <<<"$j")" == "[\"$C\"]" ]] || fail "gc removed $(jq -c '[.images[].id]' <<<"$j"), want only $C"
[[ "$(jq .chunks <<<"$j")" == 16 ]] || fail "gc swept $(jq .chunks <<<"$j") chunks, want 16"
[[ "$(chunk_objects)" == 32 ]] || fail "expected 32 chunk objects after gc, found $(chunk_objects)"
expect_fail "image C after gc" h2 image info "$C"
h2 image verify "$A" >/dev/null || fail "named image damaged by gc"
h2 image verify "$B" >/dev/null || fail "image in use damaged by gc"

# --- a local disk of host 2 keeps its image alive for host 1's gc and image rm ---------
head -c 1M /dev/urandom >"$T/d.raw"
D=$(h1 image import "$T/d.raw")
h2 disk create vm2/disk --image "$D" >/dev/null
h1 gc --min-age 0 --keep-named >/dev/null
h1 image info "$D" >/dev/null || fail "host 1's gc removed the image of host 2's disk"
expect_fail "image rm of an image host 2's disk uses" h1 image rm "$D"
expect_err_contains "vm2/disk"
h2 disk rm vm2/disk
h1 gc --min-age 0 --keep-named >/dev/null
h1 image info "$D" >/dev/null || fail "host 2's stale use record was ignored before host 2's gc"
h2 gc --min-age 1h >/dev/null  # drops host 2's own stale record
h1 gc --min-age 0 --keep-named >/dev/null
expect_fail "image D after both gcs" h1 image info "$D"
[[ "$(chunk_objects)" == 32 ]] || fail "expected 32 chunk objects, found $(chunk_objects)"

# --- an import in progress on host 2 while gc runs on host 1 ---------------------------
# X's chunks are stored but unreferenced (its image removed): exactly what a
# sweep takes. Host 2's import reads X's content first (finding those chunks
# present), then new data, then stalls on a FIFO.
head -c 1M /dev/urandom >"$T/x.raw"
head -c 1M /dev/urandom >"$T/y.raw"
head -c 512K /dev/urandom >"$T/z.raw"
X=$(h1 image import "$T/x.raw")
h1 image rm "$X"
before=$(chunk_objects)
mkfifo "$T/gate"
# On failure: the writer is let go (a FIFO opened read-write never blocks).
on_exit "exec 3<>'$T/gate'; exec 3>&-"
{ cat "$T/x.raw" "$T/y.raw"; cat "$T/gate" >/dev/null; cat "$T/z.raw"; } |
  "$IMGFS" --store "$T/host2" image import - --name slow >"$T/slow.id" 2>"$T/slow.err" &
import_pid=$!
on_exit "kill -9 $import_pid 2>/dev/null; true"
# Mid-flight: it holds the GC lock and has stored Y's chunks.
wait_until "host 2's import to store its first chunks" chunks_at_least $((before + 16))
[[ "$(gc_lockers)" == 1 ]] || fail "the import holds not one GC lock: $(gc_lockers)"
"$IMGFS" --store "$T/host1" gc --min-age 0 --keep-named >"$T/gc.out" 2>"$T/gc.err" &
gc_pid=$!
on_exit "kill -9 $gc_pid 2>/dev/null; true"
wait_until "gc on host 1 to wait for the import" grep -q "waiting for imports" "$T/gc.err"
kill -0 "$gc_pid" || fail "gc did not wait for the import: $(cat "$T/gc.out" "$T/gc.err")"
[[ "$(chunk_objects)" -ge $((before + 16)) ]] || fail "chunks swept while the import runs"
echo go >"$T/gate"
wait "$import_pid" || fail "the import failed: $(cat "$T/slow.err")"
wait "$gc_pid" || fail "gc failed: $(cat "$T/gc.err")"
slow=$(cat "$T/slow.id")
[[ "$(h1 --json image info slow | jq -r .id)" == "$slow" ]] || fail "host 1 does not see the import"
h1 image verify slow >"$T/verify.out" || fail "gc swept chunks of the import: $(cat "$T/verify.out")"
h1 fsck >/dev/null || fail "fsck after concurrent import and gc"
[[ "$(h1 --json image info slow | jq .size)" == $((2560 << 10)) ]] || fail "wrong size of slow"

# --- an importer killed with -9 holds gc up only until its lease runs out --------------
before=$(chunk_objects)
mkfifo "$T/gate2"
on_exit "exec 3<>'$T/gate2'; exec 3>&-"
{ cat "$T/z.raw"; head -c 1M /dev/urandom; cat "$T/gate2" >/dev/null; } |
  "$IMGFS" --store "$T/host2" image import - >/dev/null 2>&1 &
dead_pid=$!
wait_until "the doomed import to store chunks" chunks_at_least $((before + 16))
kill -9 "$dead_pid"
echo go >"$T/gate2"  # lets the writer end
wait "$dead_pid" 2>/dev/null || true
[[ "$(gc_lockers)" == 1 ]] || fail "the killed import's lease is gone already"
h1 gc --min-age 0 --keep-named >"$T/gc2.out" 2>"$T/gc2.err" || fail "gc after kill -9: $(cat "$T/gc2.err")"
grep -q "waiting for imports" "$T/gc2.err" || fail "gc did not wait for the dead import's lease"
[[ "$(chunk_objects)" == "$before" ]] || fail "the dead import's chunks were not swept: $(chunk_objects) vs $before"
h1 image verify >/dev/null || fail "verify after gc"
echo "gc_rados: ok"
