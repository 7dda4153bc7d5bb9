# The Debian package (tools/package.sh) as an operator uses it: built,
# checked with lintian, installed with dpkg -i on this machine, mounted from
# an /etc/fstab line and through imgfs-mount@.service's command lines run by
# hand (systemd is not PID 1 here; systemd-analyze verifies the unit), then
# removed with dpkg -r and purged. The package is purged on exit, also when
# the test fails; it refuses to run where an imgfs package is installed.
#
# mount.fuse3 runs "imgfs" by sh's default PATH, /usr/local/bin first: the
# test runs in a mount namespace of its own where /usr/local/bin is empty, so
# the mount runs the packaged /usr/bin/imgfs.
if [[ -z "${IMGFS_PKG_NS:-}" ]]; then
  exec unshare --mount --propagation private env IMGFS_PKG_NS=1 bash "$0" "$@"
fi
source "$(dirname "$0")/lib.sh"
for c in dpkg-deb dpkg-shlibdeps lintian systemd-analyze systemd-escape socat mount.fuse3 \
  logrotate groff; do
  command -v "$c" >/dev/null || fail "$c is missing (tools/setup.sh installs it)"
done
if dpkg-query -W -f='${Status}' imgfs 2>/dev/null | grep -q installed; then
  fail "an imgfs package is installed on this host; the test would replace it (dpkg -P imgfs)"
fi
mount -t tmpfs -o size=1M imgfs-test-empty /usr/local/bin
on_exit "umount -l /usr/local/bin"

# 1. Build it, and look inside.
deb="$(IMGFS_BUILD_DIR="$IMGFS_BUILD" "$IMGFS_SRC/tools/package.sh" "$T/out")"
[[ -f "$deb" && "$deb" == */imgfs_*_"$(dpkg --print-architecture)".deb ]] || fail "no package: $deb"
dpkg-deb -c "$deb" | awk '{print $6}' | sed 's|^\./|/|' >"$T/contents"
for f in /usr/bin/imgfs /lib/systemd/system/imgfs-mount@.service /etc/logrotate.d/imgfs \
  /usr/share/man/man1/imgfs.1.gz /usr/share/doc/imgfs/copyright \
  /usr/share/doc/imgfs/changelog.gz /usr/share/doc/imgfs/operations.md.gz; do
  grep -qx "$f" "$T/contents" || fail "the package lacks $f"
done
depends="$(dpkg-deb -f "$deb" Depends)"
for d in libfuse3-3 librbd1 librados2 libc6 fuse3; do
  [[ "$depends" == *"$d"* ]] || fail "Depends lacks $d: $depends"
done
# Lintian: no error and no warning (docs/operations.md has the informational tags).
lintian --fail-on error,warning "$deb" >"$T/lintian" 2>&1 || fail "lintian: $(cat "$T/lintian")"
grep -E '^[EW]:' "$T/lintian" && fail "lintian warns: $(cat "$T/lintian")"

# 2. Install. Purge on exit, whatever happens (registered first: runs last).
on_exit "dpkg -P imgfs >/dev/null 2>&1"
dpkg -i "$deb" >"$T/dpkg.log" 2>&1 || fail "dpkg -i: $(cat "$T/dpkg.log")"
[[ "$(dpkg-query -W -f='${Status}' imgfs)" == "install ok installed" ]] || fail "not installed"
IMGFS=/usr/bin/imgfs
"$IMGFS" --version | grep -q "^imgfs " || fail "installed imgfs --version: $("$IMGFS" --version)"
# The manual page: formats without a warning and covers the commands --help lists.
zcat /usr/share/man/man1/imgfs.1.gz | groff -man -Tutf8 -ww -z 2>"$T/groff" >/dev/null
[[ ! -s "$T/groff" ]] || fail "groff warns on imgfs.1: $(cat "$T/groff")"
zcat /usr/share/man/man1/imgfs.1.gz | groff -man -Tutf8 2>/dev/null | col -b >"$T/man.txt"
for cmd in init stats fsck gc mount "image import" "disk create" "disk resize"; do
  grep -q "imgfs $cmd" "$T/man.txt" || fail "the manual page lacks 'imgfs $cmd'"
