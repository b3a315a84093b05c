//! Hostile input and faults: every bound holds and every failure is a typed error, never a
//! panic, a hang or unbounded memory.

use std::time::Duration;

use qmp::fake::FakePeer;
use qmp::{Client, Error, EventFilter, Listener, Request};
use serde_json::json;

const T: Duration = Duration::from_secs(5);
const MAX: Duration = Duration::MAX;

/// A client (with every builder timeout at `Duration::MAX`) talking to a fake that
/// handshakes and then runs `then`.
async fn client_with<F, Fut>(then: F) -> (Client, tokio::task::JoinHandle<std::io::Result<()>>)
where
    F: FnOnce(FakePeer) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    let (ours, mut fake) = FakePeer::pair().unwrap();
    let task = tokio::spawn(async move {
        fake.handshake().await?;
        then(fake).await
    });
    let client = Client::builder()
        .connect_timeout(MAX)
        .greeting_timeout(MAX)
        .command_timeout(MAX)
        .adopt_unix(ours)
        .await
        .expect("handshake");
    (client, task)
}

#[tokio::test]
async fn no_duration_reaches_a_panic() {
    // execute with Request::timeout(MAX) against a peer that reads the command, then closes.
    let (client, fake) = client_with(|mut fake| async move {
        fake.expect_command("query-status", T).await?;
        Ok(())
    })
    .await;
    let err = client
        .execute_request(Request::new("query-status").timeout(MAX))
        .await
        .unwrap_err();
    assert!(err.is_disconnected(), "{err}");
    fake.await.unwrap().unwrap();

    // execute_and_wait with MAX: the reply comes, then the peer closes before the event.
    let (client, fake) = client_with(|mut fake| async move {
        let request = fake.expect_command("stop", T).await?;
        fake.reply(&request, json!({})).await?;
        Ok(())
    })
    .await;
    let err = client
        .execute_and_wait(Request::new("stop"), EventFilter::name("STOP"), MAX)
        .await
        .unwrap_err();
    assert!(err.is_disconnected(), "{err}");
    fake.await.unwrap().unwrap();

    // Subscription::recv_timeout(MAX) ends with the session.
    let (client, fake) = client_with(|_fake| async move { Ok(()) }).await;
    let mut events = client.subscribe(EventFilter::all());
    let err = events.recv_timeout(MAX).await.unwrap_err();
    assert!(err.is_disconnected(), "{err}");
    fake.await.unwrap().unwrap();

    // Builder timeouts at MAX against a peer that closes before greeting.
    let (ours, fake) = FakePeer::pair().unwrap();
    drop(fake);
    let err = Client::builder()
        .connect_timeout(MAX)
        .greeting_timeout(MAX)
        .adopt_unix(ours)
        .await
        .unwrap_err();
    assert!(err.is_disconnected(), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let err = Client::builder()
        .connect_timeout(MAX)
        .connect_unix(dir.path().join("absent.sock"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");

    // Listener::accept with MAX: a peer connects and closes at once.
    let path = dir.path().join("listen.sock");
    let listener = Listener::bind_unix(&path).unwrap();
    let peer = std::os::unix::net::UnixStream::connect(&path).unwrap();
    drop(peer);
    let err = listener
        .accept(Client::builder().greeting_timeout(MAX), MAX)
        .await
        .unwrap_err();
    assert!(err.is_disconnected(), "{err}");
    assert!(!path.exists());

    // The deadline type itself.
    assert!(qmp::Deadline::after(MAX).is_never());
}

#[test]
fn no_duration_reaches_a_panic_in_the_blocking_facade() {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let peer = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut fake = FakePeer::adopt(theirs)?;
            fake.handshake().await?;
            let request = fake.expect_command("stop", T).await?;
            fake.reply(&request, json!({})).await
        })
    });
    let client = qmp::blocking::Client::adopt_unix(
        Client::builder().greeting_timeout(MAX).command_timeout(MAX),
        ours,
    )
    .unwrap();
    let mut events = client.subscribe(EventFilter::all()).unwrap();
    let err = client
        .execute_and_wait(
            Request::new("stop").timeout(MAX),
            EventFilter::name("STOP"),
            MAX,
        )
        .unwrap_err();
    assert!(err.is_disconnected(), "{err}");
    let err = events.recv_timeout(MAX).unwrap_err();
    assert!(err.is_disconnected(), "{err}");
    peer.join().unwrap().unwrap();
}

// ---- The multiplexer -------------------------------------------------------------------

