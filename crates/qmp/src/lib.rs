//! A client for the QEMU Machine Protocol (QMP).
//!
//! - [`Client`]: async (tokio). One reader task per connection reads all the time; replies
//!   are routed by id to any number of concurrent callers; events go to every matching
//!   [`Subscription`]'s own bounded queue. Every wait has a deadline.
//! - [`blocking::Client`]: the same without async, on a shared I/O thread.
//! - [`Listener`]: server mode, where QEMU connects to us.
//! - [`commands`]: typed commands ([`Command`]); [`TypedEvent`]: typed events. Plain JSON is
//!   always available.
//! - [`Multiplexer`]: one session served to many standard QMP clients.
//! - [`fake::FakePeer`]: a scriptable fake QMP peer for tests.
//!
//! ```no_run
//! # #[tokio::main]
//! # async fn main() -> qmp::Result<()> {
//! use std::time::Duration;
//! use qmp::{Client, EventFilter};
//! use serde_json::json;
//!
//! let client = Client::builder().connect(&"/tmp/qmp.sock".parse().unwrap()).await?;
//! println!("QEMU {}", client.greeting().unwrap().version.qemu);
//! let mut events = client.subscribe(EventFilter::names(["STOP", "RESUME"]));
//! client.execute("stop", json!({})).await?;
//! client.execute("cont", json!({})).await?;
//! for _ in 0..2 {
//!     println!("{}", events.recv_timeout(Duration::from_secs(5)).await?.name());
//! }
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod address;
pub mod blocking;
mod builder;
mod client;
mod command;
mod connection;
mod deadline;
mod error;
mod events;
pub mod fake;
pub mod fsutil;
// Public only with the feature `fuzzing`, for the fuzz targets and property tests, which
// drive the decoder directly.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod framing;
#[cfg(not(feature = "fuzzing"))]
mod framing;
mod message;
mod mux;
mod open_enum;
mod outgoing;
pub mod redact;
mod seen;
mod server;
mod session;
pub mod sync;
mod tasks;
mod transcript;
mod transport;
mod typed_event;
mod wire;

pub use address::{Address, AddressParseError};
pub use builder::{
    ClientBuilder, DEFAULT_COMMAND_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_GREETING_TIMEOUT,
};
pub use client::{Client, Request};
pub use command::Command;
pub use deadline::{Deadline, Elapsed};
pub use error::{CommandError, DisconnectReason, Error, ProtocolError, Result};
pub use events::{EventFilter, Subscription, DEFAULT_QUEUE_CAPACITY};
pub use message::{
    ErrorInfo, Event, Greeting, Message, Response, Timestamp, VersionInfo, VersionTriple,
};
pub use mux::{
    Multiplexer, MultiplexerOptions, DEFAULT_MAX_CLIENTS, DEFAULT_MAX_INPUT_MESSAGE,
    DEFAULT_OUTBOX_BUDGET,
};
pub use outgoing::DEFAULT_MAX_WRITE_BACKLOG;
pub use server::Listener;
pub use typed_event::{
    BlockJobData, BlockJobErrorData, DeviceDeletedData, JobStatusChangeData, MigrationData,
    ResetData, ShutdownData, TypedEvent,
};

/// Typed definitions of the everyday commands and their replies.
pub mod commands {
    pub use crate::command::*;
}
