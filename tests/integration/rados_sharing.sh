# Two hosts (two store directories) with their chunks in one RADOS pool share
# one _base cache: each sees the other's images and names, importing the same
# content again writes no chunk object, and a chunk object that goes missing is
# named by `image verify` (and is EIO through the mount). Needs the test
# cluster (tools/test.sh provides it); skipped without it.
source "$(dirname "$0")/lib.sh"
if [[ -z "${IMGFS_CEPH_CONF:-}" ]]; then
  echo "rados_sharing: skipped (IMGFS_CEPH_CONF is not set; tools/test.sh sets it)"
  exit 0
fi
pool="${IMGFS_CEPH_CHUNK_POOL:-$IMGFS_CEPH_POOL}"
ns="sharing-$$-$RANDOM"
id_opts=(--id "${IMGFS_CEPH_ID:-admin}")
[[ -n "${IMGFS_CEPH_KEYRING:-}" ]] && id_opts+=(--keyring "$IMGFS_CEPH_KEYRING")
rados_ns() { rados -c "$IMGFS_CEPH_CONF" "${id_opts[@]}" -p "$pool" -N "$ns" "$@"; }
chunk_objects() { rados_ns ls | grep -c '^chunk\.' || true; }
remove_namespace() { rados_ns ls | while read -r o; do rados_ns rm "$o"; done; }
on_exit remove_namespace

init_host() {
  "$IMGFS" --store "$1" init --chunks "rados:$pool/$ns" --ceph-conf "$IMGFS_CEPH_CONF" \
    --ceph-id "${IMGFS_CEPH_ID:-admin}" ${IMGFS_CEPH_KEYRING:+--keyring "$IMGFS_CEPH_KEYRING"} \
    >/dev/null
}
h1() { "$IMGFS" --store "$T/host1" "$@"; }
h2() { "$IMGFS" --store "$T/host2" "$@"; }
init_host "$T/host1"
init_host "$T/host2"

# 3 MiB of data, 1 MiB of zeros (holes), 2 MiB of data.
{ head -c 3M /dev/urandom; head -c 1M /dev/zero; head -c 2M /dev/urandom; } >"$T/a.raw"
cp "$T/a.raw" "$T/a-copy.raw"
head -c 1M /dev/urandom >"$T/b.raw"

id=$(h1 image import "$T/a.raw" --name ubuntu-24.04)
[[ "$id" =~ ^[0-9a-f]{32}$ ]] || fail "import printed '$id', not an image id"
chunks=$(chunk_objects)
((chunks > 0)) || fail "import into rados wrote no chunk objects"
rados_ns ls | grep '^chunk\.' >"$T/a.chunks"

# Host 2 sees host 1's image and name.
h2 image ls | grep -q "$id" || fail "host2 does not list host1's image"
[[ "$(h2 --json image info ubuntu-24.04 | jq -r .id)" == "$id" ]] ||
  fail "host2 does not resolve host1's name"

# The same content imported on host 2, under another name: same id, no new chunk object.
id2=$(h2 image import "$T/a-copy.raw" --name glance-1234)
[[ "$id2" == "$id" ]] || fail "identical content got another id: $id2 vs $id"
[[ "$(chunk_objects)" == "$chunks" ]] || fail "second import wrote chunk objects: $chunks -> $(chunk_objects)"
[[ "$(h1 --json image info glance-1234 | jq -r .id)" == "$id" ]] ||
  fail "host1 does not resolve host2's name"

# New content on host 2 is visible on host 1; a name cannot be taken twice.
idb=$(h2 image import "$T/b.raw" --name other)
h1 image ls | grep -q "$idb" || fail "host1 does not list host2's image"
expect_fail "taking host1's name from host2" h2 image name "$idb" ubuntu-24.04
[[ "$(h1 --json image info ubuntu-24.04 | jq -r .id)" == "$id" ]] || fail "name moved after refusal"

h1 image verify "$id" >/dev/null || fail "verify of a sound image failed on host1"
h2 image verify "$id" >/dev/null || fail "verify of a sound image failed on host2"

# The mount of either host reads _base/<id> of an image imported on the other.
mount_host() {  # STORE MNT
  mkdir -p "$2"
  "$IMGFS" --store "$1" mount -f "$2" 2>"$T/mount.err" &
  local pid=$!
  on_exit "fusermount3 -u -z '$2' 2>/dev/null; kill $pid 2>/dev/null; wait $pid 2>/dev/null"
  for _ in $(seq 100); do
    [[ -e "$2/_base/$id" ]] && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
mounted=""
if mount_host "$T/host2" "$T/mnt2"; then
  mounted=1
  cmp "$T/mnt2/_base/$id" "$T/a.raw" || fail "host2's mount reads host1's image wrongly"
  cmp "$T/mnt2/_base/$idb" "$T/b.raw" || fail "host2's mount reads its own image wrongly"
else
  echo "rados_sharing: mount not available, mount checks skipped: $(head -n1 "$T/mount.err")"
fi

# A chunk object removed under the image: verify names it, reads of its range
# fail with EIO on a fresh mount (the mount above may have it cached).
victim=$(head -n1 "$T/a.chunks")
victim_id=${victim#chunk.}
rados_ns rm "$victim"
rc=0
h1 image verify "$id" >"$T/verify.out" 2>&1 || rc=$?
((rc != 0)) || fail "verify passed with chunk object $victim removed"
grep -q "$victim_id" "$T/verify.out" || fail "verify does not name $victim_id: $(cat "$T/verify.out")"
if [[ -n "$mounted" ]] && mount_host "$T/host1" "$T/mnt1"; then
  offset=$(grep -o "$victim_id at offset [0-9]*" "$T/verify.out" | head -n1 | awk '{print $4}')
  [[ -n "$offset" ]] || fail "verify gives no offset for $victim_id: $(cat "$T/verify.out")"
  if dd if="$T/mnt1/_base/$id" of=/dev/null bs=4096 count=1 skip=$((offset / 4096)) \
      status=none 2>"$T/dd.err"; then
    fail "reading the range of a missing chunk succeeded"
  fi
  grep -qi "input/output error" "$T/dd.err" || fail "read error is not EIO: $(cat "$T/dd.err")"
fi
echo "rados_sharing: ok"
