#!/usr/bin/env bash
# Live migration downtime with the disk hand-over (docs/rbd.md, "Live
# migration"), side by side in one run with the same migration on qemu's own
# rbd driver (ratio; absolute numbers vary by machine and load):
#   imgfs:    two stores on one RBD namespace ("two hosts"), each with its
#             mount; qemu's disk is MOUNT/vm/disk (raw file, cache=none,
#             aio=native), a clone of an image of random data;
#   qemu rbd: qemu opens a twin clone of the same base itself,
#             rbd:POOL/NS/vm_twin:conf=...:id=...:keyring=... (cache=none),
#             librbd's exclusive lock moving on the destination's first write.
# Each hop: a paused (-S) TCG qemu starts with -incoming defer on the other
# host, `migrate`, then `cont` and a 4 KiB write (qemu-io through HMP) on the
# destination; the time from the source's STOP event (qemu's timestamp) to
# the end of that write is the downtime a guest would see before its first
# write completes. Prints every hop, the medians and the ratio imgfs / qemu
# rbd (target <= 1.2).
# Uses the cluster named by IMGFS_CEPH_* or starts a throwaway one. Builds in
# build-bench/ (Release) unless IMGFS_BENCH_BUILD_DIR names a build.
#   tools/bench-migrate.sh [HOPS]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
hops="${1:-6}"
. "$here/tools/bench-lib.sh"
bench_build imgfs
imgfs="$build/tools/imgfs"

work="$(mktemp -d /tmp/imgfs-bench-migrate.XXXXXX)"
cdir="" ns="" pids=()
cleanup() {
  local p m
  for p in "${pids[@]}"; do
    if kill -0 "$p" 2>/dev/null; then
      kill -TERM "$p"
      tail --pid="$p" -f /dev/null
    fi
  done
  for m in "$work/m1" "$work/m2"; do
    mountpoint -q "$m" 2>/dev/null && fusermount3 -u -z "$m"
  done
  [[ -n "$ns" ]] && bench_purge_namespace "$ns"
  [[ -n "$cdir" ]] && "$here/tools/ceph-cluster.sh" stop "$cdir"
  rm -rf "$work"
}
trap cleanup EXIT

if [[ -z "${IMGFS_CEPH_CONF:-}" ]]; then
  cdir="$work/ceph"
  eval "$("$here/tools/ceph-cluster.sh" start "$cdir")"
fi
ns="bm$RANDOM$RANDOM"
rbdc namespace create "$IMGFS_CEPH_POOL/$ns"
ceph_args=(--ceph-conf "$IMGFS_CEPH_CONF" --ceph-id "$IMGFS_CEPH_ID" --keyring "$IMGFS_CEPH_KEYRING")
head -c 64M /dev/urandom >"$work/src.raw"
for h in 1 2; do
  IMGFS_STORE="$work/s$h" "$imgfs" init --disks "rbd:$IMGFS_CEPH_POOL/$ns" "${ceph_args[@]}" >/dev/null
  IMGFS_STORE="$work/s$h" "$imgfs" image import "$work/src.raw" --name bench >/dev/null
  mkdir -p "$work/m$h"
done
IMGFS_STORE="$work/s1" "$imgfs" disk create vm/disk --image bench >/dev/null
IMGFS_STORE="$work/s1" "$imgfs" disk create vm/twin --image bench >/dev/null
for h in 1 2; do
  IMGFS_STORE="$work/s$h" "$imgfs" mount "$work/m$h" --pid-file "$work/mount$h.pid" \
    --log-file "$work/mount$h.log"
  pids+=("$(cat "$work/mount$h.pid")")
done
twin="rbd:$IMGFS_CEPH_POOL/$ns/vm_twin:conf=$IMGFS_CEPH_CONF:id=$IMGFS_CEPH_ID:keyring=$IMGFS_CEPH_KEYRING"

# One python run per configuration: HOPS migrations back and forth, one
# line per hop, the median last.
run() {  # NAME DISK1 DISK2
  python3 - "$work" "$hops" "$@" <<'PY'
import json, os, signal, socket, statistics, subprocess, sys, time
work, hops, name, disks = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:6]

