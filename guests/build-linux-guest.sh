#!/usr/bin/env bash
# Builds the Linux test guest from Debian packages: a Debian kernel (the cloud one by default) and a busybox initramfs
# with the virtio modules (virtiofs included), an ACPI power button handler and qemu-guest-agent.
# With root=/dev/vda on the kernel command line its init boots the system on that disk
# instead (the Debian guest of guests/build-debian-guest.sh).
#
#   guests/build-linux-guest.sh        # -> .cache/guests/linux/{vmlinuz,initrd.gz,version}
#   FLAVOR=amd64 guests/build-linux-guest.sh   # -> .cache/guests/linux-amd64/...
#
# FLAVOR picks the kernel: `cloud-amd64` (the default: small, fast to boot, virtiofs but no
# 9p) or `amd64` (Debian's generic kernel, with 9p, for the 9p share tests).
# Idempotent (does nothing when the packages have not changed) and byte-reproducible (same
# packages, same bytes). The kernel package is resolved through the linux-image-$FLAVOR
# metapackage, since its versioned name changes with security updates. Needs root (or
# sudo) for apt-get and for the /dev/console node.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
flavor=${FLAVOR:-cloud-amd64}
case "$flavor" in
    cloud-amd64) out=${OUT:-$root/.cache/guests/linux}; extra_modules=() ;;
    amd64) out=${OUT:-$root/.cache/guests/linux-amd64}; extra_modules=(9p 9pnet_virtio) ;;
    *) echo "FLAVOR must be cloud-amd64 or amd64, not $flavor" >&2; exit 2 ;;
esac
modules_wanted=(virtio_pci virtio_blk virtio_net virtio_console virtio_rng virtio_balloon
    virtio_scsi sd_mod ata_piix button evdev virtiofs "${extra_modules[@]}")

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
for tool in cpio:cpio depmod:kmod apt-get:apt dpkg-deb:dpkg; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool#*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
    as_root apt-get update -q
    # --no-remove: installing a tool must never remove a package the user had.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-remove "${missing[@]}" ||
        { echo "apt-get could not install ${missing[*]} without removing a package; install them by hand" >&2; exit 1; }
fi

resolve_kernel() {
    apt-cache depends "linux-image-$flavor" 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}
kernel_pkg=$(resolve_kernel)
if [ -z "$kernel_pkg" ]; then
    as_root apt-get update -q
    kernel_pkg=$(resolve_kernel)
