//! The spawner's edges: how a program that cannot start fails (the same error kind as
//! `std::process::Command` gives), and how the exit status of what ran comes back (codes,
//! signals, the watchdog itself killed).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use qemu_machine::argv_process::{ArgvProcess, Output};

const T: Duration = Duration::from_secs(20);

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

fn run(words: &[&str]) -> ExitStatus {
    let mut p = ArgvProcess::spawn(&argv(words), &[], Output::Inherit).unwrap();
    p.wait_timeout(T).unwrap().expect("exits")
}

/// The error kind std's Command gives for `words`, and ours.
fn kinds(words: &[&str]) -> (std::io::ErrorKind, std::io::ErrorKind, String) {
    let std_kind = match std::process::Command::new(words[0])
        .args(&words[1..])
        .stdin(std::process::Stdio::null())
        .status()
    {
        Ok(status) => panic!("std ran {words:?}: {status:?}"),
        Err(e) => e.kind(),
    };
    match ArgvProcess::spawn(&argv(words), &[], Output::Inherit) {
        Ok(mut p) => panic!("we ran {words:?}: {:?}", p.wait_timeout(T)),
        Err(e) => (std_kind, e.kind(), e.to_string()),
    }
}

#[test]
fn a_missing_program_is_not_found_like_std() {
    let (std_kind, ours, text) = kinds(&["no-such-program-anywhere"]);
    assert_eq!(ours, std_kind, "{text}");
    let (std_kind, ours, text) = kinds(&["/no/such/program"]);
    assert_eq!(ours, std_kind, "{text}");
}

#[test]
fn a_file_that_cannot_run_fails_like_std() {
    let scratch = tempfile::tempdir().unwrap();
    let plain = scratch.path().join("plain");
    std::fs::write(&plain, "#!/bin/sh\nexit 0\n").unwrap();
    let plain = plain.to_str().unwrap();
    let (std_kind, ours, text) = kinds(&[plain]);
    assert_eq!(ours, std_kind, "not executable: {text}");
    let dir = scratch.path().to_str().unwrap();
    let (std_kind, ours, text) = kinds(&[dir]);
    assert_eq!(ours, std_kind, "a directory: {text}");
    let (std_kind, ours, text) = kinds(&["sh", "a\0b"]);
    assert_eq!(ours, std_kind, "a NUL: {text}");
}

/// What ran exits with a code or dies of a signal: the VM's status says which.
#[test]
fn exit_codes_and_signals_come_back() {
    assert_eq!(run(&["sh", "-c", "exit 7"]).code(), Some(7));
    assert_eq!(run(&["true"]).code(), Some(0));
    for signal in ["KILL", "ABRT", "SEGV", "TERM", "BUS", "QUIT"] {
        let status = run(&["sh", "-c", &format!("kill -{signal} $$")]);
        let expected = format!("SIG{signal}")
            .parse::<nix::sys::signal::Signal>()
            .unwrap() as i32;
        assert_eq!(status.signal(), Some(expected), "{signal}: {status:?}");
    }
}

fn parent_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let close = stat.rfind(')').unwrap();
    stat[close + 1..]
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

/// The watchdog killed, or asked to end, from outside: QEMU goes with it.
#[test]
fn the_watchdog_killed_from_outside() {
    for signal in [
        nix::sys::signal::Signal::SIGKILL,
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGSEGV,
        nix::sys::signal::Signal::SIGUSR1,
    ] {
        let mut p = ArgvProcess::spawn(&argv(&["sleep", "30"]), &[], Output::Inherit).unwrap();
        let qemu = p.pid();
        let watchdog = parent_of(qemu);
        assert_ne!(watchdog, std::process::id());
        // It runs in our memory: it must never dump it to a core file.
        let core_limit = || {
            let limits = std::fs::read_to_string(format!("/proc/{watchdog}/limits")).unwrap();
            let line = limits
                .lines()
                .find(|l| l.starts_with("Max core file size"))
                .unwrap()
                .to_string();
            line.split_whitespace()
                .skip(4)
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        };
        let deadline = std::time::Instant::now() + T;
        while core_limit() != "1 1" {
            assert!(
                std::time::Instant::now() < deadline,
                "core limit {}",
                core_limit()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(watchdog as i32), signal).unwrap();
        let status = p.wait_timeout(T).unwrap().expect("ends");
        // SIGKILL: the watchdog's own status; any other: its teardown, QEMU SIGKILLed.
        assert_eq!(status.signal(), Some(9), "{signal}: {status:?}");
        let deadline = std::time::Instant::now() + T;
        while std::path::Path::new(&format!("/proc/{qemu}")).exists() {
            assert!(std::time::Instant::now() < deadline, "{qemu} lives on");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A script without `#!` does not run.
#[test]
fn a_script_without_shebang() {
    let scratch = tempfile::tempdir().unwrap();
    let script = scratch.path().join("noshebang");
    std::fs::write(&script, "exit 3\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = script.to_str().unwrap();
    // No /bin/sh fallback (execvp's): an exec format error, as std's Command gives now.
    let ours = ArgvProcess::spawn(&argv(&[script]), &[], Output::Inherit)
        .map(|mut p| p.wait_timeout(T).unwrap())
        .unwrap_err();
    assert_eq!(ours.raw_os_error(), Some(nix::libc::ENOEXEC), "{ours}");
}

/// True while any process of the group `pgid` exists.
fn group_alive(pgid: u32) -> bool {
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid as i32), None).is_ok()
}

/// Whatever signal ends the watchdog, it first ends everything QEMU (here a wrapper)
/// started: a signal it died of would leave the wrapper's children running.
#[test]
fn a_signal_that_ends_the_watchdog_ends_what_it_contains() {
    use nix::sys::signal::Signal;
    let realtime = nix::libc::SIGRTMIN() + 3;
    for signal in [
        Signal::SIGTERM as i32,
        Signal::SIGUSR1 as i32,
        Signal::SIGALRM as i32,
        Signal::SIGPIPE as i32,
        Signal::SIGABRT as i32,
        Signal::SIGSEGV as i32,
        realtime,
    ] {
        // The wrapper's child stays in its group but is not QEMU: only the watchdog's
        // teardown reaches it (the death signal ends the wrapper alone).
        let mut p = ArgvProcess::spawn(
            &argv(&["sh", "-c", "sleep 1000 & wait"]),
            &[],
            Output::Inherit,
        )
        .unwrap();
        let group = p.pid();
        std::thread::sleep(Duration::from_millis(100));
        let watchdog = parent_of(group);
        // SAFETY: kill takes no pointer.
        assert_eq!(unsafe { nix::libc::kill(watchdog as i32, signal) }, 0);
        let status = p.wait_timeout(T).unwrap().expect("ends");
        let alive = group_alive(group);
        if alive {
            let _ =
                nix::sys::signal::killpg(nix::unistd::Pid::from_raw(group as i32), Signal::SIGKILL);
        }
        assert!(
            !alive,
            "signal {signal} to the watchdog left its wrapper's child running"
        );
        assert_eq!(status.signal(), Some(9), "signal {signal}: {status:?}");
    }
}
