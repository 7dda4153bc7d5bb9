#!/usr/bin/env bash
# tools/guest/io-profile.sh [BUILD_DIR]: what a real guest's I/O looks like
# from the mount's side. Builds the test guest (tools/guest/build.sh, cached
# in BUILD_DIR/guest), makes a throwaway store (local disks; with
# IMGFS_PROFILE_INIT_ARGS, e.g. "--disks rbd:POOL/NS --ceph-conf ...", another
# backend) with the ext4 cloud image as a disk grown by 1 GiB, mounts it, and
# boots the guest under TCG with the steps grow,write,junk,trim,fsck (see
# tools/guest/firstboot) while strace records every system call qemu makes on
# the mount's file: Linux AIO reads and writes (io_submit), flushes
# (fdatasync) and discards (fallocate PUNCH_HOLE). With cache=none the file is
# opened O_DIRECT, so each of these is a FUSE request to the mount (writes and
# reads larger than max_write, 1 MiB, would be split by the kernel). Prints a
# summary: counts and sizes per kind, and the boot's times. Needs strace.
# Everything it starts is stopped at exit.
set -euo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"
build="$(cd "${1:-$here/build}" && pwd)"
imgfs="$build/tools/imgfs"
G="$build/guest"
command -v strace >/dev/null || { echo "io-profile: needs strace (apt-get install strace)" >&2; exit 1; }
"$here/tools/guest/build.sh" "$G"

T="$(mktemp -d /tmp/imgfs-ioprofile.XXXXXX)"
export IMGFS_STORE="$T/store"
mnt_pid=""
cleanup() {
  if [[ -n "$mnt_pid" ]] && kill -0 "$mnt_pid" 2>/dev/null; then
    kill -TERM "$mnt_pid"
    tail --pid="$mnt_pid" -f /dev/null
  fi
  if mountpoint -q "$T/mnt"; then fusermount3 -u -z "$T/mnt" || true; fi
  rm -rf "$T"
}
trap cleanup EXIT

# shellcheck disable=SC2086
"$imgfs" init ${IMGFS_PROFILE_INIT_ARGS:-} >/dev/null
"$imgfs" image import "$G/ext4.qcow2" --name guest-ext4 >/dev/null
"$imgfs" disk create vm1/disk --image guest-ext4 >/dev/null
mkdir -p "$T/mnt"
"$imgfs" mount "$T/mnt" --pid-file "$T/mount.pid" --log-file "$T/mount.log"
mnt_pid="$(cat "$T/mount.pid")"
D="$T/mnt/vm1/disk"
truncate -s +1G "$D"

t0="$(date +%s%N)"
strace -f -e trace=io_submit,fallocate,fdatasync,fsync,pread64,pwrite64,preadv,pwritev \
  -e signal=none -o "$T/strace.log" \
  qemu-system-x86_64 -machine pc,accel=tcg -m 256 -nodefaults -display none -no-reboot \
  -serial "file:$T/serial.log" \
  -kernel "$G/vmlinuz" -initrd "$G/initrd.img" \
  -append "console=ttyS0 panic=-1 quiet imgfs.steps=grow,write,junk,trim,fsck" \
  -drive "file=$D,format=raw,if=virtio,cache=none,aio=native,discard=unmap"
t1="$(date +%s%N)"

python3 - "$T/strace.log" "$T/serial.log" "$(((t1 - t0) / 1000000))" <<'PY'
import collections, re, sys
trace, serial, wall_ms = sys.argv[1], sys.argv[2], int(sys.argv[3])
kinds = collections.defaultdict(lambda: [0, 0, collections.Counter()])  # n, bytes, sizes
def add(kind, size):
    k = kinds[kind]; k[0] += 1; k[1] += size; k[2][size] += 1
calls = 0
for line in open(trace):
    if "io_submit(" in line:
        calls += 1
        for iocb in line.split("{aio_data=")[1:]:
            op = re.search(r"aio_lio_opcode=(\w+)", iocb).group(1)
            size = sum(int(x) for x in re.findall(r"iov_len=(\d+)", iocb))
            add({"IOCB_CMD_PREADV": "read (AIO)", "IOCB_CMD_PWRITEV": "write (AIO)"}.get(op, op), size)
    elif "fallocate(" in line:
        m = re.search(r"fallocate\(\d+, ([\w|]+), (\d+), (\d+)\)", line)
        if m: add("discard (fallocate " + m.group(1) + ")", int(m.group(3)))
    elif "fdatasync(" in line or "fsync(" in line:
        add("flush (fdatasync)", 0)
    elif re.search(r"p(read|write)(64|v)\(", line):
        m = re.search(r"(p(?:read|write)(?:64|v))\(\d+, .*, (\d+), (\d+)\) = ", line)
        if m: add(m.group(1) + " (qemu's own probes)", int(m.group(2)))
def h(n):
    for u in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or u == "GiB": return f"{n:g} {u}" if u == "B" else f"{n:.4g} {u}"
        n /= 1024
print(f"{'kind':40} {'count':>7} {'bytes':>12}  most frequent sizes")
for kind in sorted(kinds):
    n, b, sizes = kinds[kind]
    top = ", ".join(f"{h(s)} x{c}" for s, c in sizes.most_common(4))
    print(f"{kind:40} {n:7d} {h(b):>12}  {top}")
print(f"io_submit calls: {calls}")
rep = {}
for line in open(serial, errors="replace"):
    line = line.strip("\r\n")
    if line.startswith("IMGFS-REPORT "):
        k, _, v = line[13:].partition(" ")
        rep[k] = v
print(f"wall clock, qemu start to exit: {wall_ms / 1000:.1f} s (under strace)")
for k in ("init_uptime", "root_mounted", "done_uptime"):
    print(f"guest uptime at {k}: {rep.get(k, '?')} s")
s = rep.get("vda_stat", "").split()
if len(s) >= 17:
    print("guest's /sys/block/vda/stat: reads %s (%s sectors), writes %s (%s sectors), "
          "discards %s (%s sectors), flushes %s" % (s[0], s[2], s[4], s[6], s[11], s[13], s[15]))
errs = [l for l in open(serial, errors="replace") if "IMGFS-REPORT error" in l]
if errs: print("guest errors:", *errs)
PY
