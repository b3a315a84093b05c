//! The event cache: events pulled while waiting for others are kept, in arrival order,
//! for later calls. Cancel-safe: an event taken from the subscription is cached before the
//! next `await`, so a dropped wait loses none.

use std::time::Duration;

use qmp::Event;
use serde_json::Value;
use tokio::time::Instant;

use crate::error::{Error, ErrorKind, Result};
use crate::event_match::event_match;
use crate::machine::Machine;

impl Machine {
    /// The oldest event not yet consumed, without waiting.
    pub fn get_qmp_event(&mut self) -> Option<Event> {
        if let Some(event) = self.events.pop_front() {
            return Some(event);
        }
        self.pull_now()
    }

    /// The oldest event not yet consumed, waiting up to `timeout` for one.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Timeout`] (with the events seen meanwhile) when nothing matched in time;
    /// [`ErrorKind::Exited`] when QEMU exits meanwhile; [`ErrorKind::NotRunning`] when there is no
    /// QMP session.
    pub async fn get_qmp_event_wait(&mut self, timeout: Duration) -> Result<Event> {
        if let Some(event) = self.get_qmp_event() {
            return Ok(event);
        }
        self.events_wait_filtered(|_| true, "any event".into(), timeout)
            .await
    }

    /// Every event not yet consumed, in arrival order (the seed returns them out of order).
    pub fn get_qmp_events(&mut self) -> Vec<Event> {
        self.pull_all();
        self.events.drain(..).collect()
    }

    /// Drops the queued events for which `unwanted` holds (e.g. duplicates of one already
    /// handled), keeping the others in order.
    pub fn forget_events(&mut self, unwanted: impl Fn(&Event) -> bool) {
        self.pull_all();
        self.events.retain(|e| !unwanted(e));
    }

    /// Forgets every event not yet consumed.
    pub fn clear_events(&mut self) {
        self.get_qmp_events();
    }

    /// Moves every event queued now behind the ones already cached, keeping arrival order.
    pub(crate) fn pull_all(&mut self) {
        while let Some(event) = self.pull_now() {
            self.events.push_back(event);
        }
    }

    fn pull_now(&mut self) -> Option<Event> {
        let subscription = self.phase.process_mut()?.subscription.as_mut()?;
        loop {
            match subscription.try_recv()? {
                Ok(event) => {
                    self.history_record(&event);
                    return Some(event);
                }
                Err(qmp::Error::EventsLost(n)) => {
                    tracing::warn!(machine = %self.config.name, "{n} QMP events were lost (queue full)")
                }
                Err(_) => return None,
            }
        }
    }

    /// Waits for an event named `name` whose JSON contains `pattern` (see
    /// [`event_match`](crate::event_match)), under one deadline. Events that do not match
    /// are kept, in order, for later calls.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Timeout`] (with the events seen meanwhile) when nothing matched in time;
    /// [`ErrorKind::Exited`] when QEMU exits meanwhile; [`ErrorKind::NotRunning`] when there is no
    /// QMP session.
    pub async fn event_wait(
        &mut self,
        name: &str,
        pattern: Option<Value>,
        timeout: Duration,
    ) -> Result<Event> {
        self.events_wait(&[(name, pattern)], timeout).await
    }

    /// Waits for the first event that matches any of `wanted` (name and optional pattern),
    /// under one overall deadline however many other events arrive.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Timeout`] (with the events seen meanwhile) when nothing matched in time;
    /// [`ErrorKind::Exited`] when QEMU exits meanwhile; [`ErrorKind::NotRunning`] when there is no
    /// QMP session.
    pub async fn events_wait(
        &mut self,
        wanted: &[(&str, Option<Value>)],
        timeout: Duration,
    ) -> Result<Event> {
        let describe = wanted
            .iter()
            .map(|(name, pattern)| match pattern {
                Some(p) => format!("{name} matching {p}"),
                None => name.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" or ");
        let matches = |event: &Event| {
            wanted.iter().any(|(name, pattern)| {
                event.name() == *name
                    && pattern
                        .as_ref()
                        .is_none_or(|p| event_match(&event.to_json(), p))
            })
        };
        self.events_wait_filtered(matches, format!("event {describe}"), timeout)
            .await
    }

    async fn events_wait_filtered(
        &mut self,
        matches: impl Fn(&Event) -> bool,
        awaited: String,
        timeout: Duration,
    ) -> Result<Event> {
        if let Some(index) = self.events.iter().position(&matches) {
            return Ok(self.events.remove(index).unwrap_or_else(|| unreachable!()));
        }
        let deadline = Instant::now() + timeout;
        let mut seen: Vec<String> = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(subscription) = self
                .phase
                .process_mut()
                .and_then(|r| r.subscription.as_mut())
            else {
                return Err(Error::new(self.config.name.clone(), ErrorKind::NotRunning));
            };
            let received = subscription.recv_timeout(left).await;
            if let Ok(event) = &received {
                self.history_record(event);
            }
            match received {
                Ok(event) if matches(&event) => return Ok(event),
                Ok(event) => {
                    seen.push(event.name().to_string());
                    self.events.push_back(event);
                }
                Err(qmp::Error::EventsLost(n)) => {
                    tracing::warn!(machine = %self.config.name, "{n} QMP events were lost (queue full)");
                }
                Err(qmp::Error::Timeout { .. }) => {
                    return Err(Error::new(
                        self.config.name.clone(),
                        ErrorKind::Timeout {
                            awaited,
                            after: timeout,
                            seen: if seen.is_empty() {
                                "no other event arrived".into()
                            } else {
                                format!("other events meanwhile: {}", seen.join(", "))
                            },
                        },
                    ))
                }
                Err(e) => return Err(self.explain(e, &format!("the wait for {awaited}")).await),
            }
        }
    }
}
