# imgfs init and image import/ls/info/name/rm against real files and the
# real qemu-img: formats, sparse files, stdin, dedup, names, concurrency,
# bad input (clear one-line errors, store unchanged) and kill -9.
source "$(dirname "$0")/lib.sh"
cd "$T"

# --- init -------------------------------------------------------------------
expect_fail "command before init" "$IMGFS" image ls
expect_err_contains "imgfs init"
"$IMGFS" init >/dev/null
"$IMGFS" init >/dev/null || fail "second init is not harmless"
mkdir notastore && touch notastore/x
expect_fail "init in a foreign dir" "$IMGFS" --store notastore init
expect_err_contains "not empty"
expect_fail "init with a bad chunk size" "$IMGFS" --store "$T/s2" init --chunk-size 3K
expect_fail "init with a chunk size too large" "$IMGFS" --store "$T/s2" init --chunk-size 8M
expect_fail "reinit with another chunk size" "$IMGFS" init --chunk-size 1M

snapshot() { "$IMGFS" --json image ls; ls -A "$STORE/tmp"; }

# --- raw, stdin, qcow2 --------------------------------------------------------
head -c 5M /dev/urandom > raw.img
truncate -s 6M raw.img   # 1 MiB of trailing hole
id_raw=$("$IMGFS" image import raw.img --name base-raw)
[[ "$id_raw" =~ ^[0-9a-f]{32}$ ]] || fail "import printed '$id_raw', not an id"
id_stdin=$("$IMGFS" image import - < raw.img)
[[ "$id_stdin" == "$id_raw" ]] || fail "stdin import gave $id_stdin, file gave $id_raw"
qemu-img convert -f raw -O qcow2 raw.img q.qcow2
id_q=$("$IMGFS" image import q.qcow2)
[[ "$id_q" == "$id_raw" ]] || fail "qcow2 of the same content got id $id_q, raw $id_raw"
[[ -z "$(ls -A "$STORE/tmp")" ]] || fail "conversion left files in tmp: $(ls "$STORE/tmp")"
qemu-img convert -f raw -O vdi raw.img v.vdi
[[ "$("$IMGFS" image import --format vdi v.vdi)" == "$id_raw" ]] || fail "vdi id differs"

# re-import stores nothing new and returns the same id
j=$("$IMGFS" --json image import raw.img --name again)
[[ "$(jq -r .id <<<"$j")" == "$id_raw" ]] || fail "re-import id differs"
[[ "$(jq -r .new_bytes <<<"$j")" == 0 ]] || fail "re-import stored new bytes: $j"
[[ "$(jq -r .size <<<"$j")" == $((6 << 20)) ]] || fail "size wrong: $j"
[[ "$(jq -r .stored_bytes <<<"$j")" == $((5 << 20)) ]] || fail "stored_bytes wrong: $j"
[[ "$("$IMGFS" --json image ls | jq length)" == 1 ]] || fail "more than one image listed"

# --- names and prefixes --------------------------------------------------------
"$IMGFS" image info base-raw | grep -q "$id_raw" || fail "info by name"
"$IMGFS" image info "${id_raw:0:8}" | grep -q "$id_raw" || fail "info by 8-digit prefix"
expect_fail "prefix of 7" "$IMGFS" image info "${id_raw:0:7}"
"$IMGFS" --json image info "$id_raw" | jq -e '.names == ["again","base-raw"]' >/dev/null \
  || fail "names not listed"
"$IMGFS" image name "$id_raw" ubuntu-24.04
"$IMGFS" image info ubuntu-24.04 >/dev/null || fail "new name does not resolve"
expect_fail "name with a slash" "$IMGFS" image name "$id_raw" a/b
expect_fail "name with .." "$IMGFS" image name "$id_raw" ..
expect_fail "name of 129 bytes" "$IMGFS" image name "$id_raw" "$(printf 'x%.0s' {1..129})"
expect_fail "name with a control byte" "$IMGFS" image name "$id_raw" $'a\tb'
"$IMGFS" image name --rm ubuntu-24.04
expect_fail "removed name" "$IMGFS" image info ubuntu-24.04

# --- sparse raw: 1 GiB with 10 MiB of data ------------------------------------
truncate -s 1G sparse.img
dd if=/dev/urandom of=sparse.img bs=1M count=5 seek=100 conv=notrunc status=none
dd if=/dev/urandom of=sparse.img bs=1M count=5 seek=900 conv=notrunc status=none
j=$("$IMGFS" --json image import sparse.img)
[[ "$(jq -r .size <<<"$j")" == $((1 << 30)) ]] || fail "sparse size: $j"
[[ "$(jq -r .stored_bytes <<<"$j")" == $((10 << 20)) ]] || fail "sparse stored: $j"
id_sparse=$(jq -r .id <<<"$j")

