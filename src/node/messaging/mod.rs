//! Messages between applications, as a node sends and receives them:
//! [`Node::send_message`] queues a message for a peer and returns its id
//! at once; [`Node::messages`] is the stream of a topic's messages;
//! [`Node::delivered`] resolves when the recipient acknowledged one.
//!
//! Delivery is at-least-once and the recipient hands each message to the
//! application once, in its sender's order per topic. A reachable
//! recipient gets messages directly, in batches, over any path the node
//! has to it (direct, punched, relayed). One that cannot be reached gets
//! them in its *mailbox*: each message sealed to its key and signed by the
//! sender ([`crate::messaging::envelope`]), placed on the `replicas` nodes
//! closest to the mailbox key, which keep it (bounded per sender and per
//! source; repaired when one of them leaves) until the recipient, back
//! online, drains its mailbox, acknowledges what it took (the holders
//! delete it) and sends the sender a receipt. The sender keeps trying
//! directly as well, with a growing pause, until a message is acknowledged
//! or its time to live has passed.
//!
//! ```
//! # async fn run() -> butter::Result<()> {
//! use butter::Node;
//! let local = "127.0.0.1:0".parse().unwrap();
//! let alice = Node::builder().listen(local).lan_discovery(false).spawn().await?;
//! let bob = Node::builder().listen(local).lan_discovery(false).spawn().await?;
//! alice.add_peer_addr(&bob.addr());
//! let mut inbox = bob.messages("chat");
//! let id = alice.send_message(bob.id(), "chat", "hello bob")?;
//! let msg = inbox.next().await.unwrap();
//! assert_eq!((msg.from, &msg.body[..]), (alice.id(), &b"hello bob"[..]));
//! alice.delivered(id).await?; // bob acknowledged it
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
//! ```

mod deliver;
mod drain;
pub(crate) mod persist;
mod service;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use lru::LruCache;
use tokio::sync::{mpsc, Notify};

pub(super) use service::MessagingService;

use super::Node;
use crate::error::{Error, Result};
use crate::identity::NodeId;
use crate::messaging::inbox::{Inbox, InboxLimits};
use crate::messaging::mailbox::{MailboxLimits, MailboxStore};
use crate::messaging::messages::Outcome;
use crate::messaging::outbox::{Outbox, OutboxLimits};
use crate::messaging::{envelope::Letter, Message, MessageError, MessageId};

pub use drain::Drained;

/// Messaging settings.
#[derive(Debug, Clone)]
pub struct MessagingSettings {
    /// Nodes a mailbox is placed on (the closest to its key).
    pub replicas: usize,
    /// How often a node drains its own mailbox (it also does soon after it
    /// starts, once it knows some hosts).
    pub drain_interval: Duration,
    /// Messages of one topic waiting for the application to take them
    /// (more are not acknowledged: their senders try again later).
    pub topic_capacity: usize,
    /// Bytes of those messages, per topic.
    pub topic_bytes: usize,
    /// Messages of a topic nobody subscribed to (yet) kept for a
    /// subscriber: fewer, so that topics made up by others stay cheap.
    pub unsubscribed_capacity: usize,
    /// Bytes of those messages, per topic.
    pub unsubscribed_bytes: usize,
    /// Topics with messages waiting for a subscriber, at most.
    pub max_topics: usize,
    /// Whether this node holds mailboxes for others (a node serving the
    /// DHT does by default).
    pub serve: bool,
    /// The sender's bounds and retry schedule (and messages' time to live).
    pub outbox: OutboxLimits,
    /// The recipient's bounds.
    pub inbox: InboxLimits,
    /// What this node holds for others.
    pub mailbox: MailboxLimits,
}

impl Default for MessagingSettings {
    fn default() -> Self {
        MessagingSettings {
            replicas: 3,
            drain_interval: Duration::from_secs(60),
            topic_capacity: 4096,
            topic_bytes: 16 << 20,
            unsubscribed_capacity: 64,
            unsubscribed_bytes: 256 << 10,
            max_topics: 64,
            serve: true,
            outbox: OutboxLimits::default(),
            inbox: InboxLimits::default(),
            mailbox: MailboxLimits::default(),
        }
    }
}

/// Where a sent message is ([`Node::message_status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageStatus {
    /// Not acknowledged yet, and in no mailbox.
    Waiting,
    /// Held by at least one of the recipient's mailbox holders; not
    /// acknowledged yet.
    Stored,
    /// Acknowledged by the recipient.
    Delivered,
    /// Given up (expired or refused).
    Failed(MessageError),
    /// Not a message this node sent recently.
    Unknown,
}

/// How a message ended, once it did.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Done {
    Delivered,
    Failed(MessageError),
}

/// A topic's messages waiting for the application.
struct Topic {
    tx: mpsc::UnboundedSender<Message>,
    /// The receiver, until a subscriber takes it.
    rx: Option<mpsc::UnboundedReceiver<Message>>,
    queued: Arc<Queued>,
}

/// Messages (and their bytes) handed to a topic's stream and not taken yet.
#[derive(Default)]
struct Queued {
    count: AtomicUsize,
    bytes: AtomicUsize,
}

