#!/usr/bin/env bash
# tools/guest/build.sh OUTDIR: builds the small test guest of the guest_*
# integration tests into OUTDIR (the tests use $IMGFS_BUILD/guest), from
# Debian packages only, and caches it: a second run with the same inputs does
# nothing. See tools/guest/README.md.
#   OUTDIR/vmlinuz       the kernel of linux-image-cloud-amd64 (downloaded with
#                        apt-get download, unpacked with dpkg -x; never
#                        installed on the host)
#   OUTDIR/initrd.img    busybox-static, the guest-side tools with their
#                        libraries, the modules the guest needs, /init
#   OUTDIR/ext4.qcow2    "cloud images": GPT, one root partition from 1 MiB to
#   OUTDIR/xfs.qcow2     the end (ext4 64 MiB disk / xfs 320 MiB disk) holding
#                        /etc/imgfs/firstboot
#   OUTDIR/kernel.version
# Runs as root (it makes the images in files; no loop devices, no mounts).
# Concurrent runs on the same OUTDIR wait for each other (flock).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:?usage: build.sh OUTDIR}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
exec 9>"$out/.lock"
flock 9

log() { echo "guest-build: $*" >&2; }
die() { log "$*"; exit 1; }

# The kernel package behind the metapackage, e.g. linux-image-6.1.0-57-cloud-amd64.
kpkg="$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
  sed -n 's/^ *Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -1)"
if [[ -z "$kpkg" ]]; then
  apt-get update -qq >/dev/null
  kpkg="$(apt-cache depends linux-image-cloud-amd64 |
    sed -n 's/^ *Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -1)"
fi
[[ -n "$kpkg" ]] || die "apt-cache knows no linux-image-cloud-amd64"

# Inputs: these scripts, the kernel package and the host tools' versions.
tools_pkgs=(busybox-static cloud-guest-utils util-linux fdisk gdisk e2fsprogs xfsprogs)
want="$(
  cat "$here/build.sh" "$here/init" "$here/firstboot"
  echo "$kpkg"
  dpkg-query -W "${tools_pkgs[@]:1}" 2>/dev/null
)"
want="$(sha256sum <<<"$want" | cut -d' ' -f1)"
if [[ -f "$out/stamp" && "$(cat "$out/stamp")" == "$want" ]]; then
  exit 0
fi
log "building the test guest in $out"
rm -f "$out/stamp"

# ---- Debian packages (downloaded once, kept in OUTDIR/debs) ----
debs="$out/debs"
mkdir -p "$debs"
fetch() { # fetch PKG: its .deb in $debs (apt-get download; apt-get update once if needed)
  local p="$1"
  compgen -G "$debs/${p}_*.deb" >/dev/null && return 0
  (cd "$debs" && apt-get download "$p" >/dev/null 2>&1) ||
    { apt-get update -qq >/dev/null && (cd "$debs" && apt-get download "$p" >/dev/null); } ||
    die "apt-get download $p failed"
}
fetch "$kpkg"
fetch busybox-static
work="$out/work"
rm -rf "$work"
mkdir -p "$work/kernel" "$work/busybox"
dpkg -x "$(compgen -G "$debs/${kpkg}_*.deb" | head -1)" "$work/kernel"
dpkg -x "$(compgen -G "$debs/busybox-static_*.deb" | head -1)" "$work/busybox"
kver="${kpkg#linux-image-}"
kmods="$work/kernel/lib/modules/$kver"
[[ -d "$kmods" ]] || die "no modules for $kver in $kpkg"
cp "$work/kernel/boot/vmlinuz-$kver" "$out/vmlinuz.new"

# ---- the initramfs ----
root="$work/root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,run,tmp,mnt/root,lib/modules}
cp "$work/busybox/bin/busybox" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
# /init makes the other applets' links (busybox --install -s), which leaves
# the real tools copied below in place.

# copy_bin PATH: the host's binary (or script) and the libraries it loads.
copy_bin() {
  local f="$1" lib
  [[ -e "$f" ]] || die "$f is not installed (tools/setup.sh installs it)"
  mkdir -p "$root/$(dirname "$f")"
  rm -f "$root/$f"
  cp -L "$f" "$root/$f"
  if head -c 4 "$f" | grep -q ELF; then
    for lib in $(ldd "$f" | grep -o '/[^ ]*'); do
      [[ -e "$root/$lib" ]] && continue
      mkdir -p "$root/$(dirname "$lib")"
      cp -L "$lib" "$root/$lib"
    done
  fi
}
# growpart (cloud-guest-utils, a shell script) and what it calls; the
# resizers and checkers of both file systems; fstrim; sgdisk and dumpe2fs for
# the report.
for f in /usr/bin/growpart /usr/sbin/sfdisk /usr/sbin/sgdisk /usr/bin/partx /usr/sbin/blockdev \
  /usr/bin/flock /usr/sbin/resize2fs /usr/sbin/e2fsck /usr/sbin/dumpe2fs /usr/sbin/xfs_growfs \
  /usr/sbin/xfs_repair /usr/sbin/fstrim; do
  copy_bin "$f"