# --- two images sharing 90% of their content ---------------------------------
s3="$T/s3"
"$IMGFS" --store "$s3" init >/dev/null
head -c 20M /dev/urandom > a.img
cp a.img b.img
dd if=/dev/urandom of=b.img bs=1M count=2 seek=9 conv=notrunc status=none
"$IMGFS" --store "$s3" image import a.img >/dev/null
one=$(du -sb "$s3/chunks" | cut -f1)
"$IMGFS" --store "$s3" image import b.img >/dev/null
two=$(du -sb "$s3/chunks" | cut -f1)
awk -v a="$one" -v b="$two" 'BEGIN { r = b / a; printf "90%%-shared pair: %.3f x one image\n", r; exit !(r <= 1.15) }' \
  || fail "two 90%-shared images take more than 1.15x one"

# --- concurrent imports of the same file --------------------------------------
s4="$T/s4"
"$IMGFS" --store "$s4" init >/dev/null
head -c 30M /dev/urandom > c.img
"$IMGFS" --store "$s4" image import c.img > c1.out 2>c1.err & p1=$!
"$IMGFS" --store "$s4" image import c.img > c2.out 2>c2.err & p2=$!
wait $p1 || fail "concurrent import 1 failed: $(cat c1.err)"
wait $p2 || fail "concurrent import 2 failed: $(cat c2.err)"
[[ "$(cat c1.out)" == "$(cat c2.out)" ]] || fail "concurrent imports gave different ids"
[[ "$("$IMGFS" --store "$s4" --json image ls | jq length)" == 1 ]] || fail "not one image"

# --- bad input: one line, non-zero, store unchanged ----------------------------
before=$(snapshot)
mkdir adir
: > empty.img
head -c 100000 q.qcow2 > trunc.qcow2
cp q.qcow2 corrupt.qcow2
printf '\xff\xff\xff\xff\xff\xff\xff\xff' | dd of=corrupt.qcow2 bs=1 seek=40 conv=notrunc status=none
qemu-img create -q -f qcow2 -b "$T/raw.img" -F raw backed.qcow2
qemu-img create -q -f qcow2 -o data_file="$T/ext.data" datafile.qcow2 6M
expect_fail "missing file" "$IMGFS" image import nosuch.img
expect_err_contains "nosuch.img"
expect_fail "directory" "$IMGFS" image import adir
expect_err_contains "directory"
expect_fail "zero-byte file" "$IMGFS" image import empty.img
expect_err_contains "empty"
expect_fail "truncated qcow2" "$IMGFS" image import trunc.qcow2
expect_fail "corrupted qcow2" "$IMGFS" image import corrupt.qcow2
expect_fail "unknown format" "$IMGFS" image import raw.img --format foo
expect_err_contains "unknown format"
expect_fail "qcow2 with a backing file" "$IMGFS" image import backed.qcow2
expect_err_contains "backing file"
expect_fail "qcow2 with an external data file" "$IMGFS" image import datafile.qcow2
expect_err_contains "data file"
expect_fail "bad name" "$IMGFS" image import raw.img --name "a/b"
head -c 1M /dev/urandom > other.img
expect_fail "name taken by another image" "$IMGFS" image import other.img --name base-raw
expect_err_contains "already points"
expect_fail "empty stdin" "$IMGFS" image import - </dev/null
qemu-img create -q -f vpc vpc.vhd 4M
expect_fail "a format imgfs does not import (vpc)" "$IMGFS" image import vpc.vhd
expect_err_contains "does not import"
[[ "$(snapshot)" == "$before" ]] || fail "a refused import changed the store"
"$IMGFS" image import other.img --name base-raw --force >/dev/null || fail "--force failed"
[[ "$("$IMGFS" --json image info base-raw | jq -r .id)" != "$id_raw" ]] || fail "--force did not move"

# --- too little space ------------------------------------------------------------
mkdir small
mount -t tmpfs -o size=8M tmpfs small
on_exit "umount '$T/small'"
"$IMGFS" --store small/s init >/dev/null
head -c 20M /dev/urandom > big.img
expect_fail "store too small" "$IMGFS" --store small/s image import big.img --name big
expect_err_contains "space"
[[ "$("$IMGFS" --store small/s --json image ls | jq length)" == 0 ]] || fail "partial image visible"
expect_fail "name of the failed import" "$IMGFS" --store small/s image info big
[[ -z "$(ls -A small/s/tmp)" ]] || fail "tmp not empty after a failed import"
# Refused before writing: not even an orphan chunk is left.
[[ -z "$(find small/s/chunks/objects -type f)" ]] || fail "a refused import left chunks"
# What fits still imports there.
head -c 2M /dev/urandom > fits.img
"$IMGFS" --store small/s image import fits.img >/dev/null || fail "a 2 MiB import into 8 MiB failed"

