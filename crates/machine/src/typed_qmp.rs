//! Typed QMP on [`Machine`]: [`qmp::Command`]s called directly, execute-and-await through
//! the machine's own event cache (so the event is consumed once), and the event history.

use std::collections::VecDeque;
use std::time::Duration;

use qmp::{Event, Request};
use serde_json::Value;
use tokio::time::Instant;

use crate::error::{Error, ErrorKind, Result};
use crate::event_match::event_match;
use crate::machine::Machine;

/// How many events [`Machine::event_history`] keeps by default.
pub const DEFAULT_EVENT_HISTORY: usize = 1000;

impl From<qmp::Error> for Error {
    /// A QMP error with no machine name (the machine's own methods add it).
    fn from(source: qmp::Error) -> Self {
        Error::from(ErrorKind::Qmp(Box::new(source)))
    }
}

/// The newest events a machine received, oldest first, whether or not something consumed
/// them.
#[derive(Debug, Clone, Default)]
pub(crate) struct EventHistory {
    events: VecDeque<Event>,
    /// Events dropped to stay within the limit.
    dropped: u64,
}

impl EventHistory {
    pub(crate) fn record(&mut self, event: &Event, limit: usize) {
        if limit == 0 {
            self.dropped += 1;
            return;
        }
        while self.events.len() >= limit {
            self.events.pop_front();
            self.dropped += 1;
        }
        self.events.push_back(event.clone());
    }
}

impl Machine {
    /// Calls a typed command and returns its typed `return` value.
    ///
    /// ```no_run
    /// # async fn f(vm: &mut qemu_machine::Machine) -> qemu_machine::Result<()> {
    /// use qemu_machine::qmp::commands::{QueryStatus, RunState};
    /// let status = vm.call(&QueryStatus {}).await?;
    /// assert_eq!(status.status, RunState::Running);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`cmd`](Self::cmd); a return value of the wrong shape is an [`ErrorKind::Qmp`].
    pub async fn call<C: qmp::Command>(&mut self, command: &C) -> Result<C::Returns> {
        let arguments = serde_json::to_value(command)
            .map_err(|e| Error::config(format!("arguments of {}: {e}", C::NAME)))?;
        let value = self.cmd(C::NAME, arguments).await?;
        serde_json::from_value(value.clone()).map_err(|e| {
            Error::config(format!(
                "{} returned {value} which does not fit its type: {e}",
                C::NAME
            ))
        })
    }

    /// Runs a command, then waits for the event `event` matching `pattern` (see
    /// [`event_match`](crate::event_match)) that arrives from the moment the command was
    /// sent, all under one deadline. Unlike [`qmp::Client::execute_and_wait`] the event
    /// goes through the machine's event cache and is consumed: a later
    /// [`event_wait`](Self::event_wait) does not see it again. Events that arrived before
    /// the command, and others meanwhile, stay queued in order.
    ///
    /// ```no_run
    /// # async fn f(vm: &mut qemu_machine::Machine) -> qemu_machine::Result<()> {
    /// use std::time::Duration;
    /// let (_, event) = vm
    ///     .execute_and_wait("stop", (), "STOP", None, Duration::from_secs(5))
    ///     .await?;
    /// assert_eq!(event.name(), "STOP");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`cmd`](Self::cmd) for the command; [`ErrorKind::Timeout`] when the event does
    /// not come in time; [`ErrorKind::Exited`] when QEMU exits meanwhile.
    pub async fn execute_and_wait(
        &mut self,
        name: &str,
        arguments: impl serde::Serialize,
        event: &str,
        pattern: Option<Value>,
        timeout: Duration,
    ) -> Result<(Value, Event)> {
        let deadline = crate::deadline::deadline_after(timeout);
        self.pull_all();
        let mark = self.events.len();
        let arguments = crate::machine::to_arguments(name, arguments)?;
        let value = self
            .request(Request::new(name).arguments(arguments).timeout(timeout))
            .await?;
        let matches = |e: &Event| {
            e.name() == event
                && pattern
                    .as_ref()
                    .is_none_or(|p| event_match(&e.to_json(), p))
        };
        let awaited = match &pattern {
            Some(p) => format!("event {event} matching {p} after {name}"),
            None => format!("event {event} after {name}"),
        };
        // One deadline for the command and the event; only events after the command count.
        let left = deadline.saturating_duration_since(Instant::now());
        let event = self
            .events_wait_filtered(matches, awaited, mark, left)
            .await?;
        Ok((value, event))
    }

