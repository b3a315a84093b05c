//! Commands in the Linux test guest over the console (`Console::run`): streamed output,
//! exit status, failure patterns, the deadline and the state it leaves; and in a systemd
//! Debian guest with a root autologin getty (bash, bracketed paste).

use qemu_test_support::machine as common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{debian_guest, linux_guest, wait_for_shell, Scratch};
use qemu_machine::{ErrorKind, Machine, RunOptions};

const T: Duration = Duration::from_secs(30);

async fn booted(scratch: &Scratch) -> Machine {
    let (builder, _) = linux_guest(scratch);
    let mut vm = Machine::new(builder);
    vm.launch().await.unwrap();
    wait_for_shell(&vm).await;
    vm
}

#[tokio::test]
async fn runs_commands_streams_output_and_returns_the_status() {
    let scratch = Scratch::new();
    let mut vm = booted(&scratch).await;
    let console = vm.console().unwrap();

    let started = Instant::now();
    let seen: Arc<Mutex<Vec<(Duration, String)>>> = Arc::default();
    let sink = seen.clone();
    let done = console
        .run(
            "for i in 1 2 3; do echo line$i; sleep 1; done",
            RunOptions::new(T).on_output(move |text| {
                sink.lock()
                    .unwrap()
                    .push((started.elapsed(), text.to_string()))
            }),
        )
        .await
        .unwrap();
    let total = started.elapsed();
    assert_eq!(done.status, 0);
    assert_eq!(done.output, "line1\nline2\nline3\n");
    let seen = seen.lock().unwrap().clone();
    let streamed: String = seen.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(streamed, done.output);
    let (first_at, first) = &seen[0];
    assert!(first.starts_with("line1"), "{seen:?}");
    assert!(
        *first_at + Duration::from_millis(1500) < total,
        "line1 came at {first_at:?}, the command ended at {total:?}"
    );

    let failed = console.run("false", RunOptions::new(T)).await.unwrap();
    assert_eq!((failed.status, failed.output.as_str()), (1, ""));
    let three = console
        .run("sh -c 'echo out; exit 3'", RunOptions::new(T))
        .await
        .unwrap();
    assert_eq!((three.status, three.output.as_str()), (3, "out\n"));
    // No trailing newline, quotes, and escapes in the output.
    let odd = console
        .run(
            r#"printf "it's \033[1;31mred\033[0m"; echo >&2 err"#,
            RunOptions::new(T),
        )
        .await
        .unwrap();
    assert_eq!((odd.status, odd.output.as_str()), (0, "it's rederr\n"));
    // Large output: the returned text keeps the newest bytes, the callback got it all.
    let all: Arc<Mutex<String>> = Arc::default();
    let sink = all.clone();
    let big = console
        .run(
            "seq 1 5000",
            RunOptions::new(T)
                .max_output(4096)
                .on_output(move |text| sink.lock().unwrap().push_str(text)),
        )
        .await
        .unwrap();
    let expected: String = (1..=5000).map(|i| format!("{i}\n")).collect();
    assert_eq!(*all.lock().unwrap(), expected);
    assert!(
        big.dropped > 0 && big.output.len() <= 4096 + 4096,
        "{}",
        big.dropped
    );
    assert!(expected.ends_with(&big.output));
    // State persists between commands (eval in the same shell).
    console.run("cd /proc", RunOptions::new(T)).await.unwrap();
    let pwd = console.run("pwd", RunOptions::new(T)).await.unwrap();
    assert_eq!(pwd.output, "/proc\n");
    vm.kill().await.unwrap();
}

#[tokio::test]
async fn a_failure_pattern_ends_the_command_at_once_with_the_tail() {
    let scratch = Scratch::new();
    let mut vm = booted(&scratch).await;
    let console = vm.console().unwrap();
    let sysrq = console
        .run("test -e /proc/sysrq-trigger", RunOptions::new(T))
        .await
        .unwrap()
        .success();
    let command = if sysrq {
        "echo c > /proc/sysrq-trigger"
    } else {
        "echo 'Kernel panic - not syncing: test'; sleep 60"
    };
    let started = Instant::now();
    let err = console
        .run(
            command,
            RunOptions::new(Duration::from_secs(60)).failure_pattern("Kernel panic"),
        )
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(30), "{err}");
    match err.kind() {
        ErrorKind::Console {
            problem,
            last_output,
        } => {
            assert!(problem.contains("Kernel panic"), "{problem}");
            assert!(last_output.contains("Kernel panic"), "{last_output}");
        }
        other => panic!("{other}"),
    }
    println!("sysrq: {sysrq}; {err}");
    vm.kill().await.unwrap();
}

