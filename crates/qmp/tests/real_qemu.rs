//! The client against a real `qemu-system-x86_64`, in all three connection modes.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use qemu_test_support::BareQemu;
use qmp::commands::{AddFd, Closefd, Getfd, QueryFdsets, QueryStatus, QueryVersion, RunState};
use qmp::{Address, Client, Error, EventFilter, Listener, Request, TypedEvent};
use serde_json::json;

const T: Duration = Duration::from_secs(10);

async fn socketpair_client(extra: &[&str]) -> (BareQemu, Client) {
    let (qemu, ours) = BareQemu::with_socketpair(extra);
    let client = Client::builder().adopt_unix(ours).await.expect("handshake");
    (qemu, client)
}

#[tokio::test]
async fn socketpair_greeting_version_and_command_errors() {
    let (_qemu, client) = socketpair_client(&["-machine", "none"]).await;
    let greeting = client.greeting().expect("greeting");
    assert!(greeting.capabilities.iter().any(|c| c == "oob"));
    assert!(greeting.version.qemu.major >= 2);

    let version = client.call(&QueryVersion {}).await.unwrap();
    assert_eq!(version, greeting.version);

    let err = client
        .execute("no-such-command", json!({"x": 1}))
        .await
        .unwrap_err();
    assert_eq!(err.class(), Some("CommandNotFound"));
    let Error::Command(e) = &err else {
        panic!("{err}")
    };
    assert_eq!(e.command, "no-such-command");
    assert_eq!(e.arguments, json!({"x": 1}));
    assert!(err.to_string().contains("no-such-command"), "{err}");

    // The raw variant does not fail on a QMP error.
    let raw = client.send(Request::new("no-such-command")).await.unwrap();
    assert_eq!(raw.to_json()["error"]["class"], "CommandNotFound");

    // Out of band works, because negotiation enabled oob.
    let status = client
        .execute_request(Request::new("query-status").oob())
        .await;
    // query-status is not allowed out of band: QEMU says so, which proves exec-oob was sent.
    let err = status.unwrap_err();
    assert!(err.to_string().contains("does not support OOB"), "{err}");
}

