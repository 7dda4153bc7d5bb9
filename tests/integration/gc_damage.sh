# gc, verify and fsck through the command line, and damaged chunks read through
# a real mount: EIO for the damaged ranges, correct bytes everywhere else.
source "$(dirname "$0")/lib.sh"
cd "$T"
"$IMGFS" init --chunk-size 64K >/dev/null

head -c 4M /dev/urandom > a.img
id=$("$IMGFS" image import a.img --name a)
head -c 1M /dev/urandom > b.img
idb=$("$IMGFS" image import b.img)

# --- verify and fsck on a healthy store ------------------------------------------
"$IMGFS" image verify >/dev/null || fail "verify of a healthy store failed"
"$IMGFS" fsck >/dev/null || fail "fsck of a healthy store failed"

# --- gc: dry run, min-age, keep-named, json ---------------------------------------
out=$("$IMGFS" gc --min-age 0 --dry-run --keep-named)
[[ "$out" == *"would remove image $idb"* ]] || fail "dry run does not list $idb: $out"
[[ "$out" != *"$id"* ]] || fail "dry run lists the named image with --keep-named"
[[ "$out" == *"would be freed"* ]] || fail "dry run prints no byte count: $out"
[[ "$("$IMGFS" --json image ls | jq length)" == 2 ]] || fail "dry run removed something"
"$IMGFS" gc >/dev/null
[[ "$("$IMGFS" --json image ls | jq length)" == 2 ]] || fail "default min-age 24h removed a new image"
j=$("$IMGFS" --json gc --min-age 0 --keep-named)
[[ "$(jq -r '.images[0].id' <<<"$j")" == "$idb" ]] || fail "gc did not remove $idb: $j"
[[ "$(jq -r .chunks <<<"$j")" == 16 ]] || fail "gc freed $(jq -r .chunks <<<"$j") chunks, want 16"
(( $(jq -r .bytes_freed <<<"$j") >= 1048576 )) || fail "bytes_freed too small: $j"
expect_fail "removed image" "$IMGFS" image info "$idb"
expect_fail "bad duration" "$IMGFS" gc --min-age 5y
expect_err_contains "duration"

# --- a progress bar on a terminal, none otherwise -----------------------------------
"$IMGFS" image import b.img >/dev/null
script -qec "$IMGFS gc --min-age 0 --keep-named" /dev/null >tty.out </dev/null
grep -q "gc mark \[" tty.out || fail "no gc progress bar on a terminal: $(cat tty.out)"
grep -q "gc sweep \[" tty.out || fail "no sweep progress bar on a terminal: $(cat tty.out)"
"$IMGFS" image import b.img >/dev/null
"$IMGFS" gc --min-age 0 --keep-named 2>err >/dev/null
[[ ! -s err ]] || fail "gc wrote to stderr off a terminal: $(cat err)"
script -qec "$IMGFS image verify a" /dev/null >tty.out </dev/null
grep -q "verify [0-9a-f]* \[" tty.out || fail "no verify progress bar on a terminal: $(cat tty.out)"

# --- damage: one chunk corrupted, one removed -------------------------------------
mapfile -t files < <(find "$STORE/chunks/objects/chunk" -type f | sort)
(( ${#files[@]} == 64 )) || fail "expected 64 chunk files, found ${#files[@]}"
# Find which offsets the chunks hold by comparing with the source.
declare -A offset_of
for ((i = 0; i < 64; i++)); do
  h=$(dd if=a.img bs=64K skip=$i count=1 status=none | sha256sum | cut -d' ' -f1)
  offset_of[$h]=$i
done
bad_file=${files[10]}
gone_file=${files[20]}
bad_idx=${offset_of[$(sha256sum < "$bad_file" | cut -d' ' -f1)]}
gone_idx=${offset_of[$(sha256sum < "$gone_file" | cut -d' ' -f1)]}
printf '\x00\x01\x02\x03' | dd of="$bad_file" bs=1 seek=100 conv=notrunc status=none
rm -f "$gone_file"
bad_id=$(basename "$bad_file"); gone_id=$(basename "$gone_file")

rc=0; out=$("$IMGFS" image verify a) || rc=$?
((rc == 1)) || fail "verify of a damaged image exited $rc, want 1"
[[ "$out" == *"$bad_id"*corrupt* ]] || fail "verify does not name the corrupt chunk: $out"
[[ "$out" == *"$gone_id"*missing* ]] || fail "verify does not name the missing chunk: $out"
rc=0; out=$("$IMGFS" fsck) || rc=$?
((rc == 1)) || fail "fsck of a damaged store exited $rc, want 1"
[[ "$out" == *"$gone_id"*missing* ]] || fail "fsck does not name the missing chunk: $out"
[[ "$out" == *"$bad_id"*corrupt* ]] || fail "fsck does not name the corrupt chunk: $out"
j=$("$IMGFS" --json fsck || true)
[[ "$(jq .clean <<<"$j")" == false ]] || fail "fsck --json says clean: $j"
rc=0; "$IMGFS" --store "$T/no-store" fsck 2>/dev/null || rc=$?
((rc == 3)) || fail "fsck that cannot check exited $rc, want 3"

# --- reads through the mount, of the image and of a disk made from it ----------------
"$IMGFS" disk create vm1/disk --image a >/dev/null
mount_imgfs "$T/mnt"
for f in "$T/mnt/_base/$id" "$T/mnt/vm1/disk"; do
for idx in "$bad_idx" "$gone_idx"; do
  if dd if="$f" of=/dev/null bs=64K skip="$idx" count=1 iflag=direct status=none 2>err; then
    fail "reading damaged chunk $idx through the mount succeeded"
  fi
  grep -q "Input/output error" err || fail "damaged read of chunk $idx: $(cat err), want EIO"
done
for ((i = 0; i < 64; i++)); do
  [[ $i == "$bad_idx" || $i == "$gone_idx" ]] && continue
  cmp <(dd if="$f" bs=64K skip=$i count=1 iflag=direct status=none) \
      <(dd if=a.img bs=64K skip=$i count=1 status=none) || fail "intact chunk $i of $f reads wrong"
done
done
echo "gc_damage: ok"
