//! What the workspace's tests, examples and benchmarks share: which QEMU build to run
//! ([`binaries`]), a bare QEMU child for the QMP client's tests ([`bare_qemu`]), where the test guests are ([`guests`]), and checks that nothing is left
//! behind ([`processes`]); with the
//! feature `machine`, the machine crate's test helpers (the `machine` module).
//!
//! Dev-only: no library of the workspace depends on it.

pub mod bare_qemu;
pub mod binaries;
pub mod cli;
pub mod guests;
#[cfg(feature = "machine")]
pub mod machine;
pub mod processes;

pub use bare_qemu::BareQemu;
pub use binaries::{qemu, qemu_img, qemu_io, qemu_version, virtiofsd, QemuVersion};
pub use processes::{assert_group_gone, group_alive, open_fds, qemu_children, KillOnDrop};
