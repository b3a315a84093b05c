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

/// How many unconsumed events a machine keeps; past it the oldest are dropped.
pub const EVENT_CACHE_LIMIT: usize = 4096;
/// How many event names a timeout error lists.
const SEEN_LIMIT: usize = 32;

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
        self.events_wait_filtered(|_| true, "any event".into(), 0, timeout)
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
            self.cache_event(event);
        }
    }

    /// Queues `event` behind the cached ones; past [`EVENT_CACHE_LIMIT`] the oldest goes
    /// (with a warning, counted in [`dropped_events`](Self::dropped_events)).
    pub(crate) fn cache_event(&mut self, event: Event) {
        if self.events.len() >= EVENT_CACHE_LIMIT {
            self.events.pop_front();
            self.events_dropped += 1;
            let dropped = self.events_dropped;
            if dropped.is_power_of_two() {
                tracing::warn!(
                    machine = %self.config.name,
                    "the event cache is full ({EVENT_CACHE_LIMIT} events nobody consumed): \
                     {dropped} oldest dropped so far"
                );
            }
        }
        self.events.push_back(event);
    }

    /// How many cached events were dropped, oldest first, because more than
    /// [`EVENT_CACHE_LIMIT`] were waiting to be consumed (0 normally).
    pub fn dropped_events(&self) -> u64 {
        self.events_dropped
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
    /// ```no_run
    /// # async fn f(vm: &mut qemu_machine::Machine) -> qemu_machine::Result<()> {
    /// use serde_json::json;
    /// use std::time::Duration;
    ///
    /// vm.cmd("stop", ()).await?;
    /// let stop = vm.event_wait("STOP", None, Duration::from_secs(5)).await?;
    /// // Only the DEVICE_DELETED of `disk1`:
    /// let pattern = Some(json!({"data": {"device": "disk1"}}));
    /// let deleted = vm.event_wait("DEVICE_DELETED", pattern, Duration::from_secs(5)).await?;
    /// # Ok(()) }
    /// ```
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
    /// ```no_run
    /// # async fn f(vm: &mut qemu_machine::Machine) -> qemu_machine::Result<()> {
    /// use std::time::Duration;
    ///
    /// let event = vm
    ///     .events_wait(&[("SHUTDOWN", None), ("GUEST_PANICKED", None)], Duration::from_secs(60))
    ///     .await?;
    /// if event.name() == "GUEST_PANICKED" {
    ///     println!("panicked: {}", event.data());
    /// }
    /// # Ok(()) }
    /// ```
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
        self.events_wait_filtered(matches, format!("event {describe}"), 0, timeout)
            .await
    }

    /// Takes the first event that `matches`, among the cached events from index `from`
    /// on (earlier ones are left alone), else as it arrives, within `timeout`; the events
    /// that do not match are cached in order.
    pub(crate) async fn events_wait_filtered(
        &mut self,
        matches: impl Fn(&Event) -> bool,
        awaited: String,
        from: usize,
        timeout: Duration,
    ) -> Result<Event> {
        if let Some(index) = self.events.iter().skip(from).position(&matches) {
            return Ok(self
                .events
                .remove(from + index)
                .unwrap_or_else(|| unreachable!()));
        }
        let deadline = crate::deadline::deadline_after(timeout);
        let mut seen: Vec<String> = Vec::new();
        let mut seen_count = 0usize;
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
                    seen_count += 1;
                    if seen.len() < SEEN_LIMIT {
                        seen.push(event.name().to_string());
                    }
                    self.cache_event(event);
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
                            } else if seen_count > seen.len() {
                                format!(
                                    "other events meanwhile: {} and {} more",
                                    seen.join(", "),
                                    seen_count - seen.len()
                                )
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

#[cfg(test)]
mod tests {
    use super::*;
    use qmp::Timestamp;
    use serde_json::json;

    #[test]
    fn the_event_cache_is_bounded() {
        let mut vm = Machine::new(Machine::builder("qemu-system-x86_64"));
        let event = |i: usize| {
            Event::new(
                format!("E{i}"),
                json!({}),
                Timestamp {
                    seconds: 0,
                    microseconds: 0,
                },
            )
        };
        for i in 0..EVENT_CACHE_LIMIT + 10 {
            vm.cache_event(event(i));
        }
        assert_eq!(vm.events.len(), EVENT_CACHE_LIMIT);
        assert_eq!(vm.dropped_events(), 10);
        assert_eq!(vm.get_qmp_event().unwrap().name(), "E10");
        let last = vm.get_qmp_events().pop().unwrap();
        assert_eq!(last.name(), format!("E{}", EVENT_CACHE_LIMIT + 9));
    }
}