impl Queued {
    fn add(&self, msg: &Message) {
        self.count.fetch_add(1, Ordering::AcqRel);
        self.bytes.fetch_add(msg.body.len(), Ordering::AcqRel);
    }

    fn taken(&self, msg: &Message) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        self.bytes.fetch_sub(msg.body.len(), Ordering::AcqRel);
    }

    fn is_empty(&self) -> bool {
        self.count.load(Ordering::Acquire) == 0
    }
}

impl Topic {
    fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Topic {
            tx,
            rx: Some(rx),
            queued: Arc::default(),
        }
    }

    /// Whether `extra` more bytes fit (a subscribed topic holds more).
    fn has_room(&self, settings: &MessagingSettings, extra: usize) -> bool {
        let (count, bytes) = if self.rx.is_none() {
            (settings.topic_capacity, settings.topic_bytes)
        } else {
            (settings.unsubscribed_capacity, settings.unsubscribed_bytes)
        };
        self.queued.count.load(Ordering::Acquire) < count
            && self.queued.bytes.load(Ordering::Acquire) + extra <= bytes
    }
}

/// The node's messaging state.
pub(crate) struct MessagingState {
    pub(crate) settings: MessagingSettings,
    pub(crate) outbox: Mutex<Outbox>,
    pub(crate) inbox: Mutex<Inbox>,
    /// Mailboxes held for others.
    pub(crate) mailbox: Mutex<MailboxStore>,
    topics: Mutex<HashMap<String, Topic>>,
    /// Messages that ended recently (for `delivered` asked late).
    done: Mutex<LruCache<MessageId, Done>>,
    /// Told when a message is acknowledged, stored or given up.
    changed: Notify,
    /// Told when there is something to send.
    pub(crate) wake: Notify,
    /// Recipients a delivery runs for now.
    active: Mutex<std::collections::HashSet<NodeId>>,
    /// Something changed since the last snapshot.
    pub(crate) dirty: AtomicBool,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl MessagingState {
    pub(crate) fn new(settings: MessagingSettings) -> Self {
        MessagingState {
            outbox: Mutex::new(Outbox::new(settings.outbox.clone(), now_ms())),
            inbox: Mutex::new(Inbox::new(settings.inbox.clone())),
            mailbox: Mutex::new(MailboxStore::new(settings.mailbox.clone())),
            topics: Mutex::new(HashMap::new()),
            done: Mutex::new(LruCache::new(NonZeroUsize::new(16_384).expect("non-zero"))),
            changed: Notify::new(),
            wake: Notify::new(),
            active: Mutex::new(Default::default()),
            dirty: AtomicBool::new(false),
            settings,
        }
    }

    pub(crate) fn changed(&self) {
        self.dirty.store(true, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// `to` acknowledged `ids`.
    pub(crate) fn acked(&self, to: &NodeId, ids: &[MessageId]) {
        let mut any = false;
        {
            let mut out = lock(&self.outbox);
            let mut done = lock(&self.done);
            for id in ids {
                if out.acked(to, id) {
                    done.put(*id, Done::Delivered);
                    any = true;
                }
            }
        }
        if any {
            self.changed();
            self.wake.notify_one();
        }
    }

    pub(crate) fn failed(&self, ids: &[MessageId], why: MessageError) {
        let mut done = lock(&self.done);
        for id in ids {
            done.put(*id, Done::Failed(why.clone()));
        }
        drop(done);
        self.changed();
    }

    /// Takes a letter from `from` (authenticated by the caller): hands
    /// what is ready to the topics' subscribers.
    pub(crate) fn take(&self, from: NodeId, letter: Letter) -> Outcome {
        let topic = letter.topic.clone();
        {
            let mut topics = lock(&self.topics);
            if !topics.contains_key(&topic) && topics.len() >= self.settings.max_topics {
                topics.retain(|_, t| t.rx.is_none() || !t.queued.is_empty());
                if topics.len() >= self.settings.max_topics {
                    return Outcome::Later;
                }
            }
            let t = topics.entry(topic.clone()).or_insert_with(Topic::new);
            if t.tx.is_closed() {
                // The subscriber left: the next one gets what comes now.
                *t = Topic::new();
            }
            if !t.has_room(&self.settings, letter.body.len()) {
                return Outcome::Later;
            }
        }
        let ready = match lock(&self.inbox).accept(from, letter) {
            Ok(ready) => ready,
            Err(MessageError::Replayed) => return Outcome::Seen,
            Err(MessageError::OverQuota(_)) => return Outcome::Later,
            Err(e) => return Outcome::Refused(e),
        };
        self.dirty.store(true, Ordering::Release);
        let mut topics = lock(&self.topics);
        for msg in ready {
            let t = topics.entry(msg.topic.clone()).or_insert_with(Topic::new);
            t.queued.add(&msg);
            if let Err(mpsc::error::SendError(msg)) = t.tx.send(msg) {
                *t = Topic::new();
                t.queued.add(&msg);
                let _ = t.tx.send(msg);
            }
        }
        Outcome::Taken
    }
}

/// The messages of one topic, in each sender's order ([`Node::messages`]).
/// Also a [`futures_util::Stream`].
pub struct Messages {
    rx: mpsc::UnboundedReceiver<Message>,
    queued: Arc<Queued>,
}

impl Messages {
    /// The next message (`None` once the node shut down, or another
    /// subscriber took the topic over).
    pub async fn next(&mut self) -> Option<Message> {
        let msg = self.rx.recv().await;
        if let Some(m) = &msg {
            self.queued.taken(m);
        }
        msg
    }
}

impl futures_util::Stream for Messages {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        let polled = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(m)) = &polled {
            self.queued.taken(m);
        }
        polled
    }
}

impl Node {
    pub(crate) fn messaging(&self) -> &MessagingState {
        &self.shared().messaging
    }