done
grep -q -- "--upgrade" "$T/man.txt" || fail "the manual page lacks mount --upgrade"
grep -q "cache_size=SIZE" "$T/man.txt" || fail "the manual page lacks the mount options"
logrotate -d -s "$T/logrotate.state" /etc/logrotate.d/imgfs >"$T/logrotate" 2>&1 ||
  fail "logrotate rejects the snippet: $(cat "$T/logrotate")"
[[ -d /var/log/imgfs ]] || fail "postinst made no /var/log/imgfs"

init_store
make_sample_raw "$T/src.raw" 8
"$IMGFS" image import "$T/src.raw" --name sample >/dev/null
"$IMGFS" disk create vm1/disk --image sample >/dev/null
M="$T/mnt"
mkdir -p "$M"
stop_pid() {  # PID MNT: as systemd's stop (SIGTERM to the main process), then waits
  if [[ "$1" =~ ^[1-9][0-9]*$ ]] && kill -0 "$1" 2>/dev/null; then
    kill -TERM "$1" || true
    tail --pid="$1" -f /dev/null
  fi
  if mountpoint -q "$2"; then fusermount3 -u -z "$2" || true; fi
}
exe_of() { readlink "/proc/$1/exe"; }

# 3. An /etc/fstab line (in a file of our own: mount --fstab), as the boot mounts it.
printf '%s %s fuse.imgfs defaults,nofail,_netdev,pid_file=%s,log_file=%s 0 0\n' \
  "$STORE" "$M" "$T/fstab.pid" "$T/fstab.log" >"$T/fstab"
on_exit "stop_pid \"\$(cat '$T/fstab.pid' 2>/dev/null)\" '$M'"
mount --fstab "$T/fstab" "$M" || fail "mount from the fstab line failed"
[[ "$(findmnt -n -o FSTYPE "$M")" == fuse.imgfs ]] || fail "type is $(findmnt -n -o FSTYPE "$M")"
pid="$(cat "$T/fstab.pid")"
[[ "$(exe_of "$pid")" == /usr/bin/imgfs ]] || fail "the mount runs $(exe_of "$pid")"
cmp -n $((8 << 20)) "$T/src.raw" "$M/vm1/disk" || fail "the disk differs from its image"
umount "$M"
tail --pid="$pid" -f /dev/null
mountpoint -q "$M" && fail "still mounted after umount"

# 4. The unit: systemd-analyze verifies an instance of it for this mount point...
unit=/lib/systemd/system/imgfs-mount@.service
inst="$(systemd-escape --path "$M")"
mkdir "$T/units"
cp "$unit" "$T/units/imgfs-mount@$inst.service"
systemd-analyze verify --man=no "$T/units/imgfs-mount@$inst.service" >"$T/verify" 2>&1 ||
  fail "systemd-analyze verify: $(cat "$T/verify")"
grep -v -e "ceph.target" -e "libvirt" "$T/verify" | grep . &&
  fail "systemd-analyze verify warns: $(cat "$T/verify")"
grep -qx "Type=notify" "$unit" || fail "the unit is not Type=notify"
grep -qx "Restart=on-failure" "$unit" || fail "the unit does not restart"

