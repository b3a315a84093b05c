//! A secret in a command never reaches the transcript, a tracing subscriber or an error.
//!
//! This test has a binary of its own: tracing caches each call site's interest globally, and a
//! thread-local subscriber set while other tests' threads register the same call sites can miss
//! events (tokio-rs/tracing#2874), which made this test flaky beside the others.

use std::time::Duration;

use qmp::fake::FakePeer;
use qmp::{Client, Error, Request};
use serde_json::json;

const T: Duration = Duration::from_secs(5);

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
            let request = format!("{:?}", Request::new(name).arguments(arguments.clone()));
            for secret in secrets {
                assert!(!request.contains(secret), "{secret} in {request}");
            }
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
