# Cluster faults seen through a store whose chunks live in RADOS: each is one
# clear line on stderr, after at most the store's Ceph timeout, and changes
# nothing. Uses its own throwaway cluster (tools/ceph-cluster.sh) so that it
# may pause and stop it without disturbing other tests; skipped when the test
# runner provides no cluster (no IMGFS_CEPH_CONF), as the others are.
source "$(dirname "$0")/lib.sh"
if [[ -z "${IMGFS_CEPH_CONF:-}" ]]; then
  echo "rados_faults: skipped (IMGFS_CEPH_CONF is not set; tools/test.sh sets it)"
  exit 0
fi
: "${IMGFS_SRC:?}"
cluster="$T/ceph"
on_exit "'$IMGFS_SRC/tools/ceph-cluster.sh' stop '$cluster'"
eval "$(IMGFS_CEPH_MEMSTORE_BYTES=$((512 << 20)) "$IMGFS_SRC/tools/ceph-cluster.sh" start "$cluster")"
pool="$IMGFS_CEPH_CHUNK_POOL"
cephc() { ceph -c "$IMGFS_CEPH_CONF" --id admin --keyring "$IMGFS_CEPH_KEYRING" "$@"; }

# The store keeps its own copies of conf and keyring, so that they outlive the
# cluster's directory when the cluster is stopped below.
cp "$IMGFS_CEPH_CONF" "$T/ceph.conf"
cp "$IMGFS_CEPH_KEYRING" "$T/admin.keyring"
init_store() {  # DIR POOLSPEC ID KEYRING
  "$IMGFS" --store "$1" init --chunks "rados:$2" --ceph-conf "$T/ceph.conf" --ceph-id "$3" \
    --keyring "$4" >/dev/null
}
# A short Ceph timeout for this store (imgfs.json's ceph.timeout).
short_timeout() {
  jq '.ceph.timeout = 5' "$1/imgfs.json" >"$1/imgfs.json.new"
  mv "$1/imgfs.json.new" "$1/imgfs.json"
}

head -c 2M /dev/urandom >"$T/a.raw"
init_store "$T/s" "$pool" admin "$T/admin.keyring"
short_timeout "$T/s"
id=$("$IMGFS" --store "$T/s" image import "$T/a.raw" --name a)

# A missing pool.
expect_fail "init on a missing pool" init_store "$T/nopool" "imgfs-no-such-pool" admin "$T/admin.keyring"
expect_err_contains "imgfs-no-such-pool"
expect_err_contains "does not exist"

# A key with no caps on the pool: refused when the store is first used, naming
# the client and the pool.
cephc auth get-or-create client.imgfs-nocaps mon 'allow r' osd 'allow rw pool=elsewhere' \
  -o "$T/nocaps.keyring"
if init_store "$T/nocaps" "$pool" imgfs-nocaps "$T/nocaps.keyring" 2>"$T/err"; then
  expect_fail "listing with a key without caps" "$IMGFS" --store "$T/nocaps" image ls
else
  LAST_ERR="$(cat "$T/err")"
  [[ $(wc -l <"$T/err") -eq 1 ]] || fail "more than one line: $LAST_ERR"
fi
expect_err_contains "client.imgfs-nocaps may not access RADOS pool '$pool'"

# A read-only key reads but cannot import.
cephc auth get-or-create client.imgfs-ro mon 'allow r' osd "allow r pool=$pool" -o "$T/ro.keyring"
init_store "$T/ro" "$pool" imgfs-ro "$T/ro.keyring"
short_timeout "$T/ro"
"$IMGFS" --store "$T/ro" image ls | grep -q "$id" || fail "read-only key cannot list"
"$IMGFS" --store "$T/ro" image verify "$id" >/dev/null || fail "read-only key cannot verify"
head -c 1M /dev/urandom >"$T/b.raw"
expect_fail "import with a read-only key" "$IMGFS" --store "$T/ro" image import "$T/b.raw"
expect_err_contains "Operation not permitted"

# OSDs that do not answer (paused): the operation fails after the timeout.
osd_pid=$(awk '$1 ~ /^osd/ {print $2}' "$cluster/pids")
kill -STOP "$osd_pid"
on_exit "kill -CONT $osd_pid 2>/dev/null"
expect_fail "import while the OSD is paused" "$IMGFS" --store "$T/s" image import "$T/b.raw"
expect_err_contains "timed out"
kill -CONT "$osd_pid"
"$IMGFS" --store "$T/s" image verify "$id" >/dev/null || fail "store unusable after the OSD resumed"

# The whole cluster down: a clear error once the timeout has passed.
"$IMGFS_SRC/tools/ceph-cluster.sh" stop "$cluster"
expect_fail "listing with the cluster down" "$IMGFS" --store "$T/s" image ls
expect_err_contains "connect to Ceph cluster"
expect_err_contains "no answer within 5s"
echo "rados_faults: ok"
