# Many disks and images: every listing and lookup is complete and right
# (docs/rbd.md, "Listing and lookup"). Not timed (tools/bench-scale.sh
# measures). On rbd (IMGFS_SCALE_RBD disks, 300 by default), disks of
# several kinds: clones of two images, blank disks, one grown, some with
# data written, some chmod'ed/chown'ed, one made by the rbd tool without an
# object map (read by opening it): `disk ls`, `disk ls INSTANCE`, `disk
# info`, the mount's `ls` and `stat` of every disk and `fsck` are compared
# with what the rbd tool says (`rbd ls -l`, `rbd du`, image metadata).
# Locally (IMGFS_SCALE_LOCAL, 1,000 by default): that many images and one
# disk of each: `image ls`, `disk ls`, the mount, `fsck` and `gc --dry-run`
# see all of them; gc removes nothing while every image is in use, then,
# with half the disks gone, exactly their images, names, manifests and
# chunks, and fsck counts what is left. Needs the test cluster for the rbd
# part.
source "$(dirname "$0")/lib.sh"
: "${IMGFS_CEPH_CONF:?the test runner (tools/test.sh) provides a Ceph cluster}"
nrbd="${IMGFS_SCALE_RBD:-300}"
nlocal="${IMGFS_SCALE_LOCAL:-1000}"

# check_mount MNT EXPECTED: every disk through the mount, as
# "instance/disk size mode uid gid" lines sorted, equals EXPECTED.
check_mount() {
  local got
  got="$(cd "$1" && find . -mindepth 2 -maxdepth 2 -not -path './_base/*' -printf '%P %s %m %U %G\n' | sort)"
  [[ "$got" == "$2" ]] || fail "the mount shows: $(diff <(echo "$2") <(echo "$got") | head -20)"
}

# ---- rbd ------------------------------------------------------------------
make_rbd_namespace
P="$RBD_NS"
R="$T/rbd"
export IMGFS_STORE="$R"  # the mount's
r() { "$IMGFS" --store "$R" "$@"; }
r init --disks "rbd:$P" "${CEPH_ARGS_IMGFS[@]}" >/dev/null
make_sample_raw "$T/a.raw" 6
make_sample_raw "$T/b.raw" 5
A=$(r image import "$T/a.raw" --name a)
B=$(r image import "$T/b.raw" --name b)
# create.sh STORE REF ARGS...: `disk create REF ARGS` for the parallel fill.
# librbd 16.2 (Debian 12's) rarely aborts a process cloning while others
# clone (an uncaught exception on one of librados's own threads; docs/rbd.md,
# "Known problems"): a create that dies of a signal is said on stderr, what
# it left is removed, and it is made once more. Any other failure fails.
cat >"$T/create.sh" <<'EOS'
#!/bin/bash
"$IMGFS" --store "$1" -q disk create "${@:2}" && exit 0
rc=$?
((rc > 128)) || exit "$rc"
echo "scale_listing: disk create $2 died of signal $((rc - 128)); made again" >&2
"$IMGFS" --store "$1" -q disk rm "$2" 2>/dev/null || true
exec "$IMGFS" --store "$1" -q disk create "${@:2}"
EOS
chmod +x "$T/create.sh"
# Kinds by i % 4: clone of a, clone of b, blank 3 MiB, clone of a grown to 9 MiB.
seq 0 $((nrbd - 1)) | xargs -P 4 -I{} sh -c '
  i={}; v=$(printf "vm%05d" "$i")
  case $((i % 4)) in
    0) exec "$0" "$1" "$v/disk" --image a ;;
    1) exec "$0" "$1" "$v/disk" --image b ;;
    2) exec "$0" "$1" "$v/disk" --blank --size 3M ;;
    3) exec "$0" "$1" "$v/disk" --image a --size 9M ;;
  esac' "$T/create.sh" "$R"
# A second disk in some instances; an empty instance.
r disk create vm00001/data --blank --size 1M >/dev/null
r disk create vm00002/data --image b >/dev/null
mnt="$T/mnt"
mount_imgfs "$mnt"
mkdir "$mnt/empty"
# Data in a few disks (owned bytes), attributes of others.
for i in 5 6 7 10; do
  v=$(printf "vm%05d" "$i")
  dd if=/dev/urandom of="$mnt/$v/disk" bs=64K count=1 seek=20 conv=notrunc status=none
done
chmod 600 "$mnt/vm00008/disk"
chmod 640 "$mnt/vm00009/disk"
unmount_imgfs "$mnt" "$MOUNT_PID"
# A disk the rbd tool made, without object map (opened, not read directly).
rbdc create --size 2M --image-feature layering "$P/vm99999_disk"

# What the rbd tool says: sizes and parents, used bytes, attributes.
rbd_json="$(rbdc ls -l --format json "$P")"
du_json="$(rbdc du --format json -p "${P%%/*}" --namespace "${P#*/}")"
disks="$(jq -r '.[] | select(.snapshot == null) | .image | select(startswith("imgfs.") | not)' \
  <<<"$rbd_json" | sort)"
