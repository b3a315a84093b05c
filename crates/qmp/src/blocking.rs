//! The same client without async.
//!
//! Every connection is served by one shared runtime that is always being driven: by a
//! background I/O thread between calls, by the calling thread during a call. So reading
//! never stops: events that arrive while the caller sleeps are queued in order, and nothing
//! waits for the caller to "pump". Calls block the calling
//! thread; they must not be made from inside an async runtime ([`Error::InsideAsyncRuntime`]).
//!
//! ```no_run
//! use std::time::Duration;
//! use qmp::{blocking, EventFilter};
//!
//! # fn demo() -> qmp::Result<()> {
//! let client = blocking::Client::connect(&"/run/vm/qmp.sock".parse().unwrap())?;
//! let mut stops = client.subscribe(EventFilter::name("STOP"))?;
//! client.execute("stop", serde_json::json!({}))?;
//! let event = stops.recv_timeout(Duration::from_secs(5))?;
//! println!("{event}");
//! # Ok(()) }
//! ```

use std::future::Future;
use std::os::fd::AsFd;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use serde_json::Value;
use tokio::runtime::{Handle, Runtime};
use tokio::sync::Notify;

use crate::address::Address;
use crate::builder::ClientBuilder;
use crate::client::Request;
use crate::command::Command;
use crate::error::{DisconnectReason, Error, Result};
use crate::events::EventFilter;
use crate::message::{Event, Greeting, Response};
use crate::server::Listener;

/// How long no blocking call may be in progress before the background thread takes the
/// runtime back (see [`IoDriver`]).
const TAKEOVER_GRACE: Duration = Duration::from_millis(2);

/// The runtime behind every blocking client, and who drives it.
///
/// A current-thread runtime is driven by whichever thread is inside its `block_on`. A
/// background thread ("qmp-io") drives it whenever no blocking call is in progress, so
/// events are read between calls; a blocking call takes the runtime over for its own
/// duration, so its reply is read on the caller's thread with no second thread to wake (the
/// hand-over happens while QEMU is still working on the command).
struct IoDriver {
    runtime: Runtime,
    calls: Mutex<Calls>,
    caller_arrived: Notify,
}

#[derive(Default)]
struct Calls {
    active: usize,
    started: u64,
}

fn io_driver() -> Result<&'static IoDriver> {
    static DRIVER: OnceLock<std::result::Result<&'static IoDriver, String>> = OnceLock::new();
    DRIVER
        .get_or_init(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let driver: &'static IoDriver = Box::leak(Box::new(IoDriver {
                runtime,
                calls: Mutex::new(Calls::default()),
                caller_arrived: Notify::new(),
            }));
            std::thread::Builder::new()
                .name("qmp-io".into())
                .spawn(move || driver.drive_while_idle())
                .map_err(|e| e.to_string())?;
            Ok(driver)
        })
        .as_ref()
        .copied()
        .map_err(|e| {
            Error::io(
                "starting the QMP I/O thread",
                std::io::Error::other(e.clone()),
            )
        })
}

impl IoDriver {
    fn calls(&self) -> std::sync::MutexGuard<'_, Calls> {
        crate::sync::lock_unpoisoned(&self.calls)
    }

    fn drive_while_idle(&self) {
        loop {
            // Take over only after a quiet moment: back-to-back calls then hand the runtime
            // from one to the next, and nobody ever has to wake this thread.
            let started = self.calls().started;
            std::thread::sleep(TAKEOVER_GRACE);
            {
                let calls = self.calls();
                if calls.active > 0 || calls.started != started {
                    continue;
                }
            }
            self.runtime.block_on(async {
                loop {
                    let arrived = self.caller_arrived.notified();
                    if self.calls().active > 0 {
                        return;
                    }
                    arrived.await;
                }
            });
        }
    }
}

struct CallerGuard(&'static IoDriver);

impl Drop for CallerGuard {
    fn drop(&mut self) {
        self.0.calls().active -= 1;
    }
}

/// The runtime shared by every blocking client (started on first use).
///
/// # Errors
///
/// [`Error::Io`] when the runtime or its I/O thread cannot be started.
pub fn runtime() -> Result<&'static Runtime> {
    Ok(&io_driver()?.runtime)
}

/// Runs `future` to completion on the shared runtime, blocking this thread.
///
/// # Errors
///
/// [`Error::InsideAsyncRuntime`] when called from inside an async runtime, and
/// [`Error::Io`] when the shared I/O thread cannot be started.
pub fn block_on<F: Future>(future: F) -> Result<F::Output> {
    if Handle::try_current().is_ok() {
        return Err(Error::InsideAsyncRuntime);
    }
    let driver = io_driver()?;
    {
        let mut calls = driver.calls();
        calls.active += 1;
        calls.started += 1;
    }
    let _guard = CallerGuard(driver);
    driver.caller_arrived.notify_waiters();
    Ok(driver.runtime.block_on(future))
}

/// A blocking QMP session; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct Client {
    inner: crate::Client,
}

impl Client {
    /// Connects with default settings.
    ///
    /// # Errors
    ///
    /// As [`ClientBuilder::connect`]; also
    /// [`Error::InsideAsyncRuntime`] when called from inside an async runtime, and
    /// [`Error::Io`] when the shared I/O thread cannot be started.
    pub fn connect(address: &Address) -> Result<Client> {
        Client::connect_with(ClientBuilder::default(), address)
    }

