//! `qemu-machine run`: a VM on this terminal.

use std::io::Read;
use std::time::Duration;

use qemu_machine::{Accel, KeepRunDir, Machine};
use qmp::{EventFilter, Multiplexer};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::args::{seconds, AccelChoice, RunArgs};
use crate::failure::{exit_status_code, Failure, Outcome};
use crate::signals::{kill_child_groups, kill_group, Caught, Signals};
use crate::term::{status_line, with_spinner, RawMode};

/// Ctrl-]: the escape key, as in telnet and virsh console.
const ESCAPE: u8 = 0x1d;

/// Why the console loop of [`run`] ended.
enum Ending {
    /// Ctrl-] q, or stdin closed: we shut the VM down.
    Detached,
    /// The console closed: QEMU is exiting by itself.
    Exited,
    /// Our stdout is gone: we shut the VM down.
    OutputGone,
    /// A signal: we shut the VM down, and exit with 128 + its number.
    Signal(Caught),
}

/// Splits typed bytes into what goes to the guest, and whether the user asked to detach.
/// A lone Ctrl-] waits for the next key; Ctrl-] Ctrl-] sends one Ctrl-].
fn filter_input(bytes: &[u8], escape_pending: &mut bool) -> (Vec<u8>, bool) {
    let mut forward = Vec::with_capacity(bytes.len());
    for &byte in bytes {
        if *escape_pending {
            *escape_pending = false;
            match byte {
                b'q' | b'Q' => return (forward, true),
                ESCAPE => forward.push(ESCAPE),
                other => forward.extend([ESCAPE, other]),
            }
        } else if byte == ESCAPE {
            *escape_pending = true;
        } else {
            forward.push(byte);
        }
    }
    (forward, false)
}

/// The machine `run` asks for: the built-in guest, a kernel or an image, and the options.
fn builder(args: &RunArgs, timeout: Duration) -> qemu_machine::MachineBuilder {
    let mut builder = Machine::builder(&args.qemu.binary)
        .name("run")
        .launch_timeout(timeout);
    builder = match (&args.kernel, &args.image) {
        (Some(kernel), _) => {
            let mut builder = builder.machine_type("pc").console(None, 0).args([
                "-no-reboot",
                "-kernel",
                &kernel.display().to_string(),
            ]);
            if let Some(initrd) = &args.initrd {
                builder = builder.args(["-initrd", &initrd.display().to_string()]);
            }
            let append = args.append.as_deref().unwrap_or("console=ttyS0");
            builder.args(["-append", append])
        }
        (None, Some(image)) => builder.machine_type("pc").console(None, 0).args([
            "-drive".to_string(),
            format!("file={},if=ide,snapshot=on", qemu_opt_value(image)),
        ]),
        (None, None) => builder.builtin_guest(),
    };
    builder = builder.accel(match args.accel {
        AccelChoice::Auto => Accel::KvmOrTcg,
        AccelChoice::Tcg => Accel::Tcg,
        AccelChoice::Kvm => Accel::Kvm,
    });
    if let Some(memory) = &args.memory {
        builder = builder.args(["-m", memory]);
    }
    if let Some(log) = &args.console_log {
        builder = builder.console_log(log);
    }
    if args.keep_run_dir {
        builder = builder.keep_run_dir(KeepRunDir::Always);
    }
    builder.args(args.qemu_args.iter().cloned())
}

/// How many chunks of typed input may wait for the guest before more is dropped.
const INPUT_QUEUE: usize = 64;
/// At most one "input dropped" status line per this long.
const DROP_NOTICE_EVERY: Duration = Duration::from_secs(2);

/// How the console output ended.
enum OutputEnd {
    /// The console closed: QEMU is exiting.
    ConsoleClosed,
    /// Our stdout is gone (EPIPE, EIO): nobody sees the console any more.
    OutputGone,
}

/// `path` as one value of a QEMU option list (`-drive file=...`): QEMU's rule doubles each
/// comma, so a comma in a file name cannot start another option.
pub(crate) fn qemu_opt_value(path: &std::path::Path) -> String {
    path.display().to_string().replace(',', ",,")
}

