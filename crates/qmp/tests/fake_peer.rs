//! Protocol behaviour that real QEMU will not show on demand, against the fake peer.

use std::time::Duration;

use qmp::fake::{FakePeer, Reply};
use qmp::{Client, DisconnectReason, Error, EventFilter, Listener, ProtocolError, Request};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(5);

/// A client connected to a fake whose script is `script`.
async fn with_fake<F, Fut>(
    builder: qmp::ClientBuilder,
    script: F,
) -> (
    qmp::Result<Client>,
    tokio::task::JoinHandle<std::io::Result<()>>,
)
where
    F: FnOnce(FakePeer) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    let (ours, fake) = FakePeer::pair().unwrap();
    let task = tokio::spawn(script(fake));
    (builder.adopt_unix(ours).await, task)
}

#[tokio::test]
async fn frames_split_into_single_bytes() {
    let (client, fake) = with_fake(Client::builder(), |mut fake| async move {
        let greeting = br#"{"QMP": {"version": {"qemu": {"major": 9, "minor": 1, "micro": 0}, "package": ""}, "capabilities": []}}"#;
        for byte in greeting.iter().chain(b"\r\n") {
            fake.send_raw(&[*byte]).await?;
            tokio::task::yield_now().await;
        }
        let request = fake.expect_command("qmp_capabilities", T).await?;
        // No oob offered, so none requested.
        assert!(request.get("arguments").is_none(), "{request}");
        let reply = format!(r#"{{"return": {{}}, "id": {}}}"#, request["id"]);
        for byte in reply.as_bytes() {
            fake.send_raw(&[*byte]).await?;
            tokio::task::yield_now().await;
        }
        fake.send_raw(b"\n").await?;
        let request = fake.expect_command("query-status", T).await?;
        fake.reply(&request, json!({"status": "running", "running": true})).await?;
        fake.wait_closed(T).await
    })
    .await;
    let client = client.unwrap();
    assert_eq!(client.greeting().unwrap().version.qemu.major, 9);
    let status = client.execute("query-status", json!({})).await.unwrap();
    assert_eq!(status["status"], "running");
    client.close();
    fake.await.unwrap().unwrap();
}

#[tokio::test]
async fn frames_packed_into_one_write_with_events_before_the_greeting() {
    let (client, fake) = with_fake(Client::builder(), |mut fake| async move {
        // An event before the greeting is tolerated (seen in the wild: govmm#90).
        fake.event("EARLY", json!({})).await?;
        fake.greet().await?;
        let request = fake.expect_command("qmp_capabilities", T).await?;
        assert_eq!(request["arguments"], json!({"enable": ["oob"]}));
        fake.reply(&request, json!({})).await?;
        let request = fake.expect_command("stop", T).await?;
        let packed = format!(
            "{}\r\n{}\r\n{}\r\n",
            json!({"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}),
            json!({"return": {}, "id": request["id"]}),
            json!({"event": "RESUME", "data": {"novel": [1, 2]}, "timestamp": {"seconds": 1, "microseconds": 3}}),
        );
        fake.send_raw(packed.as_bytes()).await?;
        fake.wait_closed(T).await
    })
    .await;
    let client = client.unwrap();
    let mut events = client.subscribe(EventFilter::all());
    client.execute("stop", json!({})).await.unwrap();
    assert_eq!(events.recv_timeout(T).await.unwrap().name(), "STOP");
    let resume = events.recv_timeout(T).await.unwrap();
    assert_eq!(resume.data()["novel"][1], 2);
    client.close();
    fake.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_reply_before_the_greeting_is_a_greeting_error() {
    let (client, fake) = with_fake(Client::builder(), |mut fake| async move {
        // Events before the greeting are tolerated; a reply is not.
        fake.event("EARLY", json!({})).await?;
        fake.send(&json!({"return": {}, "id": 0})).await?;
        fake.wait_closed(T).await
    })
    .await;
    let err = client.unwrap_err();
    assert!(matches!(err, Error::Greeting(_)), "{err}");
    assert!(err.to_string().contains("a reply to id 0"), "{err}");
    // The client closed the connection behind itself.
    fake.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_unknown_message_before_the_greeting_is_a_greeting_error() {
    let (client, fake) = with_fake(Client::builder(), |mut fake| async move {
        fake.send(&json!({"hello": "not QMP"})).await?;
        fake.wait_closed(T).await
    })
    .await;
    let err = client.unwrap_err();
    assert!(matches!(err, Error::Greeting(_)), "{err}");
    assert!(err.to_string().contains("an unknown message"), "{err}");
    fake.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_20_mib_line_against_the_10_mib_limit_is_an_error_and_a_clean_close() {
    let (client, fake) = with_fake(Client::builder(), |mut fake| async move {
        fake.handshake().await?;
        let request = fake.expect_command("query-qmp-schema", T).await?;
        let _ = request;
        let mut huge = b"{\"return\": \"".to_vec();
        huge.resize(20 * 1024 * 1024, b'x');
        // The client stops reading and closes: our write may fail part way, which is fine.
        let _ = fake.send_raw(&huge).await;
        fake.wait_closed(T).await
    })
    .await;
    let client = client.unwrap();
    let err = client
        .execute("query-qmp-schema", json!({}))
        .await
        .unwrap_err();
    match err {
        Error::Disconnected(DisconnectReason::Protocol(ProtocolError::MessageTooLarge {
            limit,
        })) => {
            assert_eq!(limit, 10 * 1024 * 1024)
        }
        other => panic!("{other}"),
    }
    fake.await.unwrap().unwrap();
}

#[tokio::test]
async fn large_replies_within_the_limit_are_fine() {
    let (client, fake) = with_fake(Client::builder(), |fake| async move {
        let mut fake = fake;
        fake.handshake().await?;
        fake.serve(|_| Reply::Return(json!(vec!["schema-entry"; 100_000])))
            .await
    })
    .await;
    let client = client.unwrap();
    let value = client.execute("query-qmp-schema", json!({})).await.unwrap();
    assert_eq!(value.as_array().unwrap().len(), 100_000);
    client.close();
    fake.await.unwrap().unwrap();
}

#[tokio::test]
async fn garbage_is_a_protocol_error_and_a_clean_close() {
    let (client, fake) = with_fake(Client::builder(), |mut fake| async move {
        fake.handshake().await?;
        let _ = fake.expect_command("query-status", T).await?;
        fake.send_raw(b"this is not json\r\n").await?;
        fake.wait_closed(T).await
    })
    .await;
    let client = client.unwrap();
    let mut events = client.subscribe(EventFilter::all());
    let err = client.execute("query-status", json!({})).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Disconnected(DisconnectReason::Protocol(ProtocolError::Garbage { .. }))
        ),
        "{err}"
    );
    assert!(err.to_string().contains("this is not json"), "{err}");
    // Subscribers end too; nothing goes silent.
    assert!(events.recv_timeout(T).await.unwrap_err().is_disconnected());
    fake.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_reply_with_an_unknown_id_is_dropped() {
    let (client, fake) = with_fake(Client::builder(), |mut fake| async move {
        fake.handshake().await?;
        let request = fake.expect_command("query-status", T).await?;
        fake.send(&json!({"return": {"wrong": true}, "id": 987654}))
            .await?;
        fake.send(&json!({"return": {"wrong": true}, "id": "not-ours"}))
            .await?;
        fake.reply(&request, json!({"right": true})).await?;
        fake.wait_closed(T).await
    })
    .await;
    let client = client.unwrap();
    let value = client.execute("query-status", json!({})).await.unwrap();
    assert_eq!(value, json!({"right": true}));
    client.close();
    fake.await.unwrap().unwrap();
}

#[tokio::test]
async fn no_greeting_is_a_deadline_error() {
    let (client, fake) = with_fake(
        Client::builder().greeting_timeout(Duration::from_millis(200)),
        |mut fake| async move {
            fake.send_raw(b"{\"QMP\": ").await?;
            fake.wait_closed(T).await
        },
    )
    .await;
    let err = client.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("greeting") && text.contains("8 bytes received"),
        "{text}"
    );
    // The client closed the connection behind itself.
    fake.await.unwrap().unwrap();
}

#[tokio::test]
async fn no_reply_is_a_deadline_error_and_the_late_reply_is_discarded() {
    let (client, fake) = with_fake(Client::builder(), |mut fake| async move {
        fake.handshake().await?;
        let slow = fake.expect_command("slow", T).await?;
        let next = fake.expect_command("next", T).await?;
        // Answer the timed-out command only now, then the next one.
        fake.reply(&slow, json!("late")).await?;
        fake.reply(&next, json!("mine")).await?;
        fake.wait_closed(T).await
    })
    .await;
    let client = client.unwrap();
    let err = client
        .execute_request(Request::new("slow").timeout(Duration::from_millis(100)))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(err.to_string().contains("the reply to `slow`"), "{err}");
    assert_eq!(client.execute("next", Value::Null).await.unwrap(), "mine");
    client.close();
    fake.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_peer_closing_mid_reply_fails_the_pending_command() {
    let (client, fake) = with_fake(Client::builder(), |mut fake| async move {
        fake.handshake().await?;
        let _ = fake.expect_command("query-status", T).await?;
        fake.send_raw(b"{\"return\": {\"status\": \"run").await?;
        Ok(())
    })
    .await;
    let client = client.unwrap();
    let err = client.execute("query-status", json!({})).await.unwrap_err();
    assert!(
        matches!(err, Error::Disconnected(DisconnectReason::Eof)),
        "{err}"
    );
    assert!(!client.is_connected());
    fake.await.unwrap().unwrap();
}

#[tokio::test]
async fn cancelled_command_leaves_the_stream_in_sync() {
    let (client, fake) = with_fake(Client::builder(), |mut fake| async move {
        fake.handshake().await?;
        let first = fake.expect_command("first", T).await?;
        let second = fake.expect_command("second", T).await?;
        fake.reply(&first, json!(1)).await?;
        fake.reply(&second, json!(2)).await?;
        fake.wait_closed(T).await
    })
    .await;
    let client = client.unwrap();
    // Drop the first call before its reply arrives.
    let cancelled = tokio::time::timeout(
        Duration::from_millis(50),
        client.execute("first", Value::Null),
    )
    .await;
    assert!(cancelled.is_err());
    assert_eq!(client.execute("second", Value::Null).await.unwrap(), 2);
    client.close();
    fake.await.unwrap().unwrap();
}

#[tokio::test]
async fn without_ids_replies_match_in_order() {
    let builder = Client::builder()
        .send_ids(false)
        .await_greeting(false)
        .negotiate(false);
    let (client, fake) = with_fake(builder, |fake| async move {
        fake.serve(|request| {
            assert!(request.get("id").is_none(), "{request}");
            Reply::Return(request["arguments"]["n"].clone())
        })
        .await
    })
    .await;
    let client = client.unwrap();
    assert!(client.greeting().is_none());
    let (a, b) = tokio::join!(
        client.execute("guest-echo", json!({"n": 1})),
        client.execute("guest-echo", json!({"n": 2}))
    );
    assert_eq!((a.unwrap(), b.unwrap()), (json!(1), json!(2)));
    client.close();
    fake.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_full_subscriber_queue_loses_the_oldest_and_says_how_many() {
    let builder = Client::builder().event_queue_capacity(10);
    let (client, fake) = with_fake(builder, |mut fake| async move {
        fake.handshake().await?;
        let request = fake.expect_command("flood", T).await?;
        for i in 0..25 {
            fake.event("TICK", json!({"i": i})).await?;
        }
        fake.reply(&request, json!({})).await?;
        fake.wait_closed(T).await
    })
    .await;
    let client = client.unwrap();
    let mut slow = client.subscribe(EventFilter::name("TICK"));
    client.execute("flood", Value::Null).await.unwrap();
    match slow.recv_timeout(T).await {
        Err(Error::EventsLost(15)) => {}
        other => panic!("{other:?}"),
    }
    let first = slow.recv_timeout(T).await.unwrap();
    assert_eq!(first.data()["i"], 15);
    assert_eq!(slow.drain().len(), 9);
    client.close();
    fake.await.unwrap().unwrap();
}

#[tokio::test]
async fn negotiation_failure_is_reported() {
    let (client, fake) = with_fake(Client::builder(), |mut fake| async move {
        fake.greet().await?;
        let request = fake.expect_command("qmp_capabilities", T).await?;
        fake.reply_error(&request, "GenericError", "nope").await?;
        fake.wait_closed(T).await
    })
    .await;
    let err = client.unwrap_err();
    assert!(
        matches!(err, Error::Negotiation(ref m) if m.contains("nope")),
        "{err}"
    );
    fake.await.unwrap().unwrap();
}

#[tokio::test]
async fn transcript_records_both_directions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp.log");
    let (client, fake) = with_fake(Client::builder().transcript(&path), |mut fake| async move {
        fake.handshake().await?;
        fake.serve(|_| Reply::Return(json!({"ok": 1}))).await
    })
    .await;
    let client = client.unwrap();
    client.execute("query-status", json!({})).await.unwrap();
    client.close();
    fake.await.unwrap().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(lines[0].contains("<-- {\"QMP\""));
    assert!(lines[1].contains("--> {\"execute\":\"qmp_capabilities\""));
    assert!(lines[3].contains("--> {\"execute\":\"query-status\""));
    assert!(lines[4].contains("<-- {") && lines[4].contains("\"return\":{\"ok\":1}"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[tokio::test]
async fn disconnect_while_waiting_for_an_event_ends_the_wait() {
    let (client, fake) = with_fake(Client::builder(), |mut fake| async move {
        fake.handshake().await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(())
    })
    .await;
    let client = client.unwrap();
    let mut events = client.subscribe(EventFilter::name("NEVER"));
    let err = events.recv_timeout(T).await.unwrap_err();
    assert!(
        matches!(err, Error::Disconnected(DisconnectReason::Eof)),
        "{err}"
    );
    // A subscription made after the end ends at once.
    let mut late = client.subscribe(EventFilter::all());
    assert!(late.recv_timeout(T).await.unwrap_err().is_disconnected());
    fake.await.unwrap().unwrap();
}

// Scenarios of QEMU's python/tests/protocol.py that apply to this client.

#[tokio::test]
async fn connect_to_a_bad_unix_path_or_port_is_a_connect_error() {
    for address in ["/dev/null", "/nonexistent/qmp.sock", "127.0.0.1:1"] {
        let err = Client::builder()
            .connect(&address.parse().unwrap())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Connect { .. }), "{address}: {err}");
        assert!(
            err.to_string().contains(address.trim_start_matches("/dev"))
                || err.to_string().contains(address),
            "{err}"
        );
    }
}

#[tokio::test]
async fn connect_to_a_peer_that_never_accepts_hits_the_deadline() {
    // A listening socket nobody accepts from: the connect completes (backlog) but nothing
    // is ever said. The Python test "jams" a socket the same way.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jam.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let err = Client::builder()
        .greeting_timeout(Duration::from_millis(200))
        .connect_unix(&path)
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(err.to_string().contains("nothing was received"), "{err}");
}

#[tokio::test]
async fn accept_with_no_peer_hits_the_deadline_and_removes_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp.sock");
    let listener = Listener::bind_unix(&path).unwrap();
    let err = listener
        .accept(Client::builder(), Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(!path.exists());
    // Binding a path that exists is an error, not a silent takeover.
    std::fs::write(&path, b"").unwrap();
    assert!(Listener::bind_unix(&path).is_err());
}

#[tokio::test]
async fn cancelling_a_connect_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jam.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let before = std::fs::read_dir("/proc/self/fd").unwrap().count();
    let attempt = tokio::time::timeout(
        Duration::from_millis(100),
        Client::builder().connect_unix(&path),
    )
    .await;
    assert!(attempt.is_err());
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Other tests run in parallel; allow for their descriptors, but not for a steady leak.
    let after = std::fs::read_dir("/proc/self/fd").unwrap().count();
    assert!(after <= before + 8, "{before} -> {after}");
}

#[tokio::test]
async fn close_is_idempotent_and_later_calls_fail() {
    let (client, fake) = with_fake(Client::builder(), |mut fake| async move {
        fake.handshake().await?;
        fake.wait_closed(T).await
    })
    .await;
    let client = client.unwrap();
    client.close();
    client.close();
    assert!(matches!(
        client.disconnect_reason(),
        Some(DisconnectReason::Closed)
    ));
    let err = client.execute("query-status", json!({})).await.unwrap_err();
    assert!(err.is_disconnected(), "{err}");
    fake.await.unwrap().unwrap();
}

#[test]
fn blocking_calls_inside_a_runtime_are_refused() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let err = qmp::blocking::Client::connect(&"/nonexistent".parse().unwrap()).unwrap_err();
        assert!(matches!(err, Error::InsideAsyncRuntime), "{err}");
    });
}

#[tokio::test]
async fn a_subscription_from_the_start_sees_an_event_packed_with_the_negotiation_reply() {
    let builder = Client::builder().subscribe_from_start(EventFilter::all());
    let (client, fake) = with_fake(builder, |mut fake| async move {
        fake.greet().await?;
        let request = fake.expect_command("qmp_capabilities", T).await?;
        let packed = format!(
            "{}\r\n{}\r\n",
            json!({"return": {}, "id": request["id"]}),
            json!({"event": "FIRST", "timestamp": {"seconds": 1, "microseconds": 0}}),
        );
        fake.send_raw(packed.as_bytes()).await?;
        fake.wait_closed(T).await
    })
    .await;
    let client = client.unwrap();
    let mut events = client
        .take_initial_subscription()
        .expect("initial subscription");
    assert!(client.take_initial_subscription().is_none());
    assert_eq!(events.recv_timeout(T).await.unwrap().name(), "FIRST");
    client.close();
    fake.await.unwrap().unwrap();
}