[[ "$(wc -l <<<"$disks")" == $((nrbd + 3)) ]] || fail "rbd ls: $(wc -l <<<"$disks") disks"
mode_of() {
  case "$1" in vm00008_disk) echo 600 ;; vm00009_disk) echo 640 ;; vm99999_disk) echo 644 ;;
    *) echo 644 ;; esac
}
expected_ls=""
expected_mount=""
for d in $disks; do
  size=$(jq -r --arg d "$d" '.[] | select(.image == $d and .snapshot == null) | .size' <<<"$rbd_json")
  parent=$(jq -r --arg d "$d" \
    '.[] | select(.image == $d and .snapshot == null) | .parent.image // "-"' <<<"$rbd_json")
  parent="${parent#imgfs.base.}"
  used=$(jq -r --arg d "$d" '.images[] | select(.name == $d and .snapshot == null) | .used_size' \
    <<<"$du_json")
  ref="${d%%_*}/${d#*_}"
  expected_ls+="$ref $size $used $parent $(mode_of "$d")"$'\n'
  expected_mount+="$ref $size $(mode_of "$d") 0 0"$'\n'
done
expected_ls="$(sort <<<"${expected_ls%$'\n'}")"
expected_mount="$(sort <<<"${expected_mount%$'\n'}")"
got="$(r --json disk ls |
  jq -r '.[] | "\(.disk) \(.size) \(.owned_bytes) \(.parent // "-") \(.mode | tostring | tonumber)"' |
  awk '{ printf "%s %s %s %s %o\n", $1, $2, $3, $4, $5 }' | sort)"
[[ "$got" == "$expected_ls" ]] ||
  fail "disk ls differs from rbd: $(diff <(echo "$expected_ls") <(echo "$got") | head -20)"
# Parents are the images made from (kinds above).
grep -q "^vm00000/disk 6291456 .* $A " <<<"$got" || fail "vm00000/disk's parent: $got"
grep -q "^vm00001/disk .* $B " <<<"$got" || fail "vm00001/disk's parent: $got"
grep -q "^vm00002/disk 3145728 .* - " <<<"$got" || fail "vm00002/disk blank 3 MiB: $got"
grep -q "^vm00003/disk 9437184 .* $A " <<<"$got" || fail "vm00003/disk grown: $got"
awk '$1 == "vm00005/disk" && $3 > 0 { ok = 1 } END { exit !ok }' <<<"$got" ||
  fail "vm00005/disk owns nothing: $got"
# One instance; every disk's info agrees with the listing.
[[ "$(r --json disk ls vm00002 | jq -r '[.[].disk] | join(" ")')" == "vm00002/data vm00002/disk" ]] ||
  fail "disk ls vm00002: $(r disk ls vm00002)"
[[ "$(r --json disk ls empty | jq length)" == 0 ]] || fail "disk ls of the empty instance"
expect_fail "disk ls of a missing instance" r disk ls nosuch
expect_err_contains "not found"
for v in vm00000 vm00005 vm00008 "$(printf "vm%05d" $((nrbd - 1)))" vm99999; do
  want=$(grep "^$v/disk " <<<"$got")
  one=$(r --json disk info "$v/disk" |
    jq -r '"\(.disk) \(.size) \(.owned_bytes) \(.parent // "-") \(.mode)"' |
    awk '{ printf "%s %s %s %s %o\n", $1, $2, $3, $4, $5 }')
  [[ "$one" == "$want" ]] || fail "disk info $v/disk: $one, disk ls: $want"
done
# The mount: every instance, every disk, sizes and modes; lookups of
# missing names fail.
mount_imgfs "$mnt"
[[ "$(ls "$mnt" | grep -vc '^_base$')" == $((nrbd + 2)) ]] || fail "ls of the mount root: $(ls "$mnt" | wc -l)"
[[ -d "$mnt/empty" ]] || fail "the empty instance is not in the mount"
check_mount "$mnt" "$expected_mount"
[[ ! -e "$mnt/nosuch" && ! -e "$mnt/vm00001/nosuch" && ! -e "$mnt/vm0000/disk" ]] ||
  fail "a missing name is found"
blocks=$(stat -c %b "$mnt/vm00005/disk")
((blocks > 0)) || fail "vm00005/disk has no blocks"
unmount_imgfs "$mnt" "$MOUNT_PID"
out=$(r fsck) || fail "fsck: $out"
grep -q "$((nrbd + 3)) disks" <<<"$out" || fail "fsck counted: $out"

# ---- local ----------------------------------------------------------------
L="$T/local"
export IMGFS_STORE="$L"
l() { "$IMGFS" --store "$L" "$@"; }
l init >/dev/null
mkdir "$T/raws"
for i in $(seq 0 $((nlocal - 1))); do
  head -c 64K /dev/urandom >"$T/raws/$i.raw"
