# libvirt boots the test guest (tools/guest/) from the mount, on the disk
# backend that IMGFS_TEST_DISKS names (local or rbd): the ext4 cloud image is
# imported, made into a disk and grown by 1 GiB (the seed's flow); a domain of
# type qemu (TCG) with direct kernel boot whose disk is the mount's file
# (cache='none' io='native' discard='unmap') and whose serial console is a
# file; `virsh start` (running, not paused); the guest's first-boot script
# grows the partition and the file system and checks it, prints its report
# on the serial console and powers off (on_poweroff destroy). The serial log
# shows the report: the partition and the file system fill the disk, e2fsck
# clean. virtlogd and libvirtd are started here by hand and stopped by pid, as
# in e2e_libvirt.sh, whose /run/libvirt this test shares (ctest runs them one
# at a time).
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/e2e_lib.sh"
source "$(dirname "$0")/guest_lib.sh"
e2e_need libvirtd virtlogd virsh jq fusermount3
guest_build

e2e_start_libvirt

init_store
"$IMGFS" image import "$GUEST_DIR/ext4.qcow2" --name guest-ext4 >/dev/null
inst="lv$RANDOM"
"$IMGFS" disk create "$inst/disk" --image guest-ext4 >/dev/null
# qemu runs as libvirt-qemu: it must reach the disk, the kernel, the initramfs
# and the serial log, so $T is searchable and the store is mounted with
# allow_other (libvirt chowns the disk file, which the mount keeps).
chmod 755 "$T"
cp "$GUEST_DIR/vmlinuz" "$GUEST_DIR/initrd.img" "$T/"
M="$T/mnt"
e2e_mount "$M" -o allow_other
D="$M/$inst/disk"
size0="$(stat -c %s "$D")"
truncate -s +1G "$D"
size=$((size0 + (1 << 30)))

dom="imgfs-guest-$inst"
log="$T/$dom.serial"
cat >"$T/dom.xml" <<XML
<domain type='qemu'>
  <name>$dom</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$T/vmlinuz</kernel>
    <initrd>$T/initrd.img</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet imgfs.steps=grow,fsck</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>$(command -v qemu-system-x86_64)</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='none' io='native' discard='unmap'/>
      <source file='$D'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'>
      <source path='$log'/>
      <target port='0'/>
    </serial>
  </devices>
</domain>
XML
vsh define "$T/dom.xml" >/dev/null || fail "virsh define failed"
on_exit "virsh -q -c qemu:///system undefine '$dom' >/dev/null 2>&1"
t0="$(date +%s%N)"
vsh start "$dom" >/dev/null ||
  fail "virsh start failed; qemu log: $(tail -5 "/var/log/libvirt/qemu/$dom.log" 2>/dev/null)"
on_exit "virsh -q -c qemu:///system destroy '$dom' >/dev/null 2>&1"
vsh dumpxml "$dom" | grep -q "cache='none' io='native' discard='unmap'" || fail "the running domain lost cache/io/discard"
# The guest powers off at the end of its report (ACPI: without <acpi/> libvirt
# gives qemu -no-acpi and the guest only halts); libvirt then destroys it.
while [[ "$(vsh domstate "$dom")" != "shut off" ]]; do
  ! grep -q 'reboot: System halted' "$log" 2>/dev/null ||
    fail "the guest halted instead of powering off: $(tail -3 "$log")"
  sleep 0.5
done
ms=$((($(date +%s%N) - t0) / 1000000))
echo "guest $dom: shut off $((ms / 1000)).$(printf %03d $((ms % 1000))) s after virsh start"
[[ -f "$log" ]] || fail "no serial log $log"
cp "$log" "$T/libvirt.serial" # guest_get reads $T/NAME.serial
grep -q '^IMGFS-REPORT end' "$T/libvirt.serial" ||
  fail "the guest did not finish; serial log: $(tail -20 "$T/libvirt.serial")"
! grep -q '^IMGFS-REPORT error' "$T/libvirt.serial" ||
  fail "the guest reported: $(grep '^IMGFS-REPORT error' "$T/libvirt.serial")"
guest_check_grown libvirt "$size" "$size0"
[[ "$(guest_get libvirt fsck)" == ok ]] || fail "fsck in the guest: $(guest_get libvirt fsck)"
v="$(sgdisk -v "$D" 2>&1)" && [[ "$v" == *"No problems found"* ]] || fail "sgdisk -v on the host: $v"

vsh undefine "$dom" >/dev/null || fail "virsh undefine failed"
echo "guest_libvirt (${IMGFS_TEST_DISKS:-local}): ok"
