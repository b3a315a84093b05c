//! Where a QMP session is in its life, as one value.
//!
//! A connection used to spread this over an optional close reason, a greeting waiter and a
//! closed flag, which could disagree. Now there is one [`SessionState`]; the connection keeps
//! it in a `watch` channel (so waiters see every change) and changes it in one place, which
//! checks each transition against [`SessionState::may_become`] and logs it once.

use std::fmt;

use crate::error::DisconnectReason;

/// The life of a session:
///
/// ```text
/// AwaitingGreeting --greeting--> Negotiating --capabilities reply--> Running
///        |          (no negotiation) --------------------------------> Running
///        +------------------------ any of them ------------------> Closed(reason)
/// ```
///
/// A session that skips the greeting (the guest agent) starts in `Running`. Nothing
/// leaves `Closed`: its reason is the first one.
#[derive(Debug, Clone)]
pub(crate) enum SessionState {
    /// Connected; the peer's `{"QMP": ...}` greeting has not arrived yet. Events are
    /// tolerated meanwhile; a reply or an unknown message ends the session.
    AwaitingGreeting,
    /// Greeted; `qmp_capabilities` is on its way or awaiting its reply.
    Negotiating,
    /// Commands and events flow.
    Running,
    /// Over, for this reason.
    Closed(DisconnectReason),
}

impl SessionState {
    /// Whether going from `self` to `next` is a legal transition.
    pub(crate) fn may_become(&self, next: &SessionState) -> bool {
        use SessionState::*;
        match (self, next) {
            (Closed(_), _) => false,
            (_, Closed(_)) => true,
            (AwaitingGreeting, Negotiating | Running) => true,
            (Negotiating, Running) => true,
            _ => false,
        }
    }

    /// Whether the session is over.
    pub(crate) fn is_closed(&self) -> bool {
        matches!(self, SessionState::Closed(_))
    }

    /// Why the session ended, if it has.
    pub(crate) fn closed_reason(&self) -> Option<&DisconnectReason> {
        match self {
            SessionState::Closed(reason) => Some(reason),
            _ => None,
        }
    }
}

impl fmt::Display for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionState::AwaitingGreeting => f.write_str("awaiting greeting"),
            SessionState::Negotiating => f.write_str("negotiating"),
            SessionState::Running => f.write_str("running"),
            SessionState::Closed(reason) => write!(f, "closed ({reason})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SessionState::*;

    #[test]
    fn only_forward_transitions_and_nothing_leaves_closed() {
        let closed = || Closed(crate::DisconnectReason::Closed);
        for (from, to, legal) in [
            (AwaitingGreeting, Negotiating, true),
            (AwaitingGreeting, Running, true),
            (AwaitingGreeting, closed(), true),
            (Negotiating, Running, true),
            (Negotiating, closed(), true),
            (Running, closed(), true),
            (Running, Negotiating, false),
            (Running, AwaitingGreeting, false),
            (Negotiating, AwaitingGreeting, false),
            (Running, Running, false),
            (closed(), Running, false),
            (closed(), closed(), false),
        ] {
            assert_eq!(from.may_become(&to), legal, "{from} -> {to}");
        }
    }
}
