//! `cargo bench --bench machine`: a machine's life against a bare client (spawn QEMU with a
//! socketpair monitor, read the greeting, negotiate, quit, wait; no library), in one run.
//!
//! - cycle: launch → QMP ready → quit → exit, 20 cycles, alternating bare and library.
//! - fleet50: 50 VMs launched concurrently, then all shut down; bare uses one thread per VM.
//! - memory: this process's RSS growth per running VM, over 50 VMs.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qemu_machine::{fleet, Machine, MachineBuilder};

const CYCLES: usize = 20;
const FLEET: usize = 50;

/// The baseline: a QEMU and its monitor, by hand.
struct BareVm {
    child: Child,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl BareVm {
    fn launch() -> BareVm {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let fd = theirs.as_raw_fd();
        let mut command = Command::new(qemu_test_support::qemu());
        command
            .args([
                "-display",
                "none",
                "-vga",
                "none",
                "-nodefaults",
                "-machine",
                "none",
            ])
            .args(["-chardev", &format!("socket,id=mon,fd={fd}")])
            .args(["-mon", "chardev=mon,mode=control"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: between fork and exec only fcntl (async-signal-safe) runs, and its error
        // becomes an io::Error holding the raw errno: nothing is allocated.
        unsafe {
            command.pre_exec(move || {
                nix::fcntl::fcntl(
                    fd,
                    nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
                )?;
                Ok(())
            });
        }
        let child = command.spawn().expect("spawn");
        drop(theirs);
        let writer = ours.try_clone().expect("clone");
        let mut vm = BareVm {
            child,
            reader: BufReader::new(ours),
            writer,
        };
        vm.line(); // greeting
        vm.writer
            .write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
            .expect("write");
        vm.line();
        vm
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read");
        line
    }

    fn quit(mut self) {
        self.writer
            .write_all(b"{\"execute\":\"quit\"}\n")
            .expect("write");
        self.child.wait().expect("wait");
    }
}

fn config() -> MachineBuilder {
    Machine::builder(qemu_test_support::qemu())
        .machine_type("none")
        .args(["-nodefaults"])
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    println!(
        "QEMU {}: {}",
        qemu_test_support::qemu_version(),
        qemu_test_support::qemu_version().line
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    // Warm both paths up (page cache, the spawner thread, the runtime).
    BareVm::launch().quit();
    runtime.block_on(async {
        let mut vm = Machine::new(config());
        vm.launch().await.expect("launch");
        vm.shutdown().await.expect("shutdown");
    });

    // The run dir's mkdir/rmdir is most of our overhead on a disk filesystem (ext4 rmdir
    // ~150 us); a tmpfs base dir shows the rest.
    let tmpfs = std::path::Path::new("/dev/shm");
    let (mut bare, mut ours, mut ours_tmpfs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..CYCLES {
        let start = Instant::now();
        BareVm::launch().quit();
        bare.push(start.elapsed());
        for (times, base) in [(&mut ours, None), (&mut ours_tmpfs, Some(tmpfs))] {
            let start = Instant::now();
            runtime.block_on(async {
                let config = match base {
                    Some(dir) if dir.is_dir() => config().base_temp_dir(dir),
                    _ => config(),
                };
                let mut vm = Machine::new(config);
                vm.launch().await.expect("launch");
                vm.shutdown().await.expect("shutdown");
            });
            times.push(start.elapsed());
        }
    }
    let (bare_cycle, our_cycle, tmpfs_cycle) = (median(bare), median(ours), median(ours_tmpfs));
    let cycle_ratio = our_cycle.as_secs_f64() / bare_cycle.as_secs_f64();
    let tmpfs_ratio = tmpfs_cycle.as_secs_f64() / bare_cycle.as_secs_f64();
    println!("launch → QMP ready → quit → exit, median of {CYCLES} cycles:");
    println!(
        "  bare client                      {:7.1} ms   1.00x",
        ms(bare_cycle)
    );
    println!(
        "  Machine (run dir in {})     {:7.1} ms   {cycle_ratio:.2}x",
        std::env::temp_dir().display(),
        ms(our_cycle)
    );
    println!(
        "  Machine (run dir in /dev/shm)    {:7.1} ms   {tmpfs_ratio:.2}x",
        ms(tmpfs_cycle)
    );

    // Fleet: bare, one thread per VM for each phase.
    let start = Instant::now();
    let vms: Vec<BareVm> = (0..FLEET)
        .map(|_| std::thread::spawn(BareVm::launch))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().expect("bare launch"))
        .collect();
    let bare_up = start.elapsed();
    let quitters: Vec<_> = vms
        .into_iter()
        .map(|vm| std::thread::spawn(move || vm.quit()))
        .collect();
    for quitter in quitters {
        quitter.join().expect("bare quit");
    }
    let bare_fleet = start.elapsed();

    // Fleet: the library, with memory measured while all 50 run.
    let (our_up, our_fleet, rss_per_vm) = runtime.block_on(async {
        let mut vms: Vec<Machine> = (0..FLEET).map(|_| Machine::new(config())).collect();
        let rss_before = rss_kib();
        let start = Instant::now();
        for result in fleet::launch_all(&mut vms).await {
            result.expect("launch");
        }
        let up = start.elapsed();
        let rss_per_vm = rss_kib().saturating_sub(rss_before) as f64 / FLEET as f64;
        for result in fleet::shutdown_all(&mut vms, Duration::from_secs(30)).await {
            result.expect("shutdown");
        }
        (up, start.elapsed(), rss_per_vm)
    });
    let fleet_ratio = our_fleet.as_secs_f64() / bare_fleet.as_secs_f64();
    println!("{FLEET} VMs launched concurrently, then all shut down:");
    println!(
        "  bare client   all up {:7.1} ms, all gone {:7.1} ms   1.00x",
        ms(bare_up),
        ms(bare_fleet)
    );
    println!(
        "  Machine       all up {:7.1} ms, all gone {:7.1} ms   {fleet_ratio:.2}x",
        ms(our_up),
        ms(our_fleet)
    );
    println!("manager memory: {rss_per_vm:.0} KiB RSS per running VM (over {FLEET})");
    println!(
        "machine: cycle_bare_ms={:.1} cycle_ms={:.1} cycle_ratio={cycle_ratio:.3} cycle_tmpfs_ratio={tmpfs_ratio:.3} fleet50_bare_ms={:.0} fleet50_ms={:.0} fleet50_ratio={fleet_ratio:.3} rss_per_vm_kib={rss_per_vm:.0}",
        ms(bare_cycle),
        ms(our_cycle),
        ms(bare_fleet),
        ms(our_fleet)
    );
}
