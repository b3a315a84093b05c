//! Event subscriptions: one bounded queue per subscriber, filled by the reader without ever
//! blocking it.
//!
//! Overflow policy: when a subscriber's queue is full, the *oldest* queued event is dropped
//! and counted. The subscriber's next `recv` returns [`Error::EventsLost`] with the count,
//! then carries on with the newest events. On disconnect every subscriber gets the queued
//! events first, then [`Error::Disconnected`] for ever.
//!
//! The registry of live subscriptions ([`Subscribers`]) lives here too: the connection owns
//! it, the reader copies events into it, and each [`Subscription`] holds it weakly to
//! unsubscribe when dropped. So this module needs nothing from the connection.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use crate::error::{DisconnectReason, Error};
use crate::message::Event;

/// The default capacity of a subscriber's queue.
pub const DEFAULT_QUEUE_CAPACITY: usize = 4096;

type Predicate = Arc<dyn Fn(&Event) -> bool + Send + Sync>;

/// Which events a subscriber wants: by name (any of several), by predicate, or both.
///
/// ```
/// use qmp::EventFilter;
///
/// let all = EventFilter::all();
/// let stops = EventFilter::names(["STOP", "RESUME"]);
/// let one_device = EventFilter::name("DEVICE_DELETED")
///     .and(|e| e.data()["device"] == "disk1");
/// # let _ = (all, stops, one_device);
/// ```
#[derive(Clone, Default)]
pub struct EventFilter {
    names: Option<Vec<String>>,
    predicate: Option<Predicate>,
}

impl EventFilter {
    /// Every event.
    pub fn all() -> Self {
        EventFilter::default()
    }

    /// Events with this name.
    pub fn name(name: impl Into<String>) -> Self {
        EventFilter {
            names: Some(vec![name.into()]),
            predicate: None,
        }
    }

    /// Events with any of these names.
    pub fn names<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        EventFilter {
            names: Some(names.into_iter().map(Into::into).collect()),
            predicate: None,
        }
    }

    /// Also requires `predicate` to hold (applied after the name check).
    pub fn and(mut self, predicate: impl Fn(&Event) -> bool + Send + Sync + 'static) -> Self {
        self.predicate = Some(match self.predicate.take() {
            None => Arc::new(predicate),
            Some(first) => Arc::new(move |e| first(e) && predicate(e)),
        });
        self
    }

    /// Whether `event` passes.
    pub fn matches(&self, event: &Event) -> bool {
        self.names
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == event.name()))
            && self.predicate.as_ref().is_none_or(|p| p(event))
    }
}

impl fmt::Debug for EventFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventFilter")
            .field("names", &self.names)
            .field("predicate", &self.predicate.is_some())
            .finish()
    }
}

#[derive(Debug)]
struct QueueState {
    events: VecDeque<Event>,
    lost: u64,
    closed: Option<DisconnectReason>,
}

/// The reader's side of a subscription.
struct EventQueue {
    filter: EventFilter,
    capacity: usize,
    state: Mutex<QueueState>,
    notify: Notify,
}