    /// Queues `body` for `to` on `topic` and returns its id at once; the
    /// node delivers it directly, or through `to`'s mailbox when `to` cannot
    /// be reached (sealed to `to`'s key, kept by the nodes closest to the
    /// mailbox, drained when `to` comes online). Errors: a body over
    /// [`MAX_BODY`](crate::messaging::MAX_BODY), a topic over
    /// [`MAX_TOPIC`](crate::messaging::MAX_TOPIC), or too many messages
    /// waiting for their acknowledgement.
    pub fn send_message(
        &self,
        to: NodeId,
        topic: &str,
        body: impl Into<Bytes>,
    ) -> Result<MessageId> {
        if to == self.id() {
            return Err(Error::Message(MessageError::NotAllowed(
                "a node does not message itself".into(),
            )));
        }
        if to.x25519().is_none() {
            return Err(Error::Message(MessageError::BadKey));
        }
        let state = self.messaging();
        let (id, _) = lock(&state.outbox)
            .send(to, topic, body.into(), now_ms())
            .map_err(Error::Message)?;
        state.dirty.store(true, Ordering::Release);
        state.wake.notify_one();
        Ok(id)
    }

    /// The messages on `topic`, from now on and those that came before
    /// anyone asked (up to the topic's capacity). One subscriber per topic:
    /// a second call takes the topic over and the first stream ends.
    pub fn messages(&self, topic: &str) -> Messages {
        let state = self.messaging();
        let mut topics = lock(&state.topics);
        let t = topics.entry(topic.to_string()).or_insert_with(Topic::new);
        let rx = match t.rx.take() {
            Some(rx) if !t.tx.is_closed() => rx,
            _ => {
                let (tx, rx) = mpsc::unbounded_channel();
                t.tx = tx;
                // The previous stream keeps counting down its own.
                t.queued = Arc::default();
                rx
            }
        };
        Messages {
            rx,
            queued: t.queued.clone(),
        }
    }

    /// Resolves when message `id` was acknowledged by its recipient; an
    /// error when it was given up (its time to live passed, or it was
    /// refused) or is not one this node sent recently.
    pub async fn delivered(&self, id: MessageId) -> Result<()> {
        self.wait_message(id, false).await
    }

    /// Resolves when message `id` is delivered or held by at least one of
    /// its recipient's mailbox holders: the node may then stop without the
    /// message being lost.
    pub async fn sent(&self, id: MessageId) -> Result<()> {
        self.wait_message(id, true).await
    }

    async fn wait_message(&self, id: MessageId, stored_is_enough: bool) -> Result<()> {
        let state = self.messaging();
        loop {
            let changed = state.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if lock(&state.outbox).is_pending(&id) {
                if stored_is_enough && lock(&state.outbox).is_stored(&id) {
                    return Ok(());
                }
            } else {
                return match lock(&state.done).get(&id) {
                    Some(Done::Delivered) => Ok(()),
                    Some(Done::Failed(e)) => Err(Error::Message(e.clone())),
                    None => Err(Error::NotFound(format!("message {id}"))),
                };
            }
            changed.await;
        }
    }

    /// Where message `id` (sent by this node) is now.
    pub fn message_status(&self, id: MessageId) -> MessageStatus {
        let state = self.messaging();
        let out = lock(&state.outbox);
        if out.is_pending(&id) {
            return if out.is_stored(&id) {
                MessageStatus::Stored
            } else {
                MessageStatus::Waiting
            };
        }
        drop(out);
        match lock(&state.done).get(&id) {
            Some(Done::Delivered) => MessageStatus::Delivered,
            Some(Done::Failed(e)) => MessageStatus::Failed(e.clone()),
            None => MessageStatus::Unknown,
        }
    }

    /// Messages this node sent that wait for their acknowledgement.
    pub fn pending_messages(&self) -> usize {
        lock(&self.messaging().outbox).len()
    }

    /// Bytes of the envelopes this node holds in mailboxes for others.
    pub fn held_message_bytes(&self) -> usize {
        lock(&self.messaging().mailbox).bytes()
    }

    /// Messages this node holds in mailboxes for others.
    pub fn held_messages(&self) -> usize {
        lock(&self.messaging().mailbox).len()
    }
}
