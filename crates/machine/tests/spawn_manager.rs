//! The spawner inside a manager that is SIGKILLed during a burst of spawns, that gets
//! signals meanwhile, or that has a large heap: this test binary runs itself as that
//! manager (env `SPAWN_MANAGER_ROLE`).

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::libc;
use qemu_machine::argv_process::{ArgvProcess, Output};

const ROLE: &str = "SPAWN_MANAGER_ROLE";

/// A string unique to one call, to find what a manager started by its command line.
fn marker() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "spawn-manager-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// Pids whose command line holds `marker`.
fn with_marker(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            if cmdline
                .windows(marker.len())
                .any(|w| w == marker.as_bytes())
            {
                found.push(pid);
            }
        }
    }
    found
}

fn manager(role: &str, marker: &str) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .arg0(format!("manager-{marker}"))
        .args([
            "--exact",
            "as_manager",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(ROLE, role)
        .env("MARKER", marker)
        .stdin(Stdio::null())
        .process_group(0);
    command
}

/// Runs as the manager when `SPAWN_MANAGER_ROLE` says so; a no-op otherwise.
#[test]
fn as_manager() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let marker = std::env::var("MARKER").unwrap();
    match role.as_str() {
        "burst" => burst(&marker),
        "signals" => signals(&marker),
        "heap" => heap(&marker),
        other => panic!("no role {other}"),
    }
}

