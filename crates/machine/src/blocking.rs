//! The same machine without async: every call runs on the shared QMP I/O runtime
//! ([`qmp::blocking`]), so events keep arriving between calls.
//!
//! ```no_run
//! use std::time::Duration;
//! use qemu_machine::blocking::Machine;
//! use serde_json::json;
//!
//! # fn main() -> qemu_machine::Result<()> {
//! let mut vm = Machine::new(qemu_machine::Machine::builder("qemu-system-x86_64").machine_type("none"));
//! vm.launch()?;
//! println!("{}", vm.cmd("query-status", json!({}))?);
//! vm.shutdown()?;
//! # Ok(()) }
//! ```

use std::os::fd::AsFd;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use qmp::{Event, Request};
use serde_json::Value;

use crate::config::MachineBuilder;
use crate::console::{Match, Pattern};
use crate::error::{Error, ErrorKind, Result};

fn block_on<F: std::future::Future>(future: F) -> Result<F::Output> {
    qmp::blocking::block_on(future).map_err(|source| Error::from(ErrorKind::Qmp(Box::new(source))))
}

/// A QEMU virtual machine, blocking form; see [`crate::Machine`] for each method.
#[derive(Debug)]
pub struct Machine {
    inner: crate::Machine,
}

impl Machine {
    /// A machine from a configuration (not launched yet).
    pub fn new(config: MachineBuilder) -> Machine {
        Machine {
            inner: crate::Machine::new(config),
        }
    }

    /// The async machine underneath.
    pub fn as_async(&mut self) -> &mut crate::Machine {
        &mut self.inner
    }

    /// The machine's name.
    pub fn name(&self) -> &str {
        self.inner.name()
    }

    /// See [`crate::Machine::launch`].
    ///
    /// # Errors
    ///
    /// As [`crate::Machine::launch`]; also [`ErrorKind::Qmp`]
    /// ([`qmp::Error::InsideAsyncRuntime`]) when called from inside an async runtime, or
    /// when the shared I/O thread cannot be started.
    pub fn launch(&mut self) -> Result<()> {
        block_on(self.inner.launch())?
    }

    /// See [`crate::Machine::qmp`].
    ///
    /// # Errors
    ///
    /// As [`crate::Machine::qmp`]; also [`ErrorKind::Qmp`]
    /// ([`qmp::Error::InsideAsyncRuntime`]) when called from inside an async runtime, or
    /// when the shared I/O thread cannot be started.
    pub fn qmp(&mut self, name: &str, arguments: Value) -> Result<Value> {
        block_on(self.inner.qmp(name, arguments))?
    }

    /// See [`crate::Machine::cmd`].
    ///
    /// # Errors
    ///
    /// As [`crate::Machine::cmd`]; also [`ErrorKind::Qmp`]
    /// ([`qmp::Error::InsideAsyncRuntime`]) when called from inside an async runtime, or
    /// when the shared I/O thread cannot be started.
    pub fn cmd(&mut self, name: &str, arguments: impl serde::Serialize) -> Result<Value> {
        block_on(self.inner.cmd(name, arguments))?
    }

    /// See [`crate::Machine::request`].
    ///
    /// # Errors
    ///
    /// As [`crate::Machine::request`]; also [`ErrorKind::Qmp`]
    /// ([`qmp::Error::InsideAsyncRuntime`]) when called from inside an async runtime, or
    /// when the shared I/O thread cannot be started.
    pub fn request(&mut self, request: Request) -> Result<Value> {
        block_on(self.inner.request(request))?
    }

    /// See [`crate::Machine::send_fd_scm`].
    ///
    /// # Errors
    ///
    /// As [`crate::Machine::send_fd_scm`].
    pub fn send_fd_scm(&self, fd: impl AsFd) -> Result<()> {
        self.inner.send_fd_scm(fd)
    }

    /// See [`crate::Machine::send_file_scm`].
    ///
    /// # Errors
    ///
    /// As [`crate::Machine::send_file_scm`].
    pub fn send_file_scm(&self, path: impl AsRef<Path>) -> Result<()> {
        self.inner.send_file_scm(path)
    }

    /// See [`crate::Machine::get_qmp_event`].
    pub fn get_qmp_event(&mut self) -> Option<Event> {
        self.inner.get_qmp_event()
    }

