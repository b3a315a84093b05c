//! Property tests of the QMP framing and envelope parsing: however a stream of messages is
//! cut, padded or interleaved with guest-agent resync bytes, the same messages come out;
//! and no input at all makes them panic.

use proptest::prelude::*;
use qmp::framing::FrameDecoder;
use qmp::Message;
use serde_json::{json, Value};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "[ -~\\\\\"{}\\[\\]\\n\\t\u{e9}\u{1F600}]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z{}\"-]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn message() -> impl Strategy<Value = Value> {
    prop_oneof![
        json_value().prop_map(|v| json!({"return": v, "id": 7})),
        json_value().prop_map(|v| json!({"event": "X", "data": {"v": v}, "timestamp": {"seconds": 1, "microseconds": 2}})),
        "[ -~]{0,20}".prop_map(|d| json!({"error": {"class": "GenericError", "desc": d}})),
    ]
}

fn separator() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            Just(b' '),
            Just(b'\n'),
            Just(b'\r'),
            Just(b'\t'),
            Just(0xffu8)
        ],
        0..4,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_cut_of_a_message_stream_gives_the_same_messages(
        messages in prop::collection::vec((message(), separator(), any::<bool>()), 1..8),
        cuts in prop::collection::vec(1usize..64, 1..32),
    ) {
        let mut stream = Vec::new();
        for (message, separator, pretty) in &messages {
            stream.extend_from_slice(separator);
            let text = if *pretty { serde_json::to_vec_pretty(message) } else { serde_json::to_vec(message) };
            stream.extend(text.unwrap());
        }
        let mut decoder = FrameDecoder::new(1 << 20);
        let mut got = Vec::new();
        let mut at = 0;
        let mut cut = cuts.iter().cycle();
        while at < stream.len() {
            let end = (at + cut.next().unwrap()).min(stream.len());
            decoder.extend(&stream[at..end]);
            at = end;
            while let Some(frame) = decoder.next_frame().unwrap() {
                got.push(serde_json::from_slice::<Value>(frame).unwrap());
            }
        }
        let want: Vec<Value> = messages.into_iter().map(|(m, _, _)| m).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), limit in 1usize..256) {
        let mut decoder = FrameDecoder::new(limit);
        decoder.extend(&bytes);
        while let Ok(Some(frame)) = decoder.next_frame() {
            let _ = Message::parse(frame);
        }
        let _ = Message::parse(&bytes);
    }

    #[test]
    fn every_valid_message_is_classified(message in message()) {
        let bytes = serde_json::to_vec(&message).unwrap();
        let parsed = Message::parse(&bytes).unwrap();
        let kind_ok = match parsed {
            Message::Response(_) => message.get("return").is_some() || message.get("error").is_some(),
            Message::Event(e) => e.name() == "X",
            _ => false,
        };
        prop_assert!(kind_ok);
    }
}
