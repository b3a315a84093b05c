//! Every mode, run to the end, leaves no fd, QEMU child or socket file behind. One test in
//! its own binary, so no other test's descriptors blur the count.

use std::time::{Duration, Instant};

use qemu_test_support::{open_fds, qemu_children, BareQemu};
use qmp::{Client, EventFilter, Listener};
use serde_json::json;

const T: Duration = Duration::from_secs(10);

async fn quit(client: Client, mut qemu: BareQemu) {
    let mut events = client.subscribe(EventFilter::all());
    client.execute("quit", json!({})).await.unwrap();
    while events.recv_timeout(T).await.is_ok() {}
    assert!(qemu.wait_exit(T).success());
}

trait ClosedWithin {
    async fn closed_within(&self, timeout: Duration) -> bool;
}

impl ClosedWithin for Client {
    async fn closed_within(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.closed()).await.is_ok()
    }
}

#[test]
fn nothing_is_left_behind() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    qmp::blocking::runtime().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let baseline = open_fds();

    runtime.block_on(async {
        for round in 0..3 {
            // Socketpair.
            let (qemu, ours) = BareQemu::with_socketpair(&["-machine", "none"]);
            let client = Client::builder().adopt_unix(ours).await.unwrap();
            quit(client, qemu).await;

            // Server mode, UNIX.
            let path = dir.path().join(format!("qmp{round}.sock"));
            let listener = Listener::bind_unix(&path).unwrap();
            let qemu = BareQemu::spawn(
                &[
                    "-machine".into(),
                    "none".into(),
                    "-chardev".into(),
                    format!("socket,id=mon,path={}", path.display()),
                    "-mon".into(),
                    "chardev=mon,mode=control".into(),
                ],
                &[],
            );
            let client = listener.accept(Client::builder(), T).await.unwrap();
            quit(client, qemu).await;

            // A session dropped without quit: the QEMU is killed by its guard, and the
            // client's socket closes with the last handle.
            let (qemu, ours) = BareQemu::with_socketpair(&["-machine", "none"]);
            let client = Client::builder().adopt_unix(ours).await.unwrap();
            let _subscription = client.subscribe(EventFilter::all());
            drop(client);
            drop(qemu);

            // The multiplexer: a negotiated client, a client dropped for its budget, a
            // refused extra client; then the multiplexer is dropped with clients connected.
            let (qemu, ours) = BareQemu::with_socketpair(&["-machine", "none"]);
            let upstream = Client::builder().adopt_unix(ours).await.unwrap();
            let path = dir.path().join(format!("mux{round}.sock"));
            let mux = qmp::Multiplexer::serve_with(
                upstream.clone(),
                &path,
                qmp::MultiplexerOptions::default()
                    .outbox_budget(64 * 1024)
                    .max_clients(2),
            )
            .unwrap();
            let a = Client::builder().connect_unix(&path).await.unwrap();
            a.execute("query-status", json!({})).await.unwrap();
            let mut greedy = std::os::unix::net::UnixStream::connect(&path).unwrap();
            std::io::Write::write_all(
                &mut greedy,
                b"{\"execute\": \"qmp_capabilities\"}\n{\"execute\": \"query-qmp-schema\"}\n",
            )
            .unwrap();
            greedy.set_read_timeout(Some(T)).unwrap();
            // Dropped for its budget (the schema is bigger): EOF after what was written.
            let mut sink = Vec::new();
            std::io::Read::read_to_end(&mut greedy, &mut sink).unwrap();
            drop(mux);
            assert!(a.closed_within(T).await);
            drop(a);
            quit(upstream, qemu).await;
        }
    });

    // The blocking facade too.
    let (qemu, ours) = BareQemu::with_socketpair(&["-machine", "none"]);
    let client = qmp::blocking::Client::adopt_unix(Client::builder(), ours).unwrap();
    client.execute("query-status", json!({})).unwrap();
    drop(client);
    drop(qemu);

    let deadline = Instant::now() + T;
    loop {
        let now = open_fds();
        let children = qemu_children();
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        if now <= baseline && children.is_empty() && files.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: fds {baseline} -> {now}, QEMU children {children:?}, files {files:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
