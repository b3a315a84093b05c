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
    assert!(started.elapsed() < Duration::from_secs(2));
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

// ---- Files and sockets ---------------------------------------------------------------------

#[tokio::test]
async fn transcript_does_not_follow_a_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("victim");
    std::fs::write(&target, "untouched").unwrap();
    let link = dir.path().join("qmp.log");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let (ours, _fake) = FakePeer::pair().unwrap();
    let err = Client::builder()
        .transcript(&link)
        .adopt_unix(ours)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");

    // The public helpers: appending refuses it; creating replaces the link itself, never
    // writing through it.
    let err = qmp::fsutil::open_private_append(&link).unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err}");
    qmp::fsutil::create_private_file(&link).unwrap();
    assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
    // A regular file is replaced by a fresh 0600 one; nothing else is left in the directory.
    use std::os::unix::fs::PermissionsExt;
    let state = dir.path().join("state");
    std::fs::write(&state, "old").unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o644)).unwrap();
    let file = qmp::fsutil::create_private_file(&state).unwrap();
    assert_eq!(file.metadata().unwrap().len(), 0);
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
}

#[tokio::test]
async fn a_fifo_transcript_is_an_error_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("qmp.log");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let (ours, _fake) = FakePeer::pair().unwrap();
    let started = std::time::Instant::now();
    let err = Client::builder()
        .transcript(&fifo)
        .adopt_unix(ours)
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(err.to_string().contains("a FIFO"), "{err}");
    // Also with a reader holding the FIFO open (open would then succeed): fstat refuses it.
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags_nonblock()
        .open(&fifo)
        .unwrap();
    let err = qmp::fsutil::open_private_append(&fifo).unwrap_err();
    assert!(err.to_string().contains("a FIFO"), "{err}");
    drop(reader);
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(nix::libc::O_NONBLOCK)
    }
}

#[tokio::test]
async fn bind_failure_says_cannot_listen() {
    let dir = tempfile::tempdir().unwrap();
    let taken = dir.path().join("taken.sock");
    std::fs::write(&taken, "").unwrap();
    let err = Listener::bind_unix(&taken).unwrap_err();
    assert!(matches!(err, Error::Listen { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("cannot listen on {}: ", taken.display())),
        "{err}"
    );
    let err = qmp::Multiplexer::serve(fake_upstream().await, &taken).unwrap_err();
    assert!(matches!(err, Error::Listen { .. }), "{err}");
    let err = Listener::bind_unix(dir.path().join("absent/dir.sock")).unwrap_err();
    assert!(err.to_string().starts_with("cannot listen on"), "{err}");
    // Nothing left behind by the failed attempts: only the file that was there.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

const FOREIGN_PEER: &str = "QMP_HOSTILE_FOREIGN_PEER";

/// Run as uid 65534 by `a_foreign_uid_peer_is_refused`: connects and reads until EOF.
#[test]
fn foreign_peer_helper() {
    let Ok(path) = std::env::var(FOREIGN_PEER) else {
        return;
    };
    use std::io::Read;
    let mut stream = std::os::unix::net::UnixStream::connect(path).expect("connect");
    stream.set_read_timeout(Some(T)).unwrap();
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).expect("EOF");
    assert!(buf.is_empty());
}

#[tokio::test]
async fn a_foreign_uid_peer_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: needs root to run a peer as another uid");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for mux in [false, true] {
        let path = dir.path().join(if mux { "mux.sock" } else { "qmp.sock" });
        let listener = if mux {
            None
        } else {
            Some(Listener::bind_unix(&path).unwrap())
        };
        let _mux = if mux {
            Some(qmp::Multiplexer::serve(fake_upstream().await, &path).unwrap())
        } else {
            None
        };
        // Open it up on purpose, so only the uid check stands in the way.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let mut command = std::process::Command::new(std::env::current_exe().unwrap());
        command
            .args(["--exact", "foreign_peer_helper", "--nocapture"])
            .env(FOREIGN_PEER, &path)
            .stdout(std::process::Stdio::null());
        // SAFETY: only setgid/setuid (async-signal-safe) between fork and exec.
        unsafe {
            command.pre_exec(|| {
                nix::unistd::setgid(nix::unistd::Gid::from_raw(65534))?;
                nix::unistd::setuid(nix::unistd::Uid::from_raw(65534))?;
                Ok(())
            });
        }
        let helper = tokio::process::Command::from(command).status();
        if let Some(listener) = listener {
            // The foreign peer is closed and skipped; a peer of ours is then accepted.
            let accepting = tokio::spawn(listener.accept(Client::builder(), T));
            let status = helper.await.unwrap();
            assert!(
                status.success(),
                "the foreign peer was not closed: {status}"
            );
            let ours_ok = std::os::unix::net::UnixStream::connect(&path).unwrap();
            let mut peer = FakePeer::adopt(ours_ok).unwrap();
            peer.handshake().await.unwrap();
            let client = accepting.await.unwrap().unwrap();
            assert!(client.is_connected());
        } else {
            let status = helper.await.unwrap();
            assert!(
                status.success(),
                "the foreign peer was not closed: {status}"
            );
            let mut ours = mux_client(&path);
            negotiate(&mut ours).await;
        }
    }
}
