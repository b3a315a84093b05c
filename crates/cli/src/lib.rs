//! The parts of the `qemu-machine` command that are worth testing on their own.
//!
//! The command itself (`src/main.rs` and its modules) is a binary; what a test or a fuzz
//! target wants to call directly lives here.

#![warn(missing_docs)]

pub mod shell_syntax;