# --- progress: a bar with bytes, rate and time left on a terminal, quiet otherwise
head -c 40M /dev/urandom > p.img
"$IMGFS" --store "$T/s6" init >/dev/null
"$IMGFS" --store "$T/s6" image import p.img > p.out 2> p.err
[[ ! -s p.err ]] || fail "import printed on a stderr that is not a terminal: $(cat p.err)"
# script(1) gives the import a terminal; its output is what the terminal showed.
script -qec "'$IMGFS' --store '$T/s6' image import p.img --name p2 >/dev/null" /dev/null > tty.out \
  || fail "import on a terminal failed: $(cat tty.out)"
grep -q "import \[###" tty.out || fail "no progress bar on a terminal: $(cat tty.out)"
grep -q "40.0 MiB / 40.0 MiB" tty.out || fail "progress lacks bytes done/total: $(cat tty.out)"
grep -q "/s " tty.out || fail "progress lacks the rate: $(cat tty.out)"
grep -q " left" tty.out || fail "progress lacks the time left: $(cat tty.out)"
script -qec "'$IMGFS' --quiet --store '$T/s6' image import p.img >/dev/null" /dev/null > tty-q.out
grep -q "import \[" tty-q.out && fail "--quiet still drew a progress bar"

# --- Ctrl-C (SIGINT) during a conversion: temp file removed, nothing visible
s7="$T/s7"
"$IMGFS" --store "$s7" init >/dev/null
head -c 200M /dev/urandom > int.raw
qemu-img convert -f raw -O qcow2 int.raw int.qcow2
"$IMGFS" --store "$s7" image import int.qcow2 --name int 2> int.err & pi=$!
until compgen -G "$s7/tmp/convert.*" >/dev/null || ! kill -0 $pi 2>/dev/null; do sleep 0.01; done
kill -INT $pi 2>/dev/null || true
rc=0; wait $pi || rc=$?
((rc != 0)) || fail "import interrupted by SIGINT exited 0"
[[ -z "$(ls -A "$s7/tmp")" ]] || fail "SIGINT left files in tmp: $(ls "$s7/tmp")"
[[ "$("$IMGFS" --store "$s7" --json image ls | jq length)" == 0 ]] || fail "interrupted import visible"
rm -f int.raw int.qcow2

# --- kill -9 during an import -------------------------------------------------------
s5="$T/s5"
"$IMGFS" --store "$s5" init >/dev/null
head -c 300M /dev/urandom > k.img
for delay in 0.05 0.3 0.8; do
  "$IMGFS" --store "$s5" image import k.img --name k & pk=$!
  sleep "$delay"
  kill -9 $pk 2>/dev/null || true
  wait $pk 2>/dev/null || true
  n=$("$IMGFS" --store "$s5" --json image ls | jq length)
  if [[ $n != 0 ]]; then
    # The kill came after the image record was published (maybe before its
    # name): then the image must be whole.
    vid=$("$IMGFS" --store "$s5" --json image ls | jq -r '.[0].id')
    "$IMGFS" --store "$s5" image verify "$vid" >/dev/null || fail "image visible after kill -9 is damaged"
    break
  fi
  "$IMGFS" --store "$s5" image info k >/dev/null 2>&1 && fail "name visible without its image"
done
id_k=$("$IMGFS" --store "$s5" image import k.img --name k) || fail "import after kill -9 failed"
"$IMGFS" --store "$s5" image verify "$id_k" >/dev/null || fail "re-import after kill is damaged"

# --- an image larger than a manifest holds (2^26 chunks: 4 TiB at 64 KiB) ----
# Refused before anything is read or converted, the store unchanged.
before="$(snapshot)"
truncate -s 5T huge.raw
expect_fail "a 5T raw image" "$IMGFS" image import huge.raw --name huge
expect_err_contains "an image of 5T (5497558138880 bytes) is more than a store with 64K chunks can hold: at most 4T"
qemu-img create -q -f qcow2 huge.qcow2 5T
expect_fail "a 5T qcow2 image" "$IMGFS" image import huge.qcow2 --name huge
expect_err_contains "at most 4T"
[[ "$(snapshot)" == "$before" ]] || fail "a refused import changed the store"
rm -f huge.raw huge.qcow2

# --- rm ---------------------------------------------------------------------------
"$IMGFS" image rm "$id_sparse"
expect_fail "rm twice" "$IMGFS" image rm "$id_sparse"
echo "image_import: ok"
