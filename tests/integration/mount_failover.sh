# The mount outlives its server (docs/operations.md, "Crashes and upgrades"):
# - SIGKILL of the serving process 20 times at random moments under a writer
#   (pwrite + fsync of numbered, checksummed records) and an O_DIRECT reader:
#   neither sees an error, every record whose fsync returned reads back, and
#   fsck is clean afterwards;
# - the same with qemu-io (cache=none, aio=native) writing, flushing and
#   reading back through 10 kills;
# - ls, stat, df, truncate work across a failover, and a file opened before
#   it is written, closed and reopened after it;
# - a crash loop (5 deaths in 30 s) fails requests with EIO, an upgrade
#   brings a server back, and the mount still unmounts;
# - kill -9 of the supervisor: the server goes on serving until the unmount.
# Run on local disks and, as mount_failover@rbd, on rbd disks.
source "$(dirname "$0")/lib.sh"
: "${IOCHECK:?IOCHECK must point at the iocheck binary}"
init_store
"$IMGFS" disk create vm1/disk --blank --size 64M >/dev/null
"$IMGFS" disk create vm1/data --blank --size 32M >/dev/null
"$IMGFS" disk create vm1/q --blank --size 16M >/dev/null
M="$T/mnt"
mount_imgfs "$M" -o crash_loop=1000/30
"$IOCHECK" fill "$M/vm1/data" 7 >/dev/null

# ---- 20 kills under a writer and an O_DIRECT reader ----
stop="$T/stop"
"$IOCHECK" write "$M/vm1/disk" "$T/wlog" "$stop" >"$T/w.out" 2>&1 &
wpid=$!
"$IOCHECK" read "$M/vm1/data" 7 "$stop" >"$T/r.out" 2>&1 &
rpid=$!
on_exit "touch '$stop'; kill $wpid $rpid 2>/dev/null"
sleep 0.5
for i in $(seq 20); do
  sleep "0.$((RANDOM % 9 + 1))"
  kill_server "$M"
done
sleep 0.5
touch "$stop"
wait "$wpid" || fail "the writer saw an error: $(cat "$T/w.out")"
wait "$rpid" || fail "the reader saw an error: $(cat "$T/r.out")"
[[ "$(mount_status "$M" restarts)" == 20 ]] || fail "restarts: $(mount_status "$M" restarts)"
records="$(wc -l <"$T/wlog")"
((records > 20)) || fail "the writer wrote only $records records"
"$IOCHECK" verify "$M/vm1/disk" "$T/wlog" >"$T/v.out" || fail "$(cat "$T/v.out")"
echo "failover: $(cat "$T/w.out"); $(cat "$T/r.out"); $(cat "$T/v.out")"

# ---- qemu-io through 10 kills ----
rm -f "$stop"
gen() {
  local i=0 off pat
  while [[ ! -e "$stop" ]]; do
    off=$(((i % 256) * 65536))
    pat=$((i % 251 + 1))
    printf 'write -P %d %d 64k\nflush\nread -P %d %d 64k\n' "$pat" "$off" "$pat" "$off"
    i=$((i + 1))
  done
}
gen | qemu-io -f raw -t none -i native "$M/vm1/q" >"$T/q.out" 2>&1 &
qpid=$!
on_exit "touch '$stop'; kill $qpid 2>/dev/null"
for i in $(seq 10); do
  sleep "0.$((RANDOM % 9 + 1))"
  kill_server "$M"
done
touch "$stop"
wait "$qpid" || fail "qemu-io failed: $(sed 's/^\(qemu-io> \)*//' "$T/q.out" | grep -v '^[0-9]' | grep -iv '^wrote\|^read\|^$' | head -5)"
grep -qiE 'fail|error|verification' "$T/q.out" && fail "qemu-io: $(grep -iE 'fail|error|verification' "$T/q.out" | head -3)"
writes="$(grep -c '^qemu-io> wrote\|^wrote' "$T/q.out" || true)"
((writes > 10)) || fail "qemu-io wrote only $writes times"
echo "failover: qemu-io wrote, flushed and read back $writes times through 10 kills"