done
# util-linux's /usr/sbin/blockdev etc. sit next to busybox's /sbin links;
# PATH (set by /init) puts /usr/sbin and /usr/bin first.

# Modules: virtio_pci and virtio_blk (the disk) and xfs are modules in the
# cloud kernel (ext4 is built in); their dependencies from modinfo, loaded in
# dependency order (/etc/modules.order, names without .ko).
declare -A modpath=() seen=()
while IFS= read -r -d '' ko; do
  n="${ko##*/}"
  n="${n%.ko}"
  modpath[$n]="$ko"
  modpath[${n//-/_}]="$ko"
done < <(find "$kmods/kernel" -name '*.ko' -print0)
order=()
add_mod() {
  local n="${1//-/_}" d
  [[ -n "${seen[$n]:-}" ]] && return 0
  seen[$n]=1
  [[ -n "${modpath[$n]:-}" ]] || die "module $n is not in $kpkg"
  # The "depends=" string of the module's .modinfo section (what modinfo -F
  # depends prints; kmod is not needed on the host).
  for d in $(tr '\0' '\n' <"${modpath[$n]}" | sed -n 's/^depends=//p' | head -1 | tr ',' ' '); do
    add_mod "$d"
  done
  order+=("$n")
  cp "${modpath[$n]}" "$root/lib/modules/$n.ko"
}
for m in virtio_pci virtio_blk xfs; do add_mod "$m"; done
printf '%s\n' "${order[@]}" >"$root/etc/modules.order"
grep -q '^CONFIG_EXT4_FS=y' "$work/kernel/boot/config-$kver" || die "ext4 is not built into $kver"

install -m 755 "$here/init" "$root/init"
(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) >"$out/initrd.img.new"

# ---- the cloud images ----
# mkimage FS MIB: GPT with partition 1 from sector 2048 to the end, the file
# system made in a partition-sized file (ext4: mkfs -d; xfs: a protofile) and
# copied in at the partition's offset; then converted to qcow2.
fsroot="$work/fsroot"
mkdir -p "$fsroot/etc/imgfs"
install -m 755 "$here/firstboot" "$fsroot/etc/imgfs/firstboot"
echo "imgfs test guest" >"$fsroot/etc/issue"
mkimage() {
  local fs="$1" mib="$2" raw="$work/$1.raw" part="$work/$1.part" first last
  truncate -s "${mib}M" "$raw"
  sgdisk --clear -n 1:2048:0 -t 1:8300 -c "1:root" "$raw" >/dev/null
  first="$(sgdisk -i 1 "$raw" | awk '/^First sector/ { print $3 }')"
  last="$(sgdisk -i 1 "$raw" | awk '/^Last sector/ { print $3 }')"
  rm -f "$part"
  truncate -s $(((last - first + 1) * 512)) "$part"
  case "$fs" in
    ext4) mkfs.ext4 -q -F -b 4096 -L root -d "$fsroot" "$part" >/dev/null ;;
    xfs)
      cat >"$work/xfs.proto" <<PROTO
/dev/null
0 0
d--755 0 0
etc d--755 0 0
issue ---644 0 0 $fsroot/etc/issue
imgfs d--755 0 0
firstboot ---755 0 0 $fsroot/etc/imgfs/firstboot
\$
\$
\$
PROTO
      mkfs.xfs -q -f -L root -p "$work/xfs.proto" "$part" >/dev/null
      ;;
  esac
  dd if="$part" of="$raw" bs=1M seek=$((first * 512)) oflag=seek_bytes conv=notrunc,sparse status=none
  qemu-img convert -f raw -O qcow2 "$raw" "$out/$fs.qcow2.new"
}
mkimage ext4 64
mkimage xfs 320 # mkfs.xfs wants at least 300 MiB

for f in vmlinuz initrd.img ext4.qcow2 xfs.qcow2; do mv "$out/$f.new" "$out/$f"; done
echo "$kver" >"$out/kernel.version"
rm -rf "$work"
echo "$want" >"$out/stamp"
log "done: $kver, initrd $(du -k "$out/initrd.img" | cut -f1) KiB"
