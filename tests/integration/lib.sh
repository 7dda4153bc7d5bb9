# Shared helpers for integration tests. Source it; it sets -euo pipefail,
# makes $T (a temp dir removed on exit) and $STORE, and defines assertions.
set -euo pipefail
: "${IMGFS:?IMGFS must point at the imgfs binary}"
T="$(mktemp -d /tmp/imgfs-test.XXXXXX)"
STORE="$T/store"
export IMGFS_STORE="$STORE"
_cleanups=()
on_exit() { _cleanups+=("$1"); }
_run_cleanups() {
  local rc=$?
  for ((i=${#_cleanups[@]}-1; i>=0; i--)); do eval "${_cleanups[i]}" || true; done
  rm -rf "$T"
  if ((rc != 0)); then echo "FAILED (exit $rc)" >&2; fi
  exit $rc
}
trap _run_cleanups EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
# expect_fail "what" CMD...: CMD must exit non-zero with exactly one line on stderr.
expect_fail() {
  local what="$1"; shift
  local err rc=0
  err="$("$@" 2>&1 >/dev/null)" || rc=$?
  ((rc != 0)) || fail "$what: expected failure, got success"
  [[ "$(printf '%s\n' "$err" | wc -l)" -eq 1 ]] || fail "$what: expected one line on stderr, got: $err"
  LAST_ERR="$err"
}
expect_err_contains() { [[ "$LAST_ERR" == *"$1"* ]] || fail "error '$LAST_ERR' lacks '$1'"; }

# ---- mounts (tests/integration/mount_*.sh) ----
# init_store: creates the test store; its options come from IMGFS_TEST_INIT_ARGS
# so a second ctest entry can run the same test over another backend.
# With IMGFS_TEST_DISKS=rbd (the "@rbd" ctest entries) the disks go to a fresh
# RBD namespace of the test cluster, removed at exit.
init_store() {
  if [[ "${IMGFS_TEST_DISKS:-}" == rbd ]]; then
    make_rbd_namespace
    # shellcheck disable=SC2086
    "$IMGFS" init --disks "rbd:$RBD_NS" "${CEPH_ARGS_IMGFS[@]}" ${IMGFS_TEST_INIT_ARGS:-} >/dev/null
    return
  fi
  # shellcheck disable=SC2086
  "$IMGFS" init ${IMGFS_TEST_INIT_ARGS:-} >/dev/null
}

# ---- the test Ceph cluster (tools/test.sh starts it) ----
# rbdc ARGS...: the rbd tool on the test cluster.
rbdc() { rbd -c "$IMGFS_CEPH_CONF" --id "$IMGFS_CEPH_ID" --keyring "$IMGFS_CEPH_KEYRING" "$@"; }
# make_rbd_namespace: creates a fresh RBD namespace, sets RBD_NS (POOL/NS) and
# CEPH_ARGS_IMGFS (imgfs init's Ceph options); everything in it is removed at
# exit.
make_rbd_namespace() {
  : "${IMGFS_CEPH_CONF:?the test runner (tools/test.sh) provides a Ceph cluster}"
  RBD_NS="$IMGFS_CEPH_POOL/t$RANDOM$RANDOM"
  CEPH_ARGS_IMGFS=(--ceph-conf "$IMGFS_CEPH_CONF" --ceph-id "$IMGFS_CEPH_ID"
    --keyring "$IMGFS_CEPH_KEYRING")
  rbdc namespace create "$RBD_NS"
  on_exit "remove_rbd_namespace '$RBD_NS'"
}
# remove_rbd_namespace POOL/NS: clones, then published bases, then objects.
remove_rbd_namespace() {
  local spec="$1" img o
  local rados_args=(-c "$IMGFS_CEPH_CONF" --id "$IMGFS_CEPH_ID" --keyring "$IMGFS_CEPH_KEYRING"
    -p "${spec%%/*}" -N "${spec#*/}")
  for img in $(rbdc ls "$spec" 2>/dev/null | grep -v '^imgfs\.'); do
    rbdc rm --no-progress "$spec/$img" >/dev/null 2>&1 || true
  done
  for img in $(rbdc ls "$spec" 2>/dev/null); do
    rbdc snap unprotect "$spec/$img@base" >/dev/null 2>&1 || true
    rbdc snap purge --no-progress "$spec/$img" >/dev/null 2>&1 || true
    rbdc rm --no-progress "$spec/$img" >/dev/null 2>&1 || true
  done
  for o in $(rados "${rados_args[@]}" ls 2>/dev/null); do
    rados "${rados_args[@]}" rm "$o" >/dev/null 2>&1 || true
  done
  rbdc namespace remove "$spec" >/dev/null 2>&1 || true
}
# mount_imgfs MNT [imgfs mount options...]: mounts the store at MNT in the
# background (returns once it serves) and sets MOUNT_PID. The test's exit
# stops the daemon by pid and clears the mount, also on failure.
mount_imgfs() {
  local mnt="$1"; shift
  mkdir -p "$mnt"
  local pidf="$T/mount.$RANDOM.pid"
  # IMGFS_TEST_MOUNT_OPTS: -o options for every mount (.ci/run: io_uring).
  if ! "$IMGFS" mount "$mnt" --pid-file "$pidf" --log-file "$T/mount.log" \
    ${IMGFS_TEST_MOUNT_OPTS:+-o "$IMGFS_TEST_MOUNT_OPTS"} "$@"; then
    cat "$T/mount.log" >&2 2>/dev/null || true
    fail "imgfs mount $mnt failed"
  fi
  MOUNT_PID="$(cat "$pidf")"
  on_exit "unmount_imgfs '$mnt' '$MOUNT_PID'"
}
# unmount_imgfs MNT PID: SIGTERM (the daemon flushes every open disk and
# unmounts), then waits for it to exit; a hung mount is cleared lazily.
unmount_imgfs() {
  local mnt="$1" pid="$2"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" || true
    tail --pid="$pid" -f /dev/null
  fi
  if mountpoint -q "$mnt"; then fusermount3 -u -z "$mnt" || true; fi
}
# expect_errno "what" "strerror text" CMD...: CMD must fail and say that text.
expect_errno() {
  local what="$1" want="$2"; shift 2
  local out rc=0
  out="$("$@" 2>&1)" || rc=$?
  ((rc != 0)) || fail "$what: expected failure ($want), got success"
  [[ "$out" == *"$want"* ]] || fail "$what: expected '$want', got: $out"
}
# make_sample_raw FILE SIZE_MIB: a raw file with random data in some places and
# holes (zeros) elsewhere: data in MiB 0, 2-3 and the last MiB.
make_sample_raw() {
  local f="$1" mib="$2"
  truncate -s "${mib}M" "$f"
  head -c 1M /dev/urandom | dd of="$f" bs=1M seek=0 conv=notrunc status=none
  head -c 2M /dev/urandom | dd of="$f" bs=1M seek=2 conv=notrunc status=none
  head -c 1M /dev/urandom | dd of="$f" bs=1M seek=$((mib - 1)) conv=notrunc status=none
}

# ---- the mount's supervisor (tests/integration/mount_failover.sh, mount_upgrade.sh) ----
# mount_status MNT FIELD: one field of `imgfs mount --status` (server_pid, state...).
mount_status() { "$IMGFS" --json mount --status "$1" | jq -r ".$2"; }
# wait_serving MNT OLD_PID: waits until a server other than OLD_PID serves MNT
# (bounded: a server that never comes back fails the test, it does not hang it).
wait_serving() {
  local mnt="$1" old="$2" i pid
  for ((i = 0; i < 1200; i++)); do
    pid="$(mount_status "$mnt" server_pid 2>/dev/null || true)"
    if [[ -n "$pid" && "$pid" != 0 && "$pid" != "$old" &&
          "$(mount_status "$mnt" state 2>/dev/null)" == serving ]]; then
      return 0
    fi
    sleep 0.1
  done
  fail "no new server serves $mnt after server $old ($(tail -5 "$T/mount.log" 2>/dev/null))"
}
# kill_server MNT: SIGKILL of the serving process, then waits for the next one.
kill_server() {
  local pid
  pid="$(mount_status "$1" server_pid)"
  [[ -n "$pid" && "$pid" != 0 ]] || fail "no server serves $1"
  kill -9 "$pid"
  wait_serving "$1" "$pid"
}
