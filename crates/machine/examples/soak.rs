//! Soak: many cycles of launch → a QMP command → a console echo → shutdown with the
//! built-in guest, sampling this process's open fds, child processes, threads and the run
//! dirs every 100 cycles. Exits non-zero unless every sample equals the first.
//!
//! `cargo run --release -p qemu-machine --example soak -- [CYCLES]` (default 1000)

use std::time::{Duration, Instant};

use qemu_machine::guest::BANNER;
use qemu_machine::Machine;
use serde_json::json;

const T: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sample {
    fds: usize,
    children: usize,
    threads: usize,
    run_dirs: usize,
}

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn sample(base: &std::path::Path) -> Sample {
    let me = std::process::id().to_string();
    let children = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("stat"))
                .ok()
                .and_then(|stat| {
                    let close = stat.rfind(')')?;
                    stat[close + 2..].split(' ').nth(1).map(|ppid| ppid == me)
                })
                .unwrap_or(false)
        })
        .count();
    Sample {
        fds: count("/proc/self/fd"),
        children,
        threads: count("/proc/self/task"),
        run_dirs: count(base.to_str().unwrap_or("/nonexistent")),
    }
}

async fn cycle(base: &std::path::Path, i: usize) -> qemu_machine::Result<()> {
    let mut vm = Machine::new(
        Machine::builder(qemu_test_support::qemu())
            .base_temp_dir(base)
            .builtin_guest(),
    );
    vm.launch().await?;
    vm.cmd("query-status", json!({})).await?;
    let console = vm.console()?;
    console.expect(BANNER, T).await?;
    let token = format!("soak-{i}");
    console
        .exec_and_expect(&token, format!("{token}\n").as_str(), T)
        .await?;
    vm.shutdown_timeout(T).await
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cycles: usize = std::env::args().nth(1).map_or(Ok(1000), |c| c.parse())?;
    let base = tempfile::tempdir()?;
    // One cycle first: the spawner thread and the runtime's own descriptors exist from then.
    cycle(base.path(), 0).await?;
    let first = sample(base.path());
    println!("cycle     fds  children  threads  run_dirs   cycles/s");
    println!(
        "{:>5} {:>7} {:>9} {:>8} {:>9}",
        0, first.fds, first.children, first.threads, first.run_dirs
    );
    let mut samples = vec![first];
    let start = Instant::now();
    let mut last = Instant::now();
    for i in 1..=cycles {
        cycle(base.path(), i).await?;
        if i % 100 == 0 || i == cycles {
            let s = sample(base.path());
            let rate = 100f64.min(i as f64) / last.elapsed().as_secs_f64();
            last = Instant::now();
            println!(
                "{i:>5} {:>7} {:>9} {:>8} {:>9} {rate:>10.1}",
                s.fds, s.children, s.threads, s.run_dirs
            );
            samples.push(s);
        }
    }
    let flat = samples.iter().all(|s| *s == first);
    println!(
        "soak: cycles={cycles} seconds={:.0} flat={flat} fds={} children={} threads={} run_dirs={}",
        start.elapsed().as_secs_f64(),
        first.fds,
        first.children,
        first.threads,
        first.run_dirs
    );
    if !flat {
        return Err("resources grew during the soak".into());
    }
    Ok(())
}