# ...and its command lines run by hand, as systemd runs them: the variables
# of /etc/default/imgfs-INSTANCE in the environment, %f the mount point,
# NOTIFY_SOCKET a socket the test reads (Type=notify: READY=1 once serving).
opts="defaults,allow_shrink"
exec_words() {  # KEY: the unit's KEY= line as words, %f and ${IMGFS_OPTIONS} put in
  local w out=()
  read -r -a words <<<"$(sed -n "s/^$1=//p" "$unit")"
  for w in "${words[@]}"; do
    w="${w//%f/$M}"
    out+=("${w//'${IMGFS_OPTIONS}'/$opts}")
  done
  printf '%s\n' "${out[@]}"
}
mapfile -t start < <(exec_words ExecStart)
[[ "${start[0]}" == /usr/bin/imgfs ]] || fail "ExecStart runs ${start[0]}"
socat -u "UNIX-RECV:$T/notify" "OPEN:$T/notified,creat,append" &
socat_pid=$!
on_exit "kill $socat_pid 2>/dev/null"
run_unit() {  # starts ExecStart as the unit's main process; sets MAIN
  : >"$T/notified"
  env NOTIFY_SOCKET="$T/notify" IMGFS_STORE="$STORE" IMGFS_OPTIONS="$opts" "${start[@]}" \
    2>>"$T/journal" &
  MAIN=$!
  on_exit "stop_pid $MAIN '$M'"
  local i
  for ((i = 0; i < 600; i++)); do
    grep -q "READY=1" "$T/notified" && break
    kill -0 "$MAIN" 2>/dev/null || fail "ExecStart exited: $(tail -5 "$T/journal")"
    sleep 0.1
  done
  grep -q "READY=1" "$T/notified" || fail "no READY=1 from ExecStart"
  mountpoint -q "$M" || fail "READY=1 came before the mount"
}
for ((i = 0; i < 50; i++)); do [[ -S "$T/notify" ]] && break; sleep 0.1; done
run_unit
[[ "$("$IMGFS" --json mount --status "$M" | jq -r .supervisor_pid)" == "$MAIN" ]] ||
  fail "the main process is not the supervisor"
cmp -n $((8 << 20)) "$T/src.raw" "$M/vm1/disk" || fail "the disk differs (unit)"
truncate -s 4M "$M/vm1/disk" || fail "allow_shrink from IMGFS_OPTIONS did not apply"
grep -q "mounted at $M" "$T/journal" || true  # logs go to stderr (the journal)

# Restart= after the supervisor and its server died: ExecStartPre clears the
# dead mount, ExecStart mounts again.
server="$("$IMGFS" --json mount --status "$M" | jq -r .server_pid)"
kill -9 "$MAIN" "$server"
tail --pid="$MAIN" -f /dev/null
tail --pid="$server" -f /dev/null
if stat "$M" >/dev/null 2>&1; then fail "the mount is not dead after kill -9"; fi
pre="$(sed -n 's/^ExecStartPre=-//p' "$unit")"
[[ -n "$pre" ]] || fail "no ExecStartPre"
eval "${pre//%f/$(printf '%q' "$M")}" || true
stat "$M" >/dev/null || fail "ExecStartPre did not clear the dead mount"
run_unit
[[ "$(stat -c %s "$M/vm1/disk")" -eq $((4 << 20)) ]] || fail "the disk lost its size"
# ExecStartPre leaves a live mount alone.
eval "${pre//%f/$(printf '%q' "$M")}" || true
mountpoint -q "$M" || fail "ExecStartPre unmounted a live mount"
# Stop: SIGTERM to the main process (KillMode=mixed) flushes and unmounts.
kill -TERM "$MAIN"
rc=0
wait "$MAIN" || rc=$?
((rc == 0)) || fail "the supervisor exited $rc at stop: $(tail -5 "$T/journal")"
mountpoint -q "$M" && fail "still mounted after the stop"

# 5. dpkg -r removes all but the conffile; dpkg -P that too.
dpkg -r imgfs >"$T/dpkg.log" 2>&1 || fail "dpkg -r: $(cat "$T/dpkg.log")"
for f in /usr/bin/imgfs "$unit" /usr/share/man/man1/imgfs.1.gz /usr/share/doc/imgfs; do
  [[ ! -e "$f" ]] || fail "dpkg -r left $f"
done
[[ "$(dpkg-query -W -f='${Status}' imgfs)" == "deinstall ok config-files" ]] ||
  fail "after dpkg -r: $(dpkg-query -W -f='${Status}' imgfs)"
[[ -f /etc/logrotate.d/imgfs ]] || fail "dpkg -r removed the conffile"
dpkg -P imgfs >"$T/dpkg.log" 2>&1 || fail "dpkg -P: $(cat "$T/dpkg.log")"
for f in /etc/logrotate.d/imgfs /var/log/imgfs; do [[ ! -e "$f" ]] || fail "dpkg -P left $f"; done
if dpkg-query -W imgfs >/dev/null 2>&1; then fail "dpkg still knows imgfs after purge"; fi
echo "package_deb: ok"
