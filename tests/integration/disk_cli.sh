# imgfs disk create | ls | info | resize | rm on the local default, with
# every refusal: sizes, names, missing images and disks, shrink, disks in use,
# and `image rm` of an image that disks use.
source "$(dirname "$0")/lib.sh"

"$IMGFS" init >/dev/null
head -c $((3 << 20)) /dev/urandom >"$T/img.raw"
truncate -s $((4 << 20)) "$T/img.raw"  # a 1 MiB hole at the end
id="$("$IMGFS" image import "$T/img.raw" --name base)"
[[ "$id" =~ ^[0-9a-f]{32}$ ]] || fail "import printed '$id'"

# create: from a name, an id, a prefix; blank
"$IMGFS" disk create vm1/disk --image base
"$IMGFS" disk create vm1/disk.big --image "$id" --size 10G
"$IMGFS" disk create vm1/eph0 --blank --size 1G
j="$("$IMGFS" --json disk create vm2/disk --image "${id:0:8}")"
[[ "$(jq -r .disk <<<"$j")" == "vm2/disk" ]] || fail "create --json: $j"
[[ "$(jq -r .parent <<<"$j")" == "$id" ]] || fail "create --json parent: $j"

# info
j="$("$IMGFS" --json disk info vm1/disk)"
[[ "$(jq -r .size <<<"$j")" == $((4 << 20)) ]] || fail "default size is not the image's: $j"
[[ "$(jq -r .parent <<<"$j")" == "$id" ]] || fail "parent: $j"
[[ "$(jq -r .owned_bytes <<<"$j")" == 0 ]] || fail "a new clone owns bytes: $j"
[[ "$(jq -r '.parent_names[0]' <<<"$j")" == "base" ]] || fail "parent names: $j"
j="$("$IMGFS" --json disk info vm1/disk.big)"
[[ "$(jq -r .size <<<"$j")" == $((10 << 30)) ]] || fail "--size 10G: $j"
j="$("$IMGFS" --json disk info vm1/eph0)"
[[ "$(jq -r .parent <<<"$j")" == "null" ]] || fail "blank disk has a parent: $j"
[[ "$(jq -r .size <<<"$j")" == $((1 << 30)) ]] || fail "blank size: $j"
out="$("$IMGFS" disk info vm1/disk)"
[[ "$out" == *"$id (base)"* && "$out" == *"4194304 bytes"* ]] || fail "info text: $out"

# ls
[[ "$("$IMGFS" --json disk ls | jq length)" == 4 ]] || fail "ls does not list 4 disks"
[[ "$("$IMGFS" --json disk ls vm1 | jq -r '.[].disk' | tr '\n' ' ')" == "vm1/disk vm1/disk.big vm1/eph0 " ]] ||
  fail "ls vm1: $("$IMGFS" --json disk ls vm1)"
[[ "$("$IMGFS" disk ls vm2 | wc -l)" == 2 ]] || fail "ls vm2 text: $("$IMGFS" disk ls vm2)"

# resize: grow is O(1) and shows in info
"$IMGFS" disk resize vm1/disk 20G
[[ "$("$IMGFS" --json disk info vm1/disk | jq .size)" == $((20 << 30)) ]] || fail "resize did not grow"
j="$("$IMGFS" --json disk resize vm1/eph0 2G)"
[[ "$(jq .size <<<"$j")" == $((2 << 30)) ]] || fail "resize --json: $j"

# refusals, each one line on stderr, changing nothing
expect_fail "size smaller than the image" "$IMGFS" disk create vm3/disk --image base --size 1M
expect_err_contains "smaller than"
expect_fail "blank without --size" "$IMGFS" disk create vm3/disk --blank
expect_err_contains "needs --size"
expect_fail "both --image and --blank" "$IMGFS" disk create vm3/disk --image base --blank --size 1G
expect_fail "neither --image nor --blank" "$IMGFS" disk create vm3/disk --size 1G
expect_fail "missing image" "$IMGFS" disk create vm3/disk --image nosuch
expect_fail "missing image id" "$IMGFS" disk create vm3/disk --image 0123456789abcdef0123456789abcdef
expect_fail "bad size" "$IMGFS" disk create vm3/disk --blank --size 12Q
expect_err_contains "12Q"
expect_fail "overflowing size" "$IMGFS" disk create vm3/disk --blank --size 99999999999T
for bad in "vm_3/disk" "vm3" "vm3/" "/disk" "vm3/a/b" "../disk" ".vm/disk" \
    "vm3/$(printf 'x%.0s' {1..129})" "$(printf 'vm\tx')/disk"; do
  expect_fail "bad name '$bad'" "$IMGFS" disk create "$bad" --blank --size 1G
  [[ "$LAST_ERR" == *invalid* || "$LAST_ERR" == *empty* ]] || fail "unclear error: $LAST_ERR"
done
for bad in "vm_1/disk" "vm1" "vm1/../disk" "vm1/a/b"; do
  for cmd in "info $bad" "resize $bad 30G" "rm $bad"; do
    # shellcheck disable=SC2086
    expect_fail "disk $cmd" "$IMGFS" disk $cmd
    [[ "$LAST_ERR" == *invalid* ]] || fail "unclear error for disk $cmd: $LAST_ERR"
  done
