//! Typed devices on [`MachineBuilder`](crate::MachineBuilder).

/// The typed devices of a machine, rendered to arguments at launch.
#[derive(Debug, Clone, Default)]
pub(crate) struct Devices {}
