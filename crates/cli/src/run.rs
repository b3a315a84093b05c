//! `qemu-machine run`: a VM on this terminal.

use std::io::Read;
use std::time::Duration;

use qemu_machine::snapshot_cache::{SnapshotCache, Warm};
use qemu_machine::{Accel, KeepRunDir, Machine};
use qmp::{EventFilter, Multiplexer, Request};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::args::{AccelChoice, RunArgs};
use crate::config::RunOptions;
use crate::failure::{exit_status_code, Failure, Outcome};
use crate::signals::{kill_child_groups, kill_group, Caught, Signals};
use crate::term::{clear_spinner, console_wrote, start_spinner, status, with_spinner, RawMode};

/// Ctrl-]: the escape key, as in telnet and virsh console.
const ESCAPE: u8 = 0x1d;

/// How the VM is brought down at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// `system_powerdown`, up to `--shutdown-timeout` for the guest to power off, then
    /// `quit`, up to `--timeout` for QEMU to exit, then SIGKILL.
    Graceful,
    /// `quit`, up to `--timeout` for QEMU to exit, then SIGKILL.
    Immediate,
}

/// Why the console loop of [`run`] ended.
enum Ending {
    /// Ctrl-] q (graceful) or k (immediate), or stdin closed (graceful).
    Detached(Stop),
    /// The console closed: QEMU is exiting by itself.
    Exited,
    /// Our stdout is gone: nobody sees the console any more; a graceful stop.
    OutputGone,
    /// A signal: a graceful stop, and exit with 128 + its number.
    Signal(Caught),
}

/// Splits typed bytes into what goes to the guest, and whether the user asked to detach
/// (Ctrl-] q: gracefully; Ctrl-] k: at once). A lone Ctrl-] waits for the next key;
/// Ctrl-] Ctrl-] sends one Ctrl-].
fn filter_input(bytes: &[u8], escape_pending: &mut bool) -> (Vec<u8>, Option<Stop>) {
    let mut forward = Vec::with_capacity(bytes.len());
    for &byte in bytes {
        if *escape_pending {
            *escape_pending = false;
            match byte {
                b'q' | b'Q' => return (forward, Some(Stop::Graceful)),
                b'k' | b'K' => return (forward, Some(Stop::Immediate)),
                ESCAPE => forward.push(ESCAPE),
                other => forward.extend([ESCAPE, other]),
            }
        } else if byte == ESCAPE {
            *escape_pending = true;
        } else {
            forward.push(byte);
        }
    }
    (forward, None)
}

/// The library's accelerator for a choice.
fn accel(choice: AccelChoice) -> Accel {
    match choice {
        AccelChoice::Auto => Accel::KvmOrTcg,
        AccelChoice::Tcg => Accel::Tcg,
        AccelChoice::Kvm => Accel::Kvm,
    }
}

/// The machine `run` asks for: the built-in guest, a kernel or an image, and the options.
fn builder(options: &RunOptions) -> qemu_machine::MachineBuilder {
    let mut builder = Machine::builder(&options.binary)
        .name("run")
        .launch_timeout(options.timeout);
    builder = match (&options.kernel, &options.image) {
        (Some(kernel), _) => {
            let mut builder = builder.machine_type("pc").console(None, 0).args([
                "-no-reboot",
                "-kernel",
                &kernel.display().to_string(),
            ]);
            if let Some(initrd) = &options.initrd {
                builder = builder.args(["-initrd", &initrd.display().to_string()]);
            }
            let append = options.append.as_deref().unwrap_or("console=ttyS0");
            builder.args(["-append", append])
        }
        (None, Some(image)) => builder.machine_type("pc").console(None, 0).args([
            "-drive".to_string(),
            format!("file={},if=ide,snapshot=on", qemu_opt_value(image)),
        ]),
        (None, None) => builder.builtin_guest(),
    };
    builder = options.devices.apply(builder.accel(accel(options.accel)));
    if options.ga.is_some() {
        builder = builder.guest_agent();
    }
    if let Some(memory) = &options.memory {
        builder = match memory_mib(memory) {
            Some(mib) => builder.memory_mib(mib),
            // QEMU's other forms (`size=...,maxmem=...`) go to it as they are.
            None => builder.args(["-m", memory]),
        };
    }
    if let Some(log) = &options.console_log {
        builder = builder.console_log(log);
    }
    if options.keep_run_dir {
        builder = builder.keep_run_dir(KeepRunDir::Always);
    }
    builder.args(options.qemu_args.iter().cloned())
}

