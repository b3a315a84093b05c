//! Driving a command-line program as its user would, for tests: under a pseudo-terminal
//! ([`OnPty`]), through pipes ([`output_with_input`]), against a bare QEMU that serves QMP
//! on a UNIX socket ([`Qemu`]). Every child is held by a [`KillOnDrop`] from the moment it
//! is spawned, so a test that fails half-way leaves no process behind.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{qemu, KillOnDrop};

/// How long the helpers here wait (for output, an exit, a socket) before failing the test.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `command` with `stdin` as its standard input and collects its status, stdout and
/// stderr, as [`Command::output`] does; the child is killed if the test panics meanwhile.
pub fn output_with_input(command: &mut Command, stdin: &[u8]) -> Output {
    let mut child = KillOnDrop(
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    wait_with_output(&mut child)
}

/// [`Child::wait_with_output`] for a child behind a guard: closes its stdin, reads what is
/// left of its stdout and stderr (the pipes it still has) to their ends, and waits.
pub fn wait_with_output(child: &mut Child) -> Output {
    drop(child.stdin.take());
    let stderr = child.stderr.take().map(|mut pipe| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            pipe.read_to_end(&mut bytes).unwrap();
            bytes
        })
    });
    let mut stdout = Vec::new();
    if let Some(mut pipe) = child.stdout.take() {
        pipe.read_to_end(&mut stdout).unwrap();
    }
    let stderr = stderr
        .map(|reader| reader.join().unwrap())
        .unwrap_or_default();
    let status = child.wait().unwrap();
    Output {
        status,
        stdout,
        stderr,
    }
}

/// A child process on a pseudo-terminal (stdin, stdout and stderr), with what it prints
/// collected as it comes by a reader thread. Dropping it kills and reaps the child.
pub struct OnPty {
    child: KillOnDrop,
    master: File,
    seen: Arc<Mutex<Vec<u8>>>,
    reader: Option<JoinHandle<()>>,
}

impl OnPty {
    /// Spawns `command` on a new pseudo-terminal.
    pub fn spawn(command: &mut Command) -> OnPty {
        let pty = nix::pty::openpty(None, None).unwrap();
        let slave = pty.slave;
        command
            .stdin(slave.as_fd().try_clone_to_owned().unwrap())
            .stdout(slave.as_fd().try_clone_to_owned().unwrap())
            .stderr(slave.as_fd().try_clone_to_owned().unwrap());
        let child = KillOnDrop(command.spawn().unwrap());
        // Only the child holds the slave now: the reader sees the end when the child is gone.
        drop(slave);
        let master = File::from(pty.master);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().unwrap();
        let sink = seen.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        OnPty {
            child,
            master,
            seen,
            reader: Some(reader),
        }
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The terminal's current settings (the child's side: a pty master reports its
    /// slave's), e.g. to check that raw mode was undone.
    pub fn termios(&self) -> nix::sys::termios::Termios {
        nix::sys::termios::tcgetattr(self.master.as_fd()).unwrap()
    }

    /// Waits (up to `timeout`) for the child to exit; `None` if it is still running then.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.drain(Instant::now() + TIMEOUT);
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Everything the child printed so far.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }

    /// Waits until the child has printed `pattern` at least `times` times, and returns all
    /// it printed; fails the test after [`TIMEOUT`].
    pub fn expect(&self, pattern: &str, times: usize) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let output = self.output();
            if output.matches(pattern).count() >= times {
                return output;
            }
            assert!(
                Instant::now() < deadline,
                "no {pattern:?} x{times} in {output:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Another handle on the terminal's input side, for typing from another thread (e.g.
    /// when the typing may block because the child stops reading).
    pub fn keyboard(&self) -> File {
        self.master.try_clone().unwrap()
    }

    /// Types `bytes` on the terminal.
    pub fn send(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).unwrap();
    }

