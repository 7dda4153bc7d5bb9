# libvirt on the mount: a domain (type qemu, TCG, no graphics) whose disk is
# a file in the mount with cache='none' io='native'; virsh define, start
# --paused, domblkinfo, blockresize (the mount shows the new size), destroy,
# undefine. virtlogd and libvirtd are started here by hand (there is no
# systemd) and stopped by pid at the end. They use the system-wide
# /run/libvirt, so ctest runs the variants of this test one at a time.
# Disk backend from IMGFS_TEST_DISKS (local or rbd).
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/e2e_lib.sh"
e2e_need qemu-system-x86_64 libvirtd virtlogd virsh jq fusermount3

# What the Debian package scripts would have made: the user and group qemu
# runs as (libvirt-qemu:libvirt-qemu, also in kvm).
e2e_start_libvirt

init_store
make_sample_raw "$T/src.raw" 64
"$IMGFS" image import "$T/src.raw" --name e2e-libvirt >/dev/null
inst="lv$RANDOM"
"$IMGFS" disk create "$inst/disk" --image e2e-libvirt >/dev/null
# qemu runs as libvirt-qemu: it must reach the file (libvirt chowns the disk
# file itself, which the mount keeps), so the mount allows other users.
chmod 755 "$T"
M="$T/mnt"
e2e_mount "$M" -o allow_other
D="$M/$inst/disk"

dom="imgfs-e2e-$inst"
cat >"$T/dom.xml" <<XML
<domain type='qemu'>
  <name>$dom</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>$(command -v qemu-system-x86_64)</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='none' io='native'/>
      <source file='$D'/>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>
XML
vsh define "$T/dom.xml" >/dev/null || fail "virsh define failed"
on_exit "virsh -q -c qemu:///system undefine '$dom' >/dev/null 2>&1"
vsh start --paused "$dom" >/dev/null ||
  fail "virsh start --paused failed; qemu log: $(tail -5 "/var/log/libvirt/qemu/$dom.log" 2>/dev/null)"
on_exit "virsh -q -c qemu:///system destroy '$dom' >/dev/null 2>&1"
[[ "$(vsh domstate "$dom")" == paused ]] || fail "domain state: $(vsh domstate "$dom")"
vsh dumpxml "$dom" | grep -q "cache='none' io='native'" || fail "the running domain lost cache/io"

capacity() { vsh domblkinfo "$dom" vda | awk '/^Capacity:/ { print $2 }'; }
[[ "$(capacity)" -eq $((64 << 20)) ]] || fail "domblkinfo: $(vsh domblkinfo "$dom" vda)"

vsh blockresize "$dom" vda "$((2 << 30))B" >/dev/null || fail "virsh blockresize failed"
[[ "$(capacity)" -eq $((2 << 30)) ]] || fail "domblkinfo after blockresize: $(vsh domblkinfo "$dom" vda)"
[[ "$(stat -c %s "$D")" -eq $((2 << 30)) ]] || fail "after blockresize the mount shows $(stat -c %s "$D") bytes"

vsh destroy "$dom" >/dev/null || fail "virsh destroy failed"
vsh undefine "$dom" >/dev/null || fail "virsh undefine failed"
vsh list --all --name | grep -qx "$dom" && fail "the domain is still defined"
cmp -n $((64 << 20)) "$T/src.raw" "$D" || fail "the disk's first 64 MiB changed"
echo "e2e_libvirt (${IMGFS_TEST_DISKS:-local}): ok"
