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
