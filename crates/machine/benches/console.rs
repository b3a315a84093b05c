//! `cargo bench --bench console`: expect latency and drain throughput, each beside a bare
//! socket baseline, in one run.
//!
//! - expect latency: from the moment a fake chardev peer writes the awaited bytes to
//!   `expect()` returning (baseline: a blocking read loop that scans for the same bytes);
//!   and the built-in guest's one-byte echo through real QEMU (TCG).
//! - drain throughput: a peer writes 512 MiB as fast as it can; the console drains it into
//!   its ring (baseline: a thread reading the socket into a scratch buffer).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use qemu_machine::console::Console;
use qemu_machine::guest::BANNER;
use qemu_machine::Machine;

const ROUNDS: usize = 2000;
const GUEST_ROUNDS: usize = 200;
const DRAIN_BYTES: usize = 512 * 1024 * 1024;
const CHUNK: usize = 256 * 1024;

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn bare_expect_latency() -> Vec<Duration> {
    let (mut ours, mut theirs) = UnixStream::pair().expect("pair");
    let mut buf = [0u8; 4096];
    let mut times = Vec::with_capacity(ROUNDS);
    for i in 0..ROUNDS {
        let token = format!("token{i}\n");
        let start = Instant::now();
        theirs.write_all(token.as_bytes()).expect("write");
        let mut seen = Vec::new();
        while memchr::memmem::find(&seen, token.as_bytes()).is_none() {
            let n = ours.read(&mut buf).expect("read");
            seen.extend_from_slice(&buf[..n]);
        }
        times.push(start.elapsed());
    }
    times
}

async fn console_expect_latency() -> Vec<Duration> {
    let (ours, mut theirs) = UnixStream::pair().expect("pair");
    let console = Console::start("bench", ours, 1 << 20, None).expect("console");
    let mut times = Vec::with_capacity(ROUNDS);
    for i in 0..ROUNDS {
        let token = format!("token{i}\n");
        let start = Instant::now();
        theirs.write_all(token.as_bytes()).expect("write");
        console
            .expect(token.as_str(), Duration::from_secs(5))
            .await
            .expect("expect");
        times.push(start.elapsed());
    }
    times
}

async fn guest_echo_latency() -> Vec<Duration> {
    let mut vm = Machine::new(Machine::builder(qemu_test_support::qemu()).builtin_guest());
    vm.launch().await.expect("launch");
    let console = vm.console().expect("console");
    console
        .expect(BANNER, Duration::from_secs(10))
        .await
        .expect("banner");
    let mut times = Vec::with_capacity(GUEST_ROUNDS);
    for i in 0..GUEST_ROUNDS {
        let byte = [b'a' + (i % 26) as u8];
        let start = Instant::now();
        console.write(&byte).await.expect("write");
        console
            .expect(&byte[..], Duration::from_secs(5))
            .await
            .expect("echo");
        times.push(start.elapsed());
    }
    vm.shutdown().await.expect("shutdown");
    times
}

fn writer(mut peer: UnixStream) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let chunk = vec![b'x'; CHUNK];
        for _ in 0..DRAIN_BYTES / CHUNK {
            peer.write_all(&chunk).expect("write");
        }
    })
}

fn bare_drain() -> f64 {
    let (mut ours, theirs) = UnixStream::pair().expect("pair");
    let start = Instant::now();
    let writer = writer(theirs);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    while total < DRAIN_BYTES {
        total += ours.read(&mut buf).expect("read");
    }
    let rate = DRAIN_BYTES as f64 / start.elapsed().as_secs_f64() / 1e6;
    writer.join().expect("writer");
    rate
}

async fn console_drain() -> f64 {
    let (ours, theirs) = UnixStream::pair().expect("pair");
    let console = Console::start("bench", ours, 1 << 20, None).expect("console");
    let start = Instant::now();
    let writer = writer(theirs);
    while console.counters().0 < DRAIN_BYTES as u64 {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let rate = DRAIN_BYTES as f64 / start.elapsed().as_secs_f64() / 1e6;
    writer.join().expect("writer");
    rate
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
    let bare = bare_expect_latency();
    let ours = runtime.block_on(console_expect_latency());
    let guest = runtime.block_on(guest_echo_latency());
    let (bare_p50, ours_p50, guest_p50) = (
        percentile(bare.clone(), 0.5),
        percentile(ours.clone(), 0.5),
        percentile(guest.clone(), 0.5),
    );
    println!("expect latency, write → match, {ROUNDS} rounds (p50 / p99):");
    println!(
        "  bare blocking read loop          {:7.1} / {:7.1} us",
        us(bare_p50),
        us(percentile(bare, 0.99))
    );
    println!(
        "  Console::expect (fake peer)      {:7.1} / {:7.1} us",
        us(ours_p50),
        us(percentile(ours, 0.99))
    );
    println!(
        "  built-in guest echo, 1 byte, TCG {:7.1} / {:7.1} us  ({GUEST_ROUNDS} rounds)",
        us(guest_p50),
        us(percentile(guest, 0.99))
    );
    let bare_rate = bare_drain();
    let our_rate = runtime.block_on(console_drain());
    println!("drain throughput, {} MiB:", DRAIN_BYTES >> 20);
    println!("  bare read loop                   {bare_rate:7.0} MB/s");
    println!("  Console (ring buffer)            {our_rate:7.0} MB/s");
    println!(
        "console: expect_p50_us={:.1} expect_bare_p50_us={:.1} guest_echo_p50_us={:.1} drain_mb_s={our_rate:.0} drain_bare_mb_s={bare_rate:.0}",
        us(ours_p50),
        us(bare_p50),
        us(guest_p50)
    );
}