    /// See [`crate::Machine::get_qmp_event_wait`].
    ///
    /// # Errors
    ///
    /// As [`crate::Machine::get_qmp_event_wait`]; also [`ErrorKind::Qmp`]
    /// ([`qmp::Error::InsideAsyncRuntime`]) when called from inside an async runtime, or
    /// when the shared I/O thread cannot be started.
    pub fn get_qmp_event_wait(&mut self, timeout: Duration) -> Result<Event> {
        block_on(self.inner.get_qmp_event_wait(timeout))?
    }

    /// See [`crate::Machine::get_qmp_events`].
    pub fn get_qmp_events(&mut self) -> Vec<Event> {
        self.inner.get_qmp_events()
    }

    /// See [`crate::Machine::event_wait`].
    ///
    /// # Errors
    ///
    /// As [`crate::Machine::event_wait`]; also [`ErrorKind::Qmp`]
    /// ([`qmp::Error::InsideAsyncRuntime`]) when called from inside an async runtime, or
    /// when the shared I/O thread cannot be started.
    pub fn event_wait(
        &mut self,
        name: &str,
        pattern: Option<Value>,
        timeout: Duration,
    ) -> Result<Event> {
        block_on(self.inner.event_wait(name, pattern, timeout))?
    }

    /// See [`crate::Machine::events_wait`].
    ///
    /// # Errors
    ///
    /// As [`crate::Machine::events_wait`]; also [`ErrorKind::Qmp`]
    /// ([`qmp::Error::InsideAsyncRuntime`]) when called from inside an async runtime, or
    /// when the shared I/O thread cannot be started.
    pub fn events_wait(
        &mut self,
        wanted: &[(&str, Option<Value>)],
        timeout: Duration,
    ) -> Result<Event> {
        block_on(self.inner.events_wait(wanted, timeout))?
    }

    /// See [`crate::Machine::shutdown`].
    ///
    /// # Errors
    ///
    /// As [`crate::Machine::shutdown`]; also [`ErrorKind::Qmp`]
    /// ([`qmp::Error::InsideAsyncRuntime`]) when called from inside an async runtime, or
    /// when the shared I/O thread cannot be started.
    pub fn shutdown(&mut self) -> Result<()> {
        block_on(self.inner.shutdown())?
    }

    /// See [`crate::Machine::shutdown_timeout`].
    ///
    /// # Errors
    ///
    /// As [`crate::Machine::shutdown_timeout`]; also [`ErrorKind::Qmp`]
    /// ([`qmp::Error::InsideAsyncRuntime`]) when called from inside an async runtime, or
    /// when the shared I/O thread cannot be started.
    pub fn shutdown_timeout(&mut self, timeout: Duration) -> Result<()> {
        block_on(self.inner.shutdown_timeout(timeout))?
    }

    /// See [`crate::Machine::wait`].
    ///
    /// # Errors
    ///
    /// As [`crate::Machine::wait`]; also [`ErrorKind::Qmp`]
    /// ([`qmp::Error::InsideAsyncRuntime`]) when called from inside an async runtime, or
    /// when the shared I/O thread cannot be started.
    pub fn wait(&mut self, timeout: Duration) -> Result<()> {
        block_on(self.inner.wait(timeout))?
    }

    /// See [`crate::Machine::kill`].
    ///
    /// # Errors
    ///
    /// As [`crate::Machine::kill`]; also [`ErrorKind::Qmp`]
    /// ([`qmp::Error::InsideAsyncRuntime`]) when called from inside an async runtime, or
    /// when the shared I/O thread cannot be started.
    pub fn kill(&mut self) -> Result<()> {
        block_on(self.inner.kill())?
    }

    /// See [`crate::Machine::is_running`].
    pub fn is_running(&mut self) -> bool {
        self.inner.is_running()
    }

    /// See [`crate::Machine::exit_status`].
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.inner.exit_status()
    }

    /// See [`crate::Machine::pid`].
    pub fn pid(&self) -> Option<u32> {
        self.inner.pid()
    }

    /// See [`crate::Machine::run_dir`].
    pub fn run_dir(&self) -> Option<&Path> {
        self.inner.run_dir()
    }

    /// See [`crate::Machine::get_log`].
    pub fn get_log(&self) -> Option<&str> {
        self.inner.get_log()
    }
}

