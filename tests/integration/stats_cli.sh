# imgfs stats: the store's figures (images, stored and logical bytes, dedup
# ratio, disks, per-backend use) and, with --mount, a running mount's live
# counters; --json for both; bad input is one clear line and changes nothing.
source "$(dirname "$0")/lib.sh"
MIB=$((1 << 20))
j() { "$IMGFS" --json stats "$@"; }

# An empty store.
init_store
[[ "$(j | jq -c '[.images, .chunks, .disks, .image_bytes]')" == "[0,0,0,0]" ]] ||
  fail "empty store: $(j)"

# Two images sharing 4 MiB of data: src has 4 MiB of data in 8 MiB (the rest
# holes), src2 the same plus 1 MiB more. 64K chunks: 64 + 16 stored.
make_sample_raw "$T/src.raw" 8
cp "$T/src.raw" "$T/src2.raw"
head -c 1M /dev/urandom | dd of="$T/src2.raw" bs=1M seek=5 conv=notrunc status=none
"$IMGFS" image import "$T/src.raw" --name one >/dev/null
"$IMGFS" image import "$T/src2.raw" --name two >/dev/null
"$IMGFS" disk create vm1/a --image one >/dev/null
"$IMGFS" disk create vm1/b --blank --size 1G >/dev/null
out="$(j)"
want() {  # JQ-EXPR VALUE
  [[ "$(jq -r "$1" <<<"$out")" == "$2" ]] || fail "$1 is $(jq -r "$1" <<<"$out"), want $2: $out"
}
want .images 2
want .image_bytes $((16 * MIB))
want .image_data_bytes $((9 * MIB))
want .chunks 80
want .chunk_bytes_max $((5 * MIB))
want .dedup_ratio 1.8
want .disks 2
want .disk_bytes $((8 * MIB + 1024 * MIB))
want .disk_owned_bytes 0
want .chunk_backend.kind dir
want .disk_backend.kind "$("$IMGFS" --json stats | jq -r .disk_backend.kind)"
[[ "$(jq -r '.chunk_backend.space.capacity_bytes > 0' <<<"$out")" == true ]] ||
  fail "no chunk backend space: $out"
[[ "$(jq -r '.disk_backend.space.available_bytes > 0' <<<"$out")" == true ]] ||
  fail "no disk backend space: $out"
text="$("$IMGFS" stats)"
for line in "images:        2 (16.0 MiB virtual, 9.0 MiB of data)" "chunks:        80 (at most 5.0 MiB)" \
  "dedup ratio:   1.80" "disks:         2"; do
  grep -qF "$line" <<<"$text" || fail "stats lacks '$line': $text"
done

# Bad input: one line, non-zero, nothing changed.
expect_fail "stats of no store" "$IMGFS" --store "$T/nothing" stats
expect_err_contains "imgfs init"
[[ ! -e "$T/nothing" ]] || fail "stats made a store"
mkdir "$T/plain"
expect_fail "stats --mount of a directory that is no mount" "$IMGFS" stats --mount "$T/plain"
expect_err_contains "no imgfs supervisor serves $T/plain"
expect_fail "stats --mount of a missing path" "$IMGFS" stats --mount "$T/missing"
expect_err_contains "$T/missing"
# (Free space moves with the rest of the machine: not compared.)
figures='del(.chunk_backend.space, .disk_backend.space, .capacity_bytes, .available_bytes)'
[[ "$(j | jq -c "$figures")" == "$(jq -c "$figures" <<<"$out")" ]] || fail "the figures changed"

# --mount: the counters move by what was done through the mount.
M="$T/mnt"
mount_imgfs "$M"
jm() { "$IMGFS" --json stats --mount "$M"; }
disk() { jm | jq -r ".disks[] | select(.instance == \"vm1\" and .disk == \"$1\") | .$2"; }
s0="$(jm)"
[[ "$(jq -r .state <<<"$s0")" == serving ]] || fail "state: $s0"
[[ "$(jq -r .restarts <<<"$s0")" == 0 && "$(jq -r .upgrades <<<"$s0")" == 0 ]] ||
  fail "restarts/upgrades: $s0"
[[ "$(jq -r .supervisor_pid <<<"$s0")" == "$MOUNT_PID" ]] || fail "supervisor pid: $s0"
[[ "$(jq '.disks | length' <<<"$s0")" == 0 ]] || fail "disks before any open: $s0"
# 4 MiB written with O_DIRECT and fsync'd, 8 MiB read with O_DIRECT (no
# readahead: the mount sees exactly these bytes).
dd if=/dev/urandom of="$M/vm1/a" bs=1M count=4 seek=1 oflag=direct conv=notrunc,fsync status=none
dd if="$M/vm1/a" of=/dev/null bs=1M count=8 iflag=direct status=none
[[ "$(disk a write_bytes)" == $((4 * MIB)) ]] || fail "write_bytes $(disk a write_bytes): $(jm)"
[[ "$(disk a read_bytes)" == $((8 * MIB)) ]] || fail "read_bytes $(disk a read_bytes): $(jm)"
(($(disk a writes) >= 4 && $(disk a reads) >= 8)) || fail "request counts: $(jm)"
(($(disk a flushes) >= 1)) || fail "no flush counted: $(jm)"
[[ "$(disk a write_errors)" == 0 && "$(disk a flush_errors)" == 0 ]] || fail "errors: $(jm)"
[[ "$(disk a lock_acquisitions)" == 1 ]] || fail "lock acquisitions: $(jm)"
[[ "$(disk a write_latency.count)" == "$(disk a writes)" ]] || fail "write latency count: $(jm)"
# The image's chunks: read once from the store (misses), then from the cache (hits).
s1="$(jm)"
dd if="$M/vm1/a" of=/dev/null bs=1M count=8 iflag=direct status=none
s2="$(jm)"
(($(jq .cache.misses <<<"$s1") > 0)) || fail "no cache misses: $s1"
(($(jq .cache.hits <<<"$s2") > $(jq .cache.hits <<<"$s1"))) || fail "no cache hits: $s1 / $s2"
[[ "$(jq .cache.misses <<<"$s2")" == "$(jq .cache.misses <<<"$s1")" ]] ||
  fail "the second read missed the cache: $s1 / $s2"
(($(jq .cache.used_bytes <<<"$s2") > 0)) || fail "cache size: $s2"
[[ "$(jq .cache.verify_failures <<<"$s2")" == 0 ]] || fail "verification failures: $s2"
# A discard.
fallocate -p -o 1M -l 1M "$M/vm1/a"
[[ "$(disk a discards)" == 1 ]] || fail "discards: $(jm)"
# The text form.
text="$("$IMGFS" stats --mount "$M")"
grep -q "^restarts:    0$" <<<"$text" || fail "text: $text"
grep -q "^disk vm1/a: .* reads (16.0 MiB), .* writes (4.0 MiB)" <<<"$text" || fail "text: $text"

# After a server dies the supervisor's restart count moves; the new server's
# counters start at zero.
kill_server "$M"
s3="$(jm)"
[[ "$(jq .restarts <<<"$s3")" == 1 ]] || fail "restarts after a kill: $s3"
[[ "$(jq -r .server_pid <<<"$s3")" != "$(jq -r .server_pid <<<"$s2")" ]] || fail "same server: $s3"
dd if="$M/vm1/b" of=/dev/null bs=1M count=2 iflag=direct status=none
[[ "$(disk b read_bytes)" == $((2 * MIB)) ]] || fail "read_bytes after restart: $(jm)"
echo "stats_cli: ok"