#[tokio::test]
async fn the_deadline_interrupts_the_command_and_the_console_stays_usable() {
    let scratch = Scratch::new();
    let mut vm = booted(&scratch).await;
    let console = vm.console().unwrap();
    let started = Instant::now();
    let err = console
        .run("sleep 30", RunOptions::new(Duration::from_secs(2)))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10), "{err}");
    match err.kind() {
        ErrorKind::Timeout { awaited, seen, .. } => {
            assert!(awaited.contains("sleep 30"), "{awaited}");
            assert!(seen.contains("answers again"), "{seen}");
        }
        other => panic!("{other}"),
    }
    let after = console
        .run("echo still-here", RunOptions::new(T))
        .await
        .unwrap();
    assert_eq!((after.status, after.output.as_str()), (0, "still-here\n"));
    vm.kill().await.unwrap();
}

#[test]
fn multi_line_commands_are_refused() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (ours, _theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let err = rt.block_on(async {
        let console = qemu_machine::Console::start("t", ours, 1024, None).unwrap();
        console.run("a\nb", RunOptions::new(T)).await.unwrap_err()
    });
    assert!(matches!(err.kind(), ErrorKind::Config(_)), "{err}");
}

#[test]
fn expect_any_takes_what_expect_takes() {
    use std::io::Write;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    rt.block_on(async {
        let console = qemu_machine::Console::start("t", ours, 4096, None).unwrap();
        theirs.write_all(b"booting\nlogin: ").unwrap();
        let wanted = String::from("login:");
        console
            .expect_any(&wanted, ["Kernel panic".to_string()], T)
            .await
            .unwrap();
        theirs
            .write_all(b"x\nKernel panic - not syncing\n")
            .unwrap();
        let err = console
            .exec_and_expect_any("go", "never", [wanted, "Kernel panic".into()], T)
            .await
            .unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::Console { .. }), "{err}");
        let no_failures: [&str; 0] = [];
        theirs.write_all(b"done\n").unwrap();
        console.expect_any("done", no_failures, T).await.unwrap();
    });
}

#[tokio::test]
async fn the_command_runner_works_on_a_systemd_debian_guest_with_an_autologin_getty() {
    let scratch = Scratch::new();
    let mut vm = Machine::new(debian_guest(&scratch));
    vm.launch().await.unwrap();
    let console = vm.console().unwrap();
    // systemd under TCG on a loaded machine: give it time.
    console
        .expect_any(
            qemu_machine::Pattern::regex(r"root@debian:~# ").unwrap(),
            ["Kernel panic"],
            Duration::from_secs(240),
        )
        .await
        .unwrap();

    let started = Instant::now();
    let seen: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let sink = seen.clone();
    let done = console
        .run(
            "for i in 1 2 3; do echo line$i; sleep 1; done; uname -r",
            RunOptions::new(T).on_output(move |_| sink.lock().unwrap().push(started.elapsed())),
        )
        .await
        .unwrap();
    let total = started.elapsed();
    assert_eq!(done.status, 0, "{}", done.output);
    // Bash's bracketed-paste and the echo are gone: nothing but what the command printed.
    let version = common::linux_guest_dir().join("version");
    let kernel = std::fs::read_to_string(version).unwrap();
    assert_eq!(
        done.output,
        format!("line1\nline2\nline3\n{}\n", kernel.trim())
    );
    let first = seen.lock().unwrap()[0];
    assert!(
        first + Duration::from_millis(1500) < total,
        "{first:?} of {total:?}"
    );

    let three = console
        .run("(echo out; exit 3)", RunOptions::new(T))
        .await
        .unwrap();
    assert_eq!((three.status, three.output.as_str()), (3, "out\n"));
    let systemd = console
        .run("cat /proc/1/comm", RunOptions::new(T))
        .await
        .unwrap();
    assert_eq!(systemd.output, "systemd\n");

    // Debian's qemu-guest-agent answers too.
    let agent = vm.guest_agent(Duration::from_secs(120)).await.unwrap();
    agent.ping().await.unwrap();
    drop(agent);
    vm.shutdown().await.unwrap();
}