    /// Waits for the child to exit (failing the test after [`TIMEOUT`]), then for the end of
    /// the terminal, so that [`OnPty::output`] has all it printed.
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.drain(deadline);
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running: {}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the reader to see the end of the pty (every writer gone), so that all the
    /// child printed before it exited is in `seen`.
    fn drain(&mut self, deadline: Instant) {
        while self.reader.as_ref().is_some_and(|r| !r.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if self.reader.as_ref().is_some_and(|r| r.is_finished()) {
            let _ = self.reader.take().map(|r| r.join());
        }
    }
}

/// A child process with its stdin a pipe that stays open (until [`Piped::close_stdin`]) and
/// its stdout and stderr collected as they come, each on its own and both together in
/// order of arrival. Dropping it kills and reaps the child.
pub struct Piped {
    child: KillOnDrop,
    stdin: Option<std::process::ChildStdin>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    both: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Piped {
    /// Spawns `command` with piped stdin, stdout and stderr.
    pub fn spawn(command: &mut Command) -> Piped {
        let mut child = KillOnDrop(
            command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let stdin = child.stdin.take();
        let both = Arc::new(Mutex::new(Vec::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        let pipes: [(Box<dyn Read + Send>, _); 2] = [
            (Box::new(child.stdout.take().unwrap()), stdout.clone()),
            (Box::new(child.stderr.take().unwrap()), stderr.clone()),
        ];
        for (mut pipe, own) in pipes {
            let both = both.clone();
            readers.push(std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    own.lock().unwrap().extend_from_slice(&buf[..n]);
                    both.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            }));
        }
        Piped {
            child,
            stdin,
            stdout,
            stderr,
            both,
            readers,
        }
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Everything the child printed so far, stdout and stderr together.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.both.lock().unwrap()).into_owned()
    }

    /// Its stdout so far.
    pub fn stdout(&self) -> Vec<u8> {
        self.stdout.lock().unwrap().clone()
    }

    /// Its stderr so far.
    pub fn stderr(&self) -> Vec<u8> {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until the child has printed `pattern` (on stdout or stderr) and returns all it
    /// printed; fails the test after [`TIMEOUT`].
    pub fn expect(&self, pattern: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let output = self.output();
            if output.contains(pattern) {
                return output;
            }
            assert!(Instant::now() < deadline, "no {pattern:?} in {output:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Writes `bytes` to its stdin.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stdin.as_mut().unwrap().write_all(bytes).unwrap();
    }

    /// Closes its stdin.
    pub fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }

    /// Waits (up to `timeout`) for the child to exit, then for the ends of its pipes;
    /// `None` if it is still running then.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let drained = Instant::now() + TIMEOUT;
                while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < drained {
                    std::thread::sleep(Duration::from_millis(5));
                }
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The names in directory `dir` (empty if it is gone), to check that nothing was left.
pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The process id in the first `(pid N)` of `output`, as `qemu-machine run` prints it.
pub fn pid_in(output: &str) -> u32 {
    let start = output.find("(pid ").expect("pid line") + 5;
    output[start..].split(')').next().unwrap().parse().unwrap()
}

/// Fails the test unless process `pid` is gone (or a zombie) within [`TIMEOUT`].
pub fn assert_gone(pid: u32) {
    let deadline = Instant::now() + TIMEOUT;
    while Path::new(&format!("/proc/{pid}")).exists() {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.contains(") Z") {
            break;
        }
        assert!(Instant::now() < deadline, "QEMU {pid} is still running");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A bare QEMU ([`qemu()`], no display, no default devices) serving QMP on a UNIX socket in
/// a directory of its own, for tools to connect to. Dropping it kills QEMU and removes the
/// directory.
pub struct Qemu {
    // Declared first so that QEMU is gone before its directory is removed.
    _child: KillOnDrop,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Qemu {
    /// Starts QEMU with `args` added, and waits (up to [`TIMEOUT`]) until its QMP socket
    /// accepts connections.
    pub fn start(args: &[&str]) -> Qemu {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("qmp.sock");
        let mut child = KillOnDrop(
            Command::new(qemu())
                .args(["-display", "none", "-nodefaults"])
                .args(args)
                .arg("-qmp")
                .arg(format!("unix:{},server=on,wait=off", socket.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + TIMEOUT;
        while UnixStream::connect(&socket).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("QEMU exited ({status}) before making its QMP socket: {args:?}");
            }
            assert!(Instant::now() < deadline, "QEMU made no QMP socket");
            std::thread::sleep(Duration::from_millis(10));
        }
        Qemu {
            _child: child,
            socket,
            _dir: dir,
        }
    }

    /// QEMU's process id.
    pub fn id(&self) -> u32 {
        self._child.id()
    }

    /// The QMP socket's path, as a command-line argument.
    pub fn address(&self) -> &str {
        self.socket.to_str().unwrap()
    }
}
