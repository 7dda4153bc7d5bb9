# Hot upgrade (docs/operations.md, "Crashes and upgrades"):
# - fio (random 4 KiB writes, iodepth 16, O_DIRECT, crc32c verify) sees no
#   error while the mount is handed 10 times between two binaries (5 round
#   trips), and the supervisor re-executes itself from each;
# - a binary that fails at start, and one whose server would negotiate the
#   FUSE connection differently, leave the old server serving and the
#   command failing with one line.
# Run on local disks and, as mount_upgrade@rbd, on rbd disks.
source "$(dirname "$0")/lib.sh"
command -v fio >/dev/null || fail "fio is not installed (tools/setup.sh installs it)"
init_store
"$IMGFS" disk create vm1/disk --blank --size 64M >/dev/null
M="$T/mnt"
mount_imgfs "$M"
copy="$T/imgfs-copy"
cp "$IMGFS" "$copy"

# fio runs again and again until the upgrades are done: each run writes with
# checksums and reads everything back.
done_flag="$T/upgrades-done"
(
  n=0
  while [[ ! -e "$done_flag" || $n -eq 0 ]]; do
    fio --name=upgrade --filename="$M/vm1/disk" --rw=randwrite --bs=4k --iodepth=16 \
      --ioengine=libaio --direct=1 --verify=crc32c --size=32M --output-format=json \
      --output="$T/fio.$n.json" >/dev/null 2>"$T/fio.$n.err" || exit 1
    n=$((n + 1))
  done
  echo "$n" >"$T/fio.runs"
) &
fpid=$!
on_exit "touch '$done_flag'; kill $fpid 2>/dev/null"
sleep 0.5
for i in 1 2 3 4 5; do
  for bin in "$copy" "$IMGFS"; do
    out="$("$bin" mount --upgrade "$M" 2>&1)" || fail "upgrade $i to $bin: $out"
    [[ "$(mount_status "$M" server_binary)" == "$bin" ]] || fail "the server runs $(mount_status "$M" server_binary)"
    [[ "$(readlink "/proc/$MOUNT_PID/exe")" == "$bin" ]] \
      || fail "the supervisor runs $(readlink "/proc/$MOUNT_PID/exe"), not $bin"
    sleep "0.$((RANDOM % 5 + 1))"
  done
done
touch "$done_flag"
wait "$fpid" || fail "fio failed during the upgrades: $(cat "$T"/fio.*.err | tail -5)"
runs="$(cat "$T/fio.runs")"
clat_max=0
for f in "$T"/fio.*.json; do
  jq -e '.jobs[0].error == 0' "$f" >/dev/null || fail "fio reported an error: $(jq '.jobs[0].error' "$f")"
  c="$(jq '.jobs[0].write.clat_ns.max' "$f")"
  ((c > clat_max)) && clat_max=$c
done
[[ "$(mount_status "$M" restarts)" == 0 ]] || fail "a server died during the upgrades"
grep -qi "error" "$T/mount.log" && fail "errors in the log: $(grep -i error "$T/mount.log" | head -3)"
echo "upgrade: 10 hand-overs under $runs fio runs, no error, longest write $((clat_max / 1000000)) ms"

# A binary that fails at start: the old server goes on, the command fails.
printf '#!/bin/sh\necho "this imgfs is broken" >&2\nexit 3\n' >"$T/broken"
chmod +x "$T/broken"
pid="$(mount_status "$M" server_pid)"
expect_fail "upgrade to a binary that fails at start" "$IMGFS" mount --upgrade --binary "$T/broken" "$M"
expect_err_contains "did not start"
expect_err_contains "the old server goes on serving"
[[ "$(mount_status "$M" server_pid)" == "$pid" ]] || fail "the old server was replaced"
dd if="$M/vm1/disk" of=/dev/null bs=1M count=1 iflag=direct status=none || fail "no longer served"

# A server that would negotiate FUSE differently (here: another max_write)
# must not take the connection over.
printf '#!/bin/sh\nexec "%s" "$@" -o max_write=65536\n' "$IMGFS" >"$T/other"
chmod +x "$T/other"
expect_fail "upgrade to a server that negotiates differently" \
  "$IMGFS" mount --upgrade --binary "$T/other" "$M"
expect_err_contains "negotiate the FUSE connection differently"
[[ "$(mount_status "$M" server_pid)" == "$pid" ]] || fail "the old server was replaced"
printf 'still served' | dd of="$M/vm1/disk" conv=notrunc status=none || fail "no longer served"
expect_fail "upgrade of a directory that is no mount" "$IMGFS" mount --upgrade "$T"
expect_err_contains "no imgfs supervisor"
echo "mount_upgrade: ok"