/// An upstream session to a fake that answers every command with a running status.
async fn fake_upstream() -> Client {
    let (ours, mut fake) = FakePeer::pair().unwrap();
    tokio::spawn(async move {
        fake.handshake().await?;
        fake.serve(|_| qmp::fake::Reply::Return(json!({"status": "running", "running": true})))
            .await
    });
    Client::builder().adopt_unix(ours).await.expect("handshake")
}

/// A raw QMP client of the multiplexer (the fake peer speaks both sides).
fn mux_client(path: &std::path::Path) -> FakePeer {
    FakePeer::adopt(std::os::unix::net::UnixStream::connect(path).unwrap()).unwrap()
}

async fn negotiate(client: &mut FakePeer) {
    let greeting = client.recv(T).await.unwrap();
    assert_eq!(greeting["QMP"]["capabilities"], json!([]), "{greeting}");
    client
        .send(&json!({"execute": "qmp_capabilities"}))
        .await
        .unwrap();
    assert_eq!(client.recv(T).await.unwrap(), json!({"return": {}}));
}

#[tokio::test]
async fn dropping_the_multiplexer_disconnects_every_client() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mux.sock");
    let mux = qmp::Multiplexer::serve(fake_upstream().await, &path).unwrap();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut client = mux_client(&path);
        negotiate(&mut client).await;
        clients.push(client);
    }
    drop(mux);
    for client in &mut clients {
        // EOF, not a timeout: the client's task and socket are gone.
        client.wait_closed(T).await.unwrap();
    }
    assert!(!path.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn the_33rd_client_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mux.sock");
    let _mux = qmp::Multiplexer::serve(fake_upstream().await, &path).unwrap();
    let mut clients = Vec::new();
    for _ in 0..qmp::DEFAULT_MAX_CLIENTS {
        let mut client = mux_client(&path);
        client.recv(T).await.unwrap(); // the greeting: it is being served
        clients.push(client);
    }
    let mut extra = mux_client(&path);
    let refusal = extra.recv(T).await.unwrap();
    assert_eq!(refusal["error"]["class"], "GenericError", "{refusal}");
    assert!(
        refusal["error"]["desc"]
            .as_str()
            .unwrap()
            .contains("too many QMP clients"),
        "{refusal}"
    );
    assert!(refusal.get("QMP").is_none());
    extra.wait_closed(T).await.unwrap();

    // A place frees up when a client leaves.
    drop(clients.pop());
    let deadline = std::time::Instant::now() + T;
    loop {
        let mut again = mux_client(&path);
        let first = again.recv(T).await.unwrap();
        if first.get("QMP").is_some() {
            negotiate_after_greeting(&mut again).await;
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no place freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn negotiate_after_greeting(client: &mut FakePeer) {
    client
        .send(&json!({"execute": "qmp_capabilities", "id": 1}))
        .await
        .unwrap();
    assert_eq!(
        client.recv(T).await.unwrap(),
        json!({"return": {}, "id": 1})
    );
}

#[tokio::test]
async fn oob_is_refused_as_qemu_refuses_it() {
    // The wording is QEMU 10.0.2's, for a monitor without oob (checked against
    // `qemu-system-x86_64 -machine none -chardev stdio,id=m -mon chardev=m,mode=control`).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mux.sock");
    let _mux = qmp::Multiplexer::serve(fake_upstream().await, &path).unwrap();
    let mut client = mux_client(&path);
    client.recv(T).await.unwrap();
    client
        .send(&json!({"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}, "id": "c"}))
        .await
        .unwrap();
    assert_eq!(
        client.recv(T).await.unwrap(),
        json!({"id": "c", "error": {"class": "GenericError", "desc": "Capability 'oob' not available"}})
    );
    negotiate_after_greeting(&mut client).await;
    client
        .send(&json!({"exec-oob": "query-status", "id": 2}))
        .await
        .unwrap();
    assert_eq!(
        client.recv(T).await.unwrap(),
        json!({"id": 2, "error": {"class": "GenericError", "desc": "QMP input member 'exec-oob' is unexpected"}})
    );
    client
        .send(&json!({"execute": "query-status", "id": 3}))
        .await
        .unwrap();
    assert_eq!(client.recv(T).await.unwrap()["id"], 3);
}

#[tokio::test]
async fn garbage_from_a_client_gets_an_error_and_the_session_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mux.sock");
    let _mux = qmp::Multiplexer::serve(fake_upstream().await, &path).unwrap();
    let mut client = mux_client(&path);
    client.recv(T).await.unwrap();
    negotiate_after_greeting(&mut client).await;
    for garbage in [
        &b"\x01\n"[..],
        b"xyz\n",
        b"[1]\n",
        b"{\"execute\": }\n",
        b"\"s\"\n",
    ] {
        client.send_raw(garbage).await.unwrap();
        let error = client.recv(T).await.unwrap();
        assert!(error.get("id").is_none(), "{error}");
        assert_eq!(error["error"]["class"], "GenericError", "{error}");
        let desc = error["error"]["desc"].as_str().unwrap();
        assert!(desc.starts_with("JSON parse error"), "{desc}");
        client
            .send(&json!({"execute": "query-status", "id": 9}))
            .await
            .unwrap();
        let reply = client.recv(T).await.unwrap();
        assert_eq!(
            reply,
            json!({"return": {"status": "running", "running": true}, "id": 9})
        );
    }
    // An oversized message ends only that client, with an error first.
    let mut big = b"{\"execute\": \"x\", \"arguments\": {\"a\": \"".to_vec();
    big.resize(qmp::DEFAULT_MAX_INPUT_MESSAGE + 10, b'a');
    let _ = client.send_raw(&big).await;
    let error = client.recv(T).await.unwrap();
    assert!(
        error["error"]["desc"].as_str().unwrap().contains("limit"),
        "{error}"
    );
    client.wait_closed(T).await.unwrap();
    let mut other = mux_client(&path);
    negotiate(&mut other).await;
}

// ---- Replies QEMU sends without an id ----------------------------------------------------

#[tokio::test]
async fn an_error_without_id_fails_the_oldest_command_at_once() {
    let (client, fake) = client_with(|mut fake| async move {
        let first = fake.expect_command("query-status", T).await?;
        let second = fake.expect_command("query-name", T).await?;
        fake.send(&json!({"error": {"class": "GenericError", "desc": "JSON parse error, invalid keyword 'xyz'"}}))
            .await?;
        fake.reply(&second, json!({})).await?;
        let _ = first;
        fake.wait_closed(T).await
    })
    .await;
    let started = std::time::Instant::now();
    let first =
        client.execute_request(Request::new("query-status").timeout(Duration::from_secs(60)));
    let second = async {
        tokio::task::yield_now().await;
        client
            .execute_request(Request::new("query-name").timeout(Duration::from_secs(60)))
            .await
    };
    let (first, second) = tokio::join!(first, second);
    let elapsed = started.elapsed();
    let err = first.unwrap_err();
    assert!(matches!(err, Error::Command(_)), "{err}");
    assert_eq!(err.class(), Some("GenericError"));
    assert!(err.to_string().contains("JSON parse error"), "{err}");
    assert_eq!(second.unwrap(), json!({}));
    assert!(elapsed < Duration::from_millis(100), "took {elapsed:?}");
    drop(client);
    fake.await.unwrap().unwrap();
}

#[tokio::test]
async fn command_dropped_fails_that_command() {
    let (client, fake) = client_with(|mut fake| async move {
        let request = fake.expect_command("migrate-pause", T).await?;
        fake.event(
            "COMMAND_DROPPED",
            json!({"id": request["id"], "reason": "queue-full"}),
        )
        .await?;
        fake.wait_closed(T).await
    })
    .await;
    let started = std::time::Instant::now();
    let err = client
        .execute_request(
            Request::new("migrate-pause")
                .oob()
                .timeout(Duration::from_secs(60)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.class(), Some("CommandDropped"), "{err}");
    assert!(err.to_string().contains("queue-full"), "{err}");
    assert!(started.elapsed() < Duration::from_millis(100));
    drop(client);
    fake.await.unwrap().unwrap();
}

// ---- A peer that stops reading -----------------------------------------------------------

#[tokio::test]
async fn a_peer_that_never_reads_gets_backpressure_not_unbounded_memory() {
    let (go_on, resume) = tokio::sync::oneshot::channel::<()>();
    let (client, fake) = client_with(|mut fake| async move {
        let _ = resume.await;
        // Whitespace is skipped; then the command that waited.
        let request = fake
            .expect_command("query-status", Duration::from_secs(20))
            .await?;
        fake.reply(&request, json!({"status": "running", "running": true}))
            .await?;
        fake.wait_closed(T).await
    })
    .await;
    let chunk = vec![b' '; 1024 * 1024];
    let mut accepted = 0usize;
    let err = loop {
        match client.send_raw(&chunk) {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 64, "never refused");
    };
    let Error::Backpressure { queued } = err else {
        panic!("{err}")
    };
    assert!(queued <= qmp::DEFAULT_MAX_WRITE_BACKLOG, "{queued}");
    assert!(
        queued + chunk.len() > qmp::DEFAULT_MAX_WRITE_BACKLOG,
        "{queued}"
    );
    assert_eq!(
        err.to_string(),
        format!("QEMU is not reading its monitor ({queued} bytes queued)")
    );
    println!("accepted {accepted} MiB, refused with {queued} bytes queued");
    // A command is refused the same way, at once, and the session goes on.
    let started = std::time::Instant::now();
    let big = "a".repeat(1024 * 1024);
    let err = client
        .execute_request(
            Request::new("query-status")
                .arguments(json!({ "x": big }))
                .timeout(T),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Backpressure { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_millis(100));
    assert!(client.is_connected());
    // Once the peer reads again, commands go through.
    go_on.send(()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        match client
            .execute_request(Request::new("query-status").timeout(T))
            .await
        {
            Err(Error::Backpressure { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => break other.unwrap(),
        }
    };
    assert_eq!(status["status"], "running");
    drop(client);
    fake.await.unwrap().unwrap();
}

// ---- Secrets -------------------------------------------------------------------------------

/// A tracing subscriber that keeps every event's text.
struct Capture(std::sync::Arc<std::sync::Mutex<String>>);

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Visit<'a>(&'a mut String);
        impl tracing::field::Visit for Visit<'_> {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                use std::fmt::Write;
                let _ = write!(self.0, "{}={:?} ", field.name(), value);
            }
        }
        let mut text = self.0.lock().unwrap();
        event.record(&mut Visit(&mut text));
        text.push('\n');
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn no_secret_reaches_the_transcript_tracing_or_errors() {
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let _guard = tracing::subscriber::set_default(Capture(log.clone()));
    let dir = tempfile::tempdir().unwrap();
    let transcript = dir.path().join("qmp.log");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let secrets = [
        "hun,ter5", "vncpw1", "vncpw2", "objpw3", "urlpw4", "iscsipw5", "rbdkey6", "dotted7",
    ];
    runtime.block_on(async {
        let (ours, mut fake) = FakePeer::pair().unwrap();
        let peer = tokio::spawn(async move {
            fake.handshake().await?;
            loop {
                let request = match fake.recv(T).await {
                    Ok(request) => request,
                    Err(_) => return std::io::Result::Ok(()),
                };
                // Echoing the request back in an error, as some peers do.
                fake.reply_error(&request, "GenericError", "refused").await?;
            }
        });
        let client = Client::builder()
            .transcript(&transcript)
            .adopt_unix(ours)
            .await
            .unwrap();
        let commands = [
            ("object-add", json!({"qom-type": "secret", "id": "s", "data": "hun,ter5"})),
            ("human-monitor-command", json!({"command-line": "set_password vnc vncpw1"})),
            ("human-monitor-command", json!({"command-line": "change vnc password vncpw2"})),
            ("human-monitor-command", json!({"command-line": "object_add secret,id=s,data=objpw3"})),
            ("blockdev-add", json!({"driver": "http", "node-name": "n", "url": "http://u:urlpw4@h/x"})),
            ("blockdev-add", json!({"driver": "iscsi", "node-name": "i", "filename": "iscsi://u%iscsipw5@h/iqn/0"})),
            ("human-monitor-command", json!({"command-line": "drive_add 0 file=rbd:p/i:key=rbdkey6,if=none"})),
            ("blockdev-add", json!({"driver": "x", "server.password": "dotted7"})),
        ];
        for (name, arguments) in commands {
            let err = client.execute(name, arguments).await.unwrap_err();
            let Error::Command(e) = &err else { panic!("{err}") };
            let shown = format!("{err} {err:?} {}", e.arguments);
            for secret in secrets {
                assert!(!shown.contains(secret), "{secret} in {shown}");
            }
        }
        drop(client);
        peer.await.unwrap().unwrap();
    });
    let written = std::fs::read_to_string(&transcript).unwrap();
    let logged = log.lock().unwrap().clone();
    assert!(written.contains("<redacted>"), "{written}");
    assert!(logged.contains("<redacted>"), "{logged}");
    for secret in secrets {
        assert!(
            !written.contains(secret),
            "{secret} in the transcript:\n{written}"
        );
        assert!(!logged.contains(secret), "{secret} in tracing:\n{logged}");
    }
}

proptest::proptest! {
    #[test]
    fn an_escaped_secret_never_survives_option_redaction(secret in "[a-zA-Z0-9,=:@%/]{1,24}") {
        let escaped = secret.replace(',', ",,");
        for options in [
            format!("secret,id=s0,data={escaped}"),
            format!("driver=x,password={escaped},y=1"),
            format!("driver=x,file.passwd={escaped}"),
        ] {
            let redacted = qmp::redact::redact_option_string(&options);
            proptest::prop_assert!(redacted.contains("<redacted>"), "{}", redacted);
            proptest::prop_assert!(!redacted.contains(&escaped) || "<redacted>".contains(&escaped) || options.matches(&escaped).count() > 1, "{} -> {}", options, redacted);
        }
    }
}