/// Makes sure `--qmp PATH` can be bound, before QEMU is launched: nothing there is fine; a
/// socket nobody listens on (connect() is refused) is stale and removed; a socket somebody
/// listens on, or anything that is not a socket, is refused. Symlinks are never followed.
pub(crate) fn claim_socket_path(path: &std::path::Path) -> Result<(), Failure> {
    use std::os::unix::fs::FileTypeExt;
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(Failure::new(format!(
                "cannot check {}: {e}",
                path.display()
            )))
        }
    };
    if !metadata.file_type().is_socket() {
        return Err(Failure::new(format!(
            "--qmp {}: exists and is not a socket; not replacing it",
            path.display()
        )));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(Failure::new(format!(
            "--qmp {}: the socket is in use by a listening process",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path).map_err(|e| {
                Failure::new(format!(
                    "cannot remove the stale socket {}: {e}",
                    path.display()
                ))
            })?;
            status_line(&format!(
                "qemu-machine: removed the stale socket {} (nobody was listening)",
                path.display()
            ));
            Ok(())
        }
        Err(e) => Err(Failure::new(format!(
            "--qmp {}: cannot tell whether the socket is in use: {e}",
            path.display()
        ))),
    }
}

/// What `run` needs of a launched VM: its QMP client, the `--qmp` multiplexer, the console.
fn attach(
    vm: &Machine,
    args: &RunArgs,
) -> Result<(qmp::Client, Option<Multiplexer>, qemu_machine::Console), Failure> {
    let client = vm
        .qmp_client()
        .ok_or_else(|| Failure::new("the VM has no QMP monitor"))?;
    let mux = match &args.qmp {
        Some(path) => Some(Multiplexer::serve(client.clone(), path)?),
        None => None,
    };
    let console = vm.console()?;
    Ok((client, mux, console))
}

