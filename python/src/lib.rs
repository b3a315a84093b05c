//! `qemu.machine._engine`: the native engine under the Python `qemu.machine` package.
//!
//! Three classes, each a thin handle on the Rust crates:
//! - [`Process`]: QEMU started from the command line Python built
//!   ([`qemu_machine::argv_process`]): own process group, death with its parent, killed and
//!   reaped when garbage-collected.
//! - [`Qmp`]: a QMP session ([`qmp::Client`]) on our end of a socketpair, with
//!   every event queued (bounded) from the greeting on.
//! - [`Console`]: the serial console, drained all the time into a bounded ring
//!   ([`qemu_machine::Console`]), so QEMU never blocks on it.
//!
//! The sessions and consoles run on one multi-threaded tokio runtime of this module's own
//! (two workers), so that many Python threads, each waiting on its own machine (a fleet),
//! are served at once.
//!
//! Every wait releases the GIL and runs in slices of at most [`SLICE`], checking for
//! signals between them, so Ctrl-C raises `KeyboardInterrupt` within a slice; every wait
//! has a deadline.

use std::fs::File;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTimeoutError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use qemu_machine::argv_process::{ArgvProcess, Output};
use qmp::sync::lock_unpoisoned;
use qmp::{EventFilter, Request};

/// Longest stretch a wait runs without checking for signals (Ctrl-C).
const SLICE: Duration = Duration::from_millis(50);
/// Ring buffer of the console.
const CONSOLE_BUFFER: usize = 4 * 1024 * 1024;
/// Events kept for Python until it reads them; beyond that the session reports an overflow.
const EVENT_QUEUE: usize = 65536;

/// The module's runtime (made on first use).
fn runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    static RUNTIME: std::sync::OnceLock<std::io::Result<tokio::runtime::Runtime>> =
        std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("qemu-machine-py")
                .enable_all()
                .build()
        })
        .as_ref()
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start the engine's runtime: {e}")))
}

/// Runs `future` on the module's runtime, blocking this (GIL-free) thread.
fn block_on<F: std::future::Future>(future: F) -> PyResult<F::Output> {
    Ok(runtime()?.block_on(future))
}

fn duration(seconds: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(seconds.max(0.0))
        .map_err(|e| PyValueError::new_err(format!("bad timeout {seconds}: {e}")))
}

/// A copy of a descriptor Python owns.
fn dup_fd(fd: RawFd) -> PyResult<OwnedFd> {
    if fd < 0 {
        return Err(PyValueError::new_err(format!("bad file descriptor {fd}")));
    }
    // SAFETY: the caller passes a descriptor it keeps open for the duration of this call;
    // we only duplicate it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    borrowed
        .try_clone_to_owned()
        .map_err(|e| PyOSError::new_err(format!("dup({fd}): {e}")))
}

/// Runs `step` (which waits at most the slice it is given) with the GIL released, in
/// slices, until it yields a value or `timeout` passes; checks for signals between slices.
fn sliced<T, F>(py: Python<'_>, timeout: Duration, mut step: F) -> PyResult<Option<T>>
where
    F: FnMut(Duration) -> PyResult<Option<T>> + Send,
    T: Send,
{
    let start = Instant::now();
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        let slice = left.min(SLICE);
        if let Some(value) = py.allow_threads(|| step(slice))? {
            return Ok(Some(value));
        }
        py.check_signals()?;
        if start.elapsed() >= timeout {
            return Ok(None);
        }
    }
}

/// Popen-style return code: the exit code, or minus the signal number.
fn returncode(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => -signal,
        (None, None) => -1,
    }
}

/// QEMU, started from a command line; see the module docs.
#[pyclass(module = "qemu.machine._engine")]
struct Process {
    inner: Mutex<ArgvProcess>,
    pid: u32,
}

#[pymethods]
impl Process {
    /// Spawns `argv`, its output into `log_fd` (or our own stdout/stderr when None), with
    /// `inherit` kept open in the child under their numbers.
    #[new]
    #[pyo3(signature = (argv, inherit, log_fd=None))]
    fn new(
        py: Python<'_>,
        argv: Vec<String>,
        inherit: Vec<RawFd>,
        log_fd: Option<RawFd>,
    ) -> PyResult<Self> {
        let log: Option<File> = log_fd.map(dup_fd).transpose()?.map(File::from);
        let process = py.allow_threads(|| {
            let output = match &log {
                Some(file) => Output::File(file),
                None => Output::Inherit,
            };
            ArgvProcess::spawn(&argv, &inherit, output)
        })?;
        let pid = process.pid();
        Ok(Process {
            inner: Mutex::new(process),
            pid,
        })
    }

    /// The process id.
    #[getter]
    fn pid(&self) -> u32 {
        self.pid
    }

    /// The return code if it has exited (reaping it), else None.
    fn poll(&self) -> PyResult<Option<i32>> {
        Ok(lock_unpoisoned(&self.inner).try_wait()?.map(returncode))
    }

