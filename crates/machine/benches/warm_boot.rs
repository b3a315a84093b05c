//! Warm boot: the Linux test guest booted cold to a responding shell, against the same
//! guest restored from a saved state to a responding shell (`Machine::launch_restored`),
//! for 256 MiB and 1 GiB of guest memory. "Responding" means a command typed on the
//! console (`Console::run("true")`) has answered. Medians of `$WARM_BOOT_RUNS` runs each
//! (default 10), the state file's size and the QEMU version; the last line, for the
//! 256 MiB guest:
//!
//! ```text
//! warm_boot: cold_ms=... warm_ms=... ratio=... state_mib=...
//! ```
//!
//! `cargo bench -p qemu-machine --bench warm_boot` (QEMU from `$QEMU`, the guest from
//! `.cache/guests/linux`; KVM where it really works, else TCG).

use std::time::{Duration, Instant};

use qemu_machine::{Machine, MachineBuilder, RunOptions};
use qemu_test_support::machine::{linux_guest, Scratch};

const DEADLINE: Duration = Duration::from_secs(180);

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    if n % 2 == 1 {
        samples[n / 2]
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) / 2.0
    }
}

fn spread(samples: &[f64]) -> String {
    let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
    let max = samples.iter().copied().fold(0.0, f64::max);
    format!("min {min:.0} max {max:.0}")
}

/// The command that proves the shell answers.
async fn responds(vm: &Machine) {
    let done = vm
        .console()
        .expect("console")
        .run("true", RunOptions::new(DEADLINE))
        .await
        .expect("the shell answers");
    assert_eq!(done.status, 0);
}

async fn cold(builder: &MachineBuilder) -> f64 {
    let mut vm = Machine::new(builder.clone());
    let started = Instant::now();
    vm.launch().await.expect("launch");
    vm.console()
        .expect("console")
        .expect_any("guest# ", ["Kernel panic"], DEADLINE)
        .await
        .expect("the prompt");
    responds(&vm).await;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    vm.kill().await.expect("kill");
    ms
}

async fn warm(builder: &MachineBuilder, state: &std::path::Path) -> f64 {
    let mut vm = Machine::new(builder.clone());
    let started = Instant::now();
    vm.launch_restored(state, DEADLINE).await.expect("restore");
    responds(&vm).await;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    vm.kill().await.expect("kill");
    ms
}

struct Figures {
    cold_ms: f64,
    warm_ms: f64,
    state_mib: f64,
}

async fn measure(
    scratch: &Scratch,
    memory_mib: u64,
    runs: usize,
    files: &std::path::Path,
) -> Figures {
    let (builder, _) = linux_guest(scratch);
    // A later -m wins over the guest's 256M.
    let builder = builder.args(["-m", &format!("{memory_mib}M")]);
    let mut vm = Machine::new(builder.clone());
    vm.launch().await.expect("launch");
    let size = vm
        .cmd("query-memory-size-summary", ())
        .await
        .expect("memory size")["base-memory"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(
        size,
        memory_mib << 20,
        "the guest has {size} bytes of memory"
    );
    vm.console()
        .expect("console")
        .expect("guest# ", DEADLINE)
        .await
        .expect("the prompt");
    responds(&vm).await;
    let state = files.join(format!("linux-{memory_mib}.state"));
    let info = vm.save_state(&state, DEADLINE).await.expect("save");
    vm.kill().await.expect("kill");
    let state_mib = info.file_bytes() as f64 / (1u64 << 20) as f64;

    let mut colds = Vec::new();
    let mut warms = Vec::new();
    for _ in 0..runs {
        colds.push(cold(&builder).await);
        warms.push(warm(&builder, &state).await);
    }
    let figures = Figures {
        cold_ms: median(colds.clone()),
        warm_ms: median(warms.clone()),
        state_mib,
    };
    println!(
        "{memory_mib:>5} MiB guest: cold boot to shell {:.0} ms ({}), restore to shell {:.0} ms ({}), \
         ratio {:.3}; state {:.1} MiB, saved in {} ms",
        figures.cold_ms,
        spread(&colds),
        figures.warm_ms,
        spread(&warms),
        figures.warm_ms / figures.cold_ms,
        state_mib,
        info.save_ms
    );
    figures
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: run once then.
    let benching = std::env::args().any(|a| a == "--bench");
    let runs = std::env::var("WARM_BOOT_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if benching { 10 } else { 1 })
        .max(1);
    let version = qemu_test_support::qemu_version();
    let accel = qemu_machine::Accel::KvmOrTcg.as_arg();
    println!(
        "QEMU {version}: {} (accel {accel}), {runs} runs each",
        version.line
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let scratch = Scratch::new();
        let files = tempfile::tempdir().expect("temp dir");
        let small = measure(&scratch, 256, runs, files.path()).await;
        measure(&scratch, 1024, runs, files.path()).await;
        println!(
            "warm_boot: cold_ms={:.0} warm_ms={:.0} ratio={:.3} state_mib={:.1}",
            small.cold_ms,
            small.warm_ms,
            small.warm_ms / small.cold_ms,
            small.state_mib
        );
    });
}
