# tools/ceph-cluster.sh: the cluster the test runner started answers with
# cephx on, a second start on its directory is refused, and a fresh cluster
# starts, is stopped by pid, leaves nothing running, and stops idempotently.
source "$(dirname "$0")/lib.sh"
: "${IMGFS_CEPH_CONF:?the test runner (tools/test.sh) provides a Ceph cluster}"
script="$IMGFS_SRC/tools/ceph-cluster.sh"
conf="$IMGFS_CEPH_CONF"
cdir="$(dirname "$conf")"

ceph -c "$conf" --id "$IMGFS_CEPH_ID" --keyring "$IMGFS_CEPH_KEYRING" --connect-timeout 30 -s \
  >"$T/status" || fail "ceph -s failed"
grep -q "1 osds: 1 up" "$T/status" || fail "no OSD up: $(cat "$T/status")"
ceph -c "$conf" --connect-timeout 30 osd pool ls | grep -qx "$IMGFS_CEPH_POOL" ||
  fail "pool $IMGFS_CEPH_POOL missing"
grep -q "auth client required = cephx" "$conf" || fail "cephx is not required"

# A key the cluster does not know is refused (cephx is really checked).
ceph-authtool --create-keyring "$T/bad.keyring" --gen-key -n client.admin >/dev/null
rc=0; ceph -c "$conf" --keyring "$T/bad.keyring" --connect-timeout 30 -s >/dev/null 2>&1 || rc=$?
((rc != 0)) || fail "a wrong key was accepted"
rc=0; rbd -c "$conf" --keyring "$T/bad.keyring" ls "$IMGFS_CEPH_POOL" >/dev/null 2>"$T/err" || rc=$?
((rc != 0)) || fail "rbd with a wrong key succeeded"
grep -q "Permission denied" "$T/err" || fail "wrong key error unclear: $(cat "$T/err")"

# Starting twice on the same directory is refused, and leaves the cluster be.
rc=0; "$script" start "$cdir" >"$T/out" 2>"$T/err" || rc=$?
((rc != 0)) || fail "second start on $cdir succeeded"
[[ ! -s "$T/out" ]] || fail "refused start printed exports: $(cat "$T/out")"
grep -q "already holds a cluster" "$T/err" || fail "refusal unclear: $(cat "$T/err")"
ceph -c "$conf" --connect-timeout 30 -s >/dev/null || fail "cluster broken by refused start"

# A fresh cluster: prints only exports, works, and stop kills exactly its
# daemons and removes the directory; a second stop is a no-op.
new="$T/cluster"
on_exit "'$script' stop '$new'"
"$script" start "$new" >"$T/env" 2>"$T/start.err" || fail "start failed: $(cat "$T/start.err")"
grep -qv '^export IMGFS_CEPH_[A-Z_]*=' "$T/env" && fail "start printed non-export lines: $(cat "$T/env")"
(
  eval "$(cat "$T/env")"
  [[ "$IMGFS_CEPH_CONF" == "$new/ceph.conf" && -f "$IMGFS_CEPH_KEYRING" ]] ||
    fail "exports do not point into $new"
  rbd -c "$IMGFS_CEPH_CONF" --id "$IMGFS_CEPH_ID" --keyring "$IMGFS_CEPH_KEYRING" \
    create --size 4M "$IMGFS_CEPH_POOL/t" || fail "rbd create failed on the new cluster"
  rbd -c "$IMGFS_CEPH_CONF" --id "$IMGFS_CEPH_ID" ls "$IMGFS_CEPH_POOL" | grep -qx t ||
    fail "rbd ls misses the image"
)
cp "$new/ceph.conf" "$new/client.admin.keyring" "$T/"
mapfile -t pids < <(awk '{print $2}' "$new/pids")
((${#pids[@]} == 3)) || fail "expected 3 daemons, got ${#pids[@]}"
for p in "${pids[@]}"; do kill -0 "$p" || fail "daemon $p not running"; done
"$script" stop "$new" || fail "stop failed"
for p in "${pids[@]}"; do
  if kill -0 "$p" 2>/dev/null; then fail "daemon $p still running after stop"; fi
done
[[ ! -e "$new" ]] || fail "stop left $new"
"$script" stop "$new" || fail "second stop failed"
# A client of the stopped cluster gets an error (the conf's client timeouts
# bound the wait) rather than hanging.
rc=0; rbd -c "$T/ceph.conf" --keyring "$T/client.admin.keyring" ls "$IMGFS_CEPH_POOL" \
  >/dev/null 2>&1 || rc=$?
((rc != 0)) || fail "rbd ls on a stopped cluster succeeded"
# The runner's cluster is untouched.
ceph -c "$conf" --connect-timeout 30 -s >/dev/null || fail "runner's cluster hurt"
echo "ceph_cluster: ok"