    /// The newest events received (at most
    /// [`MachineBuilder::event_history`](crate::MachineBuilder::event_history), default
    /// [`DEFAULT_EVENT_HISTORY`]), oldest first, including those already consumed by
    /// [`event_wait`](Self::event_wait) and friends. Each [`Event`] has QEMU's timestamp
    /// ([`Event::timestamp`]) and the local time it was received ([`Event::received`]).
    /// The history survives shutdown and spans launches.
    ///
    /// ```no_run
    /// # fn f(vm: &mut qemu_machine::Machine) {
    /// for event in vm.event_history() {
    ///     println!("{:?} {}", event.received(), event.name());
    /// }
    /// # }
    /// ```
    pub fn event_history(&mut self) -> Vec<Event> {
        self.pull_all();
        self.history.events.iter().cloned().collect()
    }

    /// How many events the history dropped to stay within its limit.
    ///
    /// ```no_run
    /// # fn f(vm: &qemu_machine::Machine) {
    /// assert_eq!(vm.event_history_dropped(), 0);
    /// # }
    /// ```
    pub fn event_history_dropped(&self) -> u64 {
        self.history.dropped
    }

    /// Records an event taken from the subscription.
    pub(crate) fn history_record(&mut self, event: &Event) {
        let limit = self.config.event_history;
        self.history.record(event, limit);
    }
}

fn block_on<F: std::future::Future>(future: F) -> Result<F::Output> {
    qmp::blocking::block_on(future).map_err(Error::from)
}

impl crate::blocking::Machine {
    /// [`Machine::call`], blocking.
    ///
    /// ```no_run
    /// # fn f(vm: &mut qemu_machine::blocking::Machine) -> qemu_machine::Result<()> {
    /// let status = vm.call(&qemu_machine::qmp::commands::QueryStatus {})?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Machine::call`].
    pub fn call<C: qmp::Command>(&mut self, command: &C) -> Result<C::Returns> {
        block_on(self.as_async().call(command))?
    }

    /// [`Machine::execute_and_wait`], blocking.
    ///
    /// ```no_run
    /// # fn f(vm: &mut qemu_machine::blocking::Machine) -> qemu_machine::Result<()> {
    /// use std::time::Duration;
    /// let (_, stop) = vm.execute_and_wait("stop", (), "STOP", None, Duration::from_secs(5))?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Machine::execute_and_wait`].
    pub fn execute_and_wait(
        &mut self,
        name: &str,
        arguments: impl serde::Serialize,
        event: &str,
        pattern: Option<Value>,
        timeout: Duration,
    ) -> Result<(Value, Event)> {
        block_on(
            self.as_async()
                .execute_and_wait(name, arguments, event, pattern, timeout),
        )?
    }

    /// [`Machine::event_history`].
    ///
    /// ```no_run
    /// # fn f(vm: &mut qemu_machine::blocking::Machine) {
    /// let names: Vec<String> = vm.event_history().iter().map(|e| e.name().to_string()).collect();
    /// # }
    /// ```
    pub fn event_history(&mut self) -> Vec<Event> {
        self.as_async().event_history()
    }
}

impl crate::MachineBuilder {
    /// How many events [`Machine::event_history`] keeps (default
    /// [`DEFAULT_EVENT_HISTORY`]; 0 keeps none).
    ///
    /// ```
    /// let builder = qemu_machine::Machine::builder("qemu-system-x86_64").event_history(50);
    /// ```
    pub fn event_history(mut self, events: usize) -> Self {
        self.config.event_history = events;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn history_keeps_the_newest() {
        let mut history = EventHistory::default();
        for i in 0..5 {
            let event = Event::new(
                format!("E{i}"),
                json!({}),
                qmp::Timestamp {
                    seconds: i,
                    microseconds: 0,
                },
            );
            history.record(&event, 3);
        }
        let names: Vec<_> = history
            .events
            .iter()
            .map(|e| e.name().to_string())
            .collect();
        assert_eq!(names, ["E2", "E3", "E4"]);
        assert_eq!(history.dropped, 2);
    }
}
