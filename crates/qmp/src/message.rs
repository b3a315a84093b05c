//! QMP messages: the envelope is classified at once, payloads are parsed when asked for.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::{Error, ProtocolError};
use crate::framing::snippet;

/// One message from the peer, classified by its envelope.
#[derive(Debug)]
pub enum Message {
    /// `{"QMP": {...}}`, sent once when a connection opens.
    Greeting(Greeting),
    /// `{"return": ...}` or `{"error": ...}`, with the `id` of the command it answers.
    Response(Response),
    /// `{"event": ..., "data": ..., "timestamp": ...}`.
    Event(Event),
    /// A JSON object with none of the keys above; logged and ignored.
    Unknown(Value),
}

/// The server greeting: QEMU's version and the capabilities it offers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Greeting {
    /// The version block, as in `query-version`.
    pub version: VersionInfo,
    /// Capabilities offered, e.g. `["oob"]`.
    #[serde(default)]
    pub capabilities: Vec<String>,
}

/// QEMU's version (`query-version` and the greeting).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct VersionInfo {
    /// The numeric version.
    pub qemu: VersionTriple,
    /// The distribution's package string, e.g. `Debian 1:7.2+dfsg-7`.
    #[serde(default)]
    pub package: String,
}

/// `major.minor.micro`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct VersionTriple {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Micro version.
    pub micro: u32,
}

impl fmt::Display for VersionTriple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// A reply to a command.
#[derive(Debug)]
pub struct Response {
    /// The id echoed by the peer, if any.
    pub id: Option<Value>,
    /// The unparsed `return` value, or the error.
    pub result: Result<Box<RawValue>, ErrorInfo>,
}

impl Response {
    /// The response as QMP wrote it: `{"return": ...}` or `{"error": {...}}`, plus `id`.
    pub fn to_json(&self) -> Value {
        let mut json = self.to_json_without_id();
        if let (Some(id), Some(object)) = (&self.id, json.as_object_mut()) {
            object.insert("id".into(), id.clone());
        }
        json
    }

    /// The response without the `id`: what a caller asked for, when the id was only the
    /// client's own bookkeeping (as `qemu.qmp` returns it).
    ///
    /// ```
    /// # use qmp::Response;
    /// let response = Response { id: Some(7.into()), result: Ok(serde_json::value::to_raw_value(&1).unwrap()) };
    /// assert_eq!(response.to_json_without_id(), serde_json::json!({"return": 1}));
    /// ```
    pub fn to_json_without_id(&self) -> Value {
        let mut object = serde_json::Map::new();
        match &self.result {
            Ok(raw) => {
                object.insert("return".into(), parse_raw(raw));
            }
            Err(info) => {
                object.insert(
                    "error".into(),
                    serde_json::json!({"class": info.class, "desc": info.desc}),
                );
            }
        }
        Value::Object(object)
    }
}

/// The body of an `{"error": ...}` reply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorInfo {
    /// e.g. `GenericError`, `CommandNotFound`.
    #[serde(default)]
    pub class: String,
    /// Human-readable text.
    #[serde(default)]
    pub desc: String,
}

/// Seconds and microseconds since the epoch, as QEMU stamps events.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp {
    /// Seconds.
    pub seconds: i64,
    /// Microseconds.
    pub microseconds: i64,
}

/// An asynchronous event. Cheap to clone: every subscriber gets the same allocation.
#[derive(Clone)]
pub struct Event(Arc<EventInner>);

struct EventInner {
    name: String,
    data: Option<Box<RawValue>>,
    timestamp: Timestamp,
    received: SystemTime,
}

impl Event {
    /// Builds an event (for fakes and tests; received events come from the client).
    pub fn new(name: impl Into<String>, data: Value, timestamp: Timestamp) -> Event {
        let data = serde_json::value::to_raw_value(&data).ok();
        Event(Arc::new(EventInner {
            name: name.into(),
            data,
            timestamp,
            received: SystemTime::now(),
        }))
    }

    /// The event name, e.g. `SHUTDOWN`.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The `data` member, or `Null` when there is none.
    pub fn data(&self) -> Value {
        self.0.data.as_deref().map_or(Value::Null, parse_raw)
    }

    /// The `data` member as unparsed JSON text.
    pub fn raw_data(&self) -> Option<&str> {
        self.0.data.as_deref().map(RawValue::get)
    }

    /// Deserialises `data` into `T`.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] when `data` does not deserialise into `T`.
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T, Error> {
        let text = self.raw_data().unwrap_or("{}");
        serde_json::from_str(text).map_err(|source| Error::Decode {
            what: format!("data of event {}", self.name()),
            source,
        })
    }

    /// QEMU's timestamp of the event.
    pub fn timestamp(&self) -> Timestamp {
        self.0.timestamp
    }

    /// When this process received it.
    pub fn received(&self) -> SystemTime {
        self.0.received
    }

