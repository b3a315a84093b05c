//! The spawner under load: many launches at once from a multi-threaded runtime, their
//! futures dropped at random points, and raw spawns from many threads; afterwards nothing
//! is left (no process, zombie, descriptor or mapping). One test at a time: they count
//! this process's children, descriptors and mappings.

use qemu_test_support::machine as common;

use std::time::{Duration, Instant};

use common::{open_fds, Scratch};
use qemu_machine::argv_process::{ArgvProcess, Output};
use qemu_machine::Machine;

static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Every process (not thread) whose parent is this process, zombies included.
fn children() -> Vec<qemu_test_support::processes::ProcStat> {
    let me = std::process::id();
    qemu_test_support::processes::all_processes()
        .into_iter()
        .filter(|p| p.ppid == me)
        .collect()
}

fn maps() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

/// Waits (bounded) until this process has no child left; panics with the list if it has.
fn assert_no_children(within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left = children();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "children left: {left:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (bounded) until `f()` is at most `limit`, panicking with `what` otherwise.
fn settles(what: &str, limit: usize, within: Duration, f: impl Fn() -> usize) {
    let deadline = Instant::now() + within;
    loop {
        let now = f();
        if now <= limit {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {now} > {limit}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A small xorshift: random enough to scatter the cancellation points.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn concurrent_launches_dropped_at_random_points_leave_nothing() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let scratch = Scratch::new();
    let rounds: usize = std::env::var("STRESS_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let per_round = 40;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
    let round = |rng: &mut Rng| {
        let delays: Vec<u64> = (0..per_round).map(|_| rng.below(60)).collect();
        runtime.block_on(async {
            let mut tasks = Vec::new();
            for (i, delay) in delays.into_iter().enumerate() {
                let builder = scratch.builder().machine_type("none");
                tasks.push(tokio::spawn(async move {
                    let mut vm = Machine::new(builder);
                    let launched = if i % 5 == 0 {
                        // Some launches run to the end.
                        Some(vm.launch().await)
                    } else {
                        tokio::time::timeout(Duration::from_millis(delay), vm.launch())
                            .await
                            .ok()
                    };
                    if i % 3 == 0 {
                        if let Some(Ok(())) = launched {
                            let _ = vm.shutdown().await;
                        }
                    }
                    drop(vm);
                }));
            }
            for task in tasks {
                task.await.unwrap();
            }
        });
    };
    // Warm-up: threads, runtimes and caches that live as long as the process.
    round(&mut rng);
    assert_no_children(Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(200));
    let (fds, mapped) = (open_fds(), maps());
    for _ in 0..rounds {
        round(&mut rng);
    }
    assert_no_children(Duration::from_secs(20));
    settles("open descriptors", fds, Duration::from_secs(10), open_fds);
    // Thread stacks of the blocking pool may come and go: some slack, not one per VM.
    settles("mappings", mapped + 40, Duration::from_secs(15), maps);
}

#[test]
fn raw_spawns_from_many_threads_dropped_at_once_leave_nothing() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let sleep: Vec<String> = ["sleep", "30"].map(String::from).to_vec();
    let round = || {
        let threads: Vec<_> = (0..32)
            .map(|i| {
                let sleep = sleep.clone();
                std::thread::spawn(move || {
                    for _ in 0..5 {
                        let mut p = ArgvProcess::spawn(&sleep, &[], Output::Inherit).unwrap();
                        if i % 2 == 0 {
                            p.kill();
                            let status = p.wait_timeout(Duration::from_secs(10)).unwrap();
                            use std::os::unix::process::ExitStatusExt;
                            assert_eq!(status.and_then(|s| s.signal()), Some(9), "{status:?}");
                        }
                        drop(p);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    };
    round();
    assert_no_children(Duration::from_secs(20));
    let (fds, mapped) = (open_fds(), maps());
    for _ in 0..4 {
        round();
    }
    assert_no_children(Duration::from_secs(20));
    settles("open descriptors", fds, Duration::from_secs(10), open_fds);
    settles("mappings", mapped + 40, Duration::from_secs(15), maps);
}

/// A runtime shut down (in the background, as at a host's exit) with launches in flight:
/// whatever each one got to is killed and reaped all the same.
#[test]
fn a_runtime_shut_down_mid_launch_leaves_nothing() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let scratch = Scratch::new();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ u64::from(std::process::id()));
    for _ in 0..6 {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        for _ in 0..20 {
            let builder = scratch.builder().machine_type("none");
            runtime.spawn(async move {
                let mut vm = Machine::new(builder);
                let _ = vm.launch().await;
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
        std::thread::sleep(Duration::from_millis(rng.below(80)));
        runtime.shutdown_background();
    }
    assert_no_children(Duration::from_secs(30));
}