impl Machine {
    /// The serial console, blocking form; see [`crate::Machine::console`].
    ///
    /// # Errors
    ///
    /// As [`crate::Machine::console`].
    pub fn console(&self) -> Result<Console> {
        Ok(Console {
            inner: self.inner.console()?,
        })
    }
}

/// A serial console, blocking form; see [`crate::Console`] for each method.
#[derive(Debug, Clone)]
pub struct Console {
    inner: crate::Console,
}

impl Console {
    /// The async console underneath.
    pub fn as_async(&self) -> &crate::Console {
        &self.inner
    }

    /// See [`crate::Console::write`].
    ///
    /// # Errors
    ///
    /// As [`crate::Console::write`]; also [`ErrorKind::Qmp`]
    /// ([`qmp::Error::InsideAsyncRuntime`]) when called from inside an async runtime, or
    /// when the shared I/O thread cannot be started.
    pub fn write(&self, bytes: &[u8]) -> Result<()> {
        block_on(self.inner.write(bytes))?
    }

    /// See [`crate::Console::send_line`].
    ///
    /// # Errors
    ///
    /// As [`crate::Console::send_line`]; also [`ErrorKind::Qmp`]
    /// ([`qmp::Error::InsideAsyncRuntime`]) when called from inside an async runtime, or
    /// when the shared I/O thread cannot be started.
    pub fn send_line(&self, line: &str) -> Result<()> {
        block_on(self.inner.send_line(line))?
    }

    /// See [`crate::Console::expect`].
    ///
    /// # Errors
    ///
    /// As [`crate::Console::expect`]; also [`ErrorKind::Qmp`]
    /// ([`qmp::Error::InsideAsyncRuntime`]) when called from inside an async runtime, or
    /// when the shared I/O thread cannot be started.
    pub fn expect(&self, pattern: impl Into<Pattern>, timeout: Duration) -> Result<Match> {
        block_on(self.inner.expect(pattern, timeout))?
    }

    /// See [`crate::Console::expect_any`].
    ///
    /// # Errors
    ///
    /// As [`crate::Console::expect_any`]; also [`ErrorKind::Qmp`]
    /// ([`qmp::Error::InsideAsyncRuntime`]) when called from inside an async runtime, or
    /// when the shared I/O thread cannot be started.
    pub fn expect_any<F: Into<Pattern>>(
        &self,
        pattern: impl Into<Pattern>,
        failures: impl IntoIterator<Item = F>,
        timeout: Duration,
    ) -> Result<Match> {
        block_on(self.inner.expect_any(pattern, failures, timeout))?
    }

    /// See [`crate::Console::exec_and_expect`].
    ///
    /// # Errors
    ///
    /// As [`crate::Console::exec_and_expect`]; also [`ErrorKind::Qmp`]
    /// ([`qmp::Error::InsideAsyncRuntime`]) when called from inside an async runtime, or
    /// when the shared I/O thread cannot be started.
    pub fn exec_and_expect(
        &self,
        command: &str,
        pattern: impl Into<Pattern>,
        timeout: Duration,
    ) -> Result<Match> {
        block_on(self.inner.exec_and_expect(command, pattern, timeout))?
    }

    /// See [`crate::Console::interrupt_until`].
    ///
    /// # Errors
    ///
    /// As [`crate::Console::interrupt_until`]; also [`ErrorKind::Qmp`]
    /// ([`qmp::Error::InsideAsyncRuntime`]) when called from inside an async runtime, or
    /// when the shared I/O thread cannot be started.
    pub fn interrupt_until(
        &self,
        pattern: impl Into<Pattern>,
        interrupt: &[u8],
        interval: Duration,
        timeout: Duration,
    ) -> Result<Match> {
        block_on(
            self.inner
                .interrupt_until(pattern, interrupt, interval, timeout),
        )?
    }

    /// See [`crate::Console::read_available`].
    pub fn read_available(&self) -> Vec<u8> {
        self.inner.read_available()
    }

    /// See [`crate::Console::history`].
    pub fn history(&self) -> Vec<u8> {
        self.inner.history()
    }
}