impl EventQueue {
    fn new(filter: EventFilter, capacity: usize) -> Arc<Self> {
        Arc::new(EventQueue {
            filter,
            capacity: capacity.max(1),
            state: Mutex::new(QueueState {
                events: VecDeque::new(),
                lost: 0,
                closed: None,
            }),
            notify: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        crate::sync::lock_unpoisoned(&self.state)
    }

    /// Never blocks: a full queue loses its oldest event.
    fn push(&self, event: &Event) {
        {
            let mut state = self.lock();
            if state.closed.is_some() {
                return;
            }
            if state.events.len() >= self.capacity {
                state.events.pop_front();
                state.lost += 1;
            }
            state.events.push_back(event.clone());
        }
        self.notify.notify_one();
    }

    fn close(&self, reason: DisconnectReason) {
        self.lock().closed.get_or_insert(reason);
        self.notify.notify_one();
    }

    fn try_take(&self) -> Option<Result<Event, Error>> {
        let mut state = self.lock();
        if state.lost > 0 {
            let lost = std::mem::take(&mut state.lost);
            return Some(Err(Error::EventsLost(lost)));
        }
        if let Some(event) = state.events.pop_front() {
            return Some(Ok(event));
        }
        state
            .closed
            .clone()
            .map(|reason| Err(Error::Disconnected(reason)))
    }
}

/// Every live subscription's queue, for one connection.
///
/// The connection decides whether the session is still live (under its own lock) and
/// then calls [`subscribe`](Self::subscribe) or [`ended`](Self::ended); when the session
/// ends it calls [`close_all`](Self::close_all). The registry keeps no session state of
/// its own.
pub(crate) struct Subscribers {
    capacity: usize,
    queues: Mutex<Vec<Arc<EventQueue>>>,
}

impl Subscribers {
    /// An empty registry whose queues hold `capacity` events each.
    pub(crate) fn new(capacity: usize) -> Arc<Subscribers> {
        Arc::new(Subscribers {
            capacity,
            queues: Mutex::new(Vec::new()),
        })
    }

    fn queues(&self) -> std::sync::MutexGuard<'_, Vec<Arc<EventQueue>>> {
        crate::sync::lock_unpoisoned(&self.queues)
    }

    /// A new, registered subscription to a live session.
    pub(crate) fn subscribe(self: &Arc<Self>, filter: EventFilter) -> Subscription {
        let queue = EventQueue::new(filter, self.capacity);
        self.queues().push(queue.clone());
        Subscription {
            queue,
            registry: Arc::downgrade(self),
        }
    }

    /// A subscription to a session that is already over: it ends at once with `reason`.
    pub(crate) fn ended(&self, filter: EventFilter, reason: DisconnectReason) -> Subscription {
        let queue = EventQueue::new(filter, self.capacity);
        queue.close(reason);
        Subscription {
            queue,
            registry: Weak::new(),
        }
    }

    /// Copies `event` into every queue whose filter it passes. Never blocks on a subscriber.
    pub(crate) fn deliver(&self, event: &Event) {
        let queues = self.queues().clone();
        for queue in queues {
            if queue.filter.matches(event) {
                queue.push(event);
            }
        }
    }

    /// Ends every subscription (each still yields what it has queued) and forgets them.
    pub(crate) fn close_all(&self, reason: &DisconnectReason) {
        let queues = std::mem::take(&mut *self.queues());
        for queue in queues {
            queue.close(reason.clone());
        }
    }

    fn unsubscribe(&self, queue: &Arc<EventQueue>) {
        self.queues().retain(|q| !Arc::ptr_eq(q, queue));
    }
}

/// A live subscription: events that pass its filter, in arrival order, from the moment it
/// was created. Dropping it unsubscribes.
pub struct Subscription {
    queue: Arc<EventQueue>,
    registry: Weak<Subscribers>,
}

impl Subscription {
    /// The next event, in arrival order.
    ///
    /// # Errors
    ///
    /// [`Error::EventsLost`] once after an overflow (then it goes on with the newest
    /// events), and [`Error::Disconnected`] once the session is over and the queue empty.
    pub async fn recv(&mut self) -> Result<Event, Error> {
        loop {
            let notified = self.queue.notify.notified();
            if let Some(item) = self.queue.try_take() {
                return item;
            }
            notified.await;
        }
    }

    /// [`recv`](Self::recv) with a deadline.
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv), and [`Error::Timeout`] when no matching event arrives
    /// within `timeout`.
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<Event, Error> {
        match crate::deadline::Deadline::after(timeout)
            .timeout(self.recv())
            .await
        {
            Ok(item) => item,
            Err(_) => Err(Error::Timeout {
                awaited: format!("an event matching {:?}", self.queue.filter),
                after: timeout,
                seen: "no matching event arrived".into(),
            }),
        }
    }

    /// The next queued event, if any, without waiting.
    ///
    /// # Errors
    ///
    /// The inner `Err` is [`Error::EventsLost`] when events were dropped since the last
    /// call (the queue was full), and [`Error::Disconnected`] once the session is over and
    /// the queue is empty.
    pub fn try_recv(&mut self) -> Option<Result<Event, Error>> {
        self.queue.try_take()
    }

    /// Takes every event queued now.
    pub fn drain(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.queue.lock().events).into()
    }

    /// The filter this subscription was made with.
    pub fn filter(&self) -> &EventFilter {
        &self.queue.filter
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(registry) = self.registry.upgrade() {
            registry.unsubscribe(&self.queue);
        }
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("filter", &self.queue.filter)
            .finish()
    }
}