/// `-m`'s plain sizes in MiB, as QEMU reads them: a number of MiB, or one with an `M`, `G`
/// or `T` suffix (the typed memory is what shared-memory devices such as virtiofs size by).
fn memory_mib(text: &str) -> Option<u64> {
    let (digits, scale) = match text.char_indices().last()? {
        (i, 'M' | 'm') => (&text[..i], 1),
        (i, 'G' | 'g') => (&text[..i], 1024),
        (i, 'T' | 't') => (&text[..i], 1024 * 1024),
        _ => (text, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(scale)
}

/// The QEMU command line `run` would start, as lines of shell: comments saying what
/// differs from the real launch, then the command, shell-quoted.
///
/// The library launches QEMU with its QMP monitor and serial console on socketpairs
/// (`-chardev socket,fd=N`), which nobody can hand over by hand, and it has no way to render
/// its command line without launching. So the generated part is rendered here, following
/// the library's layout (binary, `-display none -vga none`, monitor, `-machine`, `-accel`,
/// console, then the extra arguments), with the console and QEMU's own monitor on stdio
/// instead. For the built-in guest, whose disk image qemu-machine writes at launch, the
/// script first writes it (`printf` of its boot sector, then `truncate` to its size) as
/// `builtin-guest.img` in the current directory.
fn dry_run_script(options: &RunOptions) -> Result<String, Failure> {
    let builtin = options.kernel.is_none() && options.image.is_none();
    let builder = builder(options);
    let mut argv = vec![builder.binary().to_string()];
    argv.extend(["-display", "none", "-vga", "none"].map(String::from));
    argv.extend(["-machine", "pc", "-accel"].map(String::from));
    argv.push(accel(options.accel).resolve().as_arg().to_string());
    argv.extend(["-serial", "mon:stdio"].map(String::from));
    argv.extend(builder.device_args());
    if builtin {
        argv.extend(qemu_machine::guest::drive_args(std::path::Path::new(
            BUILTIN_GUEST_IMAGE,
        )));
    }
    argv.extend(builder.extra_args().iter().cloned());
    let mut script = String::from(
        "# qemu-machine run hands QEMU its QMP monitor and serial console on socketpairs\n\
         # (-chardev socket,id=mon,fd=N -mon chardev=mon,mode=control and\n\
         # -chardev socket,id=console,fd=N -serial chardev:console); run by hand, the\n\
         # console and QEMU's monitor are on stdio (-serial mon:stdio: Ctrl-A c switches,\n\
         # Ctrl-A x quits).\n",
    );
    if let Some(qmp) = &options.qmp {
        script.push_str(&format!(
            "# --qmp {} is served by qemu-machine, not QEMU (by hand: -qmp unix:PATH,server=on,wait=off).\n",
            qmp.display()
        ));
    }
    if let Some(ga) = &options.ga {
        script.push_str(&format!(
            "# --ga {} is served by qemu-machine over a socketpair, left out here (by hand:\n\
             # -device virtio-serial-pci -chardev socket,id=qga,path=PATH,server=on,wait=off\n\
             # -device virtserialport,chardev=qga,name=org.qemu.guest_agent.0).\n",
            ga.display()
        ));
    }
    if let Some(command) = &options.exec {
        script.push_str(&format!(
            "# --exec {command:?} is typed at the guest's prompt by qemu-machine.\n"
        ));
    }
    if let Some(log) = &options.console_log {
        script.push_str(&format!(
            "# --console-log {} is written by qemu-machine, not QEMU.\n",
            log.display()
        ));
    }
    if builtin {
        script.push_str(&format!(
            "# The built-in guest's disk, written by qemu-machine at launch: its boot sector.\n\
             printf '{}' > {BUILTIN_GUEST_IMAGE} && truncate -s {} {BUILTIN_GUEST_IMAGE}\n",
            octal_escapes(&qemu_machine::guest::boot_sector()),
            qemu_machine::guest::IMAGE_SIZE
        ));
    }
    script.push_str(&qemu_machine::shell_words(&argv));
    script.push('\n');
    Ok(script)
}

/// Where a `--dry-run` script of the built-in guest writes its disk image.
const BUILTIN_GUEST_IMAGE: &str = "builtin-guest.img";

/// `bytes` as a `printf` format that prints them: every byte as a POSIX octal escape.
fn octal_escapes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:03o}")).collect()
}

