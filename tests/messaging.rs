//! Messaging on a real network on loopback: online delivery (exactly once,
//! in order, acknowledged), delivery to a recipient that was offline
//! through its mailbox, with mailbox holders dying in between, and a
//! hostile sender and hostile holders refused.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use butter::messaging::envelope::{Envelope, Letter};
use butter::messaging::mailbox::MailboxLimits;
use butter::messaging::messages::{Fetch, Fetched, PutReply, FETCH_ROUTE, PUT_ROUTE};
use butter::messaging::{MessageError, MessageId};
use butter::{Identity, MessagingSettings, Node, NodeId};
use common::within;

fn at(i: usize) -> SocketAddr {
    format!("127.0.5.{}:0", i + 1).parse().unwrap()
}

fn settings() -> MessagingSettings {
    MessagingSettings {
        // Quick retries: the tests do not wait minutes for a backoff.
        outbox: butter::messaging::outbox::OutboxLimits {
            retry_max: Duration::from_secs(1),
            ..Default::default()
        },
        // A copy a holder is handed (by repair) after the recipient read
        // it is taken at the next drain: every second here, not minutes.
        drain_interval: Duration::from_secs(1),
        ..Default::default()
    }
}

async fn node(i: usize, data_dir: Option<&Path>, messaging: MessagingSettings) -> Node {
    let mut b = Node::builder()
        .listen(at(i))
        .lan_discovery(false)
        .messaging(messaging);
    if let Some(dir) = data_dir {
        b = b.data_dir(dir);
    }
    b.spawn().await.expect("node starts")
}

async fn know_each_other(nodes: &[&Node]) {
    for a in nodes {
        for b in nodes {
            if a.id() != b.id() {
                within(10, "known", a.add_known_host(b.addr()))
                    .await
                    .unwrap();
            }
        }
    }
}

/// Receives `n` messages from `inbox` (each within 30 s).
async fn receive(inbox: &mut butter::Messages, n: usize) -> Vec<butter::messaging::Message> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let m = within(30, "a message", inbox.next())
            .await
            .expect("the stream goes on");
        got.push(m);
    }
    got
}

/// Asserts messages are each once and, per sender and topic, in order
/// with no gap from 1.
fn assert_once_in_order(got: &[butter::messaging::Message]) {
    let mut ids = std::collections::HashSet::new();
    let mut next: HashMap<(NodeId, String), u64> = HashMap::new();
    for m in got {
        assert!(ids.insert(m.id), "message {} handed over twice", m.id);
        let n = next.entry((m.from, m.topic.clone())).or_insert(1);
        assert_eq!(m.seq, *n, "out of order on {}", m.topic);
        assert_eq!(&m.body[..], format!("{}:{}", m.topic, m.seq).as_bytes());
        *n += 1;
    }
}