/// `qemu-machine run`: boots the VM, connects this terminal to its serial console until the
/// user detaches or QEMU exits, and exits with QEMU's status.
///
/// SIGTERM, SIGHUP, SIGINT and SIGQUIT shut the VM down as a detach does (a second one
/// kills it), or abort the launch; then the terminal is restored, the `--qmp` socket and
/// the run dir are removed, and the status is 128 + the signal's number.
pub(crate) async fn run(args: RunArgs) -> Outcome {
    let timeout = seconds(args.timeout, "--timeout")?;
    let mut signals = Signals::listen()
        .map_err(|e| Failure::new(format!("cannot install signal handlers: {e}")))?;
    if let Some(path) = &args.qmp {
        claim_socket_path(path)?;
    }
    let mut vm = Machine::new(builder(&args, timeout));
    let (launched, aborted) = with_spinner("starting QEMU", async {
        let launch = vm.launch();
        tokio::pin!(launch);
        let mut aborted: Option<Caught> = None;
        loop {
            tokio::select! {
                result = &mut launch => break (result, aborted),
                caught = signals.recv(), if aborted.is_none() => {
                    aborted = Some(caught);
                    kill_child_groups();
                }
                // QEMU may not be spawned yet when the signal comes: keep at it.
                _ = tokio::time::sleep(Duration::from_millis(20)), if aborted.is_some() => {
                    kill_child_groups();
                }
            }
        }
    })
    .await;
    if let Some(caught) = aborted {
        let _ = vm.kill().await;
        status_line(&format!("qemu-machine: {}: launch aborted", caught.name()));
        return Ok(caught.exit_status());
    }
    launched?;
    let (client, mux, console) = match attach(&vm, &args) {
        Ok(attached) => attached,
        Err(failure) => {
            // Nothing half-done stays: QEMU goes, and with it the run dir.
            let _ = vm.kill().await;
            return Err(failure);
        }
    };
    let pid = vm.pid();
    status_line(&format!(
        "qemu-machine: VM running (pid {}){}; Ctrl-] then q detaches and shuts it down",
        pid.unwrap_or(0),
        args.qmp
            .as_ref()
            .map(|p| format!(", QMP at {}", p.display()))
            .unwrap_or_default(),
    ));
    let raw = RawMode::enter();

    let mut events = client.subscribe(EventFilter::all());
    let event_printer = tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            status_line(&event.to_string());
        }
    });
    let output = console.clone();
    let mut console_output = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Ok(bytes) = output.read().await {
            if stdout.write_all(&bytes).await.is_err() || stdout.flush().await.is_err() {
                return OutputEnd::OutputGone;
            }
        }
        OutputEnd::ConsoleClosed
    });
    let (typed, mut input) = mpsc::channel::<Vec<u8>>(16);
    // Blocking reads of stdin on a thread of their own; it ends with the process.
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        loop {
            match std::io::stdin().lock().read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if typed.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    // Input goes to the guest through a bounded queue and a writer of its own, so a guest
    // that stops reading can never hold up the escape key: when the queue is full, input
    // is dropped (and said so).
    let (to_guest, mut guest_input) = mpsc::channel::<Vec<u8>>(INPUT_QUEUE);
    let writer_console = console.clone();
    let writer = tokio::spawn(async move {
        while let Some(bytes) = guest_input.recv().await {
            if let Err(e) = writer_console.write(&bytes).await {
                status_line(&format!("qemu-machine: {e}"));
            }
        }
    });

    let mut escape_pending = false;
    let mut dropped = 0usize;
    let mut last_notice: Option<std::time::Instant> = None;
    let ending = loop {
        tokio::select! {
            bytes = input.recv() => {
                let Some(bytes) = bytes else { break Ending::Detached };
                let (forward, detach) = filter_input(&bytes, &mut escape_pending);
                if !forward.is_empty() {
                    if let Err(mpsc::error::TrySendError::Full(lost)) = to_guest.try_send(forward) {
                        dropped += lost.len();
                        if last_notice.is_none_or(|t| t.elapsed() >= DROP_NOTICE_EVERY) {
                            last_notice = Some(std::time::Instant::now());
                            status_line(&format!(
                                "qemu-machine: guest is not reading its console; {dropped} bytes of input dropped"
                            ));
                        }
                    }
                }
                if detach {
                    break Ending::Detached;
                }
            }
            end = &mut console_output => break match end {
                Ok(OutputEnd::OutputGone) => Ending::OutputGone,
                _ => Ending::Exited,
            },
            caught = signals.recv() => break Ending::Signal(caught),
        }
    };
    writer.abort();
    if let Ending::Signal(caught) = ending {
        status_line(&format!(
            "qemu-machine: {}: shutting the VM down (again to kill it)",
            caught.name()
        ));
    }
    let mut escalated: Option<Caught> = None;
    let result = {
        let work = async {
            match ending {
                Ending::Exited => vm.wait(timeout).await,
                _ => vm.shutdown_timeout(timeout).await,
            }
        };
        tokio::pin!(work);
        loop {
            tokio::select! {
                result = &mut work => break result,
                caught = signals.recv(), if escalated.is_none() => {
                    status_line(&format!("qemu-machine: {}: killing QEMU", caught.name()));
                    escalated = Some(caught);
                    if let Some(pid) = pid {
                        kill_group(pid);
                    }
                }
            }
        }
    };
    event_printer.abort();
    drop(raw);
    // The socket file goes with the multiplexer.
    drop(mux);
    match result {
        // The SIGKILL we sent is reported as unexpected by the library: it was asked for.
        Err(_) if escalated.is_some() => {}
        other => other?,
    }
    let status = vm.exit_status();
    status_line(&format!(
        "qemu-machine: QEMU exited ({})",
        status.map_or("unknown status".into(), |s| s.to_string())
    ));
    if let Some(kept) = vm.kept_run_dir() {
        status_line(&format!("qemu-machine: run dir kept at {}", kept.display()));
    }
    if let Some(caught) = escalated.or(match ending {
        Ending::Signal(caught) => Some(caught),
        _ => None,
    }) {
        return Ok(caught.exit_status());
    }
    Ok(status.map_or(1, |status| {
        exit_status_code(
            status.code(),
            std::os::unix::process::ExitStatusExt::signal(&status),
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commas_in_paths_are_doubled() {
        assert_eq!(
            qemu_opt_value(std::path::Path::new("/a,b/c,,d.img")),
            "/a,,b/c,,,,d.img"
        );
        assert_eq!(qemu_opt_value(std::path::Path::new("/plain")), "/plain");
    }

    #[test]
    fn escape_sequences() {
        let mut pending = false;
        assert_eq!(filter_input(b"ab", &mut pending), (b"ab".to_vec(), false));
        assert_eq!(filter_input(b"x\x1d", &mut pending), (b"x".to_vec(), false));
        assert!(pending);
        assert_eq!(filter_input(b"q", &mut pending), (vec![], true));
        let mut pending = false;
        assert_eq!(
            filter_input(b"\x1d\x1dz", &mut pending),
            (b"\x1dz".to_vec(), false)
        );
        assert_eq!(
            filter_input(b"\x1dx\x03", &mut pending),
            (b"\x1dx\x03".to_vec(), false)
        );
    }
}
