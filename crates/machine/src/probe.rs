//! What a QEMU binary can do: its version, accelerators, machine types and device types,
//! asked once per binary and cached.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use std::io;

use nix::sys::signal::Signal;
use tokio::io::AsyncReadExt;

use crate::accel::kvm_really_usable;
use crate::error::{Error, ErrorKind, Result};
use crate::spawn::{signal_group, spawn_command, ChildIo, Program};

/// Deadline for one `qemu -X help` run.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);
/// The most a probe reads of each of stdout and stderr.
const MAX_PROBE_OUTPUT: usize = 4 * 1024 * 1024;
/// How long to wait for a killed probe to be reaped.
const REAP_GRACE: Duration = Duration::from_secs(5);

/// The capabilities of one QEMU binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The binary asked.
    pub binary: String,
    /// `(major, minor, micro)` from `--version`.
    pub version: (u32, u32, u32),
    /// The whole first line of `--version`.
    pub version_text: String,
    /// From `-accel help`, e.g. `tcg`, `kvm` (Debian's 7.2 has no `qtest`).
    pub accelerators: BTreeSet<String>,
    /// From `-machine help`, aliases included (`pc`, `q35`, `pc-i440fx-7.2`, ...).
    pub machines: BTreeSet<String>,
    /// From `-device help`.
    pub devices: BTreeSet<String>,
}

