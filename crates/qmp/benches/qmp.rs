//! `cargo bench --bench qmp`: QMP round trips against one real QEMU, with a bare blocking
//! client as the baseline, and event decoding throughput through the fake peer.
//!
//! One QEMU with three monitors (one per client), so all three clients talk to the same
//! process; rounds alternate between clients so drift on a shared machine hits all alike.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qemu_test_support::KillOnDrop;
use qmp::fake::FakePeer;
use qmp::{Client, EventFilter};
use serde_json::json;

const ROUND_TRIPS: usize = 5000;
const ROUNDS: usize = 50;
const EVENTS: usize = 200_000;

fn spawn_qemu(monitors: usize) -> (KillOnDrop, Vec<UnixStream>) {
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut command = Command::new(qemu_test_support::qemu());
    command
        .args(["-display", "none", "-nodefaults", "-machine", "none"])
        .stdin(Stdio::null());
    for i in 0..monitors {
        let (a, b) = UnixStream::pair().expect("socketpair");
        command
            .arg("-chardev")
            .arg(format!("socket,id=m{i},fd={}", b.as_raw_fd()))
            .arg("-mon")
            .arg(format!("chardev=m{i},mode=control"));
        ours.push(a);
        theirs.push(b);
    }
    let fds: Vec<i32> = theirs.iter().map(|s| s.as_raw_fd()).collect();
    // SAFETY: between fork and exec the closure only calls fcntl, which is
    // async-signal-safe and allocates nothing, on descriptor numbers that `theirs` keeps
    // open until the spawn has returned.
    unsafe {
        command.pre_exec(move || {
            for fd in &fds {
                nix::fcntl::fcntl(
                    *fd,
                    nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
                )?;
            }
            Ok(())
        });
    }
    let child = KillOnDrop(command.spawn().expect("spawn qemu-system-x86_64"));
    (child, ours)
}

/// The floor: write a line, read a line, no JSON parsing, no threads.
struct Bare {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    line: String,
}

impl Bare {
    fn new(stream: UnixStream) -> Bare {
        let writer = stream.try_clone().expect("clone");
        let mut bare = Bare {
            writer,
            reader: BufReader::new(stream),
            line: String::new(),
        };
        bare.read_line(); // greeting
        bare.round_trip(b"{\"execute\":\"qmp_capabilities\"}\n");
        bare
    }

    fn read_line(&mut self) {
        self.line.clear();
        self.reader.read_line(&mut self.line).expect("read");
    }

    fn round_trip(&mut self, request: &[u8]) {
        self.writer.write_all(request).expect("write");
        self.read_line();
    }
}

fn time_per_op(n: usize, mut op: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        op();
    }
    start.elapsed() / n as u32
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    println!(
        "QEMU {}: {}",
        qemu_test_support::qemu_version(),
        qemu_test_support::qemu_version().line
    );
    let (_qemu, mut monitors) = spawn_qemu(3);
    let blocking_stream = monitors.pop().expect("monitor");
    let async_stream = monitors.pop().expect("monitor");
    let mut bare = Bare::new(monitors.pop().expect("monitor"));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let async_client = runtime
        .block_on(Client::builder().adopt_unix(async_stream))
        .expect("async client");
    let blocking_client =
        qmp::blocking::Client::adopt_unix(Client::builder(), blocking_stream).expect("blocking");

    let per_round = ROUND_TRIPS / ROUNDS;
    let (mut bare_t, mut async_t, mut blocking_t) = (Vec::new(), Vec::new(), Vec::new());
    // Warm up all three.
    for _ in 0..200 {
        bare.round_trip(b"{\"execute\":\"query-status\",\"id\":0}\n");
        runtime
            .block_on(async_client.execute("query-status", json!({})))
            .expect("query-status");
        blocking_client
            .execute("query-status", json!({}))
            .expect("query-status");
    }
    for _ in 0..ROUNDS {
        bare_t.push(time_per_op(per_round, || {
            bare.round_trip(b"{\"execute\":\"query-status\",\"id\":1}\n")
        }));
        // Measured inside a task on the runtime, as async callers run.
        let client = async_client.clone();
        async_t.push(
            runtime
                .block_on(runtime.spawn(async move {
                    let start = Instant::now();
                    for _ in 0..per_round {
                        client
                            .execute("query-status", json!({}))
                            .await
                            .expect("query-status");
                    }
                    start.elapsed() / per_round as u32
                }))
                .expect("task"),
        );
        blocking_t.push(time_per_op(per_round, || {
            blocking_client
                .execute("query-status", json!({}))
                .expect("query-status");
        }));
    }
    let (bare_rtt, async_rtt, blocking_rtt) = (median(bare_t), median(async_t), median(blocking_t));
    let async_ratio = async_rtt.as_secs_f64() / bare_rtt.as_secs_f64();
    let blocking_ratio = blocking_rtt.as_secs_f64() / bare_rtt.as_secs_f64();
    println!("query-status round trip, {ROUND_TRIPS} each, median of {ROUNDS} rounds, one QEMU:");
    println!(
        "  bare blocking client (no parsing)  {:8.1} us   1.00x",
        micros(bare_rtt)
    );
    println!(
        "  qmp::Client (async)                {:8.1} us   {async_ratio:.2}x",
        micros(async_rtt)
    );
    println!(
        "  qmp::blocking::Client              {:8.1} us   {blocking_ratio:.2}x",
        micros(blocking_rtt)
    );

    let events_per_s = runtime.block_on(event_throughput());
    println!("event decoding through the fake peer: {EVENTS} events, {events_per_s:.0} events/s");
    println!(
        "qmp: rtt_bare_us={:.1} rtt_async_us={:.1} rtt_blocking_us={:.1} rtt_async_ratio={async_ratio:.3} rtt_blocking_ratio={blocking_ratio:.3} events_per_s={events_per_s:.0}",
        micros(bare_rtt),
        micros(async_rtt),
        micros(blocking_rtt)
    );
}

/// Events from the fake peer, written as fast as the socket takes them, until a subscriber
/// has received them all.
async fn event_throughput() -> f64 {
    let (ours, mut fake) = FakePeer::pair().expect("pair");
    let mut payload = Vec::new();
    for i in 0..EVENTS {
        payload.extend_from_slice(
            format!(
                "{{\"event\": \"BLOCK_JOB_READY\", \"data\": {{\"device\": \"job{i}\", \"len\": 1048576, \"offset\": 1048576, \"speed\": 0, \"type\": \"mirror\"}}, \"timestamp\": {{\"seconds\": 1700000000, \"microseconds\": {i}}}}}\r\n"
            )
            .as_bytes(),
        );
    }
    let server = tokio::spawn(async move {
        fake.handshake().await.expect("handshake");
        let request = fake
            .expect_command("start", Duration::from_secs(10))
            .await
            .expect("start");
        fake.reply(&request, json!({})).await.expect("reply");
        fake.send_raw(&payload).await.expect("events");
        fake.wait_closed(Duration::from_secs(60))
            .await
            .expect("close");
    });
    let client = Client::builder()
        .event_queue_capacity(EVENTS)
        .adopt_unix(ours)
        .await
        .expect("client");
    let mut events = client.subscribe(EventFilter::all());
    client.execute("start", json!({})).await.expect("start");
    let start = Instant::now();
    for _ in 0..EVENTS {
        events
            .recv_timeout(Duration::from_secs(30))
            .await
            .expect("event");
    }
    let rate = EVENTS as f64 / start.elapsed().as_secs_f64();
    client.close();
    server.await.expect("fake");
    rate
}
