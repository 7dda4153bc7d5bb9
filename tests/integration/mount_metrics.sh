# The mount's Prometheus metrics: -o metrics=[HOST:]PORT (HTTP /metrics, on
# loopback unless told otherwise) and -o metrics_file=PATH (node_exporter's
# textfile collector). Scraped while fio runs; the byte counters move by
# exactly what fio did (O_DIRECT: no page cache between them); the output
# passes `promtool check metrics`. Bad values fail the mount with one line.
# On rbd (@rbd), the reads of the clone's parent from the local store are
# counted: fio's reads of the objects it did not write.
source "$(dirname "$0")/lib.sh"
for c in fio promtool curl ss; do command -v "$c" >/dev/null || fail "$c is missing (tools/setup.sh)"; done
MIB=$((1 << 20))
init_store
make_sample_raw "$T/src.raw" 32
"$IMGFS" image import "$T/src.raw" --name sample >/dev/null
"$IMGFS" disk create vm1/disk --image sample >/dev/null
M="$T/mnt"
mkdir -p "$M"

# Bad values: one line, nothing mounted.
for bad in metrics=notaport metrics=127.0.0.1:0 metrics=:9477 metrics_file=relative.prom \
  metrics_interval=0; do
  expect_fail "-o $bad" "$IMGFS" mount "$M" -o "$bad"
  expect_err_contains "-o ${bad%%=*}"
  mountpoint -q "$M" && fail "-o $bad left a mount"
done

# A free port on loopback.
port=""
for ((i = 0; i < 100; i++)); do
  p=$((20000 + RANDOM % 20000))
  if [[ -z "$(ss -Hltn "sport = :$p")" ]]; then port=$p; break; fi
done
[[ -n "$port" ]] || fail "no free port"
prom="$T/textfile/imgfs.prom"
mkdir -p "$T/textfile"
mount_imgfs "$M" -o "metrics=$port,metrics_file=$prom,metrics_interval=1"
url="http://127.0.0.1:$port/metrics"
scrape() { curl -sf "$url"; }
for ((i = 0; i < 100; i++)); do scrape >/dev/null 2>&1 && break; sleep 0.1; done
scrape >"$T/m0" || fail "no metrics on $url: $(tail -3 "$T/mount.log")"
ss -Hltn "sport = :$port" | grep -q "127.0.0.1:$port" ||
  fail "metrics=$port does not listen on loopback only: $(ss -Hltn "sport = :$port")"
promtool check metrics <"$T/m0" || fail "promtool rejects the metrics: $(cat "$T/m0")"
grep -q '^imgfs_server_restarts_total{mountpoint="'"$M"'"} 0$' "$T/m0" || fail "restarts: $(cat "$T/m0")"

# metric NAME FILE: the value of disk vm1/disk's series NAME in FILE (0 if absent).
metric() {
  awk -v n="$1{mountpoint=\"$M\",instance_name=\"vm1\",disk=\"disk\"}" \
    '$1 == n { v = $2 } END { print v + 0 }' "$2"
}

# fio writes 16 MiB then reads 32 MiB, O_DIRECT, while the test scrapes. The
# read job opens the file for writing too (rw=rw, no writes), as a VM does:
# on rbd the disk then holds its lock and reads its parent's bytes locally.
cat >"$T/job.fio" <<EOF
[global]
filename=$M/vm1/disk
direct=1
ioengine=psync
bs=64k
[write]
rw=randwrite
size=16M
fsync_on_close=1
[read]
stonewall
rw=rw
rwmixread=100
size=32M
EOF
fio --output-format=json --output="$T/fio.json" "$T/job.fio" &
fio_pid=$!
on_exit "kill $fio_pid 2>/dev/null || true"
n=0
while kill -0 "$fio_pid" 2>/dev/null; do
  scrape >"$T/mid" && n=$((n + 1))
  sleep 0.2
