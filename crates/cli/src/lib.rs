//! The parts of the `qemu-machine` command that are worth testing on their own.

pub mod shell_syntax;