/// After a signal during a launch, how long the launch may take to fail on its own (its
/// QEMU killed) before it is dropped.
const ABORT_GRACE: Duration = Duration::from_secs(2);

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

/// `path` as one value of a QEMU option list (`-drive file=...`), commas doubled
/// ([`qemu_machine::escape_option_value`]).
pub(crate) fn qemu_opt_value(path: &std::path::Path) -> String {
    qemu_machine::escape_option_value(&path.display().to_string()).into_owned()
}

/// Makes sure `--qmp PATH` (or `--ga PATH`: `flag`) can be bound, before QEMU is launched: nothing there is fine; a
/// socket nobody listens on (connect() is refused) is stale and removed; a socket somebody
/// listens on, or anything that is not a socket, is refused. Symlinks are never followed.
pub(crate) fn claim_socket_path(path: &std::path::Path, flag: &str) -> Result<(), Failure> {
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
            "{flag} {}: exists and is not a socket; not replacing it",
            path.display()
        )));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(Failure::new(format!(
            "{flag} {}: the socket is in use by a listening process",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path).map_err(|e| {
                Failure::new(format!(
                    "cannot remove the stale socket {}: {e}",
                    path.display()
                ))
            })?;
            status(
                &format!(
                    "qemu-machine: removed the stale socket {} (nobody was listening)",
                    path.display()
                ),
                || json!({"status": "stale-socket-removed", "path": path}),
            );
            Ok(())
        }
        Err(e) => Err(Failure::new(format!(
            "{flag} {}: cannot tell whether the socket is in use: {e}",
            path.display()
        ))),
    }
}

/// What `run` needs of a launched VM: its QMP client, the `--qmp` multiplexer, the console.
fn attach(
    vm: &Machine,
    options: &RunOptions,
) -> Result<(qmp::Client, Option<Multiplexer>, qemu_machine::Console), Failure> {
    let client = vm
        .qmp_client()
        .ok_or_else(|| Failure::new("the VM has no QMP monitor"))?;
    let mux = match &options.qmp {
        Some(path) => Some(Multiplexer::serve(client.clone(), path)?),
        None => None,
    };
    let console = vm.console()?;
    Ok((client, mux, console))
}

