//! A machine's life against real QEMU: launch in every monitor mode, failures with
//! diagnostics, the shutdown ladder, events, fds. Every test checks that its run dirs and
//! processes are gone.

use qemu_test_support::machine as common;

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use common::{assert_gone, Scratch, T};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use qemu_machine::{
    Error, ErrorKind, KeepRunDir, LaunchReason, Machine, Monitor, ShutdownCause, Stop,
};
use serde_json::json;

fn signal(pid: u32, signal: Signal) {
    kill(Pid::from_raw(pid as i32), signal).unwrap();
}

async fn launch_query_shutdown(scratch: &Scratch, monitor: Monitor) {
    let mut vm = Machine::new(scratch.builder().machine_type("none").monitor(monitor));
    vm.launch().await.unwrap();
    let pid = vm.pid().unwrap();
    let run_dir = vm.run_dir().unwrap().to_path_buf();
    let mode = std::fs::metadata(&run_dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o700);
    let status = vm.cmd("query-status", json!({})).await.unwrap();
    assert_eq!(status["status"], "running");
    vm.shutdown().await.unwrap();
    assert!(vm.exit_status().unwrap().success());
    assert!(!run_dir.exists());
    assert_gone(pid, T);
    assert!(vm.get_log().is_some());
}

#[tokio::test]
async fn launch_and_shutdown_over_a_socketpair() {
    let scratch = Scratch::new();
    launch_query_shutdown(&scratch, Monitor::Socketpair).await;
}

#[tokio::test]
async fn launch_and_shutdown_in_unix_server_mode() {
    let scratch = Scratch::new();
    launch_query_shutdown(&scratch, Monitor::Unix("qmp.sock".into())).await;
}

#[tokio::test]
async fn launch_and_shutdown_in_tcp_server_mode() {
    let scratch = Scratch::new();
    launch_query_shutdown(&scratch, Monitor::Tcp("127.0.0.1".into(), 0)).await;
}