    /// Waits at most `timeout` seconds for it to exit; the return code, or None on timeout.
    fn wait(&self, py: Python<'_>, timeout: f64) -> PyResult<Option<i32>> {
        let timeout = duration(timeout)?;
        let inner = &self.inner;
        sliced(py, timeout, |slice| {
            Ok(lock_unpoisoned(inner).wait_timeout(slice)?.map(returncode))
        })
    }

    /// Sends `signal` to its process group (nothing once reaped).
    fn send_signal(&self, signal: i32) -> PyResult<()> {
        let signal = nix::sys::signal::Signal::try_from(signal)
            .map_err(|e| PyValueError::new_err(format!("bad signal {signal}: {e}")))?;
        lock_unpoisoned(&self.inner).signal(signal);
        Ok(())
    }

    /// SIGKILL to its process group.
    fn kill(&self) {
        lock_unpoisoned(&self.inner).kill();
    }

    /// SIGTERM to its process group.
    fn terminate(&self) {
        lock_unpoisoned(&self.inner).terminate();
    }
}

/// A QMP session; see the module docs.
#[pyclass(module = "qemu.machine._engine")]
struct Qmp {
    client: qmp::Client,
    events: Mutex<Option<qmp::Subscription>>,
    greeting: String,
}

fn qmp_error(e: qmp::Error) -> PyErr {
    match e {
        qmp::Error::Timeout { .. } => PyTimeoutError::new_err(e.to_string()),
        qmp::Error::Disconnected { .. } => pyo3::exceptions::PyEOFError::new_err(e.to_string()),
        _ => PyRuntimeError::new_err(e.to_string()),
    }
}

#[pymethods]
impl Qmp {
    /// Takes a copy of `fd` (our connected end of the monitor socket), reads the greeting
    /// and negotiates capabilities, within `timeout` seconds. `name` names the session in
    /// logs.
    #[new]
    fn new(py: Python<'_>, fd: RawFd, timeout: f64, name: String) -> PyResult<Self> {
        let timeout = duration(timeout)?;
        let stream = UnixStream::from(dup_fd(fd)?);
        let builder = qmp::Client::builder()
            .name(name)
            .greeting_timeout(timeout)
            .connect_timeout(timeout)
            .command_timeout(Duration::from_secs(3600))
            .event_queue_capacity(EVENT_QUEUE)
            .subscribe_from_start(EventFilter::all());
        // The greeting wait is one call into the engine: it cannot be sliced, but is bounded
        // by `timeout`, and QEMU's exit ends it at once (end of stream).
        let client = py
            .allow_threads(|| block_on(builder.adopt_unix(stream)))?
            .map_err(qmp_error)?;
        let events = client.take_initial_subscription();
        let greeting = client
            .greeting()
            .and_then(|g| serde_json::to_string(g).ok())
            .unwrap_or_else(|| "{}".into());
        Ok(Qmp {
            client,
            events: Mutex::new(events),
            greeting,
        })
    }

    /// The greeting, as JSON.
    #[getter]
    fn greeting(&self) -> String {
        self.greeting.clone()
    }

    /// Sends command `name` with `arguments` (a JSON object, or None) and returns the whole
    /// response as JSON (`{"return": ...}` or `{"error": ...}`), waiting at most `timeout`
    /// seconds.
    #[pyo3(signature = (name, arguments, timeout))]
    fn execute(
        &self,
        py: Python<'_>,
        name: String,
        arguments: Option<String>,
        timeout: f64,
    ) -> PyResult<String> {
        let timeout = duration(timeout)?;
        let mut request = Request::new(name).timeout(timeout);
        if let Some(arguments) = arguments {
            let value: serde_json::Value = serde_json::from_str(&arguments)
                .map_err(|e| PyValueError::new_err(format!("bad arguments: {e}")))?;
            request = request.arguments(value);
        }
        let client = self.client.clone();
        let mut call = Box::pin(async move { client.send(request).await });
        let response = sliced(py, timeout + SLICE, |slice| {
            let call = &mut call;
            match block_on(async move { tokio::time::timeout(slice, call).await })? {
                Ok(result) => result.map(Some).map_err(qmp_error),
                Err(_) => Ok(None),
            }
        })?
        .ok_or_else(|| PyTimeoutError::new_err("no QMP reply in time"))?;
        Ok(response.to_json_without_id().to_string())
    }