#[tokio::test]
async fn server_mode_unix_qemu_connects_to_us() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp.sock");
    let listener = Listener::bind_unix(&path).unwrap();
    let _qemu = BareQemu::spawn(
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
    let status = client.call(&QueryStatus {}).await.unwrap();
    assert_eq!(status.status, RunState::Running);

    // A second peer is refused while the session lives.
    let second = Client::builder()
        .greeting_timeout(Duration::from_millis(500))
        .connect_unix(&path)
        .await;
    assert!(second.is_err());

    client.execute("quit", json!({})).await.unwrap();
    client.closed().await;
    // The socket file goes with the session.
    let deadline = Instant::now() + T;
    while path.exists() {
        assert!(Instant::now() < deadline, "socket file left behind");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn server_mode_tcp_loopback() {
    let listener = Listener::bind_tcp("127.0.0.1", 0).unwrap();
    let Address::Tcp(_, port) = listener.address().clone() else {
        unreachable!()
    };
    let _qemu = BareQemu::spawn(
        &[
            "-machine".into(),
            "none".into(),
            "-chardev".into(),
            format!("socket,id=mon,host=127.0.0.1,port={port}"),
            "-mon".into(),
            "chardev=mon,mode=control".into(),
        ],
        &[],
    );
    let client = listener.accept(Client::builder(), T).await.unwrap();
    assert!(client.call(&QueryVersion {}).await.is_ok());
    // fds cannot travel over TCP: a clear error, not a silent loss.
    let file = std::fs::File::open("/dev/null").unwrap();
    let err = client.send_fd(file.as_fd()).unwrap_err();
    assert!(matches!(err, Error::FdPassingUnsupported), "{err}");
}

#[tokio::test]
async fn client_mode_connects_to_qemus_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp.sock");
    let _qemu = BareQemu::spawn(
        &[
            "-machine".into(),
            "none".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", path.display()),
        ],
        &[],
    );
    // QEMU creates the socket as it starts; this mode has to wait for the file.
    let deadline = Instant::now() + T;
    let client = loop {
        match Client::builder().connect_unix(&path).await {
            Ok(client) => break client,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert!(client.call(&QueryStatus {}).await.unwrap().running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_commands_from_twenty_tasks() {
    let (_qemu, client) = socketpair_client(&["-machine", "none"]).await;
    let mut tasks = Vec::new();
    for task in 0..20 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                // Each answer must be its own: HMP `print N` answers N in hex.
                let n = task * 1000 + i + 1;
                let out = client
                    .execute(
                        "human-monitor-command",
                        json!({"command-line": format!("print {n}")}),
                    )
                    .await
                    .unwrap();
                assert_eq!(out.as_str().unwrap().trim(), format!("{n:#x}"));
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test]
async fn stop_cont_events_reach_two_subscribers_in_order() {
    let (_qemu, client) = socketpair_client(&["-machine", "pc", "-S"]).await;
    let mut a = client.subscribe(EventFilter::names(["STOP", "RESUME"]));
    let mut b = client.subscribe(EventFilter::all());
    client.execute("cont", json!({})).await.unwrap();
    client.execute("stop", json!({})).await.unwrap();
    client.execute("cont", json!({})).await.unwrap();
    for sub in [&mut a, &mut b] {
        let names: Vec<String> = [
            sub.recv_timeout(T).await.unwrap(),
            sub.recv_timeout(T).await.unwrap(),
            sub.recv_timeout(T).await.unwrap(),
        ]
        .iter()
        .map(|e| e.name().to_string())
        .collect();
        assert_eq!(names, ["RESUME", "STOP", "RESUME"]);
    }
    let event = b.try_recv();
    assert!(event.is_none(), "{event:?}");
}

#[tokio::test]
async fn execute_then_await_its_event() {
    let (_qemu, client) = socketpair_client(&["-machine", "pc", "-S"]).await;
    let (ret, event) = client
        .execute_and_wait(
            Request::new("system_reset"),
            EventFilter::name("RESET").and(|e| e.data()["guest"] == false),
            T,
        )
        .await
        .unwrap();
    assert_eq!(ret, json!({}));
    let TypedEvent::Reset(data) = event.typed() else {
        panic!("{event}")
    };
    assert_eq!(data.reason, "host-qmp-system-reset");
    assert!(event.timestamp().seconds > 0);
}

#[tokio::test]
async fn getfd_closefd_and_add_fd_with_real_descriptors() {
    let (_qemu, client) = socketpair_client(&["-machine", "none"]).await;
    let file = tempfile::tempfile().unwrap();

    let getfd = Getfd {
        fdname: "myfd".into(),
    };
    client
        .execute_request(
            Request::new("getfd")
                .arguments(serde_json::to_value(&getfd).unwrap())
                .fd(file.as_fd().try_clone_to_owned().unwrap()),
        )
        .await
        .unwrap();
    client
        .call(&Closefd {
            fdname: "myfd".into(),
        })
        .await
        .unwrap();
    // Closing it again fails: QEMU really had it, and really closed it.
    let again = client
        .call(&Closefd {
            fdname: "myfd".into(),
        })
        .await;
    assert!(again.is_err());

    // The two-step form, as Python's send_fd_scm: the fd first, then the command.
    client.send_fd(file.as_fd()).unwrap();
    let added = client
        .execute(
            "add-fd",
            serde_json::to_value(AddFd {
                fdset_id: Some(3),
                opaque: Some("scratch".into()),
            })
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(added["fdset-id"], 3);
    let sets = client.call(&QueryFdsets {}).await.unwrap();
    let set = sets.iter().find(|s| s.fdset_id == 3).expect("fd set 3");
    assert_eq!(set.fds[0].opaque.as_deref(), Some("scratch"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_quit_everything_ends_with_a_disconnect() {
    let (mut qemu, client) = socketpair_client(&["-machine", "none"]).await;
    let mut events = client.subscribe(EventFilter::all());
    // A pending command that will never be answered: QEMU queues it behind `quit`... or
    // answers it first. Either way it must not hang.
    let quit = client.execute("quit", json!({}));
    let pending = client.execute("query-status", json!({}));
    let (quit, pending) = tokio::join!(quit, pending);
    assert!(quit.is_ok(), "EOF after quit is success: {quit:?}");
    if let Err(e) = pending {
        assert!(e.is_disconnected(), "{e}");
    }
    let later = client.execute("query-status", json!({})).await.unwrap_err();
    assert!(later.is_disconnected(), "{later}");
    // The subscriber gets SHUTDOWN, then the end.
    let mut saw_shutdown = false;
    loop {
        match events.recv_timeout(T).await {
            Ok(e) => saw_shutdown |= e.name() == "SHUTDOWN",
            Err(e) => {
                assert!(e.is_disconnected(), "{e}");
                break;
            }
        }
    }
    assert!(saw_shutdown);
    assert!(qemu.wait_exit(T).success());
}

#[test]
fn blocking_facade_queues_events_while_the_caller_sleeps() {
    // Two monitors on one QEMU: events go to both. The blocking client sleeps while the
    // other monitor makes QEMU emit events.
    let (a_ours, a_theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let (b_ours, b_theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    use std::os::fd::AsRawFd;
    let (fa, fb) = (a_theirs.as_raw_fd(), b_theirs.as_raw_fd());
    let _qemu = BareQemu::spawn(
        &[
            "-machine".into(),
            "pc".into(),
            "-S".into(),
            "-chardev".into(),
            format!("socket,id=a,fd={fa}"),
            "-mon".into(),
            "chardev=a,mode=control".into(),
            "-chardev".into(),
            format!("socket,id=b,fd={fb}"),
            "-mon".into(),
            "chardev=b,mode=control".into(),
        ],
        &[fa, fb],
    );
    drop((a_theirs, b_theirs));
    let sleeper = qmp::blocking::Client::adopt_unix(Client::builder(), a_ours).unwrap();
    let other = qmp::blocking::Client::adopt_unix(Client::builder(), b_ours).unwrap();
    let mut events = sleeper
        .subscribe(EventFilter::names(["STOP", "RESUME"]))
        .unwrap();

    let actor = std::thread::spawn(move || {
        other.execute("cont", json!({})).unwrap();
        other.execute("stop", json!({})).unwrap();
    });
    actor.join().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let slept_until = std::time::SystemTime::now();
    // No call of the sleeper's was running, yet both events are already queued.
    let queued = events.drain();
    let names: Vec<&str> = queued.iter().map(|e| e.name()).collect();
    assert_eq!(names, ["RESUME", "STOP"]);
    assert!(queued.iter().all(|e| e.received() < slept_until));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_multiplexer_serves_two_clients_with_their_own_replies_and_all_events() {
    let (_qemu, upstream) = socketpair_client(&["-machine", "pc", "-S"]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mux.sock");
    let mux = qmp::Multiplexer::serve(upstream, &path).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let a = Client::builder().connect_unix(&path).await.unwrap();
    let b = Client::builder().connect_unix(&path).await.unwrap();
    let (major, minor, micro) = qemu_test_support::qemu_version().numbers;
    let version = &a.greeting().unwrap().version.qemu;
    assert_eq!(
        (version.major, version.minor, version.micro),
        (major, minor, micro)
    );
    let mut a_events = a.subscribe(EventFilter::names(["STOP", "RESUME"]));
    let mut b_events = b.subscribe(EventFilter::names(["STOP", "RESUME"]));

    // Interleaved commands from both, each answered to its sender.
    let (ra, rb) = tokio::join!(
        a.execute(
            "human-monitor-command",
            json!({"command-line": "print 111"})
        ),
        b.execute(
            "human-monitor-command",
            json!({"command-line": "print 222"})
        ),
    );
    assert_eq!(ra.unwrap().as_str().unwrap().trim(), "0x6f");
    assert_eq!(rb.unwrap().as_str().unwrap().trim(), "0xde");
    assert_eq!(
        a.execute("nope", json!({})).await.unwrap_err().class(),
        Some("CommandNotFound")
    );

    a.execute("cont", json!({})).await.unwrap();
    b.execute("stop", json!({})).await.unwrap();
    for events in [&mut a_events, &mut b_events] {
        assert_eq!(events.recv_timeout(T).await.unwrap().name(), "RESUME");
        assert_eq!(events.recv_timeout(T).await.unwrap().name(), "STOP");
    }

    // A client that skips negotiation is told, as QEMU would.
    let raw = Client::builder()
        .negotiate(false)
        .connect_unix(&path)
        .await
        .unwrap();
    let err = raw.execute("query-status", json!({})).await.unwrap_err();
    assert_eq!(err.class(), Some("CommandNotFound"), "{err}");

    drop(mux);
    assert!(!path.exists());
}

/// This process's resident set size, in KiB.
fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_dropped_and_memory_stays_bounded() {
    use std::io::{Read, Write};
    let (_qemu, upstream) = socketpair_client(&["-machine", "none"]).await;
    // Warm up: one schema through the upstream client, so the baseline includes it.
    let schema = upstream
        .execute("query-qmp-schema", json!({}))
        .await
        .unwrap();
    let schema_len = schema.to_string().len();
    drop(schema);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mux.sock");
    let _mux = qmp::Multiplexer::serve(upstream, &path).unwrap();
    let baseline = vm_rss_kib();

    let hostile = std::os::unix::net::UnixStream::connect(&path).unwrap();
    let mut writer = hostile.try_clone().unwrap();
    let sent = std::thread::spawn(move || {
        let mut sent = 0;
        if writer
            .write_all(b"{\"execute\": \"qmp_capabilities\"}\r\n")
            .is_err()
        {
            return sent;
        }
        for i in 0..3000 {
            let line = format!("{{\"execute\": \"query-qmp-schema\", \"id\": {i}}}\r\n");
            if writer.write_all(line.as_bytes()).is_err() {
                break; // dropped by the multiplexer: EPIPE / ECONNRESET
            }
            sent += 1;
        }
        sent
    });
    // The client reads nothing until the multiplexer has dropped it (the peer's shutdown
    // shows as "read closed" even with replies still unread: EPOLLRDHUP), sampling RSS
    // meanwhile. However slowly QEMU answers on a loaded machine, only the budget decides.
    hostile.set_nonblocking(true).unwrap();
    let watch = tokio::net::UnixStream::from_std(hostile.try_clone().unwrap()).unwrap();
    let mut peak = baseline;
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    loop {
        peak = peak.max(vm_rss_kib());
        let ready = watch.ready(tokio::io::Interest::READABLE).await.unwrap();
        if ready.is_read_closed() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the multiplexer never dropped a client that does not read"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(watch);
    hostile.set_nonblocking(false).unwrap();
    hostile
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut read = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match (&hostile).read(&mut buf) {
            Ok(0) => break,
            Ok(n) => read += n,
            // It closed with our commands unread: the kernel answers with a reset.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("EOF, not a read error: {e}"),
        }
    }
    let sent = sent.join().unwrap();
    println!(
        "query-qmp-schema reply: {schema_len} bytes; hostile client sent {sent} commands, \
         read {read} bytes then EOF; VmRSS baseline {baseline} KiB, peak {peak} KiB, growth {} KiB",
        peak - baseline
    );
    assert!(
        peak - baseline < 64 * 1024,
        "RSS grew by {} KiB",
        peak - baseline
    );
    assert!(read < 9 * 1024 * 1024 + 512 * 1024, "read {read} bytes");

    // Another client is still served.
    let client = Client::builder().connect_unix(&path).await.unwrap();
    let status = client.call(&QueryStatus {}).await.unwrap();
    assert!(status.running);
}