done
seq 0 $((nlocal - 1)) | xargs -P 4 -I{} "$IMGFS" --store "$L" -q image import "$T/raws/{}.raw" --name "img{}"
seq 0 $((nlocal - 1)) | xargs -P 4 -I{} sh -c \
  'exec "$0" --store "$1" -q disk create "$(printf "vm%05d" {})/disk" --image "img{}"' "$IMGFS" "$L"
[[ "$(l --json image ls | jq length)" == "$nlocal" ]] || fail "image ls: $(l --json image ls | jq length)"
[[ "$(l --json image ls | jq -r '.[].names[]?' | sort -u | wc -l)" == "$nlocal" ]] ||
  fail "image ls names: $(l --json image ls | jq -c '.[0]')"
j=$(l --json disk ls)
[[ "$(jq length <<<"$j")" == "$nlocal" ]] || fail "local disk ls: $(jq length <<<"$j")"
[[ "$(jq -r '.[].parent' <<<"$j" | sort -u | wc -l)" == "$nlocal" ]] || fail "local parents"
expected_mount="$(seq 0 $((nlocal - 1)) | xargs -I{} printf 'vm%05d/disk 65536 644 %s %s\n' {} \
  "$(id -u)" "$(id -g)" | sort)"
mount_imgfs "$mnt"
[[ "$(ls "$mnt/_base" | wc -l)" == "$nlocal" ]] || fail "_base lists $(ls "$mnt/_base" | wc -l)"
check_mount "$mnt" "$expected_mount"
unmount_imgfs "$mnt" "$MOUNT_PID"
out=$(l fsck) || fail "local fsck: $out"
# One 64 KiB chunk an image (random bytes: none shared).
[[ "$out" == "$nlocal images, $nlocal manifests, $nlocal chunks, $nlocal names, $nlocal disks: clean" ]] ||
  fail "local fsck counted: $out"
l gc --dry-run --min-age 0 >"$T/gc.out" || fail "gc --dry-run: $(cat "$T/gc.out")"
[[ "$(l --json image ls | jq length)" == "$nlocal" ]] || fail "gc --dry-run removed images"
# Every image is used by its disk: gc removes nothing.
j=$(l --json gc --min-age 0) || fail "gc: $j"
[[ "$(jq -c '[(.images | length), .manifests, .chunks]' <<<"$j")" == "[0,0,0]" ]] ||
  fail "gc removed something in use: $(jq -c '[(.images | length), .manifests, .chunks]' <<<"$j")"
# The disks of the even images go: gc removes exactly those images, with
# their names, manifests and chunks, and reports their bytes.
seq 0 2 $((nlocal - 1)) | xargs -P 4 -I{} sh -c \
  'exec "$0" --store "$1" -q disk rm "$(printf "vm%05d" {})/disk"' "$IMGFS" "$L"
half=$(((nlocal + 1) / 2))  # the even ones
kept=$((nlocal - half))
j=$(l --json gc --min-age 0) || fail "gc: $j"
jq -r '.images[].names[]' <<<"$j" | sort >"$T/gc.removed"
seq 0 2 $((nlocal - 1)) | sed 's/^/img/' | sort >"$T/gc.expected"
if ! cmp -s "$T/gc.removed" "$T/gc.expected"; then
  extra="$(comm -23 "$T/gc.removed" "$T/gc.expected" | head | tr '\n' ' ')"
  missing="$(comm -13 "$T/gc.removed" "$T/gc.expected" | head -3)"
  kept_info="$(for n in $missing; do l --json image info "$n" 2>&1 | tr -d '\n'; done)"
  fail "gc removed other images than the even ones: extra [$extra]," \
    "missing [$(tr '\n' ' ' <<<"$missing")], whose records: $kept_info"
fi
[[ "$(jq -c '[.manifests, .chunks]' <<<"$j")" == "[$half,$half]" ]] ||
  fail "gc removed $(jq -c '[.manifests, .chunks]' <<<"$j") manifests and chunks, not $half"
freed=$(jq .bytes_freed <<<"$j")
((freed > half * 65536 && freed < half * (65536 + 4096))) ||
  fail "gc freed $freed bytes for $half chunks of 64 KiB and their manifests"
[[ "$(l --json image ls | jq -r '.[].names[]' | sort)" == "$(seq 1 2 $((nlocal - 1)) | sed 's/^/img/' | sort)" ]] ||
  fail "image ls after gc: $(l --json image ls | jq -c '[.[].names[]] | .[:10]')"
out=$(l fsck) || fail "local fsck after gc: $out"
[[ "$out" == "$kept images, $kept manifests, $kept chunks, $kept names, $kept disks: clean" ]] ||
  fail "local fsck after gc counted: $out"
echo "ok: $((nrbd + 3)) rbd disks, $nlocal local images and disks"
