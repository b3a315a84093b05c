//! What a connection has received so far, kept cheaply so that a deadline error can say
//! what was seen (the reader updates it once per read, not once per message formatted).

use serde_json::Value;

use crate::error::DisconnectReason;
use crate::message::{ErrorInfo, Event, Message, Response};

/// Counters and the last message read.
#[derive(Default)]
pub(crate) struct Seen {
    bytes: u64,
    messages: u64,
    last: Option<LastMessage>,
}

impl Seen {
    /// Adds one read: `bytes` read, `messages` complete messages, the last of them.
    pub(crate) fn add(&mut self, bytes: usize, messages: u64, last: Option<LastMessage>) {
        self.bytes += bytes as u64;
        self.messages += messages;
        if let Some(last) = last {
            self.last = Some(last);
        }
    }

    /// In words, for [`Error::Timeout`](crate::Error::Timeout)'s `seen`.
    pub(crate) fn describe(&self, closed: Option<&DisconnectReason>) -> String {
        match (closed, self.messages) {
            (Some(reason), _) => format!("the connection closed: {reason}"),
            (None, 0) if self.bytes == 0 => "nothing was received".into(),
            (None, 0) => format!("{} bytes received, no complete message", self.bytes),
            (None, n) => match &self.last {
                Some(last) => format!("{n} messages received so far, the last: {last}"),
                None => format!("{n} messages received so far"),
            },
        }
    }
}

/// The last message read, kept cheaply (an `Arc` clone for events) and only put into
/// words when asked.
pub(crate) enum LastMessage {
    Greeting,
    Reply(Option<Value>),
    ErrorReply(ErrorInfo),
    Event(Event),
    Unknown,
}

impl LastMessage {
    pub(crate) fn of_response(response: &Response) -> LastMessage {
        match &response.result {
            Ok(_) => LastMessage::Reply(response.id.clone()),
            Err(e) => LastMessage::ErrorReply(e.clone()),
        }
    }

    pub(crate) fn of(message: &Message) -> LastMessage {
        match message {
            Message::Greeting(_) => LastMessage::Greeting,
            Message::Response(r) => LastMessage::of_response(r),
            Message::Event(e) => LastMessage::Event(e.clone()),
            Message::Unknown(_) => LastMessage::Unknown,
        }
    }
}

impl std::fmt::Display for LastMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LastMessage::Greeting => f.write_str("the greeting"),
            LastMessage::Reply(Some(id)) => write!(f, "a reply to id {id}"),
            LastMessage::Reply(None) => f.write_str("a reply without id"),
            LastMessage::ErrorReply(e) => write!(f, "an error reply ({}: {})", e.class, e.desc),
            LastMessage::Event(e) => write!(f, "event {}", e.name()),
            LastMessage::Unknown => f.write_str("an unknown message"),
        }
    }
}