/// Nothing more comes within a short while.
async fn assert_quiet(inbox: &mut butter::Messages) {
    let more = tokio::time::timeout(Duration::from_millis(500), inbox.next()).await;
    assert!(more.is_err(), "an extra message came: {more:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_messages_arrive_once_in_order_and_are_acknowledged() {
    let a = node(0, None, settings()).await;
    let b = node(1, None, settings()).await;
    a.add_peer_addr(&b.addr());
    let mut t0 = b.messages("t0");
    let mut t1 = b.messages("t1");
    let mut ids = Vec::new();
    let mut sent = HashMap::new();
    for i in 0..10_000u64 {
        let topic = if i % 3 == 0 { "t1" } else { "t0" };
        let seq = sent.entry(topic).or_insert(0u64);
        *seq += 1;
        ids.push(
            a.send_message(b.id(), topic, format!("{topic}:{seq}"))
                .unwrap(),
        );
    }
    let (n0, n1) = (sent["t0"] as usize, sent["t1"] as usize);
    let got0 = receive(&mut t0, n0).await;
    let got1 = receive(&mut t1, n1).await;
    assert_once_in_order(&got0);
    assert_once_in_order(&got1);
    assert!(got0.iter().chain(&got1).all(|m| m.from == a.id()));
    for id in &ids {
        within(30, "acknowledged", a.delivered(*id)).await.unwrap();
    }
    assert_eq!(a.pending_messages(), 0);
    assert_quiet(&mut t0).await;
    assert_quiet(&mut t1).await;
    a.shutdown().await;
    b.shutdown().await;
}

/// Five nodes that hold mailboxes, all knowing each other.
async fn holders(first: usize) -> Vec<Node> {
    let mut nodes = Vec::new();
    for i in 0..5 {
        nodes.push(node(first + i, None, settings()).await);
    }
    know_each_other(&nodes.iter().collect::<Vec<_>>()).await;
    nodes
}

/// Sends 100 messages from `a` to the offline `to` and waits until a
/// mailbox holder took each.
async fn send_while_offline(a: &Node, to: NodeId) -> Vec<MessageId> {
    let mut ids = Vec::new();
    for seq in 1..=100 {
        ids.push(a.send_message(to, "inbox", format!("inbox:{seq}")).unwrap());
    }
    for id in &ids {
        within(60, "stored in the mailbox", a.sent(*id))
            .await
            .unwrap();
    }
    ids
}

/// Starts the recipient (its identity from `dir`), lets it join, and
/// checks it gets all 100 once and in order, the sender hears of it, and
/// the holders keep none.
async fn come_online_and_drain(
    i: usize,
    dir: &Path,
    a: &Node,
    ids: &[MessageId],
    network: &[Node],
) {
    let b = node(i, Some(dir), settings()).await;
    let mut inbox = b.messages("inbox");
    for n in network.iter().take(2) {
        within(10, "known", b.add_known_host(n.addr()))
            .await
            .unwrap();
    }
    let got = receive(&mut inbox, 100).await;
    assert_once_in_order(&got);
    assert!(got.iter().all(|m| m.from == a.id()));
    for id in ids {
        within(30, "the sender hears of it", a.delivered(*id))
            .await
            .unwrap();
    }
    common::eventually(30, "the holders keep none", || {
        network.iter().map(|n| n.held_messages()).sum::<usize>() == 0
    })
    .await;
    let again = within(30, "drain", b.drain_mailbox()).await.unwrap();
    assert_eq!(again.taken, 0, "{again:?}");
    assert_quiet(&mut inbox).await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_recipient_gets_its_mailbox_once_in_order() {
    let network = holders(10).await;
    let a = node(20, None, settings()).await;
    know_each_other(&[&a, &network[0]]).await;
    let dir = tempfile::tempdir().unwrap();
    let b_id = Identity::load_or_generate(dir.path()).unwrap().id();
    let ids = send_while_offline(&a, b_id).await;
    let held: usize = network.iter().map(|n| n.held_messages()).sum();
    assert!(held >= 200, "100 messages on several holders: {held}");
    // B comes online a while later (the configured delay of this test).
    tokio::time::sleep(Duration::from_secs(1)).await;
    come_online_and_drain(21, dir.path(), &a, &ids, &network).await;
    a.shutdown().await;
    for n in network {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_survive_all_but_one_mailbox_holder() {
    let mut network = holders(30).await;
    let a = node(40, None, settings()).await;
    know_each_other(&[&a, &network[0]]).await;
    let dir = tempfile::tempdir().unwrap();
    let b_id = Identity::load_or_generate(dir.path()).unwrap().id();
    let ids = send_while_offline(&a, b_id).await;
    // r - 1 = 2 of the holders die.
    let holding: Vec<usize> = (0..network.len())
        .filter(|i| network[*i].held_messages() > 0)
        .collect();
    assert!(holding.len() >= 3, "holders {holding:?}");
    for i in holding.iter().rev().take(2) {
        network.remove(*i).crash();
    }
    come_online_and_drain(41, dir.path(), &a, &ids, &network).await;
    a.shutdown().await;
    for n in network {
        n.shutdown().await;
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn letter(seq: u64, body: &[u8]) -> Letter {
    Letter {
        id: MessageId::random(),
        topic: "inbox".into(),
        seq,
        floor: 1,
        epoch: 1,
        sent_at_ms: now() * 1000,
        body: body.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_refuse_unsigned_forged_replayed_oversized_and_over_quota_messages() {
    let holder = node(
        50,
        None,
        MessagingSettings {
            mailbox: MailboxLimits {
                per_sender: 5,
                ..Default::default()
            },
            ..settings()
        },
    )
    .await;
    let (alice, eve) = (Identity::generate(), Identity::generate());
    let eve_node = Node::builder()
        .listen(at(51))
        .lan_discovery(false)
        .identity(eve.clone())
        .spawn()
        .await
        .unwrap();
    let bob_dir = tempfile::tempdir().unwrap();
    let bob = Identity::load_or_generate(bob_dir.path()).unwrap();
    let put = |env: Envelope| {
        let eve_node = eve_node.clone();
        let to = holder.addr();
        async move {
            within(
                10,
                "put",
                eve_node.call_typed::<_, PutReply>(to, PUT_ROUTE, &env),
            )
            .await
            .unwrap()
        }
    };
    let refused = |r: PutReply| match r {
        PutReply::Refused(e) => e,
        PutReply::Stored => panic!("stored"),
    };
    let exp = now() + 600;
    // Unsigned.
    let mut unsigned = Envelope::seal(&alice, bob.id(), &letter(1, b"hi"), exp).unwrap();
    unsigned.sig.clear();
    assert_eq!(refused(put(unsigned).await), MessageError::BadSignature);
    // Forged: Eve's envelope claiming to be Alice's.
    let mut forged = Envelope::seal(&eve, bob.id(), &letter(1, b"pay eve"), exp).unwrap();
    forged.from = alice.id();
    assert_eq!(refused(put(forged).await), MessageError::BadSignature);
    // Modified after signing.
    let mut modified = Envelope::seal(&alice, bob.id(), &letter(1, b"hi"), exp).unwrap();
    modified.sealed[0] ^= 1;
    assert_eq!(refused(put(modified).await), MessageError::BadSignature);
    // Oversized (signed, but its sealed part over the bound).
    let mut big = Envelope::seal(&eve, bob.id(), &letter(1, b"x"), exp).unwrap();
    big.sealed = vec![0; butter::messaging::envelope::MAX_SEALED + 1];
    assert!(matches!(refused(put(big).await), MessageError::TooLarge(_)));
    // Eve floods Bob's mailbox: refused past her share; Alice's still in.
    let mut over = None;
    for seq in 1..=20 {
        let e = Envelope::seal(&eve, bob.id(), &letter(seq, b"spam"), exp).unwrap();
        if let PutReply::Refused(e) = put(e).await {
            over = Some(e);
            break;
        }
    }
    assert!(matches!(over, Some(MessageError::OverQuota(_))), "{over:?}");
    let honest = Envelope::seal(&alice, bob.id(), &letter(1, b"hello bob"), exp).unwrap();
    assert_eq!(put(honest.clone()).await, PutReply::Stored);
    assert_eq!(holder.held_messages(), 6);
    // The holder keeps it but cannot read it: neither as itself nor by
    // claiming to be its recipient.
    assert_eq!(
        honest.open(holder.identity(), now()),
        Err(MessageError::NotForMe)
    );
    let mut readdressed = honest.clone();
    readdressed.to = holder.id();
    assert_eq!(
        readdressed.open(holder.identity(), now()),
        Err(MessageError::BadSignature)
    );
    assert!(!honest.sealed.windows(9).any(|w| w == b"hello bob"));
    assert!(holder.stats().mailbox_refused >= 5, "{:?}", holder.stats());
    // Only Bob reads his mailbox: Eve's read of "her" mailbox is empty.
    let page = within(
        10,
        "fetch",
        eve_node.call_typed::<_, Fetched>(holder.addr(), FETCH_ROUTE, &Fetch { after: None }),
    )
    .await
    .unwrap();
    assert!(matches!(page, Fetched::Page { ref envelopes, .. } if envelopes.is_empty()));
    // Bob comes online, drains it (Alice's message once, Eve's spam too:
    // signed by her, so delivered as hers), and the holder keeps none.
    let b = Node::builder()
        .listen(at(52))
        .lan_discovery(false)
        .data_dir(bob_dir.path())
        .messaging(settings())
        .spawn()
        .await
        .unwrap();
    let mut inbox = b.messages("inbox");
    within(10, "known", b.add_known_host(holder.addr()))
        .await
        .unwrap();
    within(30, "drain", b.drain_mailbox()).await.unwrap();
    // Alice's one and Eve's five (signed by her: delivered as hers).
    let got = receive(&mut inbox, 6).await;
    let from_alice: Vec<_> = got.iter().filter(|m| m.from == alice.id()).collect();
    assert_eq!(from_alice.len(), 1);
    assert_eq!(&from_alice[0].body[..], b"hello bob");
    assert!(got
        .iter()
        .all(|m| m.from == alice.id() || m.from == eve.id()));
    common::eventually(10, "holder emptied", || holder.held_messages() == 0).await;
    // Replayed: the acknowledged envelope again.
    assert_eq!(refused(put(honest.clone()).await), MessageError::Replayed);
    // And the recipient refuses it too, should a holder hand it over.
    let drained = within(30, "drain", b.drain_mailbox()).await.unwrap();
    assert_eq!(drained.taken, 0);
    for n in [holder, eve_node, b] {
        n.shutdown().await;
    }
}

/// A holder that hands its readers garbage: unsigned, forged, modified,
/// replayed and misaddressed envelopes.
struct Garbage {
    envelopes: Vec<Envelope>,
}

impl butter::Service for Garbage {
    fn name(&self) -> &'static str {
        "garbage-mailbox"
    }
    fn routes(&self, routes: &mut butter::node::Routes<'_>) {
        let envelopes = self.envelopes.clone();
        routes.typed(FETCH_ROUTE, 64, move |_peer, _from, _f: Fetch| {
            let envelopes = envelopes.clone();
            async move {
                Ok(Fetched::Page {
                    envelopes,
                    more: false,
                })
            }
        });
        routes.typed(
            butter::messaging::messages::ACK_ROUTE,
            1 << 20,
            |_peer, _from, _r: butter::messaging::messages::Receipt| async move { Ok(0u32) },
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recipient_refuses_what_a_hostile_holder_hands_it() {
    let (alice, eve) = (Identity::generate(), Identity::generate());
    let bob = Identity::generate();
    let exp = now() + 600;
    let good = Envelope::seal(&alice, bob.id(), &letter(1, b"hello bob"), exp).unwrap();
    let mut unsigned = Envelope::seal(&alice, bob.id(), &letter(2, b"x"), exp).unwrap();
    unsigned.sig.clear();
    let mut forged = Envelope::seal(&eve, bob.id(), &letter(2, b"pay eve"), exp).unwrap();
    forged.from = alice.id();
    let mut modified = Envelope::seal(&alice, bob.id(), &letter(2, b"x"), exp).unwrap();
    modified.sealed[5] ^= 1;
    let other = Envelope::seal(&alice, eve.id(), &letter(1, b"for eve"), exp).unwrap();
    // Oversized.
    let mut big = Envelope::seal(&alice, bob.id(), &letter(3, b"x"), exp).unwrap();
    big.sealed = vec![0; butter::messaging::envelope::MAX_SEALED + 1];
    // Junk in place of the sealed part.
    let mut garbage = Envelope::seal(&eve, bob.id(), &letter(1, b"x"), exp).unwrap();
    garbage.sealed = vec![7; 100];
    let hostile = Node::builder()
        .listen(at(60))
        .lan_discovery(false)
        .messaging(MessagingSettings {
            serve: false,
            ..settings()
        })
        .service(Garbage {
            envelopes: vec![
                good.clone(),
                good.clone(),
                unsigned,
                forged,
                modified,
                other,
                big,
                garbage,
            ],
        })
        .spawn()
        .await
        .unwrap();
    let b = Node::builder()
        .listen(at(61))
        .lan_discovery(false)
        .identity(bob)
        .messaging(settings())
        .spawn()
        .await
        .unwrap();
    let mut inbox = b.messages("inbox");
    within(10, "known", b.add_known_host(hostile.addr()))
        .await
        .unwrap();
    // The drain that follows the first known host, or this one.
    within(30, "drain", b.drain_mailbox()).await.unwrap();
    let got = receive(&mut inbox, 1).await;
    let stats = b.stats();
    assert_eq!(stats.messages_received, 1, "{stats:?}");
    assert!(stats.messages_refused >= 6, "{stats:?}");
    assert_eq!(&got[0].body[..], b"hello bob");
    assert_eq!(got[0].from, alice.id());
    // Replayed by the holder at the next drain: not handed over again.
    let again = within(30, "drain", b.drain_mailbox()).await.unwrap();
    assert_eq!(again.taken, 0, "{again:?}");
    assert_quiet(&mut inbox).await;
    hostile.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_sender_cannot_pass_for_another_and_a_replay_is_not_handed_over() {
    let b = node(70, None, settings()).await;
    let mut inbox = b.messages("inbox");
    let eve = node(71, None, settings()).await;
    // Eve delivers a letter directly: it is hers, whatever it says.
    let l = letter(1, b"inbox:1");
    let outcome: Vec<butter::messaging::messages::Outcome> = within(
        10,
        "deliver",
        eve.call_typed(
            b.addr(),
            butter::messaging::messages::DELIVER_ROUTE,
            &butter::messaging::messages::Deliver {
                letters: vec![l.clone(), l.clone()],
            },
        ),
    )
    .await
    .unwrap();
    use butter::messaging::messages::Outcome;
    assert_eq!(outcome, vec![Outcome::Taken, Outcome::Seen]);
    let got = receive(&mut inbox, 1).await;
    assert_eq!(got[0].from, eve.id());
    assert_quiet(&mut inbox).await;
    b.shutdown().await;
    eve.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_on_made_up_topics_is_bounded_and_does_not_block_others() {
    use butter::messaging::messages::{Deliver, Outcome, DELIVER_ROUTE};
    let b = node(80, None, settings()).await;
    let mut inbox = b.messages("inbox");
    let eve = node(81, None, settings()).await;
    let alice = node(82, None, settings()).await;
    alice.add_peer_addr(&b.addr());
    // 100 topics nobody listens to, 16 letters of 60 KiB each.
    let mut taken = 0;
    let mut later = 0;
    for t in 0..100 {
        let letters = (1..=16)
            .map(|seq| {
                let mut l = letter(seq, &[0x55; 60 * 1024]);
                l.topic = format!("spam{t}");
                l
            })
            .collect();
        let outcomes: Vec<Outcome> = within(
            10,
            "deliver",
            eve.call_typed(b.addr(), DELIVER_ROUTE, &Deliver { letters }),
        )
        .await
        .unwrap();
        taken += outcomes.iter().filter(|o| **o == Outcome::Taken).count();
        later += outcomes.iter().filter(|o| **o == Outcome::Later).count();
    }
    // 64 topics kept, 256 KiB each: 4 letters of 60 KiB.
    assert!(taken <= 64 * 4, "{taken} taken");
    assert_eq!(taken + later, 100 * 16);
    // Alice's message on the topic B listens to still goes through.
    let id = alice.send_message(b.id(), "inbox", "inbox:1").unwrap();
    let got = receive(&mut inbox, 1).await;
    assert_eq!(got[0].from, alice.id());
    within(10, "acknowledged", alice.delivered(id))
        .await
        .unwrap();
    for n in [b, eve, alice] {
        n.shutdown().await;
    }
}