done
expect_fail "bad instance for ls" "$IMGFS" disk ls "a_b"
expect_err_contains "invalid instance name"
expect_fail "ls of a missing instance" "$IMGFS" disk ls vm9
expect_err_contains "does not exist"
expect_fail "create over an existing disk" "$IMGFS" disk create vm1/disk --blank --size 1G
expect_err_contains "already exists"
# Sizes the store cannot hold: beyond imgfs's 1 PiB everywhere, and on ext4
# (4 KiB blocks) anything past its largest file, 16 TiB - 4 KiB.
expect_fail "create beyond the largest disk" "$IMGFS" disk create vm3/disk --blank --size 2P
expect_err_contains "more than this store's disks can hold: at most"
expect_fail "clone beyond the largest disk" "$IMGFS" disk create vm3/disk --image base --size 2P
expect_fail "resize beyond the largest disk" "$IMGFS" disk resize vm1/disk 2P
expect_err_contains "more than this store's disks can hold"
if [[ "$(stat -f -c %T "$STORE")" == ext2/ext3 && "$(stat -f -c %S "$STORE")" == 4096 ]]; then
  max=$(((16 << 40) - 4096))
  [[ "$("$IMGFS" --json stats | jq .max_disk_bytes)" == "$max" ]] ||
    fail "stats: $("$IMGFS" --json stats)"
  "$IMGFS" stats | grep -qx "largest disk:  16T - 4K (the largest file ext4 allows in $STORE/disks)" ||
    fail "stats: $("$IMGFS" stats)"
  expect_fail "a 1P disk on ext4" "$IMGFS" disk create vm3/disk --blank --size 1P
  expect_err_contains "disk vm3/disk: size 1P (1125899906842624 bytes) is more than this store's disks can hold: at most 16T - 4K ($max bytes, the largest file ext4 allows in $STORE/disks)"
  expect_fail "a 16T disk on ext4" "$IMGFS" disk create vm3/disk --blank --size 16T
  expect_fail "resize to 1P on ext4" "$IMGFS" disk resize vm1/disk 1P
  expect_err_contains "at most 16T - 4K"
  expect_fail "resize to 16T on ext4" "$IMGFS" disk resize vm1/disk 16T
fi
[[ "$("$IMGFS" --json disk info vm1/disk | jq .size)" == $((20 << 30)) ]] ||
  fail "a refused resize changed the size"
[[ "$("$IMGFS" --json disk info vm1/disk | jq .size)" == $((20 << 30)) ]] || fail "refused create changed the disk"
expect_fail "shrink" "$IMGFS" disk resize vm1/disk 1G
expect_err_contains "refused"
[[ "$("$IMGFS" --json disk info vm1/disk | jq .size)" == $((20 << 30)) ]] || fail "refused shrink changed the size"
expect_fail "resize of a missing disk" "$IMGFS" disk resize vm1/nope 1G
expect_err_contains "does not exist"
expect_fail "info of a missing disk" "$IMGFS" disk info vm1/nope
expect_fail "rm of a missing disk" "$IMGFS" disk rm vm1/nope
[[ "$("$IMGFS" --json disk ls | jq length)" == 4 ]] || fail "a refused command made or removed a disk"
[[ ! -e "$STORE/disks/vm3" ]] || fail "a refused create left an instance behind"

# image rm of an image in use names the disks
expect_fail "image rm of a used image" "$IMGFS" image rm base
expect_err_contains "vm1/disk"
expect_err_contains "vm2/disk"

# A disk open for writing (its lock held, as a writer holds it) cannot be
# removed or resized.
mkfifo "$T/ready"
( exec 9<>"$STORE/disks/vm1/eph0/lock"; flock -x 9; echo ready >"$T/ready"; exec sleep 600 ) &
holder=$!
on_exit "kill $holder 2>/dev/null; wait $holder 2>/dev/null"
read -r _ <"$T/ready"
expect_fail "rm of an open disk" "$IMGFS" disk rm vm1/eph0
expect_err_contains "in use"
expect_fail "resize of an open disk" "$IMGFS" disk resize vm1/eph0 3G
expect_err_contains "in use"
kill "$holder"; wait "$holder" 2>/dev/null || true
"$IMGFS" disk resize vm1/eph0 3G

# rm
j="$("$IMGFS" --json disk rm vm2/disk)"
[[ "$(jq -r .removed <<<"$j")" == "vm2/disk" ]] || fail "rm --json: $j"
expect_fail "ls of an instance whose last disk went" "$IMGFS" disk ls vm2
"$IMGFS" disk rm vm1/disk
"$IMGFS" disk rm vm1/disk.big
"$IMGFS" image rm base
"$IMGFS" disk rm vm1/eph0
[[ "$("$IMGFS" --json disk ls | jq length)" == 0 ]] || fail "disks left after rm"
echo "disk_cli: ok"
