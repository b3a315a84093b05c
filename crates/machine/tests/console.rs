//! The console with the built-in guest under real QEMU, and a flood from a fake chardev
//! peer that nobody reads.

use qemu_test_support::machine as common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{assert_gone, Scratch, T};
use qemu_machine::console::{Console, Pattern};
use qemu_machine::guest::{self, BANNER};
use qemu_machine::{Error, ErrorKind, Machine, ShutdownCause, Stop};
use serde_json::json;

async fn booted(scratch: &Scratch) -> Machine {
    let mut vm = Machine::new(scratch.builder().builtin_guest());
    vm.launch().await.unwrap();
    vm.console().unwrap().expect(BANNER, T).await.unwrap();
    vm
}

#[tokio::test]
async fn banner_echo_and_a_clean_acpi_poweroff() {
    let scratch = Scratch::new();
    let mut vm = booted(&scratch).await;
    let console = vm.console().unwrap();
    let reply = console
        .exec_and_expect("hello", "hello\n", T)
        .await
        .unwrap();
    assert_eq!(reply.before, "");
    // No trailing newline needed.
    console.write(b"prompt> ").await.unwrap();
    console.expect("prompt>", T).await.unwrap();
    let status = vm.cmd("query-status", json!({})).await.unwrap();
    assert_eq!(status["status"], "running");
    console.write(&[guest::POWEROFF]).await.unwrap();
    vm.wait(T).await.unwrap();
    assert!(vm.exit_status().unwrap().success());
    // The last words are kept after shutdown.
    let history = String::from_utf8(vm.console().unwrap().history()).unwrap();
    assert!(history.ends_with("BYE\n"), "{history:?}");
}