    /// The next event as JSON: None at once when `timeout` is 0 and none is queued, else
    /// waits at most `timeout` seconds and raises TimeoutError.
    fn pull_event(&self, py: Python<'_>, timeout: f64) -> PyResult<Option<String>> {
        let timeout = duration(timeout)?;
        let events = &self.events;
        let next = |slice: Duration| -> PyResult<Option<String>> {
            let mut guard = lock_unpoisoned(events);
            let Some(subscription) = guard.as_mut() else {
                return Err(pyo3::exceptions::PyEOFError::new_err("no QMP session"));
            };
            if let Some(event) = subscription.try_recv() {
                return event
                    .map(|e| Some(e.to_json().to_string()))
                    .map_err(qmp_error);
            }
            if slice.is_zero() {
                return Ok(None);
            }
            match block_on(async { subscription.recv_timeout(slice).await })? {
                Ok(event) => Ok(Some(event.to_json().to_string())),
                Err(qmp::Error::Timeout { .. }) => Ok(None),
                Err(e) => Err(qmp_error(e)),
            }
        };
        if timeout.is_zero() {
            return next(Duration::ZERO);
        }
        match sliced(py, timeout, next)? {
            Some(event) => Ok(Some(event)),
            None => Err(PyTimeoutError::new_err("no QMP event in time")),
        }
    }

    /// Every event queued now, as JSON.
    fn drain_events(&self) -> Vec<String> {
        lock_unpoisoned(&self.events)
            .as_mut()
            .map(|s| s.drain().iter().map(|e| e.to_json().to_string()).collect())
            .unwrap_or_default()
    }

    /// Sends `fd` with SCM_RIGHTS.
    fn send_fd(&self, fd: RawFd) -> PyResult<()> {
        let owned = dup_fd(fd)?;
        self.client.send_fd(&owned).map_err(qmp_error)
    }

    /// True until the session ends.
    fn is_connected(&self) -> bool {
        self.client.is_connected()
    }

    /// Ends the session.
    fn close(&self) {
        self.client.close();
        lock_unpoisoned(&self.events).take();
    }
}

/// The serial console; see the module docs.
#[pyclass(module = "qemu.machine._engine")]
struct Console {
    console: qemu_machine::Console,
    /// Received but not yet handed to Python (recv takes at most what it is asked for).
    pending: Mutex<Vec<u8>>,
}

#[pymethods]
impl Console {
    /// Starts draining a copy of `fd` (our end of the console socket), also into the file
    /// `log_path` when given.
    #[new]
    #[pyo3(signature = (fd, log_path=None))]
    fn new(fd: RawFd, log_path: Option<String>) -> PyResult<Self> {
        let stream = UnixStream::from(dup_fd(fd)?);
        // 0600, never through a symlink, as every file the Rust engine writes.
        let log = log_path
            .map(|path| {
                qmp::fsutil::create_private_file(std::path::Path::new(&path))
                    .map_err(|e| PyOSError::new_err(format!("{path}: {e}")))
            })
            .transpose()?;
        let console = block_on(async move {
            qemu_machine::Console::start("console", stream, CONSOLE_BUFFER, log)
        })?
        .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        Ok(Console {
            console,
            pending: Mutex::new(Vec::new()),
        })
    }

    /// At most `size` bytes, waiting at most `timeout` seconds for the first (TimeoutError);
    /// empty at the end of the stream.
    fn recv<'py>(
        &self,
        py: Python<'py>,
        size: usize,
        timeout: f64,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let take = |pending: &mut Vec<u8>| -> Vec<u8> {
            let n = size.min(pending.len());
            pending.drain(..n).collect()
        };
        {
            let mut pending = lock_unpoisoned(&self.pending);
            if !pending.is_empty() || size == 0 {
                return Ok(PyBytes::new(py, &take(&mut pending)));
            }
        }
        let timeout = duration(timeout)?;
        let console = &self.console;
        let got = sliced(py, timeout, |slice| {
            match block_on(async { tokio::time::timeout(slice, console.read()).await })? {
                Ok(Ok(bytes)) => Ok(Some(bytes)),
                // Closed and all read: end of stream.
                Ok(Err(_)) => Ok(Some(Vec::new())),
                Err(_) => Ok(None),
            }
        })?;
        let Some(bytes) = got else {
            return Err(PyTimeoutError::new_err("no console output in time"));
        };
        let mut pending = lock_unpoisoned(&self.pending);
        pending.extend_from_slice(&bytes);
        Ok(PyBytes::new(py, &take(&mut pending)))
    }

    /// Writes all of `data` (bounded: 10 s for the guest to take it).
    fn sendall(&self, py: Python<'_>, data: Vec<u8>) -> PyResult<()> {
        let console = &self.console;
        py.allow_threads(|| {
            block_on(async { console.write(&data).await })?
                .map_err(|e| PyOSError::new_err(e.to_string()))
        })
    }

    /// Bytes queued for Python now, without waiting.
    fn pending(&self) -> usize {
        lock_unpoisoned(&self.pending).len()
    }
}

/// The module.
#[pymodule]
fn _engine(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Process>()?;
    m.add_class::<Qmp>()?;
    m.add_class::<Console>()?;
    m.add("SLICE_SECONDS", SLICE.as_secs_f64())?;
    Ok(())
}