fi
[ -n "$kernel_pkg" ] || { echo "cannot resolve linux-image-$flavor" >&2; exit 1; }
kernel_version=${kernel_pkg#linux-image-}

candidate() { apt-cache policy "$1" | awk '/Candidate:/ { print $2 }'; }
stamp="$kernel_pkg=$(candidate "$kernel_pkg") busybox-static=$(candidate busybox-static) qemu-guest-agent=$(candidate qemu-guest-agent) script=$(sha256sum "$0" | cut -c1-16)"
if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$stamp" ] &&
    [ -f "$out/vmlinuz" ] && [ -f "$out/initrd.gz" ]; then
    echo "linux guest up to date in $out ($kernel_version)"
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# apt downloads as the _apt user: it must be able to write here.
chmod 0755 "$work"
mkdir -m 0777 "$work/debs"
(cd "$work/debs" && apt-get download -q "$kernel_pkg" busybox-static qemu-guest-agent)
for deb in "$work"/debs/*.deb; do
    dpkg-deb -x "$deb" "$work/pkgs"
done

kernel_root="$work/pkgs"
modules_dir="$kernel_root/lib/modules/$kernel_version"
depmod -b "$kernel_root" "$kernel_version"

# Depth-first over modules.dep, so every module comes after what it needs.
declare -A placed=()
order=()
place() {
    # Module names treat '-' and '_' alike (virtio_rng is virtio-rng.ko).
    local name=$1 glob path deps dep
    glob=${name//[-_]/[-_]}
    path=$(find "$modules_dir" -name "$glob.ko*" -print -quit)
    if [ -z "$path" ]; then
        if grep -q "/$glob.ko" "$modules_dir/modules.builtin" 2>/dev/null; then
            return 0
        fi
        echo "module $name is neither a module nor built in" >&2
        exit 1
    fi
    local rel=${path#"$modules_dir"/}
    [ -n "${placed[$rel]:-}" ] && return 0
    placed[$rel]=1
    deps=$(awk -F': ' -v m="$rel" '$1 == m { print $2 }' "$modules_dir/modules.dep")
    for dep in $deps; do
        dep=$(basename "$dep")
        place "${dep%%.ko*}"
    done
    order+=("$rel")
}
for module in "${modules_wanted[@]}"; do
    place "$module"
done

stage="$work/initramfs"
mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,run,tmp,etc/acpi/PWRF,lib/modules}
cp "$kernel_root/bin/busybox" "$stage/bin/busybox"
: >"$stage/etc/modules"
for rel in "${order[@]}"; do
    file=$(basename "$rel")
    case "$file" in
        *.ko.xz) xz -dc "$modules_dir/$rel" >"$stage/lib/modules/${file%.xz}" ;;
        *.ko.zst) zstd -qdc "$modules_dir/$rel" >"$stage/lib/modules/${file%.zst}" ;;
        *) cp "$modules_dir/$rel" "$stage/lib/modules/$file" ;;
    esac
    echo "${file%%.ko*}" >>"$stage/etc/modules"
done

# qemu-ga, with the shared libraries it needs (the same ones qemu-system-x86 put on this
# host; the guest runs the same Debian userland).
cp "$kernel_root/usr/sbin/qemu-ga" "$stage/usr/sbin/qemu-ga"
# What guest-info will say, for tests to compare against (e.g. "7.2.22").
qga_version=$("$kernel_root/usr/sbin/qemu-ga" --version | awk '{ print $NF }')
ldd "$kernel_root/usr/sbin/qemu-ga" | awk '/=> \// { print $3 } /^[ \t]*\// { print $1 }' |
    while read -r lib; do
        mkdir -p "$stage$(dirname "$lib")"
        cp -L "$lib" "$stage$lib"
    done

cat >"$stage/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
for module in $(cat /etc/modules); do
    insmod "/lib/modules/$module.ko" 2>/dev/null
done
# root=/dev/vda (guests/build-debian-guest.sh): boot the system on that disk instead.
case " $(cat /proc/cmdline) " in
    *" root=/dev/vda "*)
        mkdir -p /newroot
        if mount -t ext4 /dev/vda /newroot; then
            umount /run /tmp
            for fs in dev proc sys; do mount --move "/$fs" "/newroot/$fs"; done
            exec switch_root /newroot /sbin/init
        fi
        echo "cannot mount /dev/vda: staying in the initramfs"
        ;;
esac
acpid -l /run/acpid.log
for port in /sys/class/virtio-ports/*; do
    if [ "$(cat "$port/name" 2>/dev/null)" = org.qemu.guest_agent.0 ]; then
        qemu-ga -m virtio-serial -p "/dev/${port##*/}" -t /run -d -f /run/qga.pid
    fi
done
echo GUEST-READY
while true; do
    setsid cttyhack sh -l
done
INIT
cat >"$stage/etc/acpi/PWRF/00000080" <<'POWER'
#!/bin/sh
poweroff -f
POWER
# guest-shutdown runs /sbin/shutdown.
cat >"$stage/sbin/shutdown" <<'SHUTDOWN'
#!/bin/sh
case "$*" in
    *-r*) reboot -f ;;
    *) poweroff -f ;;
esac
SHUTDOWN
echo 'PS1="guest# "' >"$stage/etc/profile"
chmod 0755 "$stage/init" "$stage/etc/acpi/PWRF/00000080" "$stage/sbin/shutdown"
as_root mknod -m 0600 "$stage/dev/console" c 5 1

# Reproducible archive: fixed order, times and owners; no gzip timestamp.
find "$stage" -exec touch -h -d @0 {} +
mkdir -p "$out"
(cd "$stage" && find . -print0 | LC_ALL=C sort -z |
    cpio --null --create --format=newc --reproducible --owner=0:0 --quiet) |
    gzip -9 -n >"$out/initrd.gz.tmp"
cp "$kernel_root/boot/vmlinuz-$kernel_version" "$out/vmlinuz.tmp"
mv "$out/initrd.gz.tmp" "$out/initrd.gz"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
echo "$kernel_version" >"$out/version"
echo "$qga_version" >"$out/qemu-ga-version"
echo "$stamp" >"$out/stamp"
echo "linux guest built in $out: kernel $kernel_version, modules: ${order[*]##*/}"
