//! `qemu-machine run`: a VM on this terminal.

use std::io::Read;
use std::time::Duration;

use qemu_machine::{Accel, KeepRunDir, Machine};
use qmp::{EventFilter, Multiplexer};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::args::{seconds, AccelChoice, RunArgs};
use crate::failure::{exit_status_code, Failure, Outcome};
use crate::term::{status_line, with_spinner, RawMode};

/// Ctrl-]: the escape key, as in telnet and virsh console.
const ESCAPE: u8 = 0x1d;

/// Why the console loop of [`run`] ended.
enum Ending {
    /// Ctrl-] q, or stdin closed: we shut the VM down.
    Detached,
    /// The console closed: QEMU is exiting by itself.
    Exited,
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
            format!("file={},if=ide,snapshot=on", image.display()),
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

/// `qemu-machine run`: boots the VM, connects this terminal to its serial console until the
/// user detaches or QEMU exits, and exits with QEMU's status.
pub(crate) async fn run(args: RunArgs) -> Outcome {
    let timeout = seconds(args.timeout, "--timeout")?;
    let mut vm = Machine::new(builder(&args, timeout));
    with_spinner("starting QEMU", vm.launch()).await?;
    let client = vm
        .qmp_client()
        .ok_or_else(|| Failure::new("the VM has no QMP monitor"))?;
    let _mux = match &args.qmp {
        Some(path) => Some(Multiplexer::serve(client.clone(), path)?),
        None => None,
    };
    let console = vm.console()?;
    status_line(&format!(
        "qemu-machine: VM running (pid {}){}; Ctrl-] then q detaches and shuts it down",
        vm.pid().unwrap_or(0),
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
                break;
            }
        }
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

    let mut escape_pending = false;
    let ending = loop {
        tokio::select! {
            bytes = input.recv() => {
                let Some(bytes) = bytes else { break Ending::Detached };
                let (forward, detach) = filter_input(&bytes, &mut escape_pending);
                if !forward.is_empty() {
                    // A guest that stopped reading must not stop us from detaching.
                    if let Err(e) = console.write(&forward).await {
                        status_line(&format!("qemu-machine: {e}"));
                    }
                }
                if detach {
                    break Ending::Detached;
                }
            }
            _ = &mut console_output => break Ending::Exited,
        }
    };
    let result = match ending {
        Ending::Detached => vm.shutdown_timeout(timeout).await,
        Ending::Exited => vm.wait(timeout).await,
    };
    event_printer.abort();
    drop(raw);
    result?;
    let status = vm.exit_status();
    status_line(&format!(
        "qemu-machine: QEMU exited ({})",
        status.map_or("unknown status".into(), |s| s.to_string())
    ));
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
