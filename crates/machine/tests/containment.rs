//! Containment (issue 13, class 3): everything started on a VM's behalf dies with it,
//! whatever the wrapper does (fork QEMU, exit at once, let QEMU leave its process group),
//! and the watchdog between the manager and QEMU is invisible in exit statuses. The
//! manager-SIGKILLed cases are in `orphans.rs`.

use qemu_test_support::machine as common;

use std::os::unix::process::ExitStatusExt;

use common::{Scratch, T};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use qemu_machine::{ErrorKind, LaunchReason, Machine, ShutdownCause};
use qemu_test_support::processes::{proc_stat, processes_with_arg, WATCHDOG_COMM};

fn unique_marker(what: &str) -> String {
    format!(
        "{what}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// Wrappers that fork QEMU and wait for it; the last one lets QEMU leave the group.
const FORKING_WRAPPERS: [&[&str]; 4] = [
    &["timeout", "600"],
    &["sh", "-c", "\"$@\" & wait", "sh"],
    &["sh", "-c", "setsid \"$@\" & wait", "sh"],
    &["strace", "-f", "-o", "/dev/null"],
];

/// The QEMU process (not the wrapper) carrying `marker`.
fn forked_qemu(marker: &str) -> u32 {
    let found: Vec<u32> = processes_with_arg(marker)
        .into_iter()
        .filter(|&pid| proc_stat(pid).is_some_and(|p| p.comm.starts_with("qemu-system")))
        .collect();
    assert_eq!(found.len(), 1, "QEMUs with {marker}: {found:?}");
    found[0]
}

#[tokio::test]
async fn kill_shutdown_and_drop_end_what_a_forking_wrapper_started() {
    let scratch = Scratch::new();
    for wrapper in FORKING_WRAPPERS {
        let marker = unique_marker("forked");
        let builder = scratch
            .builder()
            .machine_type("none")
            .wrapper(wrapper.iter().copied())
            .args(["-name", &marker]);

        // kill(): SIGKILL to the wrapper's group; a QEMU outside it dies by the watchdog.
        let mut vm = Machine::new(builder.clone());
        vm.launch().await.unwrap();
        let qemu = forked_qemu(&marker);
        assert_ne!(Some(qemu), vm.pid(), "{wrapper:?} forks QEMU");
        vm.kill().await.unwrap();
        // Reaped watchdog = everything it contained is dead and reaped: no wait needed.
        assert_eq!(
            processes_with_arg(&marker),
            Vec::<u32>::new(),
            "{wrapper:?}"
        );
        assert!(proc_stat(qemu).is_none(), "{wrapper:?}: QEMU {qemu} left");
        assert_eq!(vm.exit_status().and_then(|s| s.signal()), Some(9));

        // shutdown(): `quit`, QEMU exits, the wrapper follows.
        vm.launch().await.unwrap();
        let qemu = forked_qemu(&marker);
        vm.shutdown().await.unwrap();
        assert_eq!(
            processes_with_arg(&marker),
            Vec::<u32>::new(),
            "{wrapper:?}"
        );
        assert!(proc_stat(qemu).is_none(), "{wrapper:?}: QEMU {qemu} left");

        // Dropping the machine.
        let mut vm = Machine::new(builder);
        vm.launch().await.unwrap();
        let qemu = forked_qemu(&marker);
        drop(vm);
        assert_eq!(
            processes_with_arg(&marker),
            Vec::<u32>::new(),
            "{wrapper:?}"
        );
        assert!(proc_stat(qemu).is_none(), "{wrapper:?}: QEMU {qemu} left");
    }
}

#[tokio::test]
async fn qemu_that_left_its_group_is_killed_when_the_wrapper_dies() {
    // The wrapper is killed from outside; QEMU, in a session of its own, is an orphan
    // the watchdog (its subreaper) kills.
    let scratch = Scratch::new();
    let marker = unique_marker("setsid");
    let mut vm = Machine::new(
        scratch
            .builder()
            .machine_type("none")
            .wrapper(["sh", "-c", "setsid \"$@\" & wait", "sh"])
            .args(["-name", &marker]),
    );
    vm.launch().await.unwrap();
    let qemu = forked_qemu(&marker);
    let wrapper = vm.pid().unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{qemu}/stat")).unwrap();
    let pgid: u32 = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(pgid, wrapper, "QEMU left the wrapper's group");
    kill(Pid::from_raw(wrapper as i32), Signal::SIGKILL).unwrap();
    let err = vm.wait(T).await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::AbnormalShutdown(a) if matches!(a.cause, ShutdownCause::UnsentSignal { signal: 9 })),
        "{err}"
    );
    assert!(proc_stat(qemu).is_none(), "QEMU {qemu} left");
    assert_eq!(processes_with_arg(&marker), Vec::<u32>::new());
}