impl Probe {
    /// Asks `binary` (once per process; later calls return the cached answer).
    ///
    /// ```no_run
    /// # async fn f() -> qemu_machine::Result<()> {
    /// use qemu_machine::Probe;
    ///
    /// let probe = Probe::of("qemu-system-x86_64").await?;
    /// println!("QEMU {:?}", probe.version);
    /// if !probe.has_device("virtio-net-pci") {
    ///     return Ok(()); // skip
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Timeout`] when `binary` does not answer in time (20 s per query),
    /// [`ErrorKind::Io`] when it cannot be run, [`ErrorKind::Probe`] when a query fails, its
    /// answer makes no sense, or it prints more than 4 MiB on stdout or stderr. Each query
    /// runs in a process group of its own that is killed on any failure (or when this
    /// future is dropped), and that dies with this process.
    pub async fn of(binary: &str) -> Result<Arc<Probe>> {
        static CACHE: OnceLock<Mutex<HashMap<String, Arc<Probe>>>> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        if let Some(probe) = qmp::sync::lock_unpoisoned(cache).get(binary) {
            return Ok(probe.clone());
        }
        let (version, accelerators, machines, devices) = tokio::try_join!(
            ask(binary, &["--version"]),
            ask(binary, &["-accel", "help"]),
            ask(binary, &["-machine", "help"]),
            ask(binary, &["-device", "help"]),
        )?;
        let version_text = version.lines().next().unwrap_or_default().to_string();
        let probe = Arc::new(Probe {
            binary: binary.to_string(),
            version: parse_version(&version_text).ok_or_else(|| {
                Error::from(ErrorKind::Probe {
                    binary: binary.to_string(),
                    message: format!("--version said {version_text:?}"),
                })
            })?,
            version_text,
            accelerators: parse_accelerators(&accelerators),
            machines: parse_machines(&machines),
            devices: parse_devices(&devices),
        });
        qmp::sync::lock_unpoisoned(cache).insert(binary.to_string(), probe.clone());
        Ok(probe)
    }

    /// The binary lists TCG.
    pub fn tcg_available(&self) -> bool {
        self.accelerators.contains("tcg")
    }

    /// The binary lists KVM *and* KVM really works on this host (not kvm-pvm, `/dev/kvm`
    /// read-write).
    pub fn kvm_usable(&self) -> bool {
        self.accelerators.contains("kvm") && kvm_really_usable()
    }

    /// The binary has the qtest accelerator (needed for `clock_step`/`clock_set`).
    pub fn qtest_accel(&self) -> bool {
        self.accelerators.contains("qtest")
    }

    /// The machine type exists.
    pub fn has_machine(&self, name: &str) -> bool {
        self.machines.contains(name)
    }

    /// The device type exists.
    pub fn has_device(&self, name: &str) -> bool {
        self.devices.contains(name)
    }
}

/// A pipe: our read end (non-blocking, for the runtime) and the child's write end.
fn pipe() -> io::Result<(tokio::net::unix::pipe::Receiver, std::os::fd::OwnedFd)> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let read = tokio::net::unix::pipe::Receiver::from_owned_fd(read)?;
    Ok((read, write))
}

/// Kills a probe's process group unless disarmed: a probe whose future is dropped, or
/// that failed, leaves nothing behind.
struct GroupGuard(u32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.0 != 0 {
            signal_group(self.0, Signal::SIGKILL);
        }
    }
}

/// A probe printed more than `MAX_PROBE_OUTPUT` bytes on a stream.
#[derive(Debug, thiserror::Error)]
#[error("too much output")]
struct TooMuchOutput;

/// Reads `stream` to its end, failing past `MAX_PROBE_OUTPUT` bytes.
async fn read_capped(stream: Option<impl tokio::io::AsyncRead + Unpin>) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    if let Some(stream) = stream {
        stream
            .take(MAX_PROBE_OUTPUT as u64 + 1)
            .read_to_end(&mut bytes)
            .await?;
    }
    if bytes.len() > MAX_PROBE_OUTPUT {
        return Err(io::Error::other(TooMuchOutput));
    }
    Ok(bytes)
}

async fn ask(binary: &str, args: &[&str]) -> Result<String> {
    let mut argv = vec![binary];
    argv.extend_from_slice(args);
    if args[0] != "--version" {
        argv.extend(["-nodefaults", "-display", "none"]);
    }
    let what = format!("{binary} {}", args.join(" "));
    let io_error = |e| Error::io(format!("running `{what}`"), e);
    let (stdout, stdout_end) = pipe().map_err(io_error)?;
    let (stderr, stderr_end) = pipe().map_err(io_error)?;
    let program = Program::new(argv)
        .stdout(ChildIo::Fd(stdout_end))
        .stderr(ChildIo::Fd(stderr_end));
    // Through the spawner: its own process group, and it dies with us.
    let contained = spawn_command(program, Vec::new(), Vec::new())
        .await
        .map_err(io_error)?;
    let mut child = contained.child;
    // Dropped on every return: the watchdog then kills whatever is left.
    let _link = contained.link;
    let mut guard = GroupGuard(contained.pid);
    let (stdout, stderr) = (Some(stdout), Some(stderr));
    let run = async {
        let (stdout, stderr) = tokio::try_join!(read_capped(stdout), read_capped(stderr))?;
        let status = child.wait().await?;
        Ok::<_, io::Error>((status, stdout, stderr))
    };
    let outcome = tokio::time::timeout(PROBE_TIMEOUT, run).await;
    let failed = |message: String| {
        Error::from(ErrorKind::Probe {
            binary: binary.to_string(),
            message,
        })
    };
    let (status, stdout, stderr) = match outcome {
        Ok(Ok(output)) => output,
        Err(_) => {
            drop(guard);
            let _ = tokio::time::timeout(REAP_GRACE, child.wait()).await;
            return Err(Error::new(
                binary.to_string(),
                ErrorKind::Timeout {
                    awaited: format!("`{what}` to answer"),
                    after: PROBE_TIMEOUT,
                    seen: "no answer".into(),
                },
            ));
        }
        Ok(Err(e)) => {
            drop(guard);
            let _ = tokio::time::timeout(REAP_GRACE, child.wait()).await;
            let too_much = e.get_ref().is_some_and(|e| e.is::<TooMuchOutput>());
            return Err(if too_much {
                failed(format!(
                    "`{what}` printed more than {} MiB; is {binary} a QEMU binary?",
                    MAX_PROBE_OUTPUT >> 20
                ))
            } else {
                Error::io(format!("running `{what}`"), e)
            });
        }
    };
    // The watchdog exited: it killed and reaped everything first, and the pid may be reused.
    guard.0 = 0;
    drop(guard);
    if !status.success() {
        return Err(failed(format!(
            "`{what}` failed ({status}): {}",
            crate::output::sanitize(String::from_utf8_lossy(&stderr).trim())
        )));
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

fn parse_version(line: &str) -> Option<(u32, u32, u32)> {
    let version = line
        .split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
    let mut parts = version.split('.').map(|p| {
        p.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or(0)
    });
    Some((
        parts.next()?,
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    ))
}

/// `Accelerators supported in QEMU binary:` then one name per line.
fn parse_accelerators(text: &str) -> BTreeSet<String> {
    text.lines()
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// `Supported machines are:` then `name   description`, with `alias ... (alias of x)`.
fn parse_machines(text: &str) -> BTreeSet<String> {
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

/// `name "virtio-blk-pci", bus PCI, ...` lines under category headers.
fn parse_devices(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("name \""))
        .filter_map(|l| l.split('"').next())
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_help_texts() {
        assert_eq!(
            parse_version("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"),
            Some((7, 2, 22))
        );
        assert_eq!(
            parse_version("QEMU emulator version 10.0.2"),
            Some((10, 0, 2))
        );
        let accels = parse_accelerators("Accelerators supported in QEMU binary:\ntcg\nkvm\n");
        assert_eq!(accels.into_iter().collect::<Vec<_>>(), ["kvm", "tcg"]);
        let machines = parse_machines(
            "Supported machines are:\npc                   Standard PC (alias of pc-i440fx-7.2)\nnone                 empty machine\n",
        );
        assert!(machines.contains("pc") && machines.contains("none"));
        let devices = parse_devices(
            "Storage devices:\nname \"virtio-blk-pci\", bus PCI, alias \"virtio-blk\"\nname \"ide-hd\", bus IDE\n",
        );
        assert!(devices.contains("virtio-blk-pci") && devices.contains("ide-hd"));
    }
}