class Qmp:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        for _ in range(500):  # the socket file exists a moment before qemu listens
            try:
                self.s.connect(path)
                break
            except ConnectionRefusedError:
                time.sleep(0.01)
        else:
            self.s.connect(path)
        self.r = self.s.makefile("r")
        self.w = self.s.makefile("w")
        self.events = []
        self.r.readline()
        self.cmd("qmp_capabilities")
    def cmd(self, c, **args):
        self.w.write(json.dumps({"execute": c, "arguments": args}) + "\n")
        self.w.flush()
        while True:
            m = json.loads(self.r.readline())
            if "event" in m:
                self.events.append(m)
            elif "error" in m:
                raise RuntimeError(f"{c}: {m['error']}")
            elif "return" in m:
                return m["return"]

started = []  # every qemu this run starts, stopped by pid when it ends, also on failure

def stop_all():
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()

import atexit
atexit.register(stop_all)

def start(tag, disk, incoming):
    sock = f"{work}/{tag}.qmp"
    args = ["qemu-system-x86_64", "-machine", "pc,accel=tcg", "-nodefaults", "-display", "none",
            "-S", "-m", "64", "-qmp", f"unix:{sock},server=on,wait=off",
            "-drive", f"file={disk},format=raw,if=virtio,id=disk0,cache=none,aio=native"]
    if incoming:
        args += ["-incoming", "defer"]
    out = open(f"{work}/{tag}.out", "w")
    p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    started.append(p)
    while not os.path.exists(sock):
        if p.poll() is not None:
            sys.exit(f"{tag}: qemu did not start: {open(f'{work}/{tag}.out').read()}")
        time.sleep(0.02)
    return p, Qmp(sock)

def io(q, tag, cmd):
    before = os.path.getsize(f"{work}/{tag}.out")
    q.cmd("human-monitor-command", **{"command-line": f'qemu-io disk0 "{cmd}"'})
    with open(f"{work}/{tag}.out") as f:
        f.seek(before)
        out = f.read()
    if "wrote" not in out or "failed" in out:
        sys.exit(f"{tag}: qemu-io {cmd}: {out}")

src, q = start(f"{name}0", disks[0], False)
q.cmd("cont")
io(q, f"{name}0", "write -P 1 0 4k")
times, qemu_down = [], []
for i in range(1, hops + 1):
    tag = f"{name}{i}"
    dst, d = start(tag, disks[i % 2], True)
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    d.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
    q.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
    while True:
        st = q.cmd("query-migrate")
        if st.get("status") in ("completed", "failed", "cancelled"):
            break
        time.sleep(0.01)
    if st["status"] != "completed":
        sys.exit(f"hop {i}: {st}")
    while True:  # the STOP event came before the migration completed
        stop = [e for e in q.events if e["event"] == "STOP"]
        if stop:
            break
        q.cmd("query-status")
    ts = stop[-1]["timestamp"]
    t_stop = ts["seconds"] + ts["microseconds"] / 1e6
    # The source reports completion before the destination has loaded the
    # last state; `cont` and I/O wait until it has (as libvirt's Finish).
    while d.cmd("query-status")["status"] == "inmigrate":
        pass
    d.cmd("cont")
    io(d, tag, f"write -P {i + 1} {i * 65536} 4k")
    t_done = time.time()
    times.append(t_done - t_stop)
    qemu_down.append(st.get("downtime", 0) / 1000)
    print(f"  {name} hop {i}: {1000 * times[-1]:.0f} ms from the source's stop to the first write done "
          f"(qemu's own downtime {st.get('downtime', 0)} ms)", flush=True)
    q.cmd("quit")
    src.wait()
    src, q = dst, d
q.cmd("quit")
src.wait()
print(f"MEDIAN {name} {statistics.median(times):.4f} {statistics.median(qemu_down):.4f}")
PY
}

echo "bench-migrate: $hops hops each, 64 MiB clone, paused TCG guests (load $(cut -d' ' -f1 /proc/loadavg))"
run imgfs "$work/m1/vm/disk" "$work/m2/vm/disk" | tee "$work/imgfs.txt"
run qemurbd "$twin" "$twin" | tee "$work/rbd.txt"
a="$(awk '/^MEDIAN/ {print $3}' "$work/imgfs.txt")"
b="$(awk '/^MEDIAN/ {print $3}' "$work/rbd.txt")"
python3 -c "
a, b = $a, $b
print(f'downtime to the first completed write, median: imgfs {1000*a:.0f} ms, qemu rbd {1000*b:.0f} ms, ratio {a/b:.2f} (target <= 1.2)')"