#[tokio::test]
async fn a_wrapper_that_forks_and_exits_at_once_leaves_nothing_even_for_a_moment() {
    let scratch = Scratch::new();
    let marker = unique_marker("fork-and-exit");
    let mut vm = Machine::new(
        scratch
            .builder()
            .machine_type("none")
            .wrapper(["sh", "-c", "\"$@\" &", "sh"])
            .args(["-name", &marker]),
    );
    let err = vm.launch().await.unwrap_err();
    let ErrorKind::Launch(failure) = err.kind() else {
        panic!("{err}")
    };
    assert!(
        matches!(failure.reason, LaunchReason::ExitedBeforeQmp),
        "{err}"
    );
    // The wrapper's own status, not a signal: it exited 0.
    assert_eq!(failure.status.and_then(|s| s.code()), Some(0), "{err}");
    // Checked at once: the watchdog exits only after the forked QEMU is dead and reaped.
    assert_eq!(processes_with_arg(&marker), Vec::<u32>::new());
}

#[tokio::test]
async fn the_watchdog_sits_between_us_and_qemu_and_holds_only_its_link() {
    let scratch = Scratch::new();
    let mut vm = Machine::new(scratch.builder().machine_type("none"));
    vm.launch().await.unwrap();
    let pid = vm.pid().unwrap();
    let qemu = proc_stat(pid).unwrap();
    assert!(qemu.comm.starts_with("qemu-system"), "{qemu:?}");
    let watchdog = proc_stat(qemu.ppid).unwrap();
    assert_eq!(watchdog.comm, WATCHDOG_COMM);
    assert_eq!(watchdog.ppid, std::process::id());
    let fds: Vec<_> = std::fs::read_dir(format!("/proc/{}/fd", watchdog.pid))
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_link(e.path()).unwrap())
        .collect();
    // Its link, and the signalfd through which it learns of SIGCHLD.
    assert_eq!(fds.len(), 2, "{fds:?}");
    assert!(
        fds.iter()
            .any(|f| f.to_string_lossy().starts_with("socket:")),
        "{fds:?}"
    );
    // Not in QEMU's group (a group SIGKILL must not take it), nor in ours.
    let pgid = |pid: u32| nix::unistd::getpgid(Some(Pid::from_raw(pid as i32))).unwrap();
    assert_eq!(pgid(pid).as_raw() as u32, pid);
    assert_ne!(pgid(watchdog.pid), pgid(pid));
    assert_ne!(pgid(watchdog.pid), nix::unistd::getpgrp());
    vm.shutdown().await.unwrap();
    assert!(proc_stat(watchdog.pid).is_none());
}

#[tokio::test]
async fn the_watchdog_exits_as_qemu_did() {
    let scratch = Scratch::new();
    // An exit code.
    let mut vm = Machine::new(
        scratch
            .builder()
            .machine_type("none")
            .wrapper(["sh", "-c", "exit 7", "sh"]),
    );
    let err = vm.launch().await.unwrap_err();
    let ErrorKind::Launch(failure) = err.kind() else {
        panic!("{err}")
    };
    assert_eq!(failure.status.and_then(|s| s.code()), Some(7), "{err}");

    // Signals from outside, reported as QEMU's own through the watchdog's status slot.
    // (No core files from QEMU's SIGABRT: QEMU inherits our limit.)
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_CORE).unwrap();
    setrlimit(Resource::RLIMIT_CORE, 0, hard).unwrap();
    for signal in [Signal::SIGKILL, Signal::SIGABRT] {
        let mut vm = Machine::new(scratch.builder().machine_type("none"));
        vm.launch().await.unwrap();
        kill(Pid::from_raw(vm.pid().unwrap() as i32), signal).unwrap();
        let err = vm.wait(T).await.unwrap_err();
        let status = vm.exit_status().unwrap();
        assert_eq!(status.signal(), Some(signal as i32), "{status}");
        assert!(
            matches!(err.kind(), ErrorKind::AbnormalShutdown(a) if matches!(a.cause, ShutdownCause::UnsentSignal { signal: s } if s == signal as i32)),
            "{err}"
        );
    }

    // SIGTERM: QEMU exits by itself, code 0.
    let mut vm = Machine::new(scratch.builder().machine_type("none"));
    vm.launch().await.unwrap();
    kill(Pid::from_raw(vm.pid().unwrap() as i32), Signal::SIGTERM).unwrap();
    vm.wait(T).await.unwrap();
    assert_eq!(vm.exit_status().and_then(|s| s.code()), Some(0));
}

#[tokio::test]
async fn a_signal_to_the_watchdog_ends_the_vm() {
    let scratch = Scratch::new();
    let mut vm = Machine::new(scratch.builder().machine_type("none"));
    vm.launch().await.unwrap();
    let pid = vm.pid().unwrap();
    let watchdog = proc_stat(pid).unwrap().ppid;
    let stat = proc_stat(watchdog).unwrap();
    assert_eq!(stat.comm, WATCHDOG_COMM, "{stat:?}");
    kill(Pid::from_raw(watchdog as i32), Signal::SIGTERM).unwrap();
    let err = vm.wait(T).await.unwrap_err();
    // QEMU was SIGKILLed by the watchdog, which exits as QEMU did.
    assert_eq!(vm.exit_status().and_then(|s| s.signal()), Some(9), "{err}");
    assert!(proc_stat(pid).is_none());
}
