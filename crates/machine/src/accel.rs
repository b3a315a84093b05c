//! Accelerator choice, and whether KVM really works here.
//!
//! `/dev/kvm` existing proves little: on some hosts it is `kvm-pvm`, a software KVM under
//! which SeaBIOS takes seconds and Linux does not boot. So KVM is chosen automatically only
//! when the device is usable *and* it is not kvm-pvm.

use std::fs::OpenOptions;
use std::path::Path;

/// Which accelerator to ask QEMU for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Software emulation (`-accel tcg`).
    Tcg,
    /// Hardware virtualisation (`-accel kvm`), as asked, even where it is slow.
    Kvm,
    /// KVM where it really works, else TCG.
    KvmOrTcg,
}

impl Accel {
    /// The accelerator this choice comes to on this host.
    pub fn resolve(self) -> Accel {
        match self {
            Accel::KvmOrTcg if kvm_really_usable() => Accel::Kvm,
            Accel::KvmOrTcg => Accel::Tcg,
            other => other,
        }
    }

    /// The `-accel` value.
    pub fn as_arg(self) -> &'static str {
        match self.resolve() {
            Accel::Kvm => "kvm",
            _ => "tcg",
        }
    }
}

/// True when `/dev/kvm` opens read-write and is not the software `kvm-pvm`.
pub fn kvm_really_usable() -> bool {
    !is_kvm_pvm()
        && OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
}

/// True when the host's KVM is `kvm-pvm` (a software, pagetable-based KVM).
pub fn is_kvm_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}