/// `qemu-machine run`: boots the VM, connects this terminal to its serial console until the
/// user detaches or QEMU exits, and exits with QEMU's status.
///
/// SIGTERM, SIGHUP, SIGINT and SIGQUIT shut the VM down gracefully, as Ctrl-] q does (a
/// second one kills it), or abort the launch; then the terminal is restored, the `--qmp`
/// socket and the run dir are removed, and the status is 128 + the signal's number.
pub(crate) async fn run(mut args: RunArgs) -> Outcome {
    // Before anything can fail: with --json, so is the failure.
    crate::term::set_json(args.json);
    // These are about this invocation, not the VM: not in --config files.
    let warm = WarmOptions {
        save_state: args.save_state.take(),
        restore: args.restore.take(),
        cache: args.warm,
    };
    let options = RunOptions::from_args(args)?;
    if options.dry_run {
        print!("{}", dry_run_script(&options)?);
        return Ok(0);
    }
    let timeout = options.timeout;
    let mut signals = Signals::listen()
        .map_err(|e| Failure::new(format!("cannot install signal handlers: {e}")))?;
    if let Some(path) = &options.qmp {
        claim_socket_path(path, "--qmp")?;
    }
    if let Some(path) = &options.ga {
        claim_socket_path(path, "--ga")?;
    }
    let mut vm = Machine::new(builder(&options));
    if warm.save_state.is_some() || warm.restore.is_some() || warm.cache {
        if let Some(why) = vm.config().migration_blockers().first() {
            return Err(Failure::with_status(
                format!("--save-state, --restore and --warm cannot work here: {why}"),
                2,
            ));
        }
    }
    let cache = match warm.cache {
        true => Some(crate::cache::open(None)?),
        false => None,
    };
    let prompt = qemu_machine::Pattern::regex(options.prompt.as_deref().unwrap_or(DEFAULT_PROMPT))
        .map_err(|e| Failure::with_status(format!("--prompt: {e}"), 2))?;
    let (launched, aborted) = with_spinner("starting QEMU", async {
        let launch = start(&mut vm, &warm, cache.as_ref(), prompt, &options);
        tokio::pin!(launch);
        let mut aborted: Option<(Caught, tokio::time::Instant)> = None;
        loop {
            tokio::select! {
                result = &mut launch => break (Some(result), aborted.map(|(caught, _)| caught)),
                caught = signals.recv(), if aborted.is_none() => {
                    aborted = Some((caught, tokio::time::Instant::now()));
                    kill_child_groups();
                }
                // QEMU may not be spawned yet when the signal comes: keep at it.
                _ = tokio::time::sleep(Duration::from_millis(20)), if aborted.is_some() => {
                    kill_child_groups();
                    // Nothing to kill (waiting for the snapshot cache's lock, hashing its
                    // inputs): the launch is dropped instead, which is cancel-safe.
                    if aborted.is_some_and(|(_, at)| at.elapsed() >= ABORT_GRACE) {
                        break (None, aborted.map(|(caught, _)| caught));
                    }
                }
            }
        }
    })
    .await;
    if let Some(caught) = aborted {
        let _ = vm.kill().await;
        status(
            &format!("qemu-machine: {}: launch aborted", caught.name()),
            || json!({"status": "aborted", "signal": caught.name()}),
        );
        return Ok(caught.exit_status());
    }
    let Some(launched) = launched else {
        return Err(Failure::new("the launch ended without a result"));
    };
    let started = launched?;
    started.report(&warm, cache.as_ref());
    let (client, mux, console) = match attach(&vm, &options) {
        Ok(attached) => attached,
        Err(failure) => {
            // Nothing half-done stays: QEMU goes, and with it the run dir.
            let _ = vm.kill().await;
            return Err(failure);
        }
    };
    let ga = match serve_extras(&mut vm, &options).await {
        Ok(ga) => ga,
        Err(failure) => {
            let _ = vm.kill().await;
            return Err(failure);
        }
    };
    if let Some(command) = options.exec.clone() {
        let pid = vm.pid();
        status(
            &format!(
                "qemu-machine: VM running (pid {}){}; waiting for its shell prompt to run the command",
                pid.unwrap_or(0),
                options
                    .qmp
                    .as_ref()
                    .map(|p| format!(", QMP at {}", p.display()))
                    .unwrap_or_default(),
            ),
            || json!({"status": "launched", "pid": pid, "qmp": options.qmp, "exec": command}),
        );
        let event_printer = print_events(&client);
        let result = exec_in_guest(
            &mut vm,
            &client,
            &console,
            &options,
            &command,
            started,
            &mut signals,
        )
        .await;
        if tokio::time::timeout(Duration::from_millis(500), event_printer)
            .await
            .is_err()
        {
            // It ends with the connection; bounded all the same.
        }
        drop(mux);
        remove_socket(ga.as_deref());
        return result;
    }
    let pid = vm.pid();
    status(
        &format!(
            "qemu-machine: VM running (pid {}){}; Ctrl-] then q shuts it down, Ctrl-] then k stops it at once",
            pid.unwrap_or(0),
            options
                .qmp
                .as_ref()
                .map(|p| format!(", QMP at {}", p.display()))
                .unwrap_or_default(),
        ),
        || json!({"status": "launched", "pid": pid, "qmp": options.qmp}),
    );
    let raw = RawMode::enter();
    // People wait here for the guest's first words: a spinner until then (terminals only).
    start_spinner("booting");

    let event_printer = print_events(&client);
    let output = console.clone();
    let mut console_output = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Ok(bytes) = output.read().await {
            // A spinner redraws its line: it goes before the guest writes one.
            clear_spinner();
            // Recorded before the write: a status line racing with it then starts a line
            // of its own rather than being appended to the guest's.
            console_wrote(&bytes);
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
                let message = format!("qemu-machine: {e}");
                status(&message, || json!({"status": "error", "message": message}));
            }
        }
    });

    let mut escape_pending = false;
    let mut dropped = 0usize;
    let mut last_notice: Option<std::time::Instant> = None;
    let ending = loop {
        tokio::select! {
            bytes = input.recv() => {
                let Some(bytes) = bytes else { break Ending::Detached(Stop::Graceful) };
                let (forward, detach) = filter_input(&bytes, &mut escape_pending);
                if !forward.is_empty() {
                    if let Err(mpsc::error::TrySendError::Full(lost)) = to_guest.try_send(forward) {
                        dropped += lost.len();
                        if last_notice.is_none_or(|t| t.elapsed() >= DROP_NOTICE_EVERY) {
                            last_notice = Some(std::time::Instant::now());
                            status(
                                &format!("qemu-machine: guest is not reading its console; {dropped} bytes of input dropped"),
                                || json!({"status": "input-dropped", "bytes": dropped}),
                            );
                        }
                    }
                }
                if let Some(stop) = detach {
                    break Ending::Detached(stop);
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
    clear_spinner();
    let stop = match ending {
        Ending::Exited => None,
        Ending::Detached(stop) => Some(stop),
        Ending::OutputGone | Ending::Signal(_) => Some(Stop::Graceful),
    };
    if let Ending::Signal(caught) = ending {
        status(
            &format!(
                "qemu-machine: {}: shutting the VM down (again to kill it)",
                caught.name()
            ),
            || json!({"status": "shutting-down", "signal": caught.name()}),
        );
    }
    let mut escalated: Option<Caught> = None;
    let mut save_failed = false;
    let result = {
        let work = async {
            let save_to = match ending {
                Ending::Detached(_) => warm.save_state.as_deref(),
                _ => None,
            };
            if let Some(path) = save_to {
                match save(&mut vm, path, timeout).await {
                    Ok(()) => return vm.shutdown_timeout(timeout).await,
                    Err(e) => {
                        save_failed = true;
                        status(
                            &format!(
                                "qemu-machine: could not save the state: {e}; stopping the VM"
                            ),
                            || json!({"status": "save-failed", "message": e.to_string()}),
                        );
                        return vm.shutdown_timeout(timeout).await;
                    }
                }
            }
            match stop {
                None => vm.wait(timeout).await,
                Some(Stop::Immediate) => vm.shutdown_timeout(timeout).await,
                Some(Stop::Graceful) => {
                    power_down(&mut vm, &client, options.shutdown_timeout, timeout).await
                }
            }
        };
        tokio::pin!(work);
        loop {
            tokio::select! {
                result = &mut work => break result,
                caught = signals.recv(), if escalated.is_none() => {
                    status(
                        &format!("qemu-machine: {}: killing QEMU", caught.name()),
                        || json!({"status": "killing", "signal": caught.name()}),
                    );
                    escalated = Some(caught);
                    if let Some(pid) = pid {
                        kill_group(pid);
                    }
                }
            }
        }
    };
    // The guest's last words (before it powered off) may still be on their way to our
    // stdout: the console output ends when QEMU's console closes, which it has by now;
    // bounded all the same.
    if matches!(ending, Ending::Detached(_) | Ending::Signal(_)) {
        let _ = tokio::time::timeout(Duration::from_millis(500), &mut console_output).await;
    }
    // The last events (SHUTDOWN) are still on their way to the printer: it ends when the
    // connection does, which it has by now; bounded all the same.
    let mut event_printer = event_printer;
    if tokio::time::timeout(Duration::from_millis(500), &mut event_printer)
        .await
        .is_err()
    {
        event_printer.abort();
    }
    drop(raw);
    // The socket file goes with the multiplexer.
    drop(mux);
    remove_socket(ga.as_deref());
    match result {
        // The SIGKILL we sent is reported as unexpected by the library: it was asked for.
        Err(_) if escalated.is_some() => {}
        other => other?,
    }
    let exit = report_exit(&mut vm);
    if let Some(kept) = vm.kept_run_dir() {
        status(
            &format!("qemu-machine: run dir kept at {}", kept.display()),
            || json!({"status": "run-dir-kept", "path": kept}),
        );
    }
    if let Some(caught) = escalated.or(match ending {
        Ending::Signal(caught) => Some(caught),
        _ => None,
    }) {
        return Ok(caught.exit_status());
    }
    if save_failed {
        return Ok(1);
    }
    if let (Some(path), false) = (&warm.save_state, matches!(ending, Ending::Detached(_))) {
        status(
            &format!(
                "qemu-machine: no state saved to {}: the VM exited by itself or stdout went away (only detaching saves)",
                path.display()
            ),
            || json!({"status": "not-saved", "path": path}),
        );
    }
    Ok(exit.map_or(1, |status| {
        exit_status_code(
            status.code(),
            std::os::unix::process::ExitStatusExt::signal(&status),
        )
    }))
}

/// Prints QMP events on stderr (status lines) until the QMP session ends.
fn print_events(client: &qmp::Client) -> tokio::task::JoinHandle<()> {
    let mut events = client.subscribe(EventFilter::all());
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(event) => status(&event.to_string(), || event.to_json()),
                // Too many too fast: say so, and go on with the newest.
                Err(qmp::Error::EventsLost(lost)) => status(
                    &format!("qemu-machine: {lost} QMP events were lost (too many at once)"),
                    || json!({"status": "events-lost", "count": lost}),
                ),
                // The session is over.
                Err(_) => break,
            }
        }
    })
}

