# Helpers for the end-to-end tests (e2e_*.sh). Source it after lib.sh.
#
# The store comes from lib.sh's init_store: local disks, or with
# IMGFS_TEST_DISKS=rbd (the "@rbd" ctest entries) rbd disks in a fresh RBD
# namespace of the test cluster. Loop devices and filesystem mounts made through
# e2e_loop / e2e_fs_mount are undone at exit, before the imgfs mount goes away,
# also when a step fails.

# e2e_need CMD...: every command must exist; a missing one is a failure.
e2e_need() {
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 ||
      fail "'$c' is not installed (tools/setup.sh installs the test packages)"
  done
}

_e2e_loops=()   # loop devices attached by this test, still attached
_e2e_mounts=()  # filesystem mount points mounted by this test, still mounted
_e2e_detach_all() {
  local i
  for ((i = ${#_e2e_mounts[@]} - 1; i >= 0; i--)); do
    [[ -n "${_e2e_mounts[i]}" ]] || continue
    umount "${_e2e_mounts[i]}" 2>/dev/null || umount -l "${_e2e_mounts[i]}" || true
    _e2e_mounts[i]=""
  done
  for ((i = ${#_e2e_loops[@]} - 1; i >= 0; i--)); do
    [[ -n "${_e2e_loops[i]}" ]] || continue
    losetup -d "${_e2e_loops[i]}" || true
    _e2e_loops[i]=""
  done
}
on_exit _e2e_detach_all

# e2e_loop FILE [OFFSET LEN]: attaches a loop device over FILE (or over LEN
# bytes from OFFSET) and sets LOOP to it.
e2e_loop() {
  local f="$1" args=()
  (($# == 3)) && args=(-o "$2" --sizelimit "$3")
  LOOP="$(losetup -f --show "${args[@]}" "$f")" || fail "losetup on $f failed"
  _e2e_loops+=("$LOOP")
}
# e2e_unloop DEV: detaches a loop device made by e2e_loop.
e2e_unloop() {
  local i
  losetup -d "$1" || fail "losetup -d $1 failed"
  for i in "${!_e2e_loops[@]}"; do [[ "${_e2e_loops[i]}" == "$1" ]] && _e2e_loops[i]=""; done
  return 0
}
# e2e_fs_mount DEV DIR [mount options...]
e2e_fs_mount() {
  local dev="$1" dir="$2"
  shift 2
  mkdir -p "$dir"
  mount "$@" "$dev" "$dir" || fail "mount $dev on $dir failed"
  _e2e_mounts+=("$dir")
}
e2e_fs_umount() {
  local i
  umount "$1" || fail "umount $1 failed"
  for i in "${!_e2e_mounts[@]}"; do [[ "${_e2e_mounts[i]}" == "$1" ]] && _e2e_mounts[i]=""; done
  return 0
}

# e2e_mount MNT [imgfs mount options...]: mounts the store (lib.sh's
# mount_imgfs) and makes sure loop devices and filesystems over its files are
# gone before it is unmounted.
e2e_mount() {
  mount_imgfs "$@"
  on_exit _e2e_detach_all
}

# e2e_make_gpt_disk OUT SIZE_MIB FSTYPE SRCDIR: a raw GPT disk of SIZE_MIB with
# one partition (1 MiB to the end) holding an FSTYPE (ext4|xfs) filesystem
# with the files of SRCDIR. Built in files: the filesystem is made in a
# partition-sized file and copied in at the partition's offset.
e2e_make_gpt_disk() {
  local out="$1" mib="$2" fs="$3" src="$4"
  local part="$out.part" first last len
  truncate -s "${mib}M" "$out"
  sgdisk --clear -n 1:2048:0 -t 1:8300 -c "1:e2e-$fs" "$out" >/dev/null
  first="$(sgdisk -i 1 "$out" | awk '/^First sector/ { print $3 }')"
  last="$(sgdisk -i 1 "$out" | awk '/^Last sector/ { print $3 }')"
  len=$(((last - first + 1) * 512))
  truncate -s "$len" "$part"
  case "$fs" in
    ext4) mkfs.ext4 -q -F -b 4096 -L e2e-ext4 -d "$src" "$part" >/dev/null ;;
    xfs)
      mkfs.xfs -q -f -L e2e-xfs "$part" >/dev/null
      e2e_loop "$part"
      local dev="$LOOP"
      e2e_fs_mount "$dev" "$part.mnt"
      cp -a "$src/." "$part.mnt/"
      e2e_fs_umount "$part.mnt"
      e2e_unloop "$dev"
      ;;
    *) fail "e2e_make_gpt_disk: unknown filesystem $fs" ;;
  esac
  dd if="$part" of="$out" bs=1M seek=$((first * 512)) oflag=seek_bytes conv=notrunc,sparse status=none
  rm -f "$part"
}

# e2e_part FILE: sets PART_START and PART_LEN (bytes) of partition 1 and
# LAST_USABLE (the GPT's last usable sector).
e2e_part() {
  local info
  info="$(sgdisk -i 1 "$1")" || fail "sgdisk -i 1 $1 failed"
  local first last
  first="$(awk '/^First sector/ { print $3 }' <<<"$info")"
  last="$(awk '/^Last sector/ { print $3 }' <<<"$info")"
  [[ "$first" =~ ^[0-9]+$ && "$last" =~ ^[0-9]+$ ]] || fail "no partition 1 in $1: $info"
  PART_START=$((first * 512))
  PART_LEN=$(((last - first + 1) * 512))
  PART_LAST=$last
  LAST_USABLE="$(sgdisk -p "$1" | sed -n 's/.*last usable sector is \([0-9]*\).*/\1/p')"
  [[ "$LAST_USABLE" =~ ^[0-9]+$ ]] || fail "sgdisk -p $1 shows no last usable sector"
}

# e2e_qmp SOCK COMMAND [ARGUMENTS_JSON]: runs one QMP command on the monitor
# socket SOCK and prints its "return" as JSON; an "error" reply is a failure.
e2e_qmp() {
  python3 - "$@" <<'PY' || fail "QMP $2 failed"
import json, socket, sys
sock, cmd = sys.argv[1], sys.argv[2]
args = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
s = socket.socket(socket.AF_UNIX)
s.connect(sock)
f = s.makefile("rw")
def reply():
    while True:
        m = json.loads(f.readline())
        if "return" in m or "error" in m:
            return m
json.loads(f.readline())  # greeting
f.write(json.dumps({"execute": "qmp_capabilities"}) + "\n"); f.flush()
reply()
f.write(json.dumps({"execute": cmd, "arguments": args}) + "\n"); f.flush()
m = reply()
if "error" in m:
    print(json.dumps(m["error"]), file=sys.stderr)
    sys.exit(1)
print(json.dumps(m["return"]))
PY
}

# e2e_stop_pid PID: SIGTERM, then waits for the process to be gone.
e2e_stop_pid() {
  [[ -n "${1:-}" ]] || return 0
  kill -0 "$1" 2>/dev/null || return 0
  kill -TERM "$1" 2>/dev/null || true
  tail --pid="$1" -f /dev/null
}

# e2e_start_libvirt: what the Debian package scripts would have made (groups,
# user, directories), then this test's own virtlogd and libvirtd (stopped by
# pid at exit; a libvirtd already serving /run/libvirt is an error), and vsh,
# virsh on qemu:///system.
e2e_start_libvirt() {
  getent group kvm >/dev/null || groupadd -r kvm
  getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
  id libvirt-qemu >/dev/null 2>&1 ||
    useradd -r -g libvirt-qemu -G kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
  mkdir -p /var/log/libvirt/qemu /var/run/libvirt /var/lib/libvirt/qemu
  [[ ! -S /run/libvirt/libvirt-sock ]] || ! virsh -c qemu:///system version >/dev/null 2>&1 ||
    fail "a libvirtd is already serving /run/libvirt/libvirt-sock; this test starts and stops its own"

  start_daemon() {  # NAME -d, then its pid is stopped at exit
    "$1" -d -p "$T/$1.pid" || fail "$1 -d failed"
    local pid
    pid="$(cat "$T/$1.pid")" || fail "$1 wrote no pid file"
    on_exit "e2e_stop_pid $pid"
  }
  start_daemon virtlogd
  start_daemon libvirtd
  vsh() { virsh -q -c qemu:///system "$@"; }
  # virsh waits for libvirtd to load its drivers.
  vsh version >/dev/null || fail "libvirtd does not answer on qemu:///system"
}