    /// The whole event as QMP sent it: `{"event": ..., "data": ..., "timestamp": ...}`.
    pub fn to_json(&self) -> Value {
        let mut object = serde_json::Map::new();
        object.insert("event".into(), Value::String(self.0.name.clone()));
        if self.0.data.is_some() {
            object.insert("data".into(), self.data());
        }
        object.insert(
            "timestamp".into(),
            serde_json::json!({
                "seconds": self.0.timestamp.seconds,
                "microseconds": self.0.timestamp.microseconds,
            }),
        );
        Value::Object(object)
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("name", &self.0.name)
            .field("data", &self.raw_data())
            .field("timestamp", &self.0.timestamp)
            .finish()
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_json())
    }
}

/// `RawValue` text is always valid JSON: it was validated when the frame was parsed.
fn parse_raw(raw: &RawValue) -> Value {
    serde_json::from_str(raw.get()).unwrap_or(Value::Null)
}

/// `Some` whenever the member is there, `null` included (plain `Option` reads `null` as
/// absent, which would turn `{"return": null}` into an unknown message).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "QMP")]
    greeting: Option<Greeting>,
    #[serde(rename = "return", default, deserialize_with = "present")]
    ret: Option<Box<RawValue>>,
    error: Option<ErrorInfo>,
    event: Option<String>,
    #[serde(default, deserialize_with = "present")]
    data: Option<Box<RawValue>>,
    timestamp: Option<Timestamp>,
    id: Option<Value>,
}

impl Message {
    /// [`Message::classify`], public only with the feature `fuzzing`, for the fuzz targets
    /// and property tests; the client parses for itself.
    ///
    /// # Errors
    ///
    /// [`ProtocolError::InvalidJson`] when the frame is not valid JSON.
    #[cfg(feature = "fuzzing")]
    #[doc(hidden)]
    pub fn parse(frame: &[u8]) -> Result<Message, ProtocolError> {
        Message::classify(frame)
    }

    /// Classifies one frame. Unknown members are ignored; only invalid JSON is an error.
    ///
    /// # Errors
    ///
    /// [`ProtocolError::InvalidJson`] when the frame is not valid JSON.
    pub(crate) fn classify(frame: &[u8]) -> Result<Message, ProtocolError> {
        let envelope: Envelope =
            serde_json::from_slice(frame).map_err(|e| ProtocolError::InvalidJson {
                reason: e.to_string(),
                near: snippet(frame),
            })?;
        if let Some(name) = envelope.event {
            return Ok(Message::Event(Event(Arc::new(EventInner {
                name,
                data: envelope.data,
                timestamp: envelope.timestamp.unwrap_or_default(),
                received: SystemTime::now(),
            }))));
        }
        if let Some(ret) = envelope.ret {
            return Ok(Message::Response(Response {
                id: envelope.id,
                result: Ok(ret),
            }));
        }
        if let Some(error) = envelope.error {
            return Ok(Message::Response(Response {
                id: envelope.id,
                result: Err(error),
            }));
        }
        if let Some(greeting) = envelope.greeting {
            return Ok(Message::Greeting(greeting));
        }
        let value = serde_json::from_slice(frame).unwrap_or(Value::Null);
        Ok(Message::Unknown(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_envelopes() {
        let greeting = br#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian"}, "capabilities": ["oob"], "future": 1}}"#;
        match Message::classify(greeting).unwrap() {
            Message::Greeting(g) => {
                assert_eq!(g.version.qemu.to_string(), "7.2.22");
                assert_eq!(g.capabilities, ["oob"]);
            }
            other => panic!("{other:?}"),
        }
        match Message::classify(br#"{"return": {"status": "running"}, "id": 7}"#).unwrap() {
            Message::Response(r) => {
                assert_eq!(r.id, Some(Value::from(7)));
                assert_eq!(r.result.unwrap().get(), r#"{"status": "running"}"#);
            }
            other => panic!("{other:?}"),
        }
        match Message::classify(
            br#"{"error": {"class": "CommandNotFound", "desc": "x", "new": 1}}"#,
        )
        .unwrap()
        {
            Message::Response(r) => assert_eq!(r.result.unwrap_err().class, "CommandNotFound"),
            other => panic!("{other:?}"),
        }
        match Message::classify(
            br#"{"event": "NEW_THING", "data": {"a": [1]}, "timestamp": {"seconds": 1, "microseconds": 2}}"#,
        )
        .unwrap()
        {
            Message::Event(e) => {
                assert_eq!(e.name(), "NEW_THING");
                assert_eq!(e.data()["a"][0], 1);
                assert_eq!(e.timestamp().microseconds, 2);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Message::classify(br#"{"something": 1}"#).unwrap(),
            Message::Unknown(_)
        ));
        // Found by a property test: a null return is still a return.
        match Message::classify(br#"{"return": null, "id": 1}"#).unwrap() {
            Message::Response(r) => assert_eq!(r.result.unwrap().get(), "null"),
            other => panic!("{other:?}"),
        }
        assert!(Message::classify(b"{nope}").is_err());
    }
}
