# qemu-img and qemu-io through a real mount, and sparse copies.
source "$(dirname "$0")/lib.sh"

init_store
make_sample_raw "$T/src.raw" 16
"$IMGFS" image import "$T/src.raw" --name sample >/dev/null
"$IMGFS" disk create vm1/disk --image sample >/dev/null
M="$T/mnt"
mount_imgfs "$M"
D="$M/vm1/disk"

# qemu-img info sees a raw file of the right size.
info="$(qemu-img info --output=json -f raw "$D")"
[[ "$info" == *'"virtual-size": 16777216'* ]] || fail "qemu-img info: $info"

# qemu-img map shows the holes (MiB 1 and 4-14 are zeros in the image).
map="$(qemu-img map --output=json -f raw "$D")"
[[ "$map" == *'"data": false'* ]] || fail "qemu-img map shows no hole: $map"
[[ "$map" == *'"data": true'* ]] || fail "qemu-img map shows no data: $map"

# qemu-img convert out of the mount (to qcow2) and back into it (a new disk).
qemu-img convert -f raw -O qcow2 "$D" "$T/out.qcow2"
qemu-img compare -f raw -F qcow2 "$T/src.raw" "$T/out.qcow2" >/dev/null || fail "convert out differs"
qemu-img convert -f qcow2 -O raw "$T/out.qcow2" "$M/vm1/converted"
cmp "$T/src.raw" "$M/vm1/converted" || fail "convert into the mount differs"
"$IMGFS" disk info vm1/converted >/dev/null || fail "converted file is not a disk"

# qemu-img resize grows; --shrink is refused.
qemu-img resize -f raw "$D" 1G >/dev/null
[[ "$(stat -c %s "$D")" -eq $((1 << 30)) ]] || fail "qemu-img resize did not grow"
expect_errno "qemu-img resize --shrink" "Operation not permitted" \
  qemu-img resize -f raw --shrink "$D" 8M

# qemu-io with O_DIRECT and Linux AIO (cache=none, io=native).
out="$(qemu-io -f raw -t none -i native \
  -c "write -P 0xab 1M 4M" -c "write -P 0xcd 100M 64k" -c "flush" \
  -c "read -P 0xab 1M 4M" -c "read -P 0xcd 100M 64k" -c "read -P 0 200M 1M" "$D" 2>&1)"
[[ "$out" != *"fail"* && "$out" != *"error"* && "$out" != *"Error"* ]] || fail "qemu-io: $out"
[[ "$(grep -c '^read ' <<<"$out")" -eq 3 ]] || fail "qemu-io reads: $out"
out="$(qemu-io -f raw -t none -i native -r -c "read -P 0xab 1M 4M" "$D" 2>&1)"
[[ "$out" == read* ]] || fail "qemu-io reread: $out"

# cp --sparse=always gives a file that stays sparse and equal.
cp --sparse=always "$D" "$T/copy"
cmp "$D" "$T/copy" || fail "sparse copy differs"
alloc_kib="$(du -k "$T/copy" | cut -f1)"
((alloc_kib < 64 * 1024)) || fail "sparse copy of a 1 GiB disk uses ${alloc_kib} KiB"
# ... and a sparse copy into the mount keeps the holes as holes.
cp --sparse=always "$T/src.raw" "$M/vm1/copied"
cmp "$T/src.raw" "$M/vm1/copied" || fail "sparse copy into the mount differs"
map="$(qemu-img map --output=json -f raw "$M/vm1/copied")"
[[ "$map" == *'"data": false'* ]] || fail "copy into the mount is not sparse: $map"

# fallocate: punch a hole, zero a range, grow with mode 0.
fallocate -p -o 1M -l 1M "$D"
cmp -n 1M -i 1M:0 "$D" /dev/zero || fail "punched range is not zero"
fallocate -z -o 2M -l 1M "$D"
cmp -n 1M -i 2M:0 "$D" /dev/zero || fail "zeroed range is not zero"
fallocate -o 0 -l 2G "$D"
[[ "$(stat -c %s "$D")" -eq $((2 << 30)) ]] || fail "fallocate mode 0 did not grow"
echo "mount_qemu: ok"