# ---- the namespace and an open file across a failover ----
ino="$(stat -c %i "$M/vm1/disk")"
exec 7<>"$M/vm1/disk"  # opened by the server about to die
kill_server "$M"
ls "$M" "$M/vm1" >/dev/null || fail "ls after a failover"
[[ "$(ls "$M/vm1" | tr '\n' ' ')" == "data disk q " ]] || fail "ls: $(ls "$M/vm1")"
[[ "$(stat -c %i "$M/vm1/disk")" == "$ino" ]] || fail "the inode number changed"
df -B1 "$M" | tail -1 | awk '{ exit !($2 > 0) }' || fail "df after a failover: $(df -B1 "$M")"
truncate -s 96M "$M/vm1/disk"
[[ "$(stat -c %s "$M/vm1/disk")" == $((96 << 20)) ]] || fail "truncate after a failover"
printf 'after' >&7 || fail "writing through a descriptor opened before the failover"
exec 7>&-
[[ "$(head -c 5 "$M/vm1/disk")" == after ]] || fail "the write through the old descriptor was lost"
expect_errno "truncate to a smaller size" "Operation not permitted" truncate -s 1M "$M/vm1/disk"
unmount_imgfs "$M" "$MOUNT_PID"
out="$("$IMGFS" fsck 2>&1)" || fail "fsck after the kills: $out"

# ---- a crash loop fails requests with EIO; an upgrade or the unmount end it ----
mount_imgfs "$M"
sum="$(md5sum <"$M/vm1/data")"
for i in 1 2 3 4; do kill_server "$M"; done
kill -9 "$(mount_status "$M" server_pid)"
for ((i = 0; i < 100; i++)); do
  [[ "$(mount_status "$M" state)" == failing ]] && break
  sleep 0.1
done
[[ "$(mount_status "$M" state)" == failing ]] || fail "5 deaths in 30 s: $(mount_status "$M" state)"
grep -q "CRASH LOOP" "$T/mount.log" || fail "the crash loop is not in the log"
expect_errno "read while failing" "Input/output error" cat "$M/vm1/data"
"$IMGFS" mount --upgrade "$M" >/dev/null || fail "an upgrade did not bring a server back"
[[ "$(mount_status "$M" state)" == serving ]] || fail "after the upgrade: $(mount_status "$M" state)"
[[ "$(md5sum <"$M/vm1/data")" == "$sum" ]] || fail "data after the crash loop"
for i in 1 2 3 4 5; do
  pid="$(mount_status "$M" server_pid)"
  kill -9 "$pid"
  for ((j = 0; j < 100; j++)); do
    s="$(mount_status "$M" state)"
    [[ "$s" == failing ]] && break
    [[ "$s" == serving && "$(mount_status "$M" server_pid)" != "$pid" ]] && break
    sleep 0.1
  done
done
[[ "$(mount_status "$M" state)" == failing ]] || fail "a second crash loop: $(mount_status "$M" state)"
kill -TERM "$MOUNT_PID"
for ((i = 0; i < 300; i++)); do kill -0 "$MOUNT_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$MOUNT_PID" 2>/dev/null && fail "the supervisor of a failing mount did not stop"
mountpoint -q "$M" && fail "a failing mount did not unmount"

# ---- kill -9 of the supervisor: the server goes on serving until the unmount ----
mount_imgfs "$M"
srv="$(mount_status "$M" server_pid)"
on_exit "kill -9 $srv 2>/dev/null"
kill -9 "$MOUNT_PID"
sleep 0.2
[[ "$(head -c 5 "$M/vm1/disk")" == after ]] || fail "the server stopped serving with its supervisor"
printf 'still' | dd of="$M/vm1/disk" conv=notrunc status=none || fail "write without a supervisor"
expect_fail "status without a supervisor" "$IMGFS" mount --status "$M"
expect_err_contains "no imgfs supervisor"
fusermount3 -u "$M" || fail "unmount without a supervisor"
for ((i = 0; i < 300; i++)); do kill -0 "$srv" 2>/dev/null || break; sleep 0.1; done
kill -0 "$srv" 2>/dev/null && fail "the orphaned server did not exit at the unmount"
[[ "$("$IMGFS" --json disk info vm1/disk | jq -r .size)" == $((96 << 20)) ]] || fail "disk info"
echo "mount_failover: ok"
