# Running the mount: background by default (returns once ready), -f in the
# foreground, SIGTERM/SIGINT flush and unmount, statfs, clear startup errors.
source "$(dirname "$0")/lib.sh"

M="$T/mnt"
mkdir -p "$M"
expect_fail "mount without a store" "$IMGFS" mount "$M"
expect_err_contains "imgfs init"
init_store
expect_fail "mount on a missing directory" "$IMGFS" mount "$T/nope"
expect_fail "mount with an unknown option" "$IMGFS" mount "$M" -o no_such_option
mountpoint -q "$M" && fail "a failed mount left a mount behind"

# Background: returns once mounted; SIGTERM flushes and unmounts.
mount_imgfs "$M"
mountpoint -q "$M" || fail "not mounted after imgfs mount returned"
# A second mount at the same place, of this store or another, is refused
# (nothing stacks over the first), and says which store is mounted there.
expect_fail "a second mount" "$IMGFS" mount "$M"
expect_err_contains "$M is already a mount of the imgfs store $STORE"
IMGFS_STORE="$T/other" "$IMGFS" init >/dev/null
expect_fail "another store's mount" env IMGFS_STORE="$T/other" "$IMGFS" mount -f "$M"
expect_err_contains "already a mount of the imgfs store $STORE"
expect_fail "the fstab form" "$IMGFS" "$T/other" "$M" -o allow_shrink
expect_err_contains "already a mount of the imgfs store $STORE"
[[ "$(grep -c " $M fuse.imgfs " <(awk '{ print " " $5 " " $(NF-2) " " }' /proc/self/mountinfo))" -eq 1 ]] ||
  fail "mounts stacked at $M: $(grep " $M " /proc/self/mountinfo)"
kill -0 "$MOUNT_PID" || fail "the first mount's supervisor went away"
df -B1 "$M" | tail -1 | awk '{ exit !($2 > 0) }' || fail "statfs reports no capacity: $(df -B1 "$M")"
mkdir "$M/vm1"
head -c 1M /dev/urandom >"$T/data"
cp "$T/data" "$M/vm1/disk"
exec 3<>"$M/vm1/disk"  # still open when the daemon is told to stop
printf 'tail' >&3
kill -TERM "$MOUNT_PID"
tail --pid="$MOUNT_PID" -f /dev/null
exec 3>&-
mountpoint -q "$M" && fail "still mounted after SIGTERM"
grep -qi "error" "$T/mount.log" && fail "errors in the log: $(cat "$T/mount.log")"

# Foreground with -f, stopped by SIGINT.
"$IMGFS" mount -f "$M" 2>"$T/fg.log" &
fg=$!
on_exit "kill $fg 2>/dev/null; fusermount3 -u -z '$M' 2>/dev/null"
until mountpoint -q "$M"; do
  kill -0 "$fg" 2>/dev/null || fail "foreground mount exited: $(cat "$T/fg.log")"
  sleep 0.1
done
cmp -i 4:4 -n $((1048576 - 4)) "$T/data" "$M/vm1/disk" || fail "data lost across the restart"
[[ "$(dd if="$M/vm1/disk" bs=1 count=4 status=none)" == tail ]] \
  || fail "a write to a file open at SIGTERM was lost"
kill -INT "$fg"
wait "$fg" || fail "foreground mount exited non-zero: $(cat "$T/fg.log")"
mountpoint -q "$M" && fail "still mounted after SIGINT"

# A mount whose supervisor and server were both killed is dead: mounting
# there again is refused with the way to clear it, not stacked over it.
mount_imgfs "$M"
server="$("$IMGFS" --json mount --status "$M" | jq .server_pid)"
kill -9 "$MOUNT_PID" "$server"
tail --pid="$server" -f /dev/null
expect_fail "a mount over a dead one" "$IMGFS" mount "$M"
expect_err_contains "server is gone"
expect_err_contains "fusermount3 -u -z $M"
fusermount3 -u -z "$M"
mount_imgfs "$M"
[[ -f "$M/vm1/disk" ]] || fail "no disk after mounting again"
echo "mount_daemon: ok"
