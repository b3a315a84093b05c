//! Where the scripts under `guests/` put the test guests, for every test crate (each may be
//! moved with an environment variable, e.g. to a guest built elsewhere).

use std::path::PathBuf;

/// The repository's `.cache/guests/NAME`.
fn cached(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../.cache/guests")
        .join(name)
}

/// `$VARIABLE`, else the cached `name`.
fn from_env_or_cache(variable: &str, name: &str) -> PathBuf {
    std::env::var_os(variable)
        .map(PathBuf::from)
        .unwrap_or_else(|| cached(name))
}

/// Where `guests/build-linux-guest.sh` put the Linux test guest: `$QEMU_MACHINE_LINUX_GUEST`,
/// else `.cache/guests/linux` (not checked: see [`built_linux_guest_dir`]).
pub fn linux_guest_dir() -> PathBuf {
    from_env_or_cache("QEMU_MACHINE_LINUX_GUEST", "linux")
}

/// [`linux_guest_dir`], failing (never skipping) when the guest is not built there.
pub fn built_linux_guest_dir() -> PathBuf {
    let dir = linux_guest_dir();
    assert!(
        dir.join("vmlinuz").exists(),
        "the Linux test guest is not built: run guests/build-linux-guest.sh (scripts/test does)"
    );
    dir
}

/// Where `FLAVOR=amd64 guests/build-linux-guest.sh` put the Linux test guest with Debian's
/// generic kernel, which has 9p (the default cloud kernel has not):
/// `$QEMU_MACHINE_LINUX_9P_GUEST`, else `.cache/guests/linux-amd64`. Fails, never skips,
/// when it is not built.
pub fn linux_9p_guest_dir() -> PathBuf {
    let dir = from_env_or_cache("QEMU_MACHINE_LINUX_9P_GUEST", "linux-amd64");
    assert!(
        dir.join("vmlinuz").exists() && dir.join("initrd.gz").exists(),
        "the 9p test guest is not in {}: run FLAVOR=amd64 guests/build-linux-guest.sh \
         (scripts/test does)",
        dir.display()
    );
    dir
}

/// The disk image of `guests/build-debian-guest.sh` (systemd, a root autologin getty on
/// ttyS0, qemu-guest-agent; booted by the Linux test guest's kernel with `root=/dev/vda`):
/// `$QEMU_MACHINE_DEBIAN_GUEST`, else `.cache/guests/debian/rootfs.img`. Fails, never skips,
/// when it is not built.
pub fn debian_guest_image() -> PathBuf {
    let image = from_env_or_cache("QEMU_MACHINE_DEBIAN_GUEST", "debian/rootfs.img");
    assert!(
        image.exists(),
        "the Debian guest is not in {}: run guests/build-debian-guest.sh (scripts/test does)",
        image.display()
    );
    image
}