/// Spawns and drops `sleep`s from 8 threads forever (until killed).
fn burst(marker: &str) {
    let argv: Vec<String> = vec!["sh".into(), "-c".into(), format!("sleep 100; : {marker}")];
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let argv = argv.clone();
            std::thread::spawn(move || {
                let mut kept = Vec::new();
                loop {
                    let p = ArgvProcess::spawn(&argv, &[], Output::Inherit).unwrap();
                    if i % 2 == 0 {
                        kept.push(p);
                    }
                    if kept.len() > 5 {
                        kept.clear();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn a_manager_killed_during_a_burst_of_spawns_leaves_nothing() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    for round in 0..10 {
        let marker = format!("{}-{round}", marker());
        let mut child = manager("burst", &marker).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(100 + 37 * round));
        let before = with_marker(&marker).len();
        child.kill().unwrap();
        child.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = with_marker(&marker);
            if left.is_empty() {
                break;
            }
            let stats: Vec<String> = left
                .iter()
                .map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default())
                .collect();
            assert!(Instant::now() < deadline, "left: {stats:#?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("round {round}: {before} processes before the kill, none after");
    }
}

static FOREIGN: AtomicI32 = AtomicI32::new(0);
static HANDLED: AtomicUsize = AtomicUsize::new(0);
static MANAGER: AtomicI32 = AtomicI32::new(0);

extern "C" fn handler(_: libc::c_int) {
    // SAFETY: getpid is async-signal-safe.
    let me = unsafe { libc::syscall(libc::SYS_getpid) } as i32;
    if me != MANAGER.load(Ordering::SeqCst) {
        FOREIGN.store(me, Ordering::SeqCst);
    }
    HANDLED.fetch_add(1, Ordering::SeqCst);
}

/// Handlers for SIGINT, SIGTERM, SIGUSR1 and SIGUSR2 recording any run outside this
/// process; spawns from 8 threads while the parent signals our process group, checking
/// errno around failing calls on another thread; prints the verdict.
fn signals(marker: &str) {
    MANAGER.store(std::process::id() as i32, Ordering::SeqCst);
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGUSR1, libc::SIGUSR2] {
        // SAFETY: a handler that only does async-signal-safe things.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
    let argv: Vec<String> = vec!["sh".into(), "-c".into(), format!("exit 0; : {marker}")];
    let errno_bad = std::sync::Arc::new(AtomicUsize::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checker = {
        let (errno_bad, stop) = (errno_bad.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: close of a descriptor that is never open: EBADF, in our errno.
                unsafe {
                    libc::close(1 << 20);
                    if *libc::__errno_location() != libc::EBADF {
                        errno_bad.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        })
    };
    let spawned = std::sync::Arc::new(AtomicUsize::new(0));
    let failed = std::sync::Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (argv, spawned, failed) = (argv.clone(), spawned.clone(), failed.clone());
            std::thread::spawn(move || {
                for _ in 0..100 {
                    match ArgvProcess::spawn(&argv, &[], Output::Inherit) {
                        Ok(mut p) => {
                            let status = p.wait_timeout(Duration::from_secs(20)).unwrap();
                            if status.and_then(|s| s.code()) == Some(0) {
                                spawned.fetch_add(1, Ordering::SeqCst);
                            } else {
                                eprintln!("status {status:?}");
                                failed.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        Err(e) => {
                            eprintln!("spawn: {e}");
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    checker.join().unwrap();
    println!(
        "VERDICT foreign={} handled={} spawned={} failed={} errno_bad={}",
        FOREIGN.load(Ordering::SeqCst),
        HANDLED.load(Ordering::SeqCst),
        spawned.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst),
        errno_bad.load(Ordering::SeqCst)
    );
}

#[test]
fn signals_to_the_manager_during_spawns() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let marker = marker();
    let child = manager("signals", &marker)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spammer = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut sent = 0usize;
            // After the manager has installed its handlers (libtest starts first).
            std::thread::sleep(Duration::from_millis(500));
            let signals = [
                nix::sys::signal::Signal::SIGUSR1,
                nix::sys::signal::Signal::SIGUSR2,
                nix::sys::signal::Signal::SIGINT,
                nix::sys::signal::Signal::SIGTERM,
            ];
            while !done.load(Ordering::SeqCst) {
                // To the manager alone: its handlers must run there, not in a watchdog.
                let _ = nix::sys::signal::kill(pgid, signals[sent % 4]);
                sent += 1;
                std::thread::sleep(Duration::from_micros(200));
            }
            sent
        })
    };
    let output = child.wait_with_output().unwrap();
    done.store(true, Ordering::SeqCst);
    let sent = spammer.join().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("sent {sent}: {stdout}");
    let verdict = stdout
        .lines()
        .find_map(|l| l.find("VERDICT").map(|at| &l[at..]))
        .expect("a verdict");
    assert!(verdict.contains("foreign=0 "), "{verdict}");
    assert!(verdict.contains("failed=0 "), "{verdict}");
    assert!(verdict.ends_with("errno_bad=0"), "{verdict}");
    assert!(with_marker(&marker).is_empty());
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn minor_faults() -> i64 {
    // SAFETY: getrusage into a zeroed struct on our stack.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage.ru_minflt
    }
}

/// 500 MB touched, then 20 spawns of `sleep` kept running, timed; then the heap written
/// again: with a forked watchdog each page would fault (copy-on-write), with ours none.
fn heap(marker: &str) {
    let mut heap = vec![0u8; 500 << 20];
    for page in heap.chunks_mut(4096) {
        page[0] = 1;
    }
    let argv: Vec<String> = vec!["sh".into(), "-c".into(), format!("sleep 60; : {marker}")];
    let mut times = Vec::new();
    let mut kept = Vec::new();
    for _ in 0..20 {
        let start = Instant::now();
        kept.push(ArgvProcess::spawn(&argv, &[], Output::Inherit).unwrap());
        times.push(start.elapsed());
    }
    let faults = minor_faults();
    for page in heap.chunks_mut(4096) {
        page[0] = 2;
    }
    let faults = minor_faults() - faults;
    times.sort();
    println!(
        "HEAP median_us={} max_us={} rss_kib={} cow_faults={faults}",
        times[times.len() / 2].as_micros(),
        times[times.len() - 1].as_micros(),
        rss_kib(std::process::id()),
    );
    drop(kept);
}

#[test]
fn a_large_heap_does_not_slow_spawns_nor_turn_copy_on_write() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let marker = marker();
    let output = manager("heap", &marker)
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}");
    assert!(output.status.success(), "{output:?}");
    let field = |name: &str| -> u64 {
        stdout
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {stdout}"))
    };
    // 128,000 pages written: a copy-on-write of each would fault.
    assert!(field("cow_faults=") < 10_000, "{stdout}");
    // A fork would copy the page tables of 500 MB; wide margin for a loaded host.
    assert!(field("median_us=") < 100_000, "{stdout}");
    assert!(with_marker(&marker).is_empty());
}