/// After launch: serves `--ga` (returning its path) and prints the host ports of
/// `--net` forwards.
async fn serve_extras(
    vm: &mut Machine,
    options: &RunOptions,
) -> Result<Option<std::path::PathBuf>, Failure> {
    for net in &options.devices.nets {
        for forward in &net.forwards {
            let (protocol, port) = match forward.udp {
                false => ("tcp", vm.host_port(forward.guest_port).await?),
                // UDP forwards name their port (the parser refuses 0 for them).
                true => ("udp", forward.host_port),
            };
            let (host, guest_port) = (forward.address.to_string(), forward.guest_port);
            status(
                &format!("qemu-machine: {protocol} {host}:{port} -> guest {guest_port}"),
                || json!({"status": "forward", "protocol": protocol, "host": host, "port": port, "guest_port": guest_port}),
            );
        }
    }
    let Some(path) = &options.ga else {
        return Ok(None);
    };
    let path = std::path::absolute(path)
        .map_err(|e| Failure::new(format!("--ga {}: {e}", path.display())))?;
    let served = vm.serve_guest_agent(&path)?;
    status(
        &format!("qemu-machine: guest agent at {}", served.display()),
        || json!({"status": "guest-agent", "path": served}),
    );
    Ok(Some(served))
}

/// Removes a socket we served, if its server has not yet.
fn remove_socket(path: Option<&std::path::Path>) {
    use std::os::unix::fs::FileTypeExt;
    if let Some(path) = path {
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The default `--prompt`: `# ` or `$ ` at the end of the console output so far, then any
/// terminal escapes (busybox sh asks for the cursor position right after its prompt; bash
/// may switch bracketed paste). It matches the test guest's `guest# `, a root
/// `root@host:~# ` on a Debian serial getty with autologin, and a user's `user@host:~$ `.
pub(crate) const DEFAULT_PROMPT: &str = r"[#$] (?:\x1b\[[0-9;?]*[A-Za-z])*$";

/// The status of `--exec` when its deadline passed.
pub(crate) const EXEC_TIMED_OUT: u8 = 124;
/// The status of `--exec` when the guest failed: a kernel panic, QEMU gone.
pub(crate) const EXEC_GUEST_FAILED: u8 = 125;

/// `run --exec`: waits for the prompt, runs `command` with its output streamed to stdout,
/// powers the guest off (the graceful ladder), and returns the command's status (124: the
/// deadline passed; 125: the guest failed; 128 + N: signal N).
#[allow(clippy::too_many_arguments)]
async fn exec_in_guest(
    vm: &mut Machine,
    client: &qmp::Client,
    console: &qemu_machine::Console,
    options: &RunOptions,
    command: &str,
    how: Started,
    signals: &mut Signals,
) -> Outcome {
    let prompt = qemu_machine::Pattern::regex(options.prompt.as_deref().unwrap_or(DEFAULT_PROMPT))
        .map_err(|e| Failure::with_status(format!("--prompt: {e}"), 2))?;
    let started = tokio::time::Instant::now();
    let work = async {
        if how != Started::Booted {
            // A restored shell printed its prompt before it was saved: an empty line
            // makes it print one again.
            console.send_line("").await?;
        }
        console
            .expect_any(prompt, ["Kernel panic"], options.exec_timeout)
            .await?;
        let left = options.exec_timeout.saturating_sub(started.elapsed());
        let run_options = qemu_machine::RunOptions::new(left)
            .failure_pattern("Kernel panic")
            .on_output(|text| {
                use std::io::Write;
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(text.as_bytes());
                let _ = stdout.flush();
            });
        console.run(command, run_options).await
    };
    let outcome = tokio::select! {
        result = work => Ok(result),
        caught = signals.recv() => Err(caught),
    };
    let code = match &outcome {
        Ok(Ok(done)) => u8::try_from(done.status).unwrap_or(1),
        Ok(Err(e)) => {
            let (code, what) = match e.kind() {
                qemu_machine::ErrorKind::Timeout { .. } => (
                    EXEC_TIMED_OUT,
                    format!(
                        "--exec: timed out after {} s",
                        options.exec_timeout.as_secs_f64()
                    ),
                ),
                _ => (EXEC_GUEST_FAILED, "--exec: the guest failed".to_string()),
            };
            let tail = console_tail(console);
            status(
                &format!("qemu-machine: {what}: {e}\nlast console output:\n{tail}"),
                || json!({"status": "exec-failed", "code": code, "message": e.to_string(), "console": tail}),
            );
            code
        }
        Err(caught) => {
            status(
                &format!(
                    "qemu-machine: {}: shutting the VM down (again to kill it)",
                    caught.name()
                ),
                || json!({"status": "shutting-down", "signal": caught.name()}),
            );
            caught.exit_status()
        }
    };
    let timeout = options.timeout;
    let pid = vm.pid();
    let mut killed = false;
    let result = {
        let work = async {
            if vm.is_running() && matches!(how, Started::CacheHit | Started::CacheBuilt) {
                // A cached guest's writes go to overlays: nothing to shut down cleanly.
                vm.shutdown_timeout(timeout).await
            } else if vm.is_running() {
                power_down(vm, client, options.shutdown_timeout, timeout).await
            } else {
                vm.wait(timeout).await
            }
        };
        tokio::pin!(work);
        loop {
            tokio::select! {
                result = &mut work => break result,
                caught = signals.recv(), if !killed => {
                    status(
                        &format!("qemu-machine: {}: killing QEMU", caught.name()),
                        || json!({"status": "killing", "signal": caught.name()}),
                    );
                    killed = true;
                    if let Some(pid) = pid {
                        kill_group(pid);
                    }
                }
            }
        }
    };
    if let Err(e) = result {
        if !killed {
            status(
                &format!("qemu-machine: {e}"),
                || json!({"status": "error", "message": e.to_string()}),
            );
        }
    }
    report_exit(vm);
    Ok(code)
}

/// `--save-state`, `--restore` and `--warm`.
struct WarmOptions {
    save_state: Option<std::path::PathBuf>,
    restore: Option<std::path::PathBuf>,
    cache: bool,
}

/// How the VM was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Started {
    /// Booted.
    Booted,
    /// From `--restore FILE`.
    Restored,
    /// From the snapshot cache's entry.
    CacheHit,
    /// Booted, saved into the cache, restored from it.
    CacheBuilt,
}

impl Started {
    /// A status line for a VM that did not simply boot.
    fn report(self, warm: &WarmOptions, cache: Option<&SnapshotCache>) {
        let dir = cache.map(|c| c.dir().to_path_buf());
        match self {
            Started::Booted => {}
            Started::Restored => {
                let path = warm.restore.as_deref().unwrap_or(std::path::Path::new(""));
                status(
                    &format!("qemu-machine: restored from {}", path.display()),
                    || json!({"status": "restored", "path": path}),
                );
            }
            Started::CacheHit => status(
                "qemu-machine: snapshot cache hit: restored, not booted",
                || json!({"status": "cache-hit", "dir": dir}),
            ),
            Started::CacheBuilt => status(
                "qemu-machine: snapshot cache miss: booted, saved the entry, restored it",
                || json!({"status": "cache-built", "dir": dir}),
            ),
        }
    }
}

/// Launches the VM: boots it, restores `--restore FILE`, or goes through the snapshot
/// cache (`--warm`: the entry is ready when the prompt shows).
async fn start(
    vm: &mut Machine,
    warm: &WarmOptions,
    cache: Option<&SnapshotCache>,
    prompt: qemu_machine::Pattern,
    options: &RunOptions,
) -> qemu_machine::Result<Started> {
    if let Some(path) = &warm.restore {
        vm.launch_restored(path, options.timeout).await?;
        return Ok(Started::Restored);
    }
    if let Some(cache) = cache {
        return Ok(
            match cache.launch(vm, prompt, options.exec_timeout).await? {
                Warm::Hit => Started::CacheHit,
                Warm::Built => Started::CacheBuilt,
            },
        );
    }
    vm.launch().await?;
    Ok(Started::Booted)
}

/// `--save-state`: the guest's state to `path`, said on stderr.
async fn save(
    vm: &mut Machine,
    path: &std::path::Path,
    timeout: Duration,
) -> qemu_machine::Result<()> {
    let info = vm.save_state(path, timeout).await?;
    let mib = info.file_bytes() as f64 / (1u64 << 20) as f64;
    status(
        &format!(
            "qemu-machine: state saved to {} ({mib:.1} MiB in {} ms)",
            path.display(),
            info.save_ms
        ),
        || json!({"status": "state-saved", "path": path, "bytes": info.file_bytes(), "ms": info.save_ms}),
    );
    Ok(())
}

/// Says how QEMU ended (a status line, or a JSON object with `--json`), and returns it.
fn report_exit(vm: &mut Machine) -> Option<std::process::ExitStatus> {
    let exit = vm.exit_status();
    status(
        &format!(
            "qemu-machine: QEMU exited ({})",
            exit.map_or("unknown status".into(), |s| s.to_string())
        ),
        || {
            json!({
                "status": "exited",
                "code": exit.and_then(|s| s.code()),
                "signal": exit.and_then(|s| std::os::unix::process::ExitStatusExt::signal(&s)),
            })
        },
    );
    exit
}

/// The last lines of the console, terminal escapes removed.
fn console_tail(console: &qemu_machine::Console) -> String {
    let text = qemu_machine::guest_shell::strip_terminal(&console.history());
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The graceful rung of the ladder: `system_powerdown`, up to `shutdown_timeout` for the
/// guest to power off (QEMU then exits by itself), then as the immediate stop: `quit`, up
/// to `timeout` for QEMU to exit, then SIGKILL. Every wait is bounded.
async fn power_down(
    vm: &mut Machine,
    client: &qmp::Client,
    shutdown_timeout: Duration,
    timeout: Duration,
) -> qemu_machine::Result<()> {
    let secs = shutdown_timeout.as_secs_f64();
    // The command counts against the same deadline as the guest's power-off.
    let deadline = tokio::time::Instant::now().checked_add(shutdown_timeout);
    let asked = if shutdown_timeout.is_zero() {
        Err(None)
    } else {
        client
            .execute_request(Request::new("system_powerdown").timeout(shutdown_timeout))
            .await
            .map_err(Some)
    };
    match asked {
        Ok(_) => {
            status(
                "qemu-machine: asked the guest to power off (system_powerdown)",
                || json!({"status": "powerdown", "timeout": secs}),
            );
            start_spinner(&format!(
                "waiting up to {secs} s for the guest to power off"
            ));
            while vm.is_running() && deadline.is_none_or(|d| tokio::time::Instant::now() < d) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            clear_spinner();
            if !vm.is_running() {
                // It has exited: this only reaps it and tidies up.
                return vm.wait(timeout).await;
            }
            status(
                &format!("qemu-machine: the guest did not power off within {secs} s; sending quit"),
                || json!({"status": "quit", "reason": "shutdown-timeout"}),
            );
        }
        Err(None) => status(
            "qemu-machine: --shutdown-timeout is 0; sending quit",
            || json!({"status": "quit", "reason": "shutdown-timeout"}),
        ),
        Err(Some(e)) => {
            let message = format!("qemu-machine: system_powerdown failed ({e}); sending quit");
            status(
                &message,
                || json!({"status": "quit", "reason": "powerdown-failed", "message": e.to_string()}),
            );
        }
    }
    vm.shutdown_timeout(timeout).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_memory_sizes_are_typed_and_others_left_to_qemu() {
        assert_eq!(memory_mib("256"), Some(256));
        assert_eq!(memory_mib("256M"), Some(256));
        assert_eq!(memory_mib("2G"), Some(2048));
        assert_eq!(memory_mib("1t"), Some(1 << 20));
        for other in [
            "",
            "M",
            "1.5G",
            "size=1G,maxmem=4G",
            "99999999999999999999T",
        ] {
            assert_eq!(memory_mib(other), None, "{other}");
        }
    }

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
        assert_eq!(filter_input(b"ab", &mut pending), (b"ab".to_vec(), None));
        assert_eq!(filter_input(b"x\x1d", &mut pending), (b"x".to_vec(), None));
        assert!(pending);
        assert_eq!(
            filter_input(b"q", &mut pending),
            (vec![], Some(Stop::Graceful))
        );
        assert_eq!(
            filter_input(b"a\x1dk", &mut pending),
            (b"a".to_vec(), Some(Stop::Immediate))
        );
        let mut pending = false;
        assert_eq!(
            filter_input(b"\x1d\x1dz", &mut pending),
            (b"\x1dz".to_vec(), None)
        );
        assert_eq!(
            filter_input(b"\x1dx\x03", &mut pending),
            (b"\x1dx\x03".to_vec(), None)
        );
    }
}