#[tokio::test]
async fn one_object_relaunches() {
    let scratch = Scratch::new();
    let mut vm = Machine::new(scratch.builder().machine_type("none"));
    vm.launch().await.unwrap();
    let first = vm.pid().unwrap();
    assert!(matches!(
        vm.launch().await.map_err(Error::into_kind),
        Err(ErrorKind::AlreadyRunning)
    ));
    vm.shutdown().await.unwrap();
    vm.shutdown().await.unwrap(); // idempotent
    vm.launch().await.unwrap();
    assert_ne!(vm.pid().unwrap(), first);
    vm.cmd("query-status", json!({})).await.unwrap();
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn env_works_as_a_wrapper() {
    let scratch = Scratch::new();
    let mut vm = Machine::new(
        scratch
            .builder()
            .machine_type("none")
            .wrapper(["env", "QEMU_MACHINE_TEST=1"]),
    );
    vm.launch().await.unwrap();
    assert_eq!(vm.command_line().unwrap()[0], "env");
    let environ = std::fs::read(format!("/proc/{}/environ", vm.pid().unwrap())).unwrap();
    assert!(String::from_utf8_lossy(&environ).contains("QEMU_MACHINE_TEST=1"));
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_wrapper_that_never_execs_qemu_ends_in_a_deadline_error() {
    let scratch = Scratch::new();
    let mut vm = Machine::new(
        scratch
            .builder()
            .wrapper(["sh", "-c", "sleep 60 & sleep 60", "sh"])
            .launch_timeout(Duration::from_millis(500)),
    );
    let start = Instant::now();
    let err = vm.launch().await.unwrap_err();
    assert!(start.elapsed() < T);
    let ErrorKind::Launch(failure) = err.kind() else {
        panic!("{err}")
    };
    assert!(
        matches!(failure.reason, LaunchReason::QmpTimeout(after) if after == Duration::from_millis(500)),
        "{err}"
    );
    // The wrapper and its background child are gone: the whole group was killed.
    assert_gone(failure.pid.unwrap(), T);
    assert!(!vm.is_running());
}

#[tokio::test]
async fn a_bad_argument_fails_at_once_with_status_command_and_message() {
    let scratch = Scratch::new();
    let mut vm = Machine::new(scratch.builder().args(["-no-such-option"]));
    let start = Instant::now();
    let err = vm.launch().await.unwrap_err();
    let elapsed = start.elapsed();
    let ErrorKind::Launch(failure) = err.kind() else {
        panic!("{err}")
    };
    assert_eq!(failure.status.and_then(|s| s.code()), Some(1), "{err}");
    assert!(failure.command.iter().any(|a| a == "-no-such-option"));
    assert!(failure.output.contains("invalid option"), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("exit status")
            && text.contains("-no-such-option")
            && text.contains("invalid option"),
        "{text}"
    );
    // The launch deadline is 30 s; the failure must not wait for it.
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    // The failed run's command line and output stay readable; QEMU is reaped.
    assert!(vm
        .command_line()
        .is_some_and(|argv| argv.iter().any(|a| a == "-no-such-option")));
    assert!(vm
        .get_log()
        .is_some_and(|log| log.contains("invalid option")));
    assert_eq!(vm.pid(), None);
}

#[tokio::test]
async fn a_missing_binary_is_a_launch_error() {
    let scratch = Scratch::new();
    let mut vm = Machine::new(
        Machine::builder("/nonexistent/qemu-system-x86_64").base_temp_dir(scratch.path()),
    );
    let err = vm.launch().await.unwrap_err();
    let ErrorKind::Launch(failure) = err.kind() else {
        panic!("{err}")
    };
    let LaunchReason::Spawn { program, source } = &failure.reason else {
        panic!("{err}")
    };
    assert_eq!(program, "/nonexistent/qemu-system-x86_64");
    assert_eq!(source.kind(), std::io::ErrorKind::NotFound, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("cannot start /nonexistent/qemu-system-x86_64"),
        "{text}"
    );
    assert!(text.contains("No such file"), "{text}");
}

#[tokio::test]
async fn a_stopped_qemu_is_killed_within_the_shutdown_timeout() {
    let scratch = Scratch::new();
    let mut vm = Machine::new(scratch.builder().machine_type("none"));
    vm.launch().await.unwrap();
    let pid = vm.pid().unwrap();
    signal(pid, Signal::SIGSTOP);
    let start = Instant::now();
    let err = vm
        .shutdown_timeout(Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    let ErrorKind::AbnormalShutdown(report) = err.kind() else {
        panic!("{err}")
    };
    assert!(
        matches!(
            report.cause,
            ShutdownCause::QuitFailed(_)
                | ShutdownCause::NoExit {
                    stop: Stop::Quit,
                    ..
                }
        ),
        "{err}"
    );
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&report.status.unwrap()),
        Some(9)
    );
    assert_gone(pid, T);
}

#[tokio::test]
async fn qemu_killed_from_outside_fails_commands_waits_and_shutdown_clearly() {
    let scratch = Scratch::new();
    let mut vm = Machine::new(scratch.builder().machine_type("none"));
    vm.launch().await.unwrap();
    let pid = vm.pid().unwrap();
    // Stopped, QEMU cannot answer: the command is pending when the kill comes.
    signal(pid, Signal::SIGSTOP);
    let killer = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        signal(pid, Signal::SIGKILL);
    };
    let (_, pending) = tokio::join!(killer, vm.cmd("query-status", json!({})));
    let err = pending.unwrap_err();
    let ErrorKind::Exited(exit) = err.kind() else {
        panic!("{err}")
    };
    assert_eq!(exit.during, "query-status");
    assert!(err.to_string().contains("signal: 9"), "{err}");

    let err = vm.event_wait("NEVER", None, T).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Exited(_)), "{err}");

    let err = vm.shutdown().await.unwrap_err();
    let ErrorKind::AbnormalShutdown(report) = err.kind() else {
        panic!("{err}")
    };
    assert!(
        matches!(report.cause, ShutdownCause::UnsentSignal { signal: 9 }),
        "{err}"
    );
    assert_gone(pid, T);
}

