# The /etc/fstab form: mount(8) with type fuse.imgfs runs mount.fuse3, which
# runs "imgfs STORE MOUNTPOINT -o OPTIONS"; fstab-only options (defaults,
# nofail, _netdev, x-systemd.*) are accepted, pid_file/log_file replace the
# command line's --pid-file/--log-file, and umount(8) stops the daemon.
#
# mount.fuse3 runs the program by name with no PATH set (sh's default path):
# an installed imgfs lives in /usr/local/bin or /usr/bin. The test runs in a
# mount namespace of its own where /usr/local/bin holds just the imgfs under
# test, so the host is not touched.
if [[ -z "${IMGFS_FSTAB_NS:-}" ]]; then
  exec unshare --mount --propagation private env IMGFS_FSTAB_NS=1 bash "$0" "$@"
fi
source "$(dirname "$0")/lib.sh"
command -v mount.fuse3 >/dev/null || fail "mount.fuse3 (package fuse3) is missing"
mkdir "$T/bin"
ln -s "$IMGFS" "$T/bin/imgfs"
mount --bind "$T/bin" /usr/local/bin
on_exit "umount -l /usr/local/bin"

init_store
make_sample_raw "$T/src.raw" 8
"$IMGFS" image import "$T/src.raw" --name sample >/dev/null
"$IMGFS" disk create vm1/disk --image sample >/dev/null
M="$T/mnt"
mkdir -p "$M"

stop_by_pidfile() {  # PIDFILE MNT
  local pid
  pid="$(cat "$1" 2>/dev/null)" || true
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" || true
    tail --pid="$pid" -f /dev/null
  fi
  if mountpoint -q "$2"; then fusermount3 -u -z "$2" || true; fi
}

# 1. mount -t fuse.imgfs, with options as fstab's fourth field would give them.
on_exit "stop_by_pidfile '$T/pid1' '$M'"
mount -t fuse.imgfs "$STORE" "$M" \
  -o "defaults,nofail,_netdev,x-systemd.requires=network.target,allow_shrink,pid_file=$T/pid1,log_file=$T/log1"
mountpoint -q "$M" || fail "not mounted after mount -t fuse.imgfs"
[[ "$(findmnt -n -o FSTYPE "$M")" == fuse.imgfs ]] || fail "type is $(findmnt -n -o FSTYPE "$M")"
[[ "$(findmnt -n -o SOURCE "$M")" == "imgfs:$STORE" ]] ||
  fail "source is $(findmnt -n -o SOURCE "$M")"
pid="$(cat "$T/pid1")"
kill -0 "$pid" || fail "no daemon behind the mount"
cmp -n $((8 << 20)) "$T/src.raw" "$M/vm1/disk" || fail "the disk differs from its image"
truncate -s 4M "$M/vm1/disk" || fail "allow_shrink from the options did not apply"
[[ "$(stat -c %s "$M/vm1/disk")" -eq $((4 << 20)) ]] || fail "shrink did not happen"
umount "$M"
tail --pid="$pid" -f /dev/null
mountpoint -q "$M" && fail "still mounted after umount"

# 2. A real fstab line (in a file of our own: mount --fstab), mounted by its
#    mount point as the boot would.
printf '%s %s fuse.imgfs defaults,nofail,pid_file=%s,log_file=%s 0 0\n' \
  "$STORE" "$M" "$T/pid2" "$T/log2" >"$T/fstab"
on_exit "stop_by_pidfile '$T/pid2' '$M'"
mount --fstab "$T/fstab" "$M"
mountpoint -q "$M" || fail "not mounted from the fstab line"
pid="$(cat "$T/pid2")"
# Mounting it again is refused, naming the store; the first mount goes on.
if mount --fstab "$T/fstab" "$M" 2>"$T/err"; then fail "a second mount over the first succeeded"; fi
grep -q "already a mount of the imgfs store $STORE" "$T/err" || fail "unclear error: $(cat "$T/err")"
[[ "$(findmnt -n -o TARGET "$M" | wc -l)" -eq 1 ]] || fail "mounts stacked at $M: $(findmnt "$M")"
kill -0 "$pid" || fail "the first mount's daemon went away"
echo data | dd of="$M/vm1/disk" bs=4k conv=notrunc,fsync status=none
# shrink is refused without allow_shrink
if truncate -s 1M "$M/vm1/disk" 2>/dev/null; then fail "shrink allowed without allow_shrink"; fi
umount "$M"
tail --pid="$pid" -f /dev/null
grep -qi "error" "$T/log2" && fail "errors in the log: $(cat "$T/log2")"

# 3. A bad option fails the mount with the daemon's error, and leaves nothing.
if mount -t fuse.imgfs "$STORE" "$M" -o no_such_option 2>"$T/err"; then
  fail "mount with a bad option succeeded"
fi
grep -q "no_such_option" "$T/err" || fail "unclear error: $(cat "$T/err")"
mountpoint -q "$M" && fail "a failed mount left a mount behind"
echo "mount_fstab: ok"