    /// Connects with the settings of `builder`.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub fn connect_with(builder: ClientBuilder, address: &Address) -> Result<Client> {
        let inner = block_on(builder.connect(address))??;
        Ok(Client { inner })
    }

    /// Takes over a connected UNIX stream (e.g. a socketpair end).
    ///
    /// # Errors
    ///
    /// As [`ClientBuilder::adopt_unix`]; also
    /// [`Error::InsideAsyncRuntime`] when called from inside an async runtime, and
    /// [`Error::Io`] when the shared I/O thread cannot be started.
    pub fn adopt_unix(
        builder: ClientBuilder,
        stream: std::os::unix::net::UnixStream,
    ) -> Result<Client> {
        let inner = block_on(builder.adopt_unix(stream))??;
        Ok(Client { inner })
    }

    /// Waits for one peer on `listener` (server mode).
    ///
    /// # Errors
    ///
    /// As [`Listener::accept`]; also
    /// [`Error::InsideAsyncRuntime`] when called from inside an async runtime, and
    /// [`Error::Io`] when the shared I/O thread cannot be started.
    pub fn accept(listener: Listener, builder: ClientBuilder, timeout: Duration) -> Result<Client> {
        let inner = block_on(listener.accept(builder, timeout))??;
        Ok(Client { inner })
    }

    /// Wraps an async client (it keeps running on its own runtime).
    pub fn from_async(inner: crate::Client) -> Client {
        Client { inner }
    }

    /// The async client underneath.
    pub fn as_async(&self) -> &crate::Client {
        &self.inner
    }

    /// The peer's greeting.
    pub fn greeting(&self) -> Option<&Greeting> {
        self.inner.greeting()
    }

    /// See [`crate::Client::execute`].
    ///
    /// # Errors
    ///
    /// As [`crate::Client::execute`]; also
    /// [`Error::InsideAsyncRuntime`] when called from inside an async runtime, and
    /// [`Error::Io`] when the shared I/O thread cannot be started.
    pub fn execute(&self, name: &str, arguments: Value) -> Result<Value> {
        block_on(self.inner.execute(name, arguments))?
    }

    /// See [`crate::Client::execute_request`].
    ///
    /// # Errors
    ///
    /// As [`crate::Client::execute_request`]; also
    /// [`Error::InsideAsyncRuntime`] when called from inside an async runtime, and
    /// [`Error::Io`] when the shared I/O thread cannot be started.
    pub fn execute_request(&self, request: Request) -> Result<Value> {
        block_on(self.inner.execute_request(request))?
    }

    /// See [`crate::Client::send`].
    ///
    /// # Errors
    ///
    /// As [`crate::Client::send`]; also
    /// [`Error::InsideAsyncRuntime`] when called from inside an async runtime, and
    /// [`Error::Io`] when the shared I/O thread cannot be started.
    pub fn send(&self, request: Request) -> Result<Response> {
        block_on(self.inner.send(request))?
    }

    /// See [`crate::Client::call`].
    ///
    /// # Errors
    ///
    /// As [`crate::Client::call`]; also
    /// [`Error::InsideAsyncRuntime`] when called from inside an async runtime, and
    /// [`Error::Io`] when the shared I/O thread cannot be started.
    pub fn call<C: Command>(&self, command: &C) -> Result<C::Returns> {
        block_on(self.inner.call(command))?
    }

    /// See [`crate::Client::execute_and_wait`].
    ///
    /// # Errors
    ///
    /// As [`crate::Client::execute_and_wait`]; also
    /// [`Error::InsideAsyncRuntime`] when called from inside an async runtime, and
    /// [`Error::Io`] when the shared I/O thread cannot be started.
    pub fn execute_and_wait(
        &self,
        request: Request,
        filter: EventFilter,
        timeout: Duration,
    ) -> Result<(Value, Event)> {
        block_on(self.inner.execute_and_wait(request, filter, timeout))?
    }

    /// Subscribes to events; see [`crate::Client::subscribe`].
    ///
    /// # Errors
    ///
    /// None at present: a subscription to a closed session is returned and ends at once
    /// with [`Error::Disconnected`] on its first receive.
    pub fn subscribe(&self, filter: EventFilter) -> Result<Subscription> {
        Ok(Subscription {
            inner: self.inner.subscribe(filter),
        })
    }

    /// See [`crate::Client::send_fd`].
    ///
    /// # Errors
    ///
    /// As [`crate::Client::send_fd`] (it does not block, so it works inside a runtime too).
    pub fn send_fd(&self, fd: impl AsFd) -> Result<()> {
        self.inner.send_fd(fd)
    }

    /// Ends the session.
    pub fn close(&self) {
        self.inner.close();
    }

    /// True until the session ends.
    pub fn is_connected(&self) -> bool {
        self.inner.is_connected()
    }

    /// Why the session ended, if it has.
    pub fn disconnect_reason(&self) -> Option<DisconnectReason> {
        self.inner.disconnect_reason()
    }
}

/// A blocking view of a [`crate::Subscription`].
#[derive(Debug)]
pub struct Subscription {
    inner: crate::Subscription,
}

impl Subscription {
    /// The next event, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// As [`crate::Subscription::recv_timeout`]; also
    /// [`Error::InsideAsyncRuntime`] when called from inside an async runtime, and
    /// [`Error::Io`] when the shared I/O thread cannot be started.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Event> {
        block_on(self.inner.recv_timeout(timeout))?
    }

    /// The next queued event, if any, without waiting.
    ///
    /// # Errors
    ///
    /// The inner `Err`: as [`crate::Subscription::try_recv`].
    pub fn try_recv(&mut self) -> Option<Result<Event>> {
        self.inner.try_recv()
    }

    /// Takes every event queued now.
    pub fn drain(&mut self) -> Vec<Event> {
        self.inner.drain()
    }
}