done
wait "$fio_pid" || fail "fio failed: $(cat "$T/fio.json")"
((n > 0)) || fail "no scrape succeeded while fio ran"
scrape >"$T/m1" || fail "scrape after fio"
promtool check metrics <"$T/m1" || fail "promtool rejects the metrics after fio"
wrote="$(jq '[.jobs[] | .write.io_bytes] | add' "$T/fio.json")"
read="$(jq '[.jobs[] | .read.io_bytes] | add' "$T/fio.json")"
[[ "$wrote" == $((16 * MIB)) && "$read" == $((32 * MIB)) ]] || fail "fio did $wrote/$read bytes"
d_w=$(($(metric imgfs_disk_written_bytes_total "$T/m1") - $(metric imgfs_disk_written_bytes_total "$T/m0")))
d_r=$(($(metric imgfs_disk_read_bytes_total "$T/m1") - $(metric imgfs_disk_read_bytes_total "$T/m0")))
((d_w == wrote)) || fail "written bytes moved by $d_w, fio wrote $wrote"
((d_r == read)) || fail "read bytes moved by $d_r, fio read $read"
(($(metric imgfs_disk_writes_total "$T/m1") >= 256)) || fail "writes: $(grep writes_total "$T/m1")"
# The parent's bytes read locally: none on a local disk (not counted there);
# on rbd the 16 MiB fio read beyond what it wrote (4 objects of 4 MiB the
# clone does not have).
d_l=$(($(metric imgfs_disk_local_parent_read_bytes_total "$T/m1") - $(metric imgfs_disk_local_parent_read_bytes_total "$T/m0")))
want_l=0
[[ "${IMGFS_TEST_DISKS:-}" == rbd ]] && want_l=$((16 * MIB))
((d_l == want_l)) || fail "local parent read bytes moved by $d_l, not $want_l"
(($(metric imgfs_disk_flushes_total "$T/m1") >= 1)) || fail "no flush: $(grep flushes "$T/m1")"
[[ "$(metric imgfs_disk_flush_errors_total "$T/m1")" == 0 ]] || fail "flush errors"
[[ "$(metric imgfs_disk_write_duration_seconds_count "$T/m1")" == \
  "$(metric imgfs_disk_writes_total "$T/m1")" ]] || fail "write histogram count != writes"
inf="$(awk -v n='imgfs_disk_read_duration_seconds_bucket{mountpoint="'"$M"'",instance_name="vm1",disk="disk",le="+Inf"}' \
  '$1 == n { print $2 }' "$T/m1")"
[[ "$inf" == "$(metric imgfs_disk_reads_total "$T/m1")" ]] || fail "+Inf bucket $inf != reads"
grep -q '^imgfs_chunk_cache_misses_total{mountpoint="'"$M"'"} [1-9]' "$T/m1" ||
  fail "no cache misses after reading base data"
grep -q '^imgfs_chunk_verify_failures_total{mountpoint="'"$M"'"} 0$' "$T/m1" ||
  fail "verification failures"

# The textfile: rewritten every second, always whole (renamed into place).
for ((i = 0; i < 100; i++)); do
  [[ "$(metric imgfs_disk_written_bytes_total "$prom")" == "$(metric imgfs_disk_written_bytes_total "$T/m1")" ]] && break
  sleep 0.1
done
[[ "$(metric imgfs_disk_written_bytes_total "$prom")" == $((16 * MIB)) ]] ||
  fail "the textfile lags: $(grep written "$prom")"
promtool check metrics <"$prom" || fail "promtool rejects the textfile"
ls "$T/textfile" | grep -v '^imgfs.prom$' && fail "temporary files left in the textfile directory"

# The supervisor's restarts reach the next server's metrics.
kill_server "$M"
for ((i = 0; i < 100; i++)); do scrape >"$T/m2" 2>/dev/null && break; sleep 0.1; done
grep -q '^imgfs_server_restarts_total{mountpoint="'"$M"'"} 1$' "$T/m2" ||
  fail "restarts after a kill: $(grep restarts "$T/m2")"
echo "mount_metrics: ok"
