#!/usr/bin/env bash
# Builds a full Debian guest of the host's release (Debian 12 here): systemd, a root
# autologin getty on ttyS0 and qemu-guest-agent, on an ext4 disk image, booted with the
# Linux test guest's kernel and initramfs (whose init switches to /dev/vda when the command
# line says root=/dev/vda).
#
#   guests/build-debian-guest.sh   # -> .cache/guests/debian/rootfs.img (+ stamp)
#
#   qemu-system-x86_64 -m 512M -nographic -kernel .cache/guests/linux/vmlinuz \
#       -initrd .cache/guests/linux/initrd.gz -append 'console=ttyS0 root=/dev/vda' \
#       -drive file=.cache/guests/debian/rootfs.img,format=raw,if=virtio,snapshot=on
#
# Idempotent: does nothing while the stamp (this script's hash) matches. Needs root (or
# sudo) and mmdebstrap (installed here when missing); the image is 1 GiB, sparse.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$root/.cache/guests/debian}
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

stamp="script=$(sha256sum "$0" | cut -c1-16)"
if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$stamp" ] && [ -f "$out/rootfs.img" ]; then
    echo "debian guest up to date in $out"
    exit 0
fi
# Never removes anything; refreshes the package lists once if the package is unknown.
install() {
    local apt_install=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-remove "$@")
    as_root "${apt_install[@]}" || { as_root apt-get update -q && as_root "${apt_install[@]}"; }
}
command -v mmdebstrap >/dev/null 2>&1 || install mmdebstrap
command -v mkfs.ext4 >/dev/null 2>&1 || install e2fsprogs

work=$(mktemp -d)
trap 'as_root rm -rf "$work"' EXIT
cat >"$work/autologin.conf" <<'CONF'
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --keep-baud 115200,57600,38400,9600 %I $TERM
CONF
chmod 0755 "$work"
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
# The system's own mirror, as apt knows it (nothing here names a host of its own).
mirror=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null |
    awk -v s="$codename" '$2 == s { print $1; exit }')
as_root mmdebstrap --quiet --variant=minbase \
    --include=systemd-sysv,udev,qemu-guest-agent,procps \
    --customize-hook='echo debian >"$1/etc/hostname"' \
    --customize-hook='echo "/dev/vda / ext4 defaults 0 1" >"$1/etc/fstab"' \
    --customize-hook='mkdir -p "$1/etc/systemd/system/serial-getty@ttyS0.service.d"' \
    --customize-hook="cp '$work/autologin.conf' \"\$1/etc/systemd/system/serial-getty@ttyS0.service.d/\"" \
    --customize-hook='chroot "$1" passwd -d root' \
    "$codename" "$work/rootfs" ${mirror:+"$mirror"}
mkdir -p "$out"
rm -f "$out/rootfs.img.tmp"
as_root mkfs.ext4 -q -L debian -d "$work/rootfs" "$out/rootfs.img.tmp" 1G
# Ours, not root's (when built through sudo), so that it can be attached writable.
as_root chown "$(id -u):$(id -g)" "$out/rootfs.img.tmp"
mv "$out/rootfs.img.tmp" "$out/rootfs.img"
echo "$stamp" >"$out/stamp"
echo "debian guest built in $out"