#[tokio::test]
async fn quit_then_wait() {
    let scratch = Scratch::new();
    let mut vm = Machine::new(scratch.builder().machine_type("none"));
    vm.launch().await.unwrap();
    let reply = vm.qmp("quit", json!({})).await.unwrap();
    assert_eq!(reply, json!({"return": {}}));
    vm.wait(T).await.unwrap();
    assert!(vm.exit_status().unwrap().success());
    // The SHUTDOWN event is still there to read after the end.
    let names: Vec<String> = vm
        .get_qmp_events()
        .iter()
        .map(|e| e.name().to_string())
        .collect();
    assert!(names.contains(&"SHUTDOWN".to_string()), "{names:?}");
}

#[tokio::test]
async fn raw_qmp_returns_errors_and_cmd_fails_on_them() {
    let scratch = Scratch::new();
    let mut vm = Machine::new(scratch.builder().machine_type("none"));
    vm.launch().await.unwrap();
    let raw = vm.qmp("no-such-command", json!({})).await.unwrap();
    assert_eq!(raw["error"]["class"], "CommandNotFound");
    let err = vm.cmd("no-such-command", json!({})).await.unwrap_err();
    assert_eq!(err.qmp_class(), Some("CommandNotFound"));
    assert!(err.to_string().contains(vm.name()), "{err}");
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn event_wait_matches_on_data_and_keeps_the_rest_in_order() {
    let scratch = Scratch::new();
    let mut vm = Machine::new(scratch.builder().machine_type("pc").args(["-S"]));
    vm.launch().await.unwrap();
    vm.cmd("cont", json!({})).await.unwrap();
    vm.cmd("stop", json!({})).await.unwrap();
    vm.cmd("system_reset", json!({})).await.unwrap();
    vm.cmd("cont", json!({})).await.unwrap();

    // A match on data: only a host-requested reset will do.
    let reset = vm
        .event_wait(
            "RESET",
            Some(json!({"data": {"guest": false, "reason": "host-qmp-system-reset"}})),
            T,
        )
        .await
        .unwrap();
    assert_eq!(reset.data()["reason"], "host-qmp-system-reset");
    let stop = vm
        .event_wait("STOP", Some(json!({"timestamp": null})), T)
        .await
        .unwrap();
    assert_eq!(stop.name(), "STOP");
    // What did not match is still there, in arrival order.
    let resume = vm.event_wait("RESUME", None, T).await.unwrap();
    assert!(resume.timestamp() < stop.timestamp());
    let rest: Vec<String> = vm
        .get_qmp_events()
        .iter()
        .map(|e| e.name().to_string())
        .collect();
    assert_eq!(rest, ["RESUME"]);
    vm.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wait_keeps_its_deadline_while_other_events_keep_coming() {
    let scratch = Scratch::new();
    let mut vm = Machine::new(scratch.builder().machine_type("pc").args(["-S"]));
    vm.launch().await.unwrap();
    let client = vm.qmp_client().unwrap();
    let noise = tokio::spawn(async move {
        loop {
            if client.execute("cont", json!({})).await.is_err() {
                break;
            }
            let _ = client.execute("stop", json!({})).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let start = Instant::now();
    let err = vm
        .events_wait(
            &[
                ("NEVER", None),
                ("SHUTDOWN", Some(json!({"data": {"guest": true}}))),
            ],
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(4),
        "{elapsed:?}"
    );
    let ErrorKind::Timeout { seen, .. } = err.kind() else {
        panic!("{err}")
    };
    assert!(seen.contains("STOP") && seen.contains("RESUME"), "{seen}");
    vm.shutdown().await.unwrap();
    noise.await.unwrap();
}

#[tokio::test]
async fn add_fd_shows_in_query_fdsets() {
    let scratch = Scratch::new();
    let file = tempfile::tempfile().unwrap();
    let mut vm = Machine::new(scratch.builder().machine_type("none").add_fd(
        file.as_raw_fd(),
        2,
        "scratch-file",
        "",
    ));
    vm.launch().await.unwrap();
    let sets = vm.cmd("query-fdsets", json!({})).await.unwrap();
    let set = sets
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["fdset-id"] == 2)
        .expect("fd set 2");
    assert_eq!(set["fds"][0]["opaque"], "scratch-file");
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn send_fd_scm_then_getfd() {
    let scratch = Scratch::new();
    let mut vm = Machine::new(scratch.builder().machine_type("none"));
    vm.launch().await.unwrap();
    vm.send_file_scm("/dev/null").unwrap();
    vm.cmd("getfd", json!({"fdname": "null"})).await.unwrap();
    vm.cmd("closefd", json!({"fdname": "null"})).await.unwrap();
    let file = tempfile::tempfile().unwrap();
    vm.send_fd_scm(&file).unwrap();
    vm.cmd("getfd", json!({"fdname": "tmp"})).await.unwrap();
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn dropping_a_running_machine_kills_and_reaps_it() {
    let scratch = Scratch::new();
    let mut vm = Machine::new(scratch.builder().machine_type("none"));
    vm.launch().await.unwrap();
    let pid = vm.pid().unwrap();
    drop(vm);
    assert_gone(pid, Duration::from_millis(100));
}

#[tokio::test]
async fn kept_run_dirs_and_a_separate_log_dir() {
    let scratch = Scratch::new();
    let logs = tempfile::tempdir().unwrap();
    let mut vm = Machine::new(
        scratch
            .builder()
            .name("keeper")
            .machine_type("none")
            .log_dir(logs.path())
            .keep_run_dir(KeepRunDir::OnFailure),
    );
    vm.launch().await.unwrap();
    vm.shutdown().await.unwrap();
    assert!(vm.kept_run_dir().is_none());
    assert!(logs.path().join("keeper.log").exists());

    vm.launch().await.unwrap();
    signal(vm.pid().unwrap(), Signal::SIGSTOP);
    assert!(vm
        .shutdown_timeout(Duration::from_millis(300))
        .await
        .is_err());
    let kept = vm.kept_run_dir().expect("kept on failure").to_path_buf();
    assert!(kept.exists());
    std::fs::remove_dir_all(kept).unwrap();
}

#[tokio::test]
async fn names_cannot_escape_the_run_dir() {
    for name in ["../evil", "a/b", "..", ""] {
        let mut vm = Machine::new(Machine::builder(qemu_test_support::qemu()).name(name));
        let err = vm.launch().await.unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::Config(_)), "{name}: {err}");
    }
}

#[tokio::test]
async fn qmp_disabled_shuts_down_with_sigterm() {
    let scratch = Scratch::new();
    let mut vm = Machine::new(scratch.builder().machine_type("none").qmp_monitor(false));
    vm.launch().await.unwrap();
    assert!(matches!(
        vm.cmd("query-status", json!({}))
            .await
            .map_err(Error::into_kind),
        Err(ErrorKind::NoQmp)
    ));
    vm.shutdown().await.unwrap();
    // QEMU quits on SIGTERM and re-raises it; we sent it, so that is no abnormal shutdown.
    let status = vm.exit_status().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(15)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_launches_and_stops_together_with_errors_per_machine() {
    let scratch = Scratch::new();
    let mut vms: Vec<Machine> = (0..6)
        .map(|i| {
            let builder = scratch.builder().machine_type("none");
            Machine::new(if i == 3 {
                builder.args(["-bogus"])
            } else {
                builder
            })
        })
        .collect();
    let launched = qemu_machine::fleet::launch_all(&mut vms).await;
    for (i, result) in launched.iter().enumerate() {
        assert_eq!(result.is_err(), i == 3, "{i}: {result:?}");
    }
    let stopped = qemu_machine::fleet::shutdown_all(&mut vms, T).await;
    assert!(stopped.iter().all(|r| r.is_ok()));
}

#[test]
fn the_blocking_form_works_and_sees_events() {
    let scratch = Scratch::new();
    let mut vm =
        qemu_machine::blocking::Machine::new(scratch.builder().machine_type("pc").args(["-S"]));
    vm.launch().unwrap();
    vm.cmd("cont", json!({})).unwrap();
    let event = vm.event_wait("RESUME", None, T).unwrap();
    assert_eq!(event.name(), "RESUME");
    vm.shutdown().unwrap();
    assert!(!vm.is_running());
}