#[tokio::test]
async fn a_failure_pattern_fires_at_once() {
    let scratch = Scratch::new();
    let mut vm = booted(&scratch).await;
    let console = vm.console().unwrap();
    console
        .send_line("Kernel panic - not syncing")
        .await
        .unwrap();
    let start = Instant::now();
    let err = console
        .expect_any("login:", ["Kernel panic"], T)
        .await
        .unwrap_err();
    assert!(start.elapsed() < T);
    let ErrorKind::Console {
        problem,
        last_output,
        ..
    } = err.kind()
    else {
        panic!("{err}")
    };
    assert!(problem.contains("Kernel panic"), "{err}");
    assert!(last_output.contains("Kernel panic"), "{err}");
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_deadline_error_shows_the_last_output() {
    let scratch = Scratch::new();
    let mut vm = booted(&scratch).await;
    let console = vm.console().unwrap();
    console.send_line("something else").await.unwrap();
    let regex = Pattern::regex(r"login: \d+").unwrap();
    let err = console
        .expect(regex, Duration::from_millis(300))
        .await
        .unwrap_err();
    let ErrorKind::Timeout { awaited, seen, .. } = err.kind() else {
        panic!("{err}")
    };
    assert!(awaited.contains("login"), "{err}");
    assert!(seen.contains("something else"), "{err}");
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn end_of_console_is_an_error_with_the_last_output() {
    let scratch = Scratch::new();
    let mut vm = booted(&scratch).await;
    let console = vm.console().unwrap();
    console.write(&[guest::POWEROFF]).await.unwrap();
    let err = console.expect("never printed", T).await.unwrap_err();
    let ErrorKind::Console {
        problem,
        last_output,
        ..
    } = err.kind()
    else {
        panic!("{err}")
    };
    assert!(problem.contains("closed"), "{err}");
    assert!(last_output.contains("BYE"), "{err}");
    vm.wait(T).await.unwrap();
}

#[tokio::test]
async fn debug_exit_status_is_the_exit_status() {
    let scratch = Scratch::new();
    let mut vm = booted(&scratch).await;
    vm.console()
        .unwrap()
        .write(&[guest::DEBUG_EXIT])
        .await
        .unwrap();
    vm.wait(T).await.unwrap();
    assert_eq!(
        vm.exit_status().unwrap().code(),
        Some(guest::DEBUG_EXIT_STATUS)
    );
}

#[tokio::test]
async fn reset_gives_a_reset_event_and_the_banner_twice() {
    let scratch = Scratch::new();
    let mut vm = booted(&scratch).await;
    let console = vm.console().unwrap();
    console.write(&[guest::RESET]).await.unwrap();
    vm.event_wait("RESET", Some(json!({"data": {"guest": true}})), T)
        .await
        .unwrap();
    console.expect(BANNER, T).await.unwrap();
    let history = String::from_utf8(console.history()).unwrap();
    assert_eq!(history.matches("READY").count(), 2, "{history:?}");
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn system_powerdown_is_answered_by_the_guest() {
    let scratch = Scratch::new();
    let mut vm = booted(&scratch).await;
    vm.cmd("system_powerdown", json!({})).await.unwrap();
    vm.event_wait("SHUTDOWN", Some(json!({"data": {"guest": true}})), T)
        .await
        .unwrap();
    vm.wait(T).await.unwrap();
    assert!(vm.exit_status().unwrap().success());
}

#[tokio::test]
async fn a_hung_guest_that_ignores_powerdown_is_killed_within_the_timeout() {
    let scratch = Scratch::new();
    let mut vm = booted(&scratch).await;
    let pid = vm.pid().unwrap();
    let console = vm.console().unwrap();
    // The guest looks at the power button before its next input byte: make sure the hang
    // byte was taken (it follows an echoed one) before pressing the button.
    console.write(&[b'x', guest::HANG]).await.unwrap();
    console.expect("x", T).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    vm.cmd("system_powerdown", json!({})).await.unwrap();
    let start = Instant::now();
    let err = vm.wait(Duration::from_millis(500)).await.unwrap_err();
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
            ShutdownCause::NoExit {
                stop: Stop::AwaitExit,
                ..
            }
        ),
        "{err}"
    );
    assert_gone(pid, T);
}

#[tokio::test]
async fn the_console_log_holds_exactly_what_the_guest_sent() {
    let scratch = Scratch::new();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("console.log");
    let mut vm = Machine::new(scratch.builder().builtin_guest().console_log(&log));
    vm.launch().await.unwrap();
    let console = vm.console().unwrap();
    console.expect(BANNER, T).await.unwrap();
    console.exec_and_expect("abc", "abc\n", T).await.unwrap();
    console.write(&[guest::POWEROFF]).await.unwrap();
    vm.wait(T).await.unwrap();
    let written = std::fs::read(&log).unwrap();
    assert_eq!(written, b"READY\nabc\nBYE\n");
    assert_eq!(written, vm.console().unwrap().history());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&log).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[tokio::test]
async fn input_sent_before_the_banner_is_not_lost() {
    let scratch = Scratch::new();
    let mut vm = Machine::new(scratch.builder().builtin_guest());
    vm.launch().await.unwrap();
    let console = vm.console().unwrap();
    console.write(b"early").await.unwrap();
    let echoed = console.expect("early", T).await.unwrap();
    assert!(echoed.before.contains("READY"), "{echoed:?}");
    vm.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_flood_nobody_reads_never_stalls_qmp_and_keeps_the_newest_bytes() {
    const TOTAL: usize = 100 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    let scratch = Scratch::new();
    let mut vm = Machine::new(scratch.builder().machine_type("none"));
    vm.launch().await.unwrap();

    // A fake chardev peer: writes numbered chunks as fast as the console takes them.
    let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let console = Console::start("flood", ours, 1024 * 1024, None).unwrap();
    let writer = std::thread::spawn(move || {
        let mut chunk = vec![0u8; CHUNK];
        for i in 0..TOTAL / CHUNK {
            chunk.fill(b'a' + (i % 26) as u8);
            chunk[..8].copy_from_slice(&(i as u64).to_be_bytes());
            theirs.write_all(&chunk).unwrap();
        }
    });
    let mut worst = Duration::ZERO;
    let mut commands = 0;
    while !writer.is_finished() {
        let start = Instant::now();
        vm.cmd("query-status", json!({})).await.unwrap();
        worst = worst.max(start.elapsed());
        commands += 1;
    }
    writer.join().unwrap();
    assert!(
        worst < Duration::from_secs(1),
        "a QMP reply took {worst:?} during the flood"
    );
    assert!(commands > 0);

    let deadline = Instant::now() + T;
    while console.counters().0 < TOTAL as u64 {
        assert!(
            Instant::now() < deadline,
            "drained only {:?}",
            console.counters()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (total, dropped) = console.counters();
    assert_eq!(total, TOTAL as u64);
    assert_eq!(dropped, (TOTAL - 1024 * 1024) as u64);
    // The ring holds the newest 1 MiB: the last 16 chunks, in order.
    let history = console.history();
    assert_eq!(history.len(), 1024 * 1024);
    let first = TOTAL / CHUNK - 16;
    for (k, chunk) in history.chunks(CHUNK).enumerate() {
        let i = first + k;
        assert_eq!(u64::from_be_bytes(chunk[..8].try_into().unwrap()), i as u64);
        assert!(chunk[8..].iter().all(|&b| b == b'a' + (i % 26) as u8));
    }
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_machine_without_console_says_so() {
    let scratch = Scratch::new();
    let mut vm = Machine::new(scratch.builder().machine_type("none"));
    vm.launch().await.unwrap();
    assert!(matches!(
        vm.console().map_err(Error::into_kind),
        Err(ErrorKind::NoConsole)
    ));
    vm.shutdown().await.unwrap();
}

#[test]
fn the_blocking_console() {
    let scratch = Scratch::new();
    let mut vm = qemu_machine::blocking::Machine::new(scratch.builder().builtin_guest());
    vm.launch().unwrap();
    let console = vm.console().unwrap();
    console.expect(BANNER, T).unwrap();
    let echo = console.exec_and_expect("ping", "ping\n", T).unwrap();
    assert_eq!(echo.matched, "ping\n");
    vm.shutdown().unwrap();
}

#[tokio::test]
async fn interrupt_until_keeps_sending_until_the_pattern_shows() {
    let scratch = Scratch::new();
    let mut vm = booted(&scratch).await;
    let console = vm.console().unwrap();
    // Each interrupt is echoed; three in a row is the "prompt".
    let found = console
        .interrupt_until("...", b".", Duration::from_millis(30), T)
        .await
        .unwrap();
    assert_eq!(found.matched, "...");
    let err = console
        .interrupt_until(
            "never",
            b"-",
            Duration::from_millis(30),
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
    let ErrorKind::Timeout { awaited, .. } = err.kind() else {
        panic!("{err}")
    };
    assert!(awaited.contains("interrupting"), "{err}");
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn read_available_returns_what_arrived_after_the_cursor() {
    let scratch = Scratch::new();
    let mut vm = booted(&scratch).await;
    let console = vm.console().unwrap();
    assert!(console.read_available().is_empty());
    console.send_line("one").await.unwrap();
    console.expect("one\n", T).await.unwrap();
    console.send_line("two").await.unwrap();
    // expect moved the cursor past "one\n"; wait for "two" without consuming it.
    let deadline = Instant::now() + T;
    let mut got = Vec::new();
    while !got.ends_with(b"two\n") {
        assert!(Instant::now() < deadline, "{got:?}");
        got.extend(console.read_available());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(got, b"two\n");
    vm.shutdown().await.unwrap();
}
