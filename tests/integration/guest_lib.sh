# Helpers for the guest tests (guest_*.sh): a real guest (tools/guest/, see
# tools/guest/README.md) booted by qemu under TCG from a disk file in the
# mount. Source it after lib.sh and e2e_lib.sh.
#
# The guest's first-boot script prints "IMGFS-REPORT <key> <value...>" lines
# on its serial console (here a file, $T/NAME.serial); the last one is
# "IMGFS-REPORT end", after which the guest powers off and qemu exits.

GUEST_DIR="${IMGFS_BUILD:-${IMGFS_SRC:-$(dirname "$0")/../..}/build}/guest"

# guest_build: builds the guest into $GUEST_DIR (cached: only the first test
# of a build tree builds it; concurrent tests wait for each other).
guest_build() {
  e2e_need qemu-system-x86_64 qemu-img apt-get dpkg cpio gzip sgdisk mkfs.ext4 mkfs.xfs growpart \
    sfdisk partx resize2fs e2fsck dumpe2fs xfs_growfs xfs_repair fstrim flock
  "${IMGFS_SRC:-$(dirname "$0")/../..}/tools/guest/build.sh" "$GUEST_DIR" ||
    fail "building the test guest (tools/guest/build.sh $GUEST_DIR) failed"
}

# guest_start NAME DISK STEPS [qemu args...]: boots the guest in the
# background: TCG, 256 MiB, no display, the serial console into
# $T/NAME.serial, QMP on $T/NAME.qmp, kernel and initramfs from $GUEST_DIR,
# DISK (a file in the mount) as virtio-blk with cache=none, aio=native and
# discard=unmap. STEPS is the first-boot script's imgfs.steps. Sets GUEST_PID;
# the test's exit stops qemu by pid, also on failure.
guest_start() {
  local name="$1" disk="$2" steps="$3"
  shift 3
  GUEST_T0="$(date +%s%N)"
  qemu-system-x86_64 -machine pc,accel=tcg -m 256 -nodefaults -display none -no-reboot \
    -serial "file:$T/$name.serial" -qmp "unix:$T/$name.qmp,server=on,wait=off" \
    -kernel "$GUEST_DIR/vmlinuz" -initrd "$GUEST_DIR/initrd.img" \
    -append "console=ttyS0 panic=-1 quiet imgfs.steps=$steps" \
    -drive "file=$disk,format=raw,if=virtio,id=disk0,cache=none,aio=native,discard=unmap" \
    -daemonize -pidfile "$T/$name.pid" "$@" 2>"$T/$name.err" ||
    fail "qemu for $name did not start: $(cat "$T/$name.err")"
  GUEST_PID="$(cat "$T/$name.pid")"
  on_exit "e2e_stop_pid $GUEST_PID"
}

# guest_wait NAME: waits for the guest started last to power off, then checks
# that its report is complete and has no error line. Prints the boot's wall
# time.
guest_wait() {
  local name="$1"
  tail --pid="$GUEST_PID" -f /dev/null
  local ms=$((($(date +%s%N) - GUEST_T0) / 1000000))
  echo "guest $name: powered off after $((ms / 1000)).$(printf %03d $((ms % 1000))) s (wall clock, qemu start to exit)"
  grep -q '^IMGFS-REPORT end' "$T/$name.serial" ||
    fail "guest $name did not finish; serial log: $(tail -20 "$T/$name.serial")"
  if grep -q '^IMGFS-REPORT error' "$T/$name.serial"; then
    fail "guest $name reported: $(grep '^IMGFS-REPORT error' "$T/$name.serial")"
  fi
  echo "guest $name: the guest's own uptime at the end: $(guest_get "$name" done_uptime) s"
}

# guest_get NAME KEY: prints the value of the last "IMGFS-REPORT KEY ..." line;
# a missing key is a failure.
guest_get() {
  local v
  v="$(tr -d '\r' <"$T/$1.serial" | sed -n "s/^IMGFS-REPORT $2 //p" | tail -1)"
  [[ -n "$v" ]] || fail "guest $1 reported no $2; serial log: $(tail -20 "$T/$1.serial")"
  printf '%s\n' "$v"
}

# guest_wait_for NAME KEY: waits until the running guest reports KEY (a
# guest that powers off first is a failure).
guest_wait_for() {
  until tr -d '\r' <"$T/$1.serial" | grep -q "^IMGFS-REPORT $2"; do
    kill -0 "$GUEST_PID" 2>/dev/null ||
      fail "guest $1 powered off before reporting $2: $(tail -20 "$T/$1.serial")"
    sleep 0.2
  done
}

# guest_check_grown NAME DISK_BYTES SIZE0: the report of a "grow" step says
# growpart changed partition 1, the resize worked, the guest sees DISK_BYTES,
# the GPT ends at the disk's end and is valid, the partition ends less than
# 1 MiB before it, and the file system fills the partition (within 1 MiB:
# resize2fs leaves out a last block group too small for its metadata) and is
# larger than SIZE0.
guest_check_grown() {
  local name="$1" size="$2" size0="$3"
  local gp start sectors last fsb
  gp="$(guest_get "$name" growpart)"
  [[ "$gp" == *"CHANGED: partition=1"* ]] || fail "$name: growpart did not grow partition 1: $gp"
  [[ "$(guest_get "$name" resize)" == ok ]] || fail "$name: resize: $(guest_get "$name" resize)"
  [[ "$(guest_get "$name" disk_bytes)" -eq "$size" ]] ||
    fail "$name: the guest sees $(guest_get "$name" disk_bytes) bytes, the mount $size"
  [[ "$(guest_get "$name" gpt_verify)" == ok ]] || fail "$name: sgdisk -v: $(guest_get "$name" gpt_verify)"
  start="$(guest_get "$name" part_start)"
  sectors="$(guest_get "$name" part_sectors)"
  last="$(guest_get "$name" last_usable)"
  [[ "$last" -eq $((size / 512 - 34)) ]] ||
    fail "$name: the GPT's last usable sector is $last, not the disk's end ($((size / 512 - 34)))"
  local end=$((start + sectors - 1))
  ((end <= last && last - end < 2048)) || fail "$name: partition 1 ends at $end, the disk at $last"
  fsb="$(guest_get "$name" fs_bytes)"
  ((fsb <= sectors * 512 && sectors * 512 - fsb < (1 << 20))) ||
    fail "$name: the file system has $fsb bytes, the partition $((sectors * 512))"
  ((fsb > size0)) || fail "$name: the file system did not grow ($fsb bytes)"
}

# guest_disk: vm1/disk made from the ext4 guest image (imported as
# guest-ext4) in the store, which is mounted at $T/mnt; sets M and D (the disk file).
guest_disk() {
  "$IMGFS" image import "$GUEST_DIR/ext4.qcow2" --name guest-ext4 >/dev/null
  "$IMGFS" disk create vm1/disk --image guest-ext4 >/dev/null
  M="$T/mnt"
  e2e_mount "$M"
  D="$M/vm1/disk"
}
