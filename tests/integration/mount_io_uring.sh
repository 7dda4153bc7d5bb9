# -o io_uring (FUSE over io_uring, docs/operations.md): an imgfs built
# against a libfuse older than 3.18 refuses it with one line and mounts
# nothing. Built against 3.18 (.ci/run's second build), the mount serves
# either way, and its log says which: "serving over io_uring" when the kernel
# granted it (/sys/module/fuse/parameters/enable_uring is Y), else that the
# kernel did not offer it. Bytes written through an io_uring mount read back
# the same there and after a remount without it. The kernel setting is put
# back as it was.
source "$(dirname "$0")/lib.sh"
init_store
head -c 4M /dev/urandom >"$T/image.raw"
"$IMGFS" -q image import "$T/image.raw" --name img >/dev/null
"$IMGFS" disk create vm1/disk --image img >/dev/null
M="$T/mnt"
mkdir -p "$M"

err=""
if ! err="$("$IMGFS" mount "$M" -o io_uring --pid-file "$T/pid0" --log-file "$T/log0" 2>&1)"; then
  [[ "$err" == *"-o io_uring needs imgfs built against libfuse 3.18 or later"* ]] ||
    fail "unexpected error: $err"
  [[ "$(printf '%s\n' "$err" | wc -l)" -eq 1 ]] || fail "expected one line, got: $err"
  ! mountpoint -q "$M" || fail "a refused mount left a mount behind"
  echo "this build's libfuse is older than 3.18: -o io_uring is refused, as it should be"
  exit 0
fi
# Built against 3.18: the mount above served; it stops again.
unmount_imgfs "$M" "$(cat "$T/pid0")"

param=/sys/module/fuse/parameters/enable_uring
[[ -w "$param" ]] || {
  echo "$param is not writable here: only the refusal path was checked"
  exit 0
}
was="$(cat "$param")"
on_exit "echo '$was' >'$param'"

# serve_and_check LOG: mounts with -o io_uring, logging to LOG (-v: the
# info messages too; the terminal's to LOG.err), writes 1 MiB
# and 4 KiB pieces with O_DIRECT and reads them back; leaves it unmounted.
serve_and_check() {
  "$IMGFS" -v mount "$M" -o io_uring --pid-file "$T/pid" --log-file "$1" 2>"$1.err" ||
    fail "mount failed: $(cat "$1.err")"
  local pid
  pid="$(cat "$T/pid")"
  on_exit "unmount_imgfs '$M' '$pid'"
  head -c 3M /dev/urandom >"$T/new"
  dd if="$T/new" of="$M/vm1/disk" bs=1M count=2 oflag=direct conv=notrunc status=none
  dd if="$T/new" of="$M/vm1/disk" bs=4k skip=512 seek=512 count=256 oflag=direct conv=notrunc \
    status=none
  cmp <(dd if="$M/vm1/disk" bs=1M count=3 iflag=direct status=none) "$T/new" ||
    fail "bytes read back differ ($1)"
  cmp <(dd if="$M/vm1/disk" bs=1M skip=3 iflag=direct status=none) \
    <(dd if="$T/image.raw" bs=1M skip=3 status=none) || fail "the base's bytes differ ($1)"
  unmount_imgfs "$M" "$pid"
}

echo N >"$param"
serve_and_check "$T/log-off"
# On the terminal of `imgfs mount`, and in the mount's log.
grep -q "the kernel did not offer FUSE over io_uring ($param is N" "$T/log-off.err" ||
  fail "imgfs mount does not say io_uring was not granted: $(cat "$T/log-off.err")"
grep -q "io_uring is not in use (the kernel did not grant it.*$param is N now" "$T/log-off" ||
  fail "the log does not say io_uring was not granted: $(cat "$T/log-off")"
! grep -q "serving over io_uring" "$T/log-off" "$T/log-off.err" ||
  fail "the log claims io_uring while it is off"

echo Y >"$param"
serve_and_check "$T/log-on"
grep -q "serving over io_uring" "$T/log-on" ||
  fail "the log does not say it serves over io_uring: $(cat "$T/log-on" "$T/log-on.err")"

# What was written over io_uring is there after a remount without it.
mount_imgfs "$M"
cmp <(dd if="$M/vm1/disk" bs=1M count=3 iflag=direct status=none) "$T/new" ||
  fail "bytes differ after a remount without io_uring"
echo "ok"
