# The mount's log file under logrotate: the package's snippet
# (tools/debian/imgfs.logrotate) rotates it, its postrotate sends SIGUSR1 to
# the supervisor of every imgfs mount, and the supervisor and its server
# write to the new file from then on. A SIGUSR1 does not stop a mount.
#
# The postrotate signals every fuse.imgfs mount it finds: the test runs in a
# mount namespace of its own where only its own mount is left, so mounts of
# other processes on this host never get the signal.
if [[ -z "${IMGFS_LOGROTATE_NS:-}" ]]; then
  exec unshare --mount --propagation private env IMGFS_LOGROTATE_NS=1 bash "$0" "$@"
fi
source "$(dirname "$0")/lib.sh"
command -v logrotate >/dev/null || fail "logrotate is missing (tools/setup.sh)"
# Only this namespace's copies of other mounts go; their owners see nothing.
# (findmnt exits 1 when there is none.)
{ findmnt -rn -t fuse.imgfs -o TARGET || true; } | while read -r m; do
  umount -l "$(printf '%b' "$m")" || true
done
[[ -z "$(findmnt -rn -t fuse.imgfs)" ]] || fail "other imgfs mounts are still visible"

init_store
"$IMGFS" disk create vm1/disk --blank --size 16M >/dev/null
M="$T/mnt"
mkdir -p "$T/log" "$M"
log="$T/log/imgfs.log"
mkdir -p "$M"
"$IMGFS" -v mount "$M" --pid-file "$T/pid" --log-file "$log" || fail "mount failed"
MOUNT_PID="$(cat "$T/pid")"
on_exit "unmount_imgfs '$M' '$MOUNT_PID'"
server="$(mount_status "$M" server_pid)"
[[ -f "$log" ]] || fail "no log file"
echo "a line before the rotation" >>"$log"  # notifempty: logrotate skips an empty log

# The snippet, with its path pointed at this test's log directory.
sed "s|^/var/log/imgfs/\*.log|$T/log/*.log|" "$IMGFS_SRC/tools/debian/imgfs.logrotate" >"$T/lr.conf"
grep -q "^$T/log/\*.log {" "$T/lr.conf" || fail "the snippet's path was not replaced"
# The postrotate runs /usr/bin/imgfs: point it at the imgfs under test.
if [[ "$IMGFS" != /usr/bin/imgfs ]]; then
  sed -i "s|/usr/bin/imgfs|$IMGFS|" "$T/lr.conf"
fi
logrotate -f -s "$T/lr.state" "$T/lr.conf" || fail "logrotate failed"
[[ -f "$log.1" ]] || fail "logrotate did not rotate: $(ls "$T/log")"
for ((i = 0; i < 100; i++)); do
  (($(grep -c "SIGUSR1: reopened the log" "$log" 2>/dev/null || true) >= 2)) && break
  sleep 0.1
done
grep -q "\[$MOUNT_PID\] .*supervisor: SIGUSR1: reopened the log" "$log" ||
  fail "the supervisor did not reopen its log: new $(cat "$log" 2>&1) old $(tail -3 "$log.1")"
grep -q "\[$server\] .*server pid $server: SIGUSR1: reopened the log" "$log" ||
  fail "the server did not reopen its log: $(cat "$log")"
grep -q "reopened" "$log.1" && fail "the rotated file got the new lines"
# The mount goes on serving, with the same server.
[[ "$(mount_status "$M" server_pid)" == "$server" ]] || fail "SIGUSR1 replaced the server"
[[ "$(mount_status "$M" restarts)" == 0 ]] || fail "SIGUSR1 restarted the server"
echo data | dd of="$M/vm1/disk" bs=4k conv=notrunc,fsync status=none || fail "the mount broke"
# A second rotation: the same again into a new file.
logrotate -f -s "$T/lr.state" "$T/lr.conf" || fail "second logrotate failed"
for ((i = 0; i < 100; i++)); do
  (($(grep -c "reopened the log" "$log" 2>/dev/null || true) >= 2)) && break
  sleep 0.1
done
(($(grep -c "reopened the log" "$log") >= 2)) || fail "no reopen after the second rotation"
# The stop is still logged in the current file.
kill -TERM "$MOUNT_PID"
tail --pid="$MOUNT_PID" -f /dev/null
grep -q "unmounted" "$log" || fail "the stop was not logged in the new file: $(cat "$log")"
echo "mount_logrotate: ok"
